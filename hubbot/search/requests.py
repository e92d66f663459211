"""Running a soup or search request (as a job or from the command line): its evaluator, then the
greedy soup or the CMA-ES search; merging or publishing the winner is the caller's business."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

from ..hub import HubOptions
from ..merge.plan import Opener
from ..recipe.request import SearchRequest
from .evaluate import evaluator_for
from .evolve import search
from .fanout import RayFanout
from .history import SearchHistory, SearchProgress
from .soup import greedy_soup


def run_request(request: SearchRequest, *, work_dir: Path, opener: Opener | None = None, device: str | None = None,
                hub: HubOptions | None = None, report: Callable[[SearchProgress], None] | None = None,
                cancel: threading.Event | None = None, ray: str | None = None) -> tuple[str, SearchHistory]:
    """Cook the soup or run the search; the winning recipe and its history. A search resumes
    from its state in `work_dir`. `hub` serves the Hub dataset download and, with `ray` (a
    cluster address, or `auto`), the candidates' Hub sources on the cluster."""
    hub = hub or HubOptions()
    evaluator = evaluator_for(request.eval, allow_local=request.allow_local, token=hub.token, endpoint=hub.endpoint,
                              device=device, cancel=cancel)
    fanout = RayFanout(ray, evaluator, allow_local=request.allow_local, hub=hub) if ray else None
    common = dict(allow_local=request.allow_local, opener=opener, device=device, report=report, cancel=cancel,
                  start=request.start_recipe, fanout=fanout)
    if request.kind == "soup":
        result = greedy_soup(list(request.candidates), evaluator, None, work_dir=work_dir, **common)
    else:
        result = search(request.template, evaluator, None, budget=request.budget, work_dir=work_dir,
                        sigma=request.sigma, popsize=request.popsize, seed=request.seed, **common)
    return result.recipe, result.history
