"""Model Stock (Jang et al. 2024, arXiv:2403.19522).

Fine-tunes of one pre-trained model lie on a thin shell around their centre; from the angle
between their task vectors alone, the paper derives how far to move from the base towards the
fine-tunes' average: t = N cos(theta) / (1 + (N - 1) cos(theta)), output = t * average +
(1 - t) * base, with cos(theta) the mean pairwise cosine of the N task vectors (per tensor, or
per row with `filter_wise`).
"""

from __future__ import annotations

from typing import Any

import torch

from . import Method, Param, register

NORM_FLOOR = 1e-6


def model_stock(base: torch.Tensor | None, tensors: list[torch.Tensor], params: dict[str, Any]) -> torch.Tensor:
    assert base is not None
    shape = base.shape
    if params["filter_wise"]:
        w0 = base.reshape(1, -1) if base.dim() < 2 else base
        ws = [x.reshape(w0.shape) for x in tensors]
    else:
        w0, ws = base.reshape(-1), [x.reshape(-1) for x in tensors]
    deltas = [w - w0 for w in ws]
    norms = [torch.linalg.vector_norm(d, dim=-1) for d in deltas]
    cosines = []
    for i in range(len(deltas)):
        for j in range(i + 1, len(deltas)):
            dot = (deltas[i] * deltas[j]).sum(dim=-1)
            cosines.append((dot / (norms[i] * norms[j]).clamp(min=NORM_FLOOR)).clamp(-1, 1))
    cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
    n = len(ws)
    denominator = 1 + (n - 1) * cos
    singular = denominator.abs() < 1e-6  # no finite estimate: keep the base
    t = torch.where(singular, 0.0, n * cos / torch.where(singular, 1.0, denominator))
    average = sum(ws) / n
    return (t * average + (1 - t) * w0).reshape(shape)


register(Method(
    name="model_stock",
    kernel=model_stock,
    title="Model Stock",
    summary="Moves from the base model towards the average of two or more fine-tunes by a ratio derived "
            "from the angle between their task vectors, approximating the centre of the fine-tuned "
            "weights without any tuning of weights.",
    paper="Jang et al. 2024, Model Stock: All we need is just a few fine-tuned models, arXiv:2403.19522",
    base="required",
    params=(Param("filter_wise", bool, default=False, doc="one ratio per row instead of per tensor"),),
    models=(3, None),
))
