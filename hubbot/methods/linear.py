"""Linear merge (model soup): a weighted average of the models' weights."""

from __future__ import annotations

from typing import Any

import torch

from .method import Method, Param


def linear(base: torch.Tensor | None, tensors: list[torch.Tensor], params: dict[str, Any]) -> torch.Tensor:
    """sum_i w_i x_i, divided by sum_i w_i when `normalize` (a zero sum is left undivided)."""
    weights = params["weight"]
    out = torch.zeros_like(tensors[0])
    for x, w in zip(tensors, weights):
        out.add_(x, alpha=w)
    total = sum(weights)
    if params["normalize"] and total != 0:
        out.div_(total)
    return out


LINEAR = Method(
    name="linear",
    kernel=linear,
    title="Linear (model soup)",
    summary="Averages the weights of models fine-tuned from the same initialisation, each scaled by its "
            "weight; averaging fine-tunes often improves accuracy and robustness without any training.",
    paper="Wortsman et al. 2022, Model soups, arXiv:2203.05482",
    params=(
        Param("weight", per_model=True, doc="how much of this model to take"),
        Param("normalize", bool, default=True, doc="divide by the sum of the weights"),
    ),
    elementwise=True,
)

METHODS = (LINEAR,)
