"""NearSwap: take the other model's value only where it is already close to the base.

Each entry moves from the base towards the other model by min(1, t / |base - other|): entries
that differ by less than `t` are swapped in completely, distant ones barely move. Described by
alchemonaut with the QuartetAnemoi-70B merge (huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001).
"""

from __future__ import annotations

from typing import Any

import torch

from .method import Method, Param


def nearswap(base: torch.Tensor | None, tensors: list[torch.Tensor], params: dict[str, Any]) -> torch.Tensor:
    assert base is not None
    other = tensors[0]
    share = (params["t"] / (base - other).abs().clamp(min=1e-6)).clamp(0, 1)
    return base + share * (other - base)


NEARSWAP = Method(
    name="nearswap",
    kernel=nearswap,
    title="NearSwap",
    summary="Keeps the base model but swaps in the other model's values wherever the two are already close "
            "(closer than t), blending proportionally less where they are far apart.",
    paper="alchemonaut 2024, QuartetAnemoi-70B (NearSwap), huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001",
    base="required",
    params=(Param("t", low=0.0, doc="distance below which the other model's value is taken whole"),),
    models=(2, 2),
    elementwise=True,
)

METHODS = (NEARSWAP,)
