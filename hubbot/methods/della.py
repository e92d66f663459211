"""DELLA (Deep et al. 2024, arXiv:2406.11617): drop task-vector entries at random with keep
probabilities that follow each entry's magnitude rank (MagPrune), then merge.

Within each row, keep probabilities rise linearly with rank from density - epsilon to
density + epsilon, so large changes survive more often; survivors are divided by their own
keep probability (`rescale`), keeping each entry's expectation. `della` adds TIES sign
election, `della_linear` does not. density ± epsilon must stay inside (0, 1): the recipe is
refused otherwise.
"""

from __future__ import annotations

from typing import Any

import torch

from ._sparsify import random_mask, rank_keep_probs
from .method import Param
from .task_arithmetic import family

PAPER = "Deep et al. 2024, DELLA-Merging, arXiv:2406.11617"
EPSILON = Param("epsilon", per_model=True, default=0.15, low=0.0, high=1.0,
                doc="half-width of the keep-probability range around density")


def _magprune(delta: torch.Tensor, density: float, rescale: bool, seed: int, row: int,
              epsilon: float) -> torch.Tensor:
    if density >= 1:
        return delta
    probs = rank_keep_probs(delta, density, epsilon)
    kept = delta.mul_(random_mask(delta.shape, probs, seed, delta.device, row, delta.dtype))  # delta is the kernel's own
    return kept.div_(probs) if rescale else kept


def check(params: dict[str, Any]) -> str | None:
    """density ± epsilon must be a probability strictly between 0 and 1 (unless nothing is pruned)."""
    density, epsilon = params.get("density", 1.0), params.get("epsilon", EPSILON.default)
    if density >= 1 or (0 < density - epsilon and density + epsilon < 1):
        return None
    return (f"density ± epsilon must stay inside (0, 1), but density {density:g} with epsilon {epsilon:g} "
            f"spans [{density - epsilon:g}, {density + epsilon:g}]; use an epsilon below "
            f"{min(density, 1 - density):g} or a density further from 0 and 1")


DELLA = family("della", "DELLA",
               "Drops task-vector entries at random, keeping large changes more often than small ones "
               "(keep probability rises with magnitude rank), rescales the survivors, elects a sign per "
               "parameter and averages the agreeing entries onto the base.",
               PAPER, _magprune, True, normalize=True, rescale=True, seeded=True, extra=(EPSILON,), check=check,
               by_rows=True)
DELLA_LINEAR = family("della_linear", "DELLA (linear)",
                      "Drops task-vector entries at random with keep probabilities that rise with magnitude rank, "
                      "rescales the survivors and adds the weighted vectors to the base.",
                      PAPER, _magprune, False, normalize=False, rescale=True, seeded=True, extra=(EPSILON,),
                      check=check, by_rows=True)

METHODS = (DELLA, DELLA_LINEAR)
