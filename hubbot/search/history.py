"""The record of a search over merges (greedy soup, evolutionary search): every candidate
tried, its score, and the winner. It goes with the winning model, locally or published, as
search_history.json, a card section and the score in the card's eval_results, so anyone can
see how the recipe was found.
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..merge.plan import Opener

FILE_NAME = "search_history.json"
FORMAT = "hubbot-search-history/1"


@dataclass
class Trial:
    """One evaluated candidate. `params` says what was tried (soup: the ingredients; search:
    each searched parameter's value); `kept` is the soup's verdict; `error` why it failed."""

    n: int
    params: dict[str, Any]
    score: float | None = None
    kept: bool | None = None
    generation: int | None = None
    error: str | None = None


@dataclass
class SearchProgress:
    """Reported after every evaluation of a soup or search: `str()` is a line for a log,
    `as_progress()` a job's progress (with the best recipe so far, for a live view)."""

    evaluation: int
    budget: int
    params: dict[str, Any]
    score: float | None
    error: str | None
    best_score: float | None
    best_recipe: str | None
    metric: str
    generation: int | None = None
    note: str = ""

    def __str__(self) -> str:
        got = f"{self.score:.4g}" if self.score is not None else f"failed ({self.error})"
        best = f"{self.best_score:.4g}" if self.best_score is not None else "-"
        gen = f" gen {self.generation}:" if self.generation is not None else ""
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in self.params.items())
        note = f", {self.note}" if self.note else ""
        return f"[{self.evaluation}/{self.budget}]{gen} {params} -> {self.metric} {got}{note} (best {best})"

    def as_progress(self) -> dict[str, Any]:
        return {"evaluations_done": self.evaluation, "evaluations_total": self.budget, "metric": self.metric,
                "best_score": self.best_score, "best_recipe": self.best_recipe}


@dataclass
class SearchHistory:
    kind: str  # "greedy_soup" or "cma_es"
    title: str
    paper: str
    metric: str  # lower is better
    data: dict[str, Any]
    trials: list[Trial] = field(default_factory=list)
    budget: int | None = None

    @property
    def best(self) -> Trial | None:
        """The best-scoring trial (for a soup: the last one kept)."""
        if self.kind == "greedy_soup":
            kept = [t for t in self.trials if t.kept]
            return kept[-1] if kept else None
        scored = [t for t in self.trials if t.score is not None]
        return min(scored, key=lambda t: t.score) if scored else None

    def to_json(self) -> dict[str, Any]:
        best = self.best
        return {"format": FORMAT, **asdict(self), "best": best.n if best else None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "SearchHistory":
        if data.get("format") != FORMAT:
            raise ValueError(f"not a search history (format {data.get('format')!r}, expected {FORMAT!r})")
        fields = {k: v for k, v in data.items() if k not in ("format", "best", "trials")}
        return cls(**fields, trials=[Trial(**t) for t in data.get("trials", [])])

    def save(self, folder: Path) -> Path:
        path = Path(folder) / FILE_NAME
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path

    def annotate(self, folder: Path) -> None:
        """Add the history to a model folder: the JSON file, a card section, and the best score
        in the card's eval_results (README.md is created if missing)."""
        from .evaluate import card_eval_results, write_card_results

        folder = Path(folder)
        self.save(folder)
        readme = folder / "README.md"
        text = readme.read_text() if readme.exists() else "---\n{}\n---\n"
        readme.write_text(text.rstrip("\n") + "\n\n## How this recipe was found\n\n" + self.markdown())
        best = self.best
        if best is not None and best.score is not None:
            write_card_results(readme, folder.name, card_eval_results(best.score, self.data, self.metric))

    def markdown(self, max_rows: int = 20) -> str:
        """A card section: what was searched, on which data, and the best trials as a table."""
        best = self.best
        data = self.data.get("name", "?")
        lines = [f"### {self.title}", "",
                 f"Method: {self.paper}. Score: {self.metric} on `{data}` (lower is better); "
                 f"{len(self.trials)} candidates evaluated" + (f" of a budget of {self.budget}" if self.budget else "")
                 + "."]
        if best is not None:
            lines.append(f"Best: candidate {best.n}, {self.metric} {_fmt(best.score)}.")
        keys = list(dict.fromkeys(k for t in self.trials for k in t.params))
        ranked = sorted(self.trials, key=lambda t: (t.score is None, t.score if t.score is not None else 0))
        shown = sorted(ranked[:max_rows], key=lambda t: t.n)
        extra = ["kept"] if self.kind == "greedy_soup" else []
        lines += ["", "| # | " + " | ".join(keys + extra + [self.metric]) + " |",
                  "|---" * (len(keys) + len(extra) + 2) + "|"]
        for t in shown:
            cells = [str(t.n)] + [_fmt(t.params.get(k)) for k in keys]
            cells += [{True: "yes", False: "no", None: ""}[t.kept]] if extra else []
            cells.append(_fmt(t.score) if t.score is not None else f"failed: {t.error or '?'}")
            lines.append("| " + " | ".join(cells) + " |")
        if len(self.trials) > len(shown):
            lines.append(f"\n({len(self.trials) - len(shown)} more in {FILE_NAME})")
        return "\n".join(lines) + "\n"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return "" if v is None else str(v)


def write_winner(recipe_text: str, history: SearchHistory, out: Path, *, allow_local: bool = True,
                 opener: Opener | None = None, device: str | None = None,
                 cancel: threading.Event | None = None) -> Path:
    """Merge a search's winning recipe into `out`, with its card and history."""
    from ..merge.plan import build
    from ..merge.run import MergeOptions, merge_to_folder
    from ..recipe.merge import parse

    plan = build(parse(recipe_text, allow_local=allow_local), opener=opener)
    return merge_to_folder(plan, Path(out), MergeOptions(device=device), history.annotate, cancel=cancel).folder
