"""Passthrough: copies tensors unchanged (optionally scaled); the building block of frankenmerges."""

from __future__ import annotations

from typing import Any

import torch

from .method import Method, Param


def passthrough(base: torch.Tensor | None, tensors: list[torch.Tensor], params: dict[str, Any]) -> torch.Tensor:
    scale = params["scale"][0]
    return tensors[0] if scale is None else tensors[0] * scale


PASSTHROUGH = Method(
    name="passthrough",
    kernel=passthrough,
    title="Passthrough (frankenmerge)",
    summary="Copies layers from the sources unchanged, in the order the slices give; stacking layer ranges "
            "from one or several models builds deeper models (frankenmerges, self-merges).",
    params=(Param("scale", per_model=True, default=None, doc="multiply the tensor by this factor"),),
    models=(1, 1),
    elementwise=True,
)

METHODS = (PASSTHROUGH,)
