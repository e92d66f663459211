"""Spherical linear interpolation between the base model and one other model."""

from __future__ import annotations

import math
from typing import Any

import torch

from . import Method, Param, register

PARALLEL = 0.9995  # above this |cos|, the arc is a line and lerp is exact enough
EPS = 1e-8


def slerp(base: torch.Tensor | None, tensors: list[torch.Tensor], params: dict[str, Any]) -> torch.Tensor:
    """Interpolate along the great circle between the flattened tensors (Shoemake 1985).

    t = 0 gives the base, t = 1 the other model. The angle comes from the directions; the
    magnitudes interpolate with them. Near-parallel tensors fall back to linear interpolation.
    """
    assert base is not None
    t = float(params["t"])
    other = tensors[0]
    a, b = base.reshape(-1), other.reshape(-1)
    na = torch.linalg.vector_norm(a).item()
    nb = torch.linalg.vector_norm(b).item()
    na, nb = (na if na > EPS else 1.0), (nb if nb > EPS else 1.0)
    cos = max(-1.0, min(1.0, torch.dot(a, b).item() / (na * nb)))
    if abs(cos) > PARALLEL:
        ca, cb = 1.0 - t, t
    else:
        theta = math.acos(cos)
        sin = math.sin(theta)
        ca, cb = math.sin((1.0 - t) * theta) / sin, math.sin(t * theta) / sin
    return base.mul(ca).add_(other, alpha=cb)


register(Method(
    name="slerp",
    kernel=slerp,
    title="SLERP",
    summary="Interpolates each tensor along the arc between two models rather than the straight line, "
            "keeping the geometry of the weights; `t` moves from the base model (0) to the other (1) and "
            "can follow a curve over the layers.",
    paper="Shoemake 1985, Animating rotation with quaternion curves (SIGGRAPH)",
    base="required",
    params=(Param("t", low=0.0, high=1.0, doc="0 = base model, 1 = the other model"),),
    models=(2, 2),
))
