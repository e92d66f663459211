"""Evolutionary merge search: tune a recipe's parameters with CMA-ES against an evaluator.

Following Akiba et al. 2024 (Evolutionary Optimization of Model Merging Recipes, arXiv:2403.13187,
parameter-space merging), a recipe template marks the values to search and CMA-ES proposes
them; each candidate is merged by the engine into a local work folder, scored (lower is better,
e.g. perplexity on held-out text) and deleted, within a budget of evaluations. Nothing is
published; the winner is merged into the output folder with its recipe and search history.

A template is a recipe in which any parameter value may be a search marker:

    weight: {search: [0, 1]}                 # one number in [0, 1]
    density: {search: [0.1, 1], points: 3}   # a gradient of 3 points over the layers
    weight: {search: [0, 2], init: 0.5}      # where the search starts (default: the middle)

Resuming: the search state (work_dir/search-state.json) records, for every generation, the
points CMA-ES asked for and their scores; no pickled optimizer state is stored. A resumed
search rebuilds CMA-ES by replaying those generations (ask, then tell the recorded points and
scores), which restores its mean, step size and covariance exactly, and its samples come from
a generator seeded by (seed, generation), so a resumed search proposes what an uninterrupted one
would have.
"""

from __future__ import annotations

import json
import math
import threading
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import Cancelled, HubbotError
from ..merge import engine
from ..merge.plan import Opener, build
from ..recipe.merge import Recipe
from ..recipe.template import Template, check_template
from ..recipe.text import text_hash
from ..sources import caching_opener
from .evaluate import Scorer
from .fanout import Fanout, Outcome, merge_and_score
from .history import SearchHistory, SearchProgress, Trial, write_winner

PAPER = "CMA-ES over recipe parameters, Akiba et al. 2024, arXiv:2403.13187"
STATE_FILE = "search-state.json"
STATE_FORMAT = "hubbot-evolve-state/1"
FAILED_LOSS = 1e12  # what CMA-ES is told for a candidate that could not be merged or scored


@dataclass
class Generation:
    asked: list[list[float]]
    scores: list[float | None]
    errors: list[str | None]

    def done(self) -> bool:
        return all(s is not None or e is not None for s, e in zip(self.scores, self.errors))

    def losses(self) -> list[float]:
        return [s if s is not None else FAILED_LOSS for s in self.scores]


@dataclass
class SearchState:
    """Everything a search needs to resume, as plain JSON."""

    template_sha256: str
    size: int
    sigma: float
    popsize: int
    seed: int
    generations: list[Generation] = field(default_factory=list)

    @property
    def evaluations(self) -> int:
        return sum(s is not None or e is not None for g in self.generations for s, e in zip(g.scores, g.errors))

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"format": STATE_FORMAT, **asdict(self)}) + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "SearchState":
        try:
            data = json.loads(path.read_text())
            if data.pop("format", None) != STATE_FORMAT:
                raise ValueError("unknown format")
            gens = [Generation(**g) for g in data.pop("generations")]
            return cls(**data, generations=gens)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise HubbotError(f"{path}: the search state cannot be read ({exc}); delete it to start over") from None


@dataclass
class SearchResult:
    folder: Path | None  # None when no output folder was asked for
    recipe: str
    score: float
    history: SearchHistory


