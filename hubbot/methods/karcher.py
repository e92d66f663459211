"""Karcher mean: the Riemannian centre of mass of the models on the hypersphere.

Each tensor is split into a norm and a direction; the directions' equal-weight Karcher mean
(the point minimising the summed squared geodesic distances, Karcher 1977) is found by
Riemannian gradient steps: map every direction into the tangent space at the current mean
(log map), average, and step along the average (exp map) until the step is below `tol` or
`max_iter` steps are taken. The result is that direction scaled by the mean norm. A base
model, when the recipe names one, is one more point of the mean (as in the format's reference).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from . import Method, Param, register


def karcher(base: torch.Tensor | None, tensors: list[torch.Tensor], params: dict[str, Any]) -> torch.Tensor:
    if base is not None:
        tensors = [base, *tensors]
    if len(tensors) == 1:
        return tensors[0]
    tol, max_iter = float(params["tol"]), int(params["max_iter"])
    norms = [float(torch.linalg.vector_norm(x)) for x in tensors]
    units = [x.reshape(-1) / n for x, n in zip(tensors, norms) if n > tol]
    if not units:
        return torch.zeros_like(tensors[0])
    weight = 1.0 / len(units)
    mean = torch.zeros_like(units[0])
    for u in units:
        mean.add_(u, alpha=weight)
    length = float(torch.linalg.vector_norm(mean))
    mean = units[0].clone() if length < tol else mean.div_(length)
    for _ in range(max_iter):
        step = torch.zeros_like(mean)  # the mean of the log maps at `mean`
        for u in units:
            cos = min(1.0, max(-1.0, float(torch.dot(mean, u))))
            theta = math.acos(cos)
            if theta < tol:
                continue
            scale = weight * theta / math.sin(theta)
            step.add_(u, alpha=scale).add_(mean, alpha=-scale * cos)
        length = float(torch.linalg.vector_norm(step))
        if length < tol:
            break
        mean.mul_(math.cos(length)).add_(step, alpha=math.sin(length) / length)  # exp map
        norm = float(torch.linalg.vector_norm(mean))
        if norm > tol:
            mean.div_(norm)
    return mean.mul_(sum(norms) / len(tensors)).reshape(tensors[0].shape)


register(Method(
    name="karcher",
    kernel=karcher,
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
))
