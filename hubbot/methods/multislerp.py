"""Multi-SLERP: a weighted mean of several models on the hypersphere.

The (task-vector, with a base) tensors are projected onto the unit sphere, their weighted mean
direction is found, the weighted tangent offsets from it are combined and mapped back to the
sphere with the exponential map, and the result takes the weighted mean of the norms.
Following Goddard's description (2024, "Multi-SLERP", goddard.blog), the tangent offsets are
the orthogonal projections onto the tangent plane at the mean.
"""

from __future__ import annotations

from typing import Any

import torch

from . import Method, Param, register


def multislerp(base: torch.Tensor | None, tensors: list[torch.Tensor], params: dict[str, Any]) -> torch.Tensor:
    if len(tensors) == 1:
        return tensors[0]
    eps = params["eps"]
    shape = tensors[0].shape
    flat = torch.stack([x.reshape(-1) for x in tensors])
    if base is not None:
        flat -= base.reshape(1, -1)
    weights = torch.tensor(params["weight"], dtype=flat.dtype, device=flat.device)
    if params["normalize_weights"]:
        weights = weights / weights.sum()
    norms = torch.linalg.vector_norm(flat, dim=1, keepdim=True)
    units = flat / (norms + eps)
    mean = (units * weights[:, None]).sum(0)
    mean_norm = torch.linalg.vector_norm(mean)
    if mean_norm < eps:
        if len(tensors) != 2:
            raise ValueError("multislerp: the weighted directions cancel out (opposite tensors with balancing "
                             "weights); change the weights")
        out = flat[0] * weights[0] + flat[1] * weights[1]
    else:
        mean = mean / mean_norm
        tangents = units - (units @ mean)[:, None] * mean
        step = (tangents * weights[:, None]).sum(0)
        length = torch.linalg.vector_norm(step) + eps
        out = (mean * torch.cos(length) + step * (torch.sin(length) / length)) * (norms[:, 0] * weights).sum()
    out = out.reshape(shape)
    return out.add_(base) if base is not None else out


register(Method(
    name="multislerp",
    kernel=multislerp,
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
))
