"""Multi-SLERP: a weighted mean of several models on the hypersphere.

The (task-vector, with a base) tensors are projected onto the unit sphere, their weighted mean
direction is found, the weighted tangent offsets from it are combined and mapped back to the
sphere with the exponential map, and the result takes the weighted mean of the norms.
Following Goddard's description (2024, "Multi-SLERP", goddard.blog), the tangent offsets are
the orthogonal projections onto the tangent plane at the mean.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ._span import combination, gram, total
from .method import Block, Blockwise, Method, Param, Pass


def _points(base: torch.Tensor | None, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The points on the sphere before normalising: the tensors, or their task vectors."""
    return [x - base for x in tensors] if base is not None else list(tensors)


def _inner_products(base: torch.Tensor | None, tensors: list[torch.Tensor], params: dict[str, Any],
                    stats: dict[str, Any], block: Block) -> torch.Tensor:
    return gram(_points(base, tensors))


def _coefficients(shares: list[torch.Tensor], stats: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The result as a combination of the points, from their inner products alone.

    Every quantity lies in the span of the points, so with G the Gram matrix: norms n, unit
    directions u = x / (n + eps), their weighted mean m and its direction, the tangent offsets
    of the u at it, their weighted sum (the step), and the exponential map along the step, each
    scaled by the weighted mean of the norms."""
    g = total(shares)
    k = g.shape[0]
    if k == 1:
        return {"coef": None}
    eps = params["eps"]
    w = torch.tensor(params["weight"], dtype=torch.float64)
    if params["normalize_weights"]:
        w = w / w.sum()
    norms = g.diagonal().clamp(min=0).sqrt()
    to_unit = 1 / (norms + eps)                   # u_i = to_unit_i * x_i
    mean = w * to_unit                            # m = sum_j mean_j x_j
    mean_norm = math.sqrt(max(0.0, float(mean @ g @ mean)))
    if mean_norm < eps:
        if k != 2:
            raise ValueError("multislerp: the weighted directions cancel out (opposite tensors with balancing "
                             "weights); change the weights")
        return {"coef": w}
    mean = mean / mean_norm                       # the mean direction
    dots = to_unit * (g @ mean)                # u_i . mean direction
    step = w * to_unit - float(w @ dots) * mean   # sum_i w_i (u_i - dots_i mean direction)
    length = math.sqrt(max(0.0, float(step @ g @ step))) + eps
    scale = float(norms @ w)
    return {"coef": (mean * math.cos(length) + step * (math.sin(length) / length)) * scale}


def _combine(base: torch.Tensor | None, tensors: list[torch.Tensor], params: dict[str, Any],
             stats: dict[str, Any], block: Block) -> torch.Tensor:
    if stats["coef"] is None:
        return tensors[0]
    out = combination(_points(base, tensors), stats["coef"])
    return out.add_(base) if base is not None else out


MULTISLERP = Method(
    name="multislerp",
    kernel=None,
    blockwise=Blockwise(_combine, (Pass(_inner_products, _coefficients),)),
    title="Multi-SLERP",
    summary="Spherical interpolation of any number of models: a weighted mean taken on the hypersphere "
            "rather than in a straight line, optionally of task vectors from a base model.",
    paper="Goddard 2024, Multi-SLERP (goddard.blog/posts/multislerp-wow-what-a-cool-idea)",
    base="optional",
    params=(
        Param("weight", per_model=True, doc="how much of this model to take"),
        Param("normalize_weights", bool, default=True, doc="divide the weights by their sum"),
        Param("eps", default=1e-8, low=0.0, doc="guards divisions by tiny norms"),
    ),
    models=(1, None),
)

METHODS = (MULTISLERP,)
