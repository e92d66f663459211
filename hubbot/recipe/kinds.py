"""Every text hubbot runs, parsed and planned in one place (for the CLI and the job service).

Merge recipes, mixture-of-experts recipes (`experts:`) and soup or search requests (`soup:`,
`evolve:`) are told apart by their top-level keys. Each plans into an ordinary Plan: a
request's plan is that of its starting recipe (its models, their revisions, the output's size).
"""

from __future__ import annotations

from typing import Union

from .merge import Recipe, parse
from .moe import MoeRecipe, parse_moe
from .request import SearchRequest, parse_request
from .text import kind_of

Parsed = Union[Recipe, MoeRecipe, SearchRequest]


def parse_any(text: str, *, allow_local: bool = True) -> Parsed:
    kind = kind_of(text)
    if kind == "moe":
        return parse_moe(text, allow_local=allow_local)
    if kind in ("soup", "evolve"):
        return parse_request(text, allow_local=allow_local)
    return parse(text, allow_local=allow_local)


