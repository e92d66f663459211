"""Planning any kind of text, and one merge into a folder (for the CLI, the worker and a search's winner)."""

from __future__ import annotations

from ..recipe.kinds import Parsed
from ..recipe.moe import MoeRecipe
from ..recipe.request import SearchRequest
from .plan import Opener, Plan, build


def plan_any(parsed: Parsed, *, opener: Opener | None = None) -> Plan:
    """Plan from headers only (no weights are read)."""
    if isinstance(parsed, MoeRecipe):
        from . import moe

        return moe.build(parsed, opener=opener)
    if isinstance(parsed, SearchRequest):
        return build(parsed.start_recipe(), opener=opener)
    return build(parsed, opener=opener)
