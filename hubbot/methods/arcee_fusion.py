"""Arcee Fusion: take the other model's changes only where they matter most.

Each entry's importance is |other - base| times the KL divergence between the softmax of the
other model's row and the base's row. Entries whose importance reaches the upper outlier fence
of the tensor's importance distribution, median + 1.5 * (Q3 - Q1), take the other model's
value; all others keep the base. Quartiles are exact lower order statistics.

The divergence of two nearly equal rows is a sum of tiny terms of both signs, so float32's
rounding decides much of it: it is computed in float32 as the reference does (float64 picked
other entries than the reference), and a GPU, whose exp and log round differently, picks some
entries near the fence differently from the CPU (about 0.5% of a small model's).
"""

from __future__ import annotations

from typing import Any

import torch

from .method import Method

PROB_EPS = 1e-8


def _order_stats(values: torch.Tensor, qs: tuple[float, ...]) -> list[torch.Tensor]:
    """The values at index floor(q * (n - 1)) of the sorted values: by selection on the CPU, by
    one sort on a GPU (whose selection took seconds per tensor where its sort takes milliseconds)."""
    flat = values.reshape(-1)
    at = [int(q * (flat.numel() - 1)) for q in qs]
    if flat.device.type == "cpu":
        return [torch.kthvalue(flat, i + 1).values for i in at]
    ordered = torch.sort(flat).values
    return [ordered[i] for i in at]


def arcee_fusion(base: torch.Tensor | None, tensors: list[torch.Tensor], params: dict[str, Any]) -> torch.Tensor:
    assert base is not None
    other = tensors[0]
    p = torch.softmax(other, dim=-1) + PROB_EPS
    q = torch.softmax(base, dim=-1) + PROB_EPS
    kl = (p * torch.log(p / q)).sum(dim=-1, keepdim=True)
    importance = (other - base).abs() * kl
    q1, median, q3 = _order_stats(importance, (0.25, 0.5, 0.75))
    take = importance >= median + 1.5 * (q3 - q1)
    return torch.where(take, other, base)


ARCEE_FUSION = Method(
    name="arcee_fusion",
    kernel=arcee_fusion,
    title="Arcee Fusion",
    summary="Keeps the base model and takes the other model's value only for the entries whose change is "
            "unusually important (change size times the shift in the row's softmax distribution beyond an "
            "outlier threshold), a conservative way to graft one fine-tune's key changes.",
    paper="Arcee AI 2025, Arcee Fusion (as implemented in mergekit's arcee_fusion)",
    base="required",
    models=(2, 2),
)

METHODS = (ARCEE_FUSION,)
