"""Model Stock (Jang et al. 2024, arXiv:2403.19522).

Fine-tunes of one pre-trained model lie on a thin shell around their centre; from the angle
between their task vectors alone, the paper derives how far to move from the base towards the
fine-tunes' average: t = N cos(theta) / (1 + (N - 1) cos(theta)), output = t * average +
(1 - t) * base, with cos(theta) the mean pairwise cosine of the N task vectors (per tensor, or
per row with `filter_wise`). Per tensor, the cosines come from the task vectors' inner products
(one pass over the blocks) and the merge then moves each block.
"""

from __future__ import annotations

from typing import Any

import torch

from ._span import gram, total
from .method import Block, Blockwise, Method, Param, Pass

NORM_FLOOR = 1e-6


def _ratio(cos: torch.Tensor, n: int) -> torch.Tensor:
    """The paper's t from the mean pairwise cosine of n task vectors (0, keeping the base, where
    there is no finite estimate)."""
    denominator = 1 + (n - 1) * cos
    singular = denominator.abs() < 1e-6
    return torch.where(singular, 0.0, n * cos / torch.where(singular, 1.0, denominator))


def _inner_products(base: torch.Tensor | None, tensors: list[torch.Tensor], params: dict[str, Any],
                    stats: dict[str, Any], block: Block) -> torch.Tensor:
    """Between the task vectors."""
    assert base is not None
    return gram([x - base for x in tensors])


def _tensor_ratio(shares: list[torch.Tensor], stats: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    g = total(shares)
    n = g.shape[0]
    norms = g.diagonal().clamp(min=0).sqrt()
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    cos = torch.stack([(g[i, j] / (norms[i] * norms[j]).clamp(min=NORM_FLOOR)).clamp(-1, 1) for i, j in pairs])
    return {"t": float(_ratio(cos.mean(), n))}


def _move(base: torch.Tensor | None, tensors: list[torch.Tensor], params: dict[str, Any],
          stats: dict[str, Any], block: Block) -> torch.Tensor:
    """t of the way from the base to the fine-tunes' average."""
    assert base is not None
    t = stats["t"]
    out = base * (1 - t)
    for x in tensors:
        out.add_(x, alpha=t / len(tensors))
    return out


PER_TENSOR = Blockwise(_move, (Pass(_inner_products, _tensor_ratio),), applies=lambda params: not params["filter_wise"])


def model_stock(base: torch.Tensor | None, tensors: list[torch.Tensor], params: dict[str, Any]) -> torch.Tensor:
    assert base is not None
    if not params["filter_wise"]:
        return PER_TENSOR.whole(base, tensors, params)
    shape = base.shape  # one ratio per row (a vector is one row)
    w0 = base.reshape(1, -1) if base.dim() < 2 else base
    ws = [x.reshape(w0.shape) for x in tensors]
    deltas = [w - w0 for w in ws]
    norms = [torch.linalg.vector_norm(d, dim=-1) for d in deltas]
    cosines = []
    for i in range(len(deltas)):
        for j in range(i + 1, len(deltas)):
            dot = (deltas[i] * deltas[j]).sum(dim=-1)
            cosines.append((dot / (norms[i] * norms[j]).clamp(min=NORM_FLOOR)).clamp(-1, 1))
    n = len(ws)
    t = _ratio(torch.stack(cosines).mean(dim=0).unsqueeze(-1), n)
    average = sum(ws) / n
    return (t * average + (1 - t) * w0).reshape(shape)


MODEL_STOCK = Method(
    name="model_stock",
    kernel=model_stock,
    blockwise=PER_TENSOR,
    title="Model Stock",
    summary="Moves from the base model towards the average of two or more fine-tunes by a ratio derived "
            "from the angle between their task vectors, approximating the centre of the fine-tuned "
            "weights without any tuning of weights.",
    paper="Jang et al. 2024, Model Stock: All we need is just a few fine-tuned models, arXiv:2403.19522",
    base="required",
    params=(Param("filter_wise", bool, default=False, doc="one ratio per row instead of per tensor"),),
    models=(3, None),
)

METHODS = (MODEL_STOCK,)
