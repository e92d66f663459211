"""Planning any kind of text, and one merge into a folder (for the CLI, the worker, publishing and
a search's winner): the engine's run, then the card, then whatever the caller adds (a search's
history), so every output folder is finished the same way."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..errors import HubbotError
from ..recipe.kinds import Parsed
from ..recipe.moe import MoeRecipe
from ..recipe.refs import ModelRef, model_refs_of
from ..recipe.request import SearchRequest
from .card import write_card
from .plan import Opener, Plan, build
from .writer import DEFAULT_SHARD_BYTES

if TYPE_CHECKING:
    from .engine import Progress, RunResult


@dataclass(frozen=True)
class MergeOptions:
    """How a merge runs, whoever asks for it. `resume` keeps the shards an interrupted run with the
    same plan completed, and keeps (durably) a failed run's partial output for the next try."""

    device: str | None = None
    shard_bytes: int = DEFAULT_SHARD_BYTES
    resume: bool = False


def plan_any(parsed: Parsed, *, opener: Opener | None = None, device: str | None = None) -> Plan:
    """Plan from headers only (no weights are read). `device` is where an MoE's routers are
    computed when the merge runs."""
    if isinstance(parsed, MoeRecipe):
        from . import moe

        return moe.build(parsed, opener=opener, device=device)
    if isinstance(parsed, SearchRequest):
        return build(parsed.start_recipe, opener=opener)
    return build(parsed, opener=opener)


def source_problems(text: str, opener: Opener, *, allow_local: bool = True) -> list[str]:
    """Problems opening the models named by a recipe that does not parse: a typo elsewhere should
    not hide a missing model. Reads config.json only; references that do not parse, and local
    paths where they are not allowed, give nothing here (the recipe's own problems name them)."""
    problems = []
    for raw in model_refs_of(text):
        try:
            ref = ModelRef.parse(raw, probe_disk=allow_local)  # service mode never looks at the disk
        except (HubbotError, ValueError, TypeError):
            continue
        if ref.local and not allow_local:
            continue
        try:
            opener(ref).config()
        except HubbotError as exc:
            problems.append(str(exc))
    return problems


def merge_to_folder(plan: Plan, out: Path, options: MergeOptions = MergeOptions(),
                    annotate: Callable[[Path], None] | None = None, *, repo_id: str | None = None,
                    progress: Callable[[Progress], None] | None = None,
                    cancel: threading.Event | None = None, on_shard: Callable[[Path], None] | None = None,
                    on_written: Callable[[Path], None] | None = None) -> RunResult:
    """Merge `plan` into `out`, then write its card (for `repo_id` when it is published) and let
    `annotate(folder)` add to it. `on_shard` and `on_written` are the engine's (see engine.run)."""
    from . import engine  # the engine (and its threads, kernels, device) only where a merge runs

    result = engine.run(plan, Path(out), device=options.device, shard_bytes=options.shard_bytes, progress=progress,
                        cancel=cancel, on_shard=on_shard, on_written=on_written, resume=options.resume,
                        keep_partial=options.resume)
    write_card(plan, result.folder, result.facts(), repo_id=repo_id)
    if annotate:
        annotate(result.folder)
    return result
