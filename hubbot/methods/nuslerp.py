"""NuSLERP: spherical interpolation of two models by weight, optionally of their task vectors.

Two models (or, with a base model, their task vectors from it) are interpolated along the great
circle at t = w2 / (w1 + w2), either as whole flattened tensors or vector by vector along one
axis. Magnitudes interpolate with the angle (Shoemake's formula on the unnormalised vectors);
parallel vectors fall back to linear interpolation.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .method import Block, Blockwise, Method, Param, Pass

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


def _ratio(params: dict[str, Any]) -> float:
    w1, w2 = params["weight"]
    return 0.5 if abs(w1 + w2) < 1e-6 else w2 / (w1 + w2)


def _deltas(base: torch.Tensor | None, tensors: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = tensors
    return (a - base, b - base) if base is not None else (a, b)


def _inner_products(base: torch.Tensor | None, tensors: list[torch.Tensor], params: dict[str, Any],
                    stats: dict[str, Any], block: Block) -> torch.Tensor:
    a, b = (x.reshape(-1) for x in _deltas(base, tensors))
    return torch.stack([torch.dot(a, a), torch.dot(a, b), torch.dot(b, b)]).double().cpu()


def _arc(shares: list[torch.Tensor], stats: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The flattened tensors' SLERP coefficients from their inner products (as `slerp_vectors`)."""
    aa, ab, bb = (float(v) for v in torch.stack(shares).sum(0))
    t = _ratio(params)
    cos = max(-1.0, min(1.0, ab / (max(math.sqrt(aa), NORM_EPS) * max(math.sqrt(bb), NORM_EPS))))
    if 1 - cos * cos <= PARALLEL_EPS**2:
        return {"ca": 1 - t, "cb": t}
    theta = math.acos(cos)
    return {"ca": math.sin((1 - t) * theta) / math.sin(theta), "cb": math.sin(t * theta) / math.sin(theta)}


def _flat_block(base: torch.Tensor | None, tensors: list[torch.Tensor], params: dict[str, Any],
                stats: dict[str, Any], block: Block) -> torch.Tensor:
    a, b = _deltas(base, tensors)
    out = a.mul_(stats["ca"]).add_(b, alpha=stats["cb"]) if base is not None else a * stats["ca"] + b * stats["cb"]
    return out.add_(base) if base is not None else out


FLAT = Blockwise(_flat_block, (Pass(_inner_products, _arc),), applies=lambda params: params["nuslerp_flatten"])


def nuslerp(base: torch.Tensor | None, tensors: list[torch.Tensor], params: dict[str, Any]) -> torch.Tensor:
    if params["nuslerp_flatten"]:
        return FLAT.whole(base, tensors, params)
    t = _ratio(params)
    a, b = _deltas(base, tensors)
    if params["nuslerp_row_wise"]:
        out = slerp_vectors(t, a.transpose(0, -1), b.transpose(0, -1)).transpose(0, -1)
    else:
        out = slerp_vectors(t, a, b)
    return out.add_(base) if base is not None else out


NUSLERP = Method(
    name="nuslerp",
    kernel=nuslerp,
    blockwise=FLAT,
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
)

METHODS = (NUSLERP,)