def search(template: str | Template, score: Scorer, out: Path | None, *, budget: int, work_dir: Path,
           allow_local: bool = True, opener: Opener | None = None, device: str | None = None, sigma: float = 0.25,
           popsize: int | None = None, seed: int = 0, report: Callable[[SearchProgress], None] | None = None,
           cancel: threading.Event | None = None, start: Recipe | None = None,
           fanout: Fanout | None = None) -> SearchResult:
    """Search the template's marked values for `budget` evaluations, then merge the best recipe
    into `out` (None: write nothing; publish `result.recipe` with `annotate=result.history.annotate`).
    The state in `work_dir` lets an interrupted or cancelled search resume (with the same
    template and options; the budget may grow). `start` is the template's checked starting
    recipe when the caller has it already (a request's), so it is not rendered again. With a
    `fanout` (a Ray cluster) each generation's candidates are merged and scored at once there,
    and recorded in the order a serial search would."""
    import numpy as np

    with warnings.catch_warnings():  # cma warns at import when matplotlib (for its plots) is missing
        warnings.simplefilter("ignore")
        import cma

    tpl = template if isinstance(template, Template) else Template(template)
    if budget < 1:
        raise HubbotError(f"the budget is {budget}; give at least one evaluation")
    if out is not None:
        engine.check_output_folder(Path(out))
    opener = opener or caching_opener(allow_local=allow_local)
    build(start or check_template(tpl, allow_local), opener=opener).raise_for_problems()
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    state_path = work_dir / STATE_FILE
    generation = [0]

    def randn(*shape: int):
        return np.random.default_rng([seed, generation[0]]).standard_normal(shape)

    options = {"bounds": [0, 1], "seed": math.nan, "randn": randn, "verbose": -9}
    if popsize:
        options["popsize"] = popsize
    es = cma.CMAEvolutionStrategy(tpl.x0(), sigma, options)
    fresh = SearchState(text_hash(tpl.text), tpl.size, sigma, es.popsize, seed)
    state = SearchState.load(state_path) if state_path.exists() else fresh
    if (state.template_sha256, state.size, state.sigma, state.popsize, state.seed) != (
            fresh.template_sha256, fresh.size, fresh.sigma, fresh.popsize, fresh.seed):
        raise HubbotError(f"{state_path} holds a search with another template or options; use another work folder "
                          "or delete it to start over")
    for g, gen in enumerate(state.generations):  # replay: rebuilds the strategy's state
        generation[0] = g
        es.ask()
        if gen.done():
            es.tell([np.array(x) for x in gen.asked], gen.losses())

    history, points = _history(tpl, state, score, budget)
    best = history.best
    while state.evaluations < budget:
        if not state.generations or state.generations[-1].done():
            generation[0] = len(state.generations)
            asked = [[float(v) for v in x] for x in es.ask()]
            state.generations.append(Generation(asked, [None] * len(asked), [None] * len(asked)))
            state.save(state_path)
        g = len(state.generations) - 1
        gen = state.generations[g]
        pending = [i for i in range(len(gen.asked)) if gen.scores[i] is None and gen.errors[i] is None]
        pending = pending[:budget - state.evaluations]
        if fanout is not None:  # the generation's candidates at once; recorded in the serial order
            _check_cancel(cancel, state)
            outcomes = _fan_out(tpl, [gen.asked[i] for i in pending], history, fanout)
        for k, i in enumerate(pending):
            x = gen.asked[i]
            if fanout is None:
                _check_cancel(cancel, state)
                gen.scores[i], gen.errors[i] = _evaluate(tpl, x, score, work_dir, history, allow_local, opener,
                                                         device, cancel)
            else:
                gen.scores[i], gen.errors[i] = outcomes[k]
            state.save(state_path)
            trial = Trial(len(history.trials) + 1, tpl.values(x), gen.scores[i], generation=g, error=gen.errors[i])
            history.trials.append(trial)
            points.append(x)
            best = history.best
            if report:
                report(SearchProgress(trial.n, budget, trial.params, trial.score, trial.error,
                                      best.score if best else None, tpl.render(points[best.n - 1]) if best else None,
                                      score.metric, generation=g))
        if gen.done():
            es.tell([np.array(x) for x in gen.asked], gen.losses())
    if best is None:
        raise HubbotError(f"none of the {state.evaluations} candidates could be merged and scored; see the errors "
                          f"in {state_path}")
    comment = (f"Found by CMA-ES merge search (Akiba et al. 2024, arXiv:2403.13187): {score.metric} {best.score:.4g}\n"
               f"on {history.data.get('name')} after {len(history.trials)} evaluations; see search_history.json.")
    text = tpl.render(points[best.n - 1], comment)
    folder = None
    if out is not None:
        folder = write_winner(text, history, out, allow_local=allow_local, opener=opener, device=device, cancel=cancel)
    return SearchResult(folder, text, best.score, history)


def _check_cancel(cancel: threading.Event | None, state: SearchState) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled(f"the search was cancelled after {state.evaluations} evaluations; run it again "
                        "with the same work folder to resume")


def _evaluate(tpl: Template, x: list[float], score: Scorer, work_dir: Path, history: SearchHistory,
              allow_local: bool, opener: Opener, device: str | None,
              cancel: threading.Event | None) -> Outcome:
    """Merge and score one candidate here: (score, None), or (None, why it failed)."""
    same = _known(tpl, x, history)
    if same is not None:  # clipped to a bound, or rounded onto an earlier point: same recipe
        return same
    return merge_and_score(tpl.render(x), score, work_dir / "candidate", allow_local=allow_local, opener=opener,
                           device=device, cancel=cancel)


def _fan_out(tpl: Template, xs: list[list[float]], history: SearchHistory, fanout: Fanout) -> list[Outcome]:
    """Outcomes of a batch of candidates, each distinct new recipe merged and scored once."""
    known = [_known(tpl, x, history) for x in xs]
    fresh = list(dict.fromkeys(tpl.render(x) for x, k in zip(xs, known) if k is None))
    scored = dict(zip(fresh, fanout.map(fresh))) if fresh else {}
    return [k if k is not None else scored[tpl.render(x)] for x, k in zip(xs, known)]


def _known(tpl: Template, x: list[float], history: SearchHistory) -> Outcome | None:
    """The outcome of an earlier trial with the same values (clipped to a bound, or rounded onto it)."""
    params = tpl.values(x)
    same = next((t for t in history.trials if t.params == params), None)
    return None if same is None else (same.score, same.error)


def _history(tpl: Template, state: SearchState, score: Scorer, budget: int) -> tuple[SearchHistory, list[list[float]]]:
    """The trials recorded in `state`, and the point of each (in evaluation order)."""
    history = SearchHistory(kind="cma_es", title="Evolutionary merge search", paper=PAPER, metric=score.metric,
                            data=score.describe(), budget=budget)
    points = []
    for g, gen in enumerate(state.generations):
        for x, s, e in zip(gen.asked, gen.scores, gen.errors):
            if s is not None or e is not None:
                history.trials.append(Trial(len(history.trials) + 1, tpl.values(x), s, generation=g, error=e))
                points.append(x)
    return history, points
