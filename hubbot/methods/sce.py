"""SCE (FuseChat: Wan et al. 2024, arXiv:2408.07990): Select, Calculate, Erase.

Select keeps the `select_topk` fraction of positions where the task vectors vary most across
models; Calculate weights each model by the mean square of its (selected) task vector; Erase
drops entries whose sign disagrees with the summed vectors. The weighted agreeing entries are
averaged onto the base.
"""

from __future__ import annotations

from typing import Any

import torch

from . import Method, Param, register
from ._sparsify import agreement, elect_signs, top_k_mask


def sce(base: torch.Tensor | None, tensors: list[torch.Tensor], params: dict[str, Any]) -> torch.Tensor:
    assert base is not None
    if not tensors:
        return base.clone()
    deltas = torch.stack([x - base for x in tensors])
    topk = params["select_topk"]
    if topk < 1:
        mean = deltas.mean(dim=0)
        variance = sum((d - mean).square_() for d in deltas) / len(tensors)  # var(dim=0) strides slowly
        k = int(int(torch.count_nonzero(variance)) * topk)
        deltas *= top_k_mask(variance, k)
    agree = agreement(deltas, elect_signs(deltas.sum(dim=0))).to(deltas.dtype)
    energy = deltas.square().reshape(len(tensors), -1).mean(dim=1)
    total = float(energy.sum())
    weights = energy / total if abs(total) >= 1e-6 else torch.full_like(energy, 1 / len(tensors))
    weights = agree * weights.reshape(-1, *[1] * base.dim())
    merged = (deltas * weights).sum(dim=0) / weights.sum(dim=0).clamp(min=1e-6)
    return merged.add_(base)


register(Method(
    name="sce",
    kernel=sce,
    title="SCE (select, calculate, erase)",
    summary="Keeps the positions where the fine-tunes' task vectors differ most, weights each model by the "
            "energy of its task vector, erases entries that disagree with the majority sign, and adds the "
            "weighted average to the base; no per-model weights to tune.",
    paper="Wan et al. 2024, FuseChat: Knowledge Fusion of Chat Models, arXiv:2408.07990",
    base="required",
    params=(
        Param("select_topk", default=1.0, low=0.0, high=1.0,
              doc="fraction of positions (highest variance across models) to keep"),
        Param("int8_mask", bool, default=False, doc="accepted for compatibility; masks are always compact"),
    ),
    models=(2, None),
))
