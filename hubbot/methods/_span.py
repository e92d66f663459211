"""Methods whose result lies in the span of their inputs (Multi-SLERP, Karcher, Model Stock):
one pass over the blocks gathers the inputs' inner products, from which the method computes the
coefficients of its result; the merge is then a linear combination of the inputs, block by block.
"""

from __future__ import annotations

import torch


def gram(points: list[torch.Tensor]) -> torch.Tensor:
    """This block's share of the inner products between the points (float64, on the CPU)."""
    flat = torch.stack([p.reshape(-1) for p in points])
    return (flat @ flat.T).double().cpu()


def total(shares: list[torch.Tensor]) -> torch.Tensor:
    """The whole tensor's inner products from every block's share."""
    return torch.stack(shares).sum(0)


def combination(points: list[torch.Tensor], coef: torch.Tensor) -> torch.Tensor:
    """sum_i coef_i * points_i."""
    out = torch.zeros_like(points[0])
    for x, c in zip(points, coef.tolist()):
        out.add_(x, alpha=c)
    return out
