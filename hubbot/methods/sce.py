"""SCE (FuseChat: Wan et al. 2024, arXiv:2408.07990): Select, Calculate, Erase.

Select keeps the `select_topk` fraction of positions where the task vectors vary most across
models; Calculate weights each model by the mean square of its (selected) task vector; Erase
drops entries whose sign disagrees with the summed vectors. The weighted agreeing entries are
averaged onto the base.
"""

from __future__ import annotations

from typing import Any

import torch

from ._sparsify import agreement, block_mask, elect_signs, final_cut, first_cut, high_counts, low_counts
from .method import Block, Blockwise, Method, Param, Pass


def _deltas(base: torch.Tensor | None, tensors: list[torch.Tensor]) -> torch.Tensor:
    assert base is not None
    return torch.stack([x - base for x in tensors])


def _variance(deltas: torch.Tensor) -> torch.Tensor:
    """Across models, per position (a sum over models: var(dim=0) strides slowly)."""
    mean = deltas.mean(dim=0)
    return sum((d - mean).square_() for d in deltas) / len(deltas)


def _merge(base: torch.Tensor, deltas: torch.Tensor, energy: torch.Tensor) -> torch.Tensor:
    """Calculate and Erase: weights from the models' energies, only entries of the elected sign."""
    agree = agreement(deltas, elect_signs(deltas.sum(dim=0))).to(deltas.dtype)
    total = float(energy.sum())
    weights = energy / total if abs(total) >= 1e-6 else torch.full_like(energy, 1 / len(deltas))
    weights = agree * weights.to(deltas).reshape(-1, *[1] * base.dim())
    merged = (deltas * weights).sum(dim=0) / weights.sum(dim=0).clamp(min=1e-6)
    return merged.add_(base)


# Block by block (and whole: the same passes over one block): the variance cut is a radix select
# like TIES's (its counting passes over the blocks, each adding every block's histogram into
# one), then one pass sums each model's energy over the selected entries, then each block merges.
# Shares stay where the blocks are (on a GPU, reading them back would make it wait each block).

def _count_variance(base: torch.Tensor | None, tensors: list[torch.Tensor], params: dict[str, Any],
                    stats: dict[str, Any], block: Block) -> torch.Tensor | None:
    if params["select_topk"] >= 1:  # nothing to select
        return None
    variance = _variance(_deltas(base, tensors))
    return torch.cat([high_counts(variance), torch.count_nonzero(variance).reshape(1)])


def _variance_bin(shares: list, stats: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    if params["select_topk"] >= 1:
        return {"bin": True}
    total = shares[0].cpu()
    counts, nonzero = total[:-1], int(total[-1])
    return {"bin": first_cut(counts, int(nonzero * params["select_topk"]))}


def _variance_lows(base: torch.Tensor | None, tensors: list[torch.Tensor], params: dict[str, Any],
                   stats: dict[str, Any], block: Block) -> torch.Tensor | None:
    b = stats["bin"]
    return low_counts(_variance(_deltas(base, tensors)), b[0]) if isinstance(b, tuple) else None


def _variance_cut(shares: list, stats: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    return {"cut": final_cut(shares[0], stats["bin"])}


def _selected(base: torch.Tensor | None, tensors: list[torch.Tensor], stats: dict[str, Any],
              block: int) -> torch.Tensor:
    deltas = _deltas(base, tensors)
    if stats["cut"] is not True:
        deltas *= block_mask(_variance(deltas), stats["cut"], block)
    return deltas


def _energy(base: torch.Tensor | None, tensors: list[torch.Tensor], params: dict[str, Any],
            stats: dict[str, Any], block: Block) -> torch.Tensor:
    deltas = _selected(base, tensors, stats, block.index)
    sums = deltas.square().reshape(len(tensors), -1).sum(dim=1).double()
    return torch.cat([sums, torch.tensor([float(deltas[0].numel())], dtype=torch.float64, device=sums.device)])


def _energies(shares: list[torch.Tensor], stats: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    total = shares[0].cpu()
    return {"energy": total[:-1] / total[-1]}


def _add(total: torch.Tensor | None, share: torch.Tensor | None) -> torch.Tensor | None:
    """Counts and energies add up block by block (None: nothing was counted)."""
    return None if total is None else total.add_(share)


def _sce_block(base: torch.Tensor | None, tensors: list[torch.Tensor], params: dict[str, Any],
               stats: dict[str, Any], block: Block) -> torch.Tensor:
    assert base is not None
    return _merge(base, _selected(base, tensors, stats, block.index), stats["energy"])


SCE = Method(
    name="sce",
    kernel=None,
    blockwise=Blockwise(_sce_block, (Pass(_count_variance, _variance_bin, _add), Pass(_variance_lows, _variance_cut, _add),
                                     Pass(_energy, _energies, _add))),
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
)

METHODS = (SCE,)
