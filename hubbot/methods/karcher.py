"""Karcher mean: the Riemannian centre of mass of the models on the hypersphere.

Each tensor is split into a norm and a direction; the directions' equal-weight Karcher mean
(the point minimising the summed squared geodesic distances, Karcher 1977) is found by
Riemannian gradient steps: map every direction into the tangent space at the current mean
(log map), average, and step along the average (exp map) until the step is below `tol` or
`max_iter` steps are taken. The result is that direction scaled by the mean norm. A base
model, when the recipe names one, is one more point of the mean (as in the format's reference).

Every iterate lies in the span of the inputs, so the iteration runs on their inner products (one
pass over the blocks) and the merge is then a linear combination of the inputs, block by block.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ._span import combination, gram, total
from .method import Block, Blockwise, Method, Param, Pass


def _points(base: torch.Tensor | None, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return [base, *tensors] if base is not None else list(tensors)


def _inner_products(base: torch.Tensor | None, tensors: list[torch.Tensor], params: dict[str, Any],
          stats: dict[str, Any], block: Block) -> torch.Tensor:
    return gram(_points(base, tensors))


def _mean(shares: list[torch.Tensor], stats: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The Karcher mean as a combination of the points, iterated on their inner products alone:
    every iterate lies in the span of the unit directions, so a vector is its coefficients c
    and v . w = c_v G c_w."""
    g = total(shares)
    k = g.shape[0]
    if k == 1:
        return {"coef": None}
    tol, max_iter = float(params["tol"]), int(params["max_iter"])
    norms = g.diagonal().clamp(min=0).sqrt()
    valid = norms > tol
    if not bool(valid.any()):
        return {"coef": torch.zeros(k, dtype=torch.float64)}
    units = torch.diag(torch.where(valid, 1 / norms, torch.zeros_like(norms)))[valid]  # rows: u_i = x_i / n_i

    def norm(c: torch.Tensor) -> float:
        return math.sqrt(max(0.0, float(c @ g @ c)))

    weight = 1.0 / len(units)
    mean = units.sum(0) * weight
    length = norm(mean)
    mean = units[0].clone() if length < tol else mean / length
    for _ in range(max_iter):
        step = torch.zeros(k, dtype=torch.float64)  # the mean of the log maps at `mean`
        for u in units:
            cos = min(1.0, max(-1.0, float(mean @ g @ u)))
            theta = math.acos(cos)
            if theta < tol:
                continue
            scale = weight * theta / math.sin(theta)
            step += scale * (u - cos * mean)
        length = norm(step)
        if length < tol:
            break
        mean = mean * math.cos(length) + step * (math.sin(length) / length)  # exp map
        size = norm(mean)
        if size > tol:
            mean = mean / size
    return {"coef": mean * float(norms.sum() / k)}


def _combine(base: torch.Tensor | None, tensors: list[torch.Tensor], params: dict[str, Any],
             stats: dict[str, Any], block: Block) -> torch.Tensor:
    points = _points(base, tensors)
    return points[0] if stats["coef"] is None else combination(points, stats["coef"])


KARCHER = Method(
    name="karcher",
    kernel=None,
    blockwise=Blockwise(_combine, (Pass(_inner_products, _mean),)),
    title="Karcher mean",
    summary="Averages any number of models on the hypersphere: the direction that minimises the summed "
            "geodesic distances to every model's direction (their Riemannian centre of mass), scaled by "
            "the mean norm; a multi-model generalisation of SLERP at equal weights.",
    paper="Karcher 1977, Riemannian center of mass and mollifier smoothing (Comm. Pure Appl. Math. 30)",
    base="optional",
    params=(
        Param("max_iter", int, default=10, low=1, doc="most gradient steps"),
        Param("tol", default=1e-5, low=0.0, low_open=True, doc="stop when a step is shorter than this"),
    ),
    models=(1, None),
)

METHODS = (KARCHER,)
