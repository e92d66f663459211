"""Model Breadcrumbs (Davari & Belilovsky 2023, arXiv:2312.06795).

Each task vector loses its largest entries (outliers, a fraction `gamma`) and its smallest,
keeping a band of `density` of its entries; the weighted bands are added to the base, with
TIES sign election in `breadcrumbs_ties`. Both cuts are found by selection, not by sorting.
"""

from __future__ import annotations

from typing import Any

import torch

from ._sparsify import band_mask, band_of, l1_rescale
from .method import Param
from .task_arithmetic import family, selection

PAPER = "Davari & Belilovsky 2023, Model Breadcrumbs, arXiv:2312.06795"
GAMMA = Param("gamma", per_model=True, default=0.01, low=0.0, high=1.0,
              doc="fraction of largest-magnitude entries dropped as outliers")


def _band(delta: torch.Tensor, density: float, rescale: bool, seed: int, row: int, gamma: float) -> torch.Tensor:
    if density >= 1:
        return delta
    pruned = delta * band_mask(delta, density, gamma, delta.dtype)
    return l1_rescale(pruned, delta) if rescale else pruned


def _band_ranks(params: dict[str, Any], i: int, n: int) -> tuple[int, int] | None:
    density = params["density"][i]
    return None if density >= 1 else band_of(n, density, params["gamma"][i])


BREADCRUMBS = family("breadcrumbs", "Model Breadcrumbs",
                     "Drops the largest (outlier) and the smallest entries of each task vector, keeping a band of "
                     "mid-sized changes, and adds the weighted bands to the base; removing outliers as well as noise "
                     "makes many fine-tunes combine with less interference.",
                     PAPER, _band, False, normalize=False, rescale=False, extra=(GAMMA,),
                     blockwise=selection(_band_ranks, False))
BREADCRUMBS_TIES = family("breadcrumbs_ties", "Model Breadcrumbs (TIES)",
                          "Keeps a band of mid-sized entries of each task vector (Model Breadcrumbs), then elects a sign "
                          "per parameter and averages only the entries that agree with it (TIES).",
                          PAPER, _band, True, normalize=False, rescale=False, extra=(GAMMA,),
                          blockwise=selection(_band_ranks, True))

METHODS = (BREADCRUMBS, BREADCRUMBS_TIES)
