"""NuSLERP: spherical interpolation of two models by weight, optionally of their task vectors.

Two models (or, with a base model, their task vectors from it) are interpolated along the great
circle at t = w2 / (w1 + w2), either as whole flattened tensors or vector by vector along one
axis. Magnitudes interpolate with the angle (Shoemake's formula on the unnormalised vectors);
parallel vectors fall back to linear interpolation.
"""

from __future__ import annotations

from typing import Any

import torch

from . import Method, Param, register

NORM_EPS = 1e-7
PARALLEL_EPS = 1e-8


def slerp_vectors(t: float, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """SLERP between the vectors along the last axis of `a` and `b` (Shoemake 1985)."""
    ua = a / torch.linalg.vector_norm(a, dim=-1, keepdim=True).clamp(min=NORM_EPS)
    ub = b / torch.linalg.vector_norm(b, dim=-1, keepdim=True).clamp(min=NORM_EPS)
    cos = (ua * ub).sum(dim=-1, keepdim=True).clamp(-1, 1)
    parallel = (1 - cos.square()) <= PARALLEL_EPS**2
    theta = torch.acos(torch.where(parallel, 0.0, cos))  # parallel: a finite stand-in, replaced below
    arc = (torch.sin((1 - t) * theta) * a + torch.sin(t * theta) * b) / torch.sin(theta)
    return torch.where(parallel, (1 - t) * a + t * b, arc)


def nuslerp(base: torch.Tensor | None, tensors: list[torch.Tensor], params: dict[str, Any]) -> torch.Tensor:
    w1, w2 = params["weight"]
    t = 0.5 if abs(w1 + w2) < 1e-6 else w2 / (w1 + w2)
    a, b = tensors
    if base is not None:
        a, b = a - base, b - base
    shape = a.shape
    if params["nuslerp_flatten"]:
        out = slerp_vectors(t, a.reshape(-1), b.reshape(-1))
    elif params["nuslerp_row_wise"]:
        out = slerp_vectors(t, a.transpose(0, -1), b.transpose(0, -1)).transpose(0, -1)
    else:
        out = slerp_vectors(t, a, b)
    out = out.reshape(shape)
    return out.add_(base) if base is not None else out


register(Method(
    name="nuslerp",
    kernel=nuslerp,
    title="NuSLERP",
    summary="Spherical interpolation between two models at the ratio of their weights, either of whole "
            "tensors or vector by vector; with a base model it interpolates their task vectors instead, "
            "keeping what each fine-tune changed.",
    paper="Shoemake 1985, Animating rotation with quaternion curves (SIGGRAPH); task-vector SLERP as in mergekit's nuslerp",
    base="optional",
    params=(
        Param("weight", per_model=True, doc="relative share of this model (t = w2 / (w1 + w2))"),
        Param("nuslerp_flatten", bool, default=True, doc="interpolate each tensor as one flat vector"),
        Param("nuslerp_row_wise", bool, default=False,
              doc="without flatten: interpolate the vectors along the first axis instead of the last"),
    ),
    models=(2, 2),
))
