"""Greedy model soups (Wortsman et al. 2022, arXiv:2203.05482).

Score every candidate on its own, then walk them from best to worst, adding each to the soup
(a uniform average of the ingredients' weights, merged by the engine) only if the soup's score
improves. The result is a plain linear recipe naming the chosen ingredients; the scores of
every soup tried are kept in its search history. Candidate soups are merged into a local work
folder, scored and deleted; nothing is published.
"""

from __future__ import annotations

import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import Cancelled, HubbotError
from ..merge import engine
from ..merge.plan import Opener, build
from ..recipe.merge import Recipe, parse
from ..recipe.refs import ModelRef
from ..recipe.request import soup_recipe
from ..sources import caching_opener
from .evaluate import Scorer
from .fanout import Fanout, merge_and_score
from .history import SearchHistory, SearchProgress, Trial, write_winner

PAPER = "greedy soup, Wortsman et al. 2022, Model soups, arXiv:2203.05482"


@dataclass
class SoupResult:
    folder: Path | None  # None when no output folder was asked for
    recipe: str
    ingredients: list[str]
    score: float
    history: SearchHistory


def greedy_soup(candidates: list[str], score: Scorer, out: Path | None, *, work_dir: Path | None = None,
                allow_local: bool = True, opener: Opener | None = None, device: str | None = None,
                report: Callable[[SearchProgress], None] | None = None,
                cancel: threading.Event | None = None, start: Recipe | None = None,
                fanout: Fanout | None = None) -> SoupResult:
    """Cook a greedy soup of `candidates` (model references) into the folder `out`.

    `score(folder)` rates a merged model (lower is better, e.g. an Evaluator's perplexity);
    `report` hears of every evaluation (SearchProgress); `cancel` stops between steps. With `out`
    None nothing is written: publish `result.recipe` with `annotate=result.history.annotate`.
    `start` is the soup of every candidate when the caller has it already (a request's). With a
    `fanout` (a Ray cluster) the merges and scores run there, the candidates alone all at once."""
    refs = list(dict.fromkeys(str(ModelRef.parse(c)) for c in candidates))
    if len(refs) < 2:
        raise HubbotError("a soup needs at least two different candidate models")
    if out is not None:
        engine.check_output_folder(Path(out))
    if work_dir is not None:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
    opener = opener or caching_opener(allow_local=allow_local)
    build(start or parse(soup_recipe(refs), allow_local=allow_local), opener=opener).raise_for_problems()
    say = report or (lambda line: None)
    history = SearchHistory(kind="greedy_soup", title="Greedy soup", paper=PAPER, metric=score.metric,
                            data=score.describe())
    with tempfile.TemporaryDirectory(prefix="hubbot-soup-", dir=work_dir) as tmp:
        def rate_all(batch: list[list[str]]) -> list[float]:
            """Scores of soups that do not depend on each other (on the cluster: at once)."""
            if cancel is not None and cancel.is_set():
                raise Cancelled("the soup was cancelled")
            recipes = [soup_recipe(ingredients) for ingredients in batch]
            if fanout is not None:
                outcomes = fanout.map(recipes)
            else:
                outcomes = [merge_and_score(r, score, Path(tmp) / "candidate", allow_local=allow_local, opener=opener,
                                            device=device, cancel=cancel) for r in recipes]
            for ingredients, (_, error) in zip(batch, outcomes):
                if error is not None:
                    raise HubbotError(f"the soup of {', '.join(ingredients)} could not be merged and scored: {error}")
            return [value for value, _ in outcomes]

        def rate(ingredients: list[str]) -> float:
            return rate_all([ingredients])[0]

        total = 2 * len(refs) - 1  # each candidate alone, then each but the first added to the soup

        def record(ingredients: list[str], value: float, kept: bool | None, note: str) -> None:
            history.trials.append(Trial(len(history.trials) + 1, {"ingredients": ingredients}, value, kept=kept))
            leader = min((t for t in history.trials if t.kept is not False), key=lambda t: t.score)
            say(SearchProgress(len(history.trials), total, {"ingredients": ingredients}, value, None, leader.score,
                               soup_recipe(leader.params["ingredients"]), score.metric, note=note))

        alone = {}
        at_once = rate_all([[ref] for ref in refs]) if fanout is not None else None  # independent
        for k, ref in enumerate(refs):
            alone[ref] = at_once[k] if at_once is not None else rate([ref])
            record([ref], alone[ref], None, "alone")
        order = sorted(refs, key=lambda r: alone[r])
        soup, best = [order[0]], alone[order[0]]
        history.trials[refs.index(order[0])].kept = True
        for ref in order[1:]:
            trial = soup + [ref]
            s = rate(trial)
            kept = s < best
            if kept:
                soup, best = trial, s
            record(trial, s, kept, "kept" if kept else "left out")
    comment = (f"Greedy soup (Wortsman et al. 2022, arXiv:2203.05482): {len(soup)} of {len(refs)} candidates kept,\n"
               f"{score.metric} {best:.4g} on {history.data.get('name')}; every soup tried is in search_history.json.")
    text = soup_recipe(soup, comment)
    folder = None
    if out is not None:
        folder = write_winner(text, history, out, allow_local=allow_local, opener=opener, device=device, cancel=cancel)
    return SoupResult(folder, text, soup, best, history)

