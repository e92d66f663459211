"""How a job's recipe becomes a plan, and how a plan is identified.

The server (at submission) and the worker (at run time) plan the same way; the identity of
the sources (Hub commit shas, or a fingerprint of a local folder) decides both deduplication
and whether an interrupted run's shards may be resumed.
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import partial
from pathlib import Path

from ..errors import RecipeError
from ..hub import HubOptions
from ..merge import run as merge_run
from ..merge.plan import Plan, check_weights
from ..merge.run import plan_any
from ..model import arch
from ..recipe.kinds import Parsed, parse_any
from ..sources import LocalSource, Source, open_source
from .settings import Settings

READ_BYTES_PER_S = {"local": 1.0e9, "hub": 1.0e8}  # rough rates for the time estimate
MERGE_BYTES_PER_S = 3.0e8


def parse_recipe(settings: Settings, text: str) -> Parsed:
    """Parse any kind (a merge or MoE recipe, a soup or search request) with the service's size
    limit; service mode refuses local paths."""
    size = len(text.encode())
    limit = settings.limits.recipe_bytes
    if size > limit:
        raise RecipeError(f"the recipe is {size} bytes; this service accepts recipes up to {limit} bytes. "
                          "Recipes are short YAML files; remove pasted weights or long comments")
    return parse_any(text, allow_local=settings.local)


def hub_options(settings: Settings, token: str | None, *, write: bool = False) -> HubOptions:
    """Hub client settings for one job. In service mode sources are read with the user's token
    only (never the service's, which may see private repos the user may not); publishing falls
    back to the service's token. Locally, the machine's own login serves for both."""
    if token is None and (write or settings.local):
        token = settings.hub_token
    if token is None and settings.local:
        from huggingface_hub import get_token

        token = get_token()
    return HubOptions(token=token, endpoint=settings.hub_endpoint, cache_dir=settings.data_dir / "cache")


def plan_recipe(settings: Settings, recipe: Parsed, token: str | None = None) -> Plan:
    """Plan from headers (config.json, safetensors headers), local or on the Hub, reading with
    the user's token. A soup or search request plans its starting recipe."""
    return plan_with(settings, recipe, hub_options(settings, token), settings.device)


def validate_plan(settings: Settings, recipe: Parsed, token: str | None = None) -> Plan:
    """`plan_recipe` with what validation reads beyond headers (`plan.check_weights`: a few rows
    of a few weights), for the answer a person reads before submitting."""
    return check_weights(plan_recipe(settings, recipe, token))


def plan_with(settings: Settings, recipe: Parsed, hub: HubOptions, device: str | None) -> Plan:
    """The same with client settings already made (a worker makes them once per job); `device`
    is where an MoE's routers are computed."""
    return plan_any(recipe, opener=partial(open_source, allow_local=settings.local, hub=hub), device=device)


def folder_fingerprint(folder: Path) -> str:
    """Identity of a local model folder: its files' names, sizes and modification times."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(folder)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return "local:" + h.hexdigest()[:16]


def source_revision(source: Source) -> str | None:
    if isinstance(source, LocalSource):
        return folder_fingerprint(source.root)
    return source.revision


def source_revisions(plan: Plan) -> list[dict]:
    """[{"ref", "revision"}] for each model: the pinned Hub sha or a local fingerprint."""
    return [{"ref": s.label, "revision": source_revision(s)} for s in plan.models]


def dedup_key(recipe_hash: str, sources: list[dict], target: str | None) -> str:
    """Same recipe, same source revisions, same target: the same job."""
    text = json.dumps([recipe_hash, sorted((s["ref"], s["revision"] or "") for s in sources), target or ""])
    return hashlib.sha256(text.encode()).hexdigest()


def run_key(plan: Plan, sources: list[dict], shard_bytes: int) -> str:
    """Identity of a run's output bytes: a resumed run may keep shards only if this matches."""
    text = json.dumps([plan.recipe.hash, sources, shard_bytes, [(t.name, t.dtype, list(t.shape)) for t in plan.tasks]])
    return hashlib.sha256(text.encode()).hexdigest()


def estimate_seconds(plan: Plan) -> float:
    """A rough duration: reading the inputs plus merging and writing the output."""
    hub = any(not isinstance(s, LocalSource) for s in plan.models)
    read = plan.input_bytes / READ_BYTES_PER_S["hub" if hub else "local"]
    return round(read + plan.output_bytes / MERGE_BYTES_PER_S, 1)


_SHAPES_DIFFER = re.compile(r"^tensor '(?P<name>[^']+)': shapes differ \((?P<desc>.*)\); ")


def plan_problems(plan: Plan) -> list[str]:
    """The plan's problems as a person reads them: "shapes differ" repeated for every tensor
    becomes one line (naming the hidden sizes when those differ), and embedding shapes are not
    reported when a tokenizer problem already explains them."""
    shape_lines = [(m["name"], m["desc"]) for m in map(_SHAPES_DIFFER.match, plan.problems) if m]
    if not shape_lines:
        return list(plan.problems)
    tokenizer_trouble = any(p.startswith("tokenizer") or "tokenizer." in p for p in plan.problems
                            if not _SHAPES_DIFFER.match(p))
    if tokenizer_trouble:
        shape_lines = [(n, d) for n, d in shape_lines if not arch.on_vocabulary(n)]
    out = [p for p in plan.problems if not _SHAPES_DIFFER.match(p)]
    if len(shape_lines) == 1:
        name, desc = shape_lines[0]
        out.append(f"tensor '{name}': shapes differ ({desc}); these models cannot be merged tensor by tensor")
    elif shape_lines:
        sizes = {s.label: s.config().get("hidden_size") for s in plan.models}
        why = ("hidden size " + " vs ".join(str(v) for v in dict.fromkeys(sizes.values()))
               + " (" + ", ".join(f"{k}: {v}" for k, v in sizes.items()) + ")"
               if len(set(sizes.values())) > 1 else "the models' shapes differ")
        name, desc = shape_lines[0]
        out.append(f"{why}: {len(shape_lines)} tensors cannot be merged tensor by tensor, e.g. '{name}' ({desc})")
    return out


def source_problems(settings: Settings, text: str, token: str | None = None) -> list[str]:
    """Problems opening the models a recipe that does not parse names (see merge.run.source_problems)."""
    opener = partial(open_source, allow_local=settings.local, hub=hub_options(settings, token))
    return merge_run.source_problems(text, opener, allow_local=settings.local)
