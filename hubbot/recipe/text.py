"""Recipe-like YAML texts: loading them safely, their identity, and what kind of text each is."""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import yaml

from ..errors import RecipeError

MAX_RECIPE_BYTES = 256 * 1024


def text_hash(text: str) -> str:
    """sha256 of a YAML document's content, whitespace and comments ignored."""
    canonical = yaml.safe_dump(yaml.safe_load(text), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def load_yaml(text: str, what: str = "recipe") -> Any:
    """The YAML tree of a recipe-like text, size-limited, with the error's line and column."""
    if len(text.encode()) > MAX_RECIPE_BYTES:
        raise RecipeError(f"the {what} is {len(text.encode())} bytes; the limit is {MAX_RECIPE_BYTES} bytes")
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise RecipeError(f"the {what} is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None


Kind = Literal["merge", "moe", "soup", "evolve"]


KIND_KEYS: dict[str, Kind] = {"experts": "moe", "soup": "soup", "evolve": "evolve"}


KIND_HINTS = {
    "moe": "this is a mixture-of-experts recipe (it lists 'experts:'); run it with 'hubbot moe'",
    "soup": "this is a greedy soup request (it has 'soup:'); submit it as a job, or use 'hubbot soup'",
    "evolve": "this is a merge search request (it has 'evolve:'); submit it as a job, or use 'hubbot evolve'",
}


def kind_of(text: str) -> Kind:
    """What a text asks for, from its top-level keys: a merge recipe, a mixture of experts
    (`experts:`), a greedy soup (`soup:`) or a merge search (`evolve:`)."""
    return kind_of_data(load_yaml(text))


def kind_of_data(data: Any) -> Kind:
    if isinstance(data, dict):
        return next((kind for key, kind in KIND_KEYS.items() if key in data), "merge")
    return "merge"
