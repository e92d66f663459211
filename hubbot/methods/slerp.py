"""Spherical linear interpolation between the base model and one other model."""

from __future__ import annotations

import math
from typing import Any

import torch

from .method import Block, Blockwise, Method, Param, Pass

PARALLEL = 0.9995  # above this |cos|, the arc is a line and lerp is exact enough
EPS = 1e-8


def _gather(base: torch.Tensor | None, tensors: list[torch.Tensor], params: dict[str, Any],
            stats: dict[str, Any], block: Block) -> torch.Tensor:
    """This block's dot product and squared norms: (a.b, |a|^2, |b|^2)."""
    assert base is not None
    a, b = base.reshape(-1), tensors[0].reshape(-1)
    return torch.stack([torch.dot(a, b), torch.dot(a, a), torch.dot(b, b)]).double().cpu()


def _coefficients(shares: list[torch.Tensor], stats: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The arc's two coefficients from the whole tensor's dot product and norms (Shoemake 1985).

    t = 0 gives the base, t = 1 the other model. The angle comes from the directions; the
    magnitudes interpolate with them. Near-parallel tensors fall back to linear interpolation.
    """
    dot, aa, bb = (float(v) for v in torch.stack(shares).sum(0))
    t = float(params["t"])
    na, nb = math.sqrt(aa), math.sqrt(bb)
    na, nb = (na if na > EPS else 1.0), (nb if nb > EPS else 1.0)
    cos = max(-1.0, min(1.0, dot / (na * nb)))
    if abs(cos) > PARALLEL:
        return {"ca": 1.0 - t, "cb": t}
    theta = math.acos(cos)
    sin = math.sin(theta)
    return {"ca": math.sin((1.0 - t) * theta) / sin, "cb": math.sin(t * theta) / sin}


def _interpolate(base: torch.Tensor | None, tensors: list[torch.Tensor], params: dict[str, Any],
                 stats: dict[str, Any], block: Block) -> torch.Tensor:
    assert base is not None
    return base.mul(stats["ca"]).add_(tensors[0], alpha=stats["cb"])


SLERP = Method(
    name="slerp",
    kernel=None,
    blockwise=Blockwise(_interpolate, (Pass(_gather, _coefficients),)),
    title="SLERP",
    summary="Interpolates each tensor along the arc between two models rather than the straight line, "
            "keeping the geometry of the weights; `t` moves from the base model (0) to the other (1) and "
            "can follow a curve over the layers.",
    paper="Shoemake 1985, Animating rotation with quaternion curves (SIGGRAPH)",
    base="required",
    params=(Param("t", low=0.0, high=1.0, doc="0 = base model, 1 = the other model"),),
    models=(2, 2),
)

METHODS = (SLERP,)
