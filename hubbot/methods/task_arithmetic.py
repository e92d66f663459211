"""The task-vector family: task arithmetic, TIES, and DARE (linear and TIES).

Each fine-tune minus the base is a task vector. The family sparsifies each vector, weights it,
optionally keeps only entries that agree with the elected sign (TIES), and adds the combination
to the base: out = base + lambda * sum_i(w_i m_i d_i) [/ sum_i(w_i m_i) when normalize].
Other members (breadcrumbs, della) register themselves with `register_family` from their own
modules.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from . import Method, Param, register
from ._sparsify import derive_seed, l1_rescale, magnitude_mask, random_mask

# (delta, density, rescale, seed, **per-model extras such as gamma or epsilon) -> pruned delta
Sparsifier = Callable[..., torch.Tensor]
SPARSIFIER_PARAMS = ("gamma", "epsilon")


def _magnitude(delta: torch.Tensor, density: float, rescale: bool, seed: int) -> torch.Tensor:
    if density >= 1:
        return delta
    pruned = delta * magnitude_mask(delta, density)
    return l1_rescale(pruned, delta) if rescale else pruned


def _random(delta: torch.Tensor, density: float, rescale: bool, seed: int) -> torch.Tensor:
    """DARE: drop each entry with probability 1 - density; survivors scaled by 1 / density."""
    if density >= 1:
        return delta
    pruned = delta * random_mask(delta.shape, density, seed, delta.device)
    return pruned.div_(density) if rescale else pruned


def combine(
    base: torch.Tensor,
    tensors: list[torch.Tensor],
    params: dict[str, Any],
    sparsify: Sparsifier | None,
    elect_sign: bool,
) -> torch.Tensor:
    """The shared body of the family; `sparsify` and `elect_sign` pick the member."""
    weights = params["weight"]
    densities = params.get("density") or [1.0] * len(tensors)
    seed = params.get("seed", 0)
    deltas = []
    for i, (x, w, density) in enumerate(zip(tensors, weights, densities)):
        d = x - base
        if sparsify is not None:
            extra = {k: params[k][i] for k in SPARSIFIER_PARAMS if k in params}
            d = sparsify(d, density, params["rescale"], derive_seed(seed, i), **extra)
        deltas.append(d.mul_(w))
    if not deltas:
        return base.clone()
    if elect_sign:
        elected = torch.zeros_like(base)
        for d in deltas:
            elected.add_(d)
        elected = torch.where(elected >= 0, 1.0, -1.0)
        mixed = torch.zeros_like(base)
        divisor = torch.zeros_like(base)
        for d, w in zip(deltas, weights):
            agree = torch.sign(d) == elected
            mixed.add_(torch.where(agree, d, 0.0))
            divisor.add_(agree.to(base.dtype), alpha=w)
        divisor[divisor == 0] = 1
    else:
        mixed = deltas[0]
        for d in deltas[1:]:
            mixed.add_(d)
        total = sum(weights)
        divisor = total if abs(total) >= 1e-8 else 1.0
    if params["normalize"]:
        mixed = mixed / divisor
    if params["lambda"] != 1:
        mixed = mixed * params["lambda"]
    return mixed.add_(base)


def register_family(name: str, title: str, summary: str, paper: str, sparsify: Sparsifier | None, elect: bool,
                    normalize: bool, rescale: bool, elementwise: bool = False, seeded: bool = False,
                    extra: tuple[Param, ...] = (), check: Callable[[dict[str, Any]], str | None] | None = None) -> None:
    """Register one member: `sparsify` prunes each task vector, `elect` adds TIES sign election;
    `extra` are the sparsifier's own per-model parameters, `check` its cross-parameter rule."""
    params = [
        Param("weight", per_model=True, doc="scale of this model's task vector"),
        Param("normalize", bool, default=normalize, doc="divide by the sum of the weights that contribute"),
        Param("lambda", default=1.0, doc="scale of the combined task vector"),
        Param("rescale", bool, default=rescale, doc="restore the magnitude of pruned task vectors"),
        Param("int8_mask", bool, default=False, doc="accepted for compatibility; masks are always compact"),
    ]
    if sparsify is not None:
        params.insert(1, Param("density", per_model=True, default=1.0, low=0.0, high=1.0, low_open=True,
                               doc="fraction of the task vector to keep"))
    params += extra

    def kernel(base: torch.Tensor | None, tensors: list[torch.Tensor], p: dict[str, Any]) -> torch.Tensor:
        assert base is not None
        return combine(base, tensors, p, sparsify, elect)

    kernel.__name__ = name
    register(Method(name=name, kernel=kernel, title=title, summary=summary, paper=paper, base="required",
                    params=tuple(params), models=(1, None), elementwise=elementwise,
                    seeded=seeded, check=check))


register_family("task_arithmetic", "Task arithmetic",
                "Adds the weighted task vectors (fine-tune minus base) of every model to the base model, so the "
                "skills each fine-tune learned add up.",
                "Ilharco et al. 2023, Editing models with task arithmetic, arXiv:2212.04089",
                None, False, normalize=False, rescale=False, elementwise=True)
register_family("ties", "TIES",
                "Trims each task vector to its largest entries, elects a sign per parameter from the summed "
                "vectors, and averages only the entries that agree with it, which reduces interference between "
                "fine-tunes.",
                "Yadav et al. 2023, TIES-Merging, arXiv:2306.01708",
                _magnitude, True, normalize=True, rescale=False)
register_family("dare_linear", "DARE (linear)",
                "Drops each task-vector entry at random with probability 1 - density and rescales the survivors "
                "by 1 / density, then adds the weighted vectors to the base.",
                "Yu et al. 2024, Language models are Super Mario (DARE), arXiv:2311.03099",
                _random, False, normalize=False, rescale=True, seeded=True)
register_family("dare_ties", "DARE (TIES)",
                "Drops task-vector entries at random and rescales the survivors (DARE), then keeps only entries "
                "that agree with the elected sign (TIES) before adding them to the base.",
                "Yu et al. 2024, Language models are Super Mario (DARE), arXiv:2311.03099",
                _random, True, normalize=False, rescale=True, seeded=True)
