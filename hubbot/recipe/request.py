"""Soup and search requests: a greedy soup or a merge search described in one YAML text, so
it can be validated, queued, deduplicated and run as a job like a recipe.

    soup: [org/math-7b, org/code-7b, org/chat-7b]          # the candidates
    eval: {data: hf://datasets/org/heldout/test.jsonl}     # what to score on (lower perplexity wins)

    evolve:
      budget: 40                                           # evaluations
      sigma: 0.25                                          # optional: step size, popsize, seed
      recipe:                                              # the template, with search markers
        merge_method: task_arithmetic
        base_model: org/base-7b
        models:
          - {model: org/math-7b, parameters: {weight: {search: [0, 1]}}}
          - {model: org/code-7b, parameters: {weight: {search: [0, 1]}}}
    eval: {data: hf://datasets/org/heldout/test.jsonl, max_documents: 500}

`eval` takes the evaluator's options: data, text_field, max_documents, max_length. Running a
request returns the winning recipe and its search history; merging or publishing the winner
is the caller's (a job's) business, like any recipe's.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import yaml

from ..errors import RecipeError
from .checker import Checker
from .merge import Recipe, parse
from .refs import ModelRef
from .template import Template, check_template
from .text import load_yaml, text_hash

HUB_DATA_PREFIX = "hf://datasets/"  # text sets on the Hub; anything else is a local file
EVAL_FIELDS = ("data", "text_field", "max_documents", "max_length")
EVOLVE_FIELDS = ("budget", "recipe", "sigma", "popsize", "seed")
MAX_BUDGET = 10_000


@dataclass(frozen=True)
class EvalSpec:
    """What to score on, as plain values (command-line flags, a job's stored options)."""

    data: str  # a local file or hf://datasets/org/name[@revision]/path
    text_field: str = "text"
    max_documents: int | None = None
    max_length: int = 512


@dataclass(frozen=True)
class SearchRequest:
    kind: Literal["soup", "evolve"]
    text: str
    eval: EvalSpec
    allow_local: bool
    candidates: tuple[str, ...] = ()  # soup
    template: str | None = None  # evolve: the recipe template's YAML
    budget: int = 0
    sigma: float = 0.25
    popsize: int | None = None
    seed: int = 0

    @cached_property
    def hash(self) -> str:
        return text_hash(self.text)

    @cached_property
    def start_recipe(self) -> Recipe:
        """The recipe that stands for the request before it runs (its models, its plan): the
        soup of every candidate, or the template at its starting values (made once)."""
        if self.kind == "soup":
            return parse(soup_recipe(list(self.candidates)), allow_local=self.allow_local)
        return check_template(Template(self.template), self.allow_local)

    def model_refs(self) -> list[ModelRef]:
        return self.start_recipe.model_refs()


def parse_request(text: str, *, allow_local: bool = True) -> SearchRequest:
    """Parse and check a soup or search request; RecipeError lists every problem. The models
    and the template are checked as recipes (no weights are read)."""
    data = load_yaml(text, "request")
    kinds = [k for k in ("soup", "evolve") if isinstance(data, dict) and k in data]
    if len(kinds) != 1:
        raise RecipeError("a request is a YAML mapping with either 'soup:' (candidate models) or 'evolve:' "
                          "(a search), and 'eval:'")
    kind = kinds[0]
    c = Checker(allow_local)
    c.unknown_keys("", data, (kind, "eval"))
    spec = _eval_spec(c, data.get("eval"))
    fields: dict[str, Any] = {}
    if kind == "soup":
        raw = data["soup"]
        if not isinstance(raw, list) or len(raw) < 2:
            c.add("soup", "expected a list of at least two candidate models")
        else:
            refs = [c.model(f"soup[{i}]", m) for i, m in enumerate(raw)]
            fields["candidates"] = tuple(dict.fromkeys(str(r) for r in refs if r))
    else:
        fields.update(_evolve(c, data["evolve"]))
    if c.problems:
        raise RecipeError(c.problems)
    request = SearchRequest(kind, text, spec, allow_local, **fields)
    request.start_recipe  # the candidates, or the template over its ranges, must make valid recipes
    return request


def _eval_spec(c: Checker, raw: Any) -> EvalSpec:
    if not isinstance(raw, dict) or not isinstance(raw.get("data"), str):
        c.add("eval", "expected {data: <file or hf://datasets/org/name/path>, text_field, max_documents, max_length}")
        return EvalSpec("")
    c.unknown_keys("eval", raw, EVAL_FIELDS)
    if not c.allow_local and not raw["data"].startswith(HUB_DATA_PREFIX):
        c.add("eval.data", f"{raw['data']!r} is a local file; the service reads text sets only from Hub datasets, "
                           f"written {HUB_DATA_PREFIX}org/name/path/file.jsonl")
    for key in ("max_documents", "max_length"):
        v = raw.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            c.add(f"eval.{key}", f"expected a positive whole number, got {v!r}")
    if not isinstance(raw.get("text_field", "text"), str):
        c.add("eval.text_field", f"expected a field name, got {raw['text_field']!r}")
    return EvalSpec(raw["data"], text_field=raw.get("text_field", "text"), max_documents=raw.get("max_documents"),
                    max_length=raw.get("max_length", 512))


def _evolve(c: Checker, raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        c.add("evolve", "expected {budget, recipe, sigma, popsize, seed}")
        return {}
    c.unknown_keys("evolve", raw, EVOLVE_FIELDS)
    out: dict[str, Any] = {}
    checks = {"budget": (int, 1, MAX_BUDGET), "popsize": (int, 2, 1000), "seed": (int, 0, 2**32 - 1),
              "sigma": ((int, float), 1e-3, 1.0)}
    for key, (kind, low, high) in checks.items():
        v = raw.get(key)
        if v is None:
            if key == "budget":
                c.add("evolve.budget", "missing; say how many candidate merges to evaluate")
            continue
        if isinstance(v, bool) or not isinstance(v, kind) or not low <= v <= high:  # also refuses .nan
            c.add(f"evolve.{key}", f"expected a number in [{low}, {high}], got {v!r}")
            continue
        out[key] = float(v) if key == "sigma" else v
    if not isinstance(raw.get("recipe"), dict):
        c.add("evolve.recipe", "expected the recipe template (a recipe with values like weight: {search: [0, 1]})")
    else:
        out["template"] = yaml.safe_dump(raw["recipe"], sort_keys=False)
        try:
            Template(out["template"])
        except RecipeError as exc:
            for p in exc.problems:
                c.add("evolve.recipe", p)
    return out


def soup_recipe(ingredients: list[str], comment: str = "") -> str:
    """The uniform linear recipe of `ingredients` (model references), with an optional comment header."""
    body = yaml.safe_dump({"merge_method": "linear",
                           "models": [{"model": m, "parameters": {"weight": 1.0}} for m in ingredients]},
                          sort_keys=False)
    header = "".join(f"# {line}\n" for line in comment.splitlines())
    return header + body
