"""Mixture-of-experts recipes: the mergekit-moe YAML format, parsed and checked.

An MoE recipe names a base model (attention, norms and embeddings come from it) and a list
of experts, each a model whose MLP becomes one expert of every layer, with prompts that say
which tokens its router row should attract. Parsing needs no weights and no network; every
problem names its field path.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar

from ..errors import RecipeError
from ..model.dtypes import DTYPE_ALIASES, RECIPE_DTYPES
from .checker import Checker
from .refs import ModelRef
from .text import load_yaml, text_hash

GATE_MODES = {
    "hidden": "each layer's router row is the base model's hidden state on the expert's positive prompts "
              "(minus its negative prompts), normalised",
    "cheap_embed": "every layer's router row is the mean token embedding of the prompts, normalised",
    "random": "router rows drawn from a standard normal (seeded by random_seed)",
    "uniform_random": "router rows drawn as torch initialises a linear layer (seeded by random_seed)",
}
ARCHITECTURES = {"mixtral": "mixtral", "qwen": "qwen2_moe", "qwen2_moe": "qwen2_moe"}
TOP_LEVEL_FIELDS = ("base_model", "experts", "gate_mode", "experts_per_token", "shared_experts", "architecture",
                    "dtype", "random_seed", "name")
EXPERT_FIELDS = ("source_model", "positive_prompts", "negative_prompts", "noise_scale", "residual_scale")


@dataclass(frozen=True)
class Expert:
    """One expert: the model whose MLPs it takes, and the prompts that steer its router row.

    `noise_scale` adds seeded Gaussian noise to its MLP weights (to break symmetry between
    copies of one model); `residual_scale` scales its down projection (its residual output).
    """

    source_model: ModelRef
    positive_prompts: tuple[str, ...] = ()
    negative_prompts: tuple[str, ...] = ()
    noise_scale: float | None = None
    residual_scale: float | None = None


@dataclass(frozen=True)
class MoeRecipe:
    """A parsed, checked MoE recipe. `architecture` is None when the sources decide it."""

    FILE_NAME: ClassVar[str] = "mergekit_moe_config.yml"

    text: str
    base_model: ModelRef
    experts: tuple[Expert, ...]
    gate_mode: str = "hidden"
    experts_per_token: int = 2
    shared_experts: tuple[Expert, ...] = ()
    architecture: str | None = None
    dtype: str | None = None
    random_seed: int | None = None
    name: str | None = None

    @cached_property
    def hash(self) -> str:
        return text_hash(self.text)

    def model_refs(self) -> list[ModelRef]:
        """Every model the recipe reads, deduplicated, base first."""
        refs = [self.base_model] + [e.source_model for e in (*self.experts, *self.shared_experts)]
        return list(dict.fromkeys(refs))


def parse_moe(text: str, *, allow_local: bool = True) -> MoeRecipe:
    """Parse and check an MoE recipe; raise RecipeError listing every problem found."""
    data = load_yaml(text)
    if not isinstance(data, dict) or "experts" not in data:
        raise RecipeError("a mixture-of-experts recipe must be a YAML mapping with 'base_model' and 'experts'")
    c = Checker(allow_local)
    c.unknown_keys("", data, TOP_LEVEL_FIELDS)

    base = None
    if data.get("base_model") is None:
        c.add("base_model", "missing; name the model whose attention, norms and embeddings the MoE keeps")
    else:
        base = c.model("base_model", data["base_model"])

    gate_mode = data.get("gate_mode", "hidden")
    if gate_mode not in GATE_MODES:
        c.add("gate_mode", f"unknown gate mode {gate_mode!r}; use one of {', '.join(GATE_MODES)}")
    needs_prompts = gate_mode in ("hidden", "cheap_embed")

    experts = _experts(c, "experts", data.get("experts"), needs_prompts)
    if data.get("experts") is not None and not data["experts"]:
        c.add("experts", "expected a non-empty list of {source_model, positive_prompts, negative_prompts}")
    shared = _experts(c, "shared_experts", data.get("shared_experts"), False) if data.get("shared_experts") else ()
    if len(shared) > 1:
        c.add("shared_experts", f"{len(shared)} shared experts given; the output architectures have at most one")

    k = data.get("experts_per_token", 2)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        c.add("experts_per_token", f"expected a positive integer, got {k!r}")
    elif experts and k > len(experts):
        c.add("experts_per_token", f"{k} experts per token but only {len(experts)} experts; lower it or add experts")

    if needs_prompts and len(experts) > 1:
        sets = {(e.positive_prompts, e.negative_prompts) for e in experts}
        if len(sets) == 1:
            c.add("experts", "every expert has the same prompts, so the routers cannot tell them apart; give each "
                             "expert positive_prompts that show what it should handle")

    arch = data.get("architecture")
    if arch is not None and arch not in ARCHITECTURES:
        c.add("architecture", f"unknown output architecture {arch!r}; use mixtral or qwen (Qwen2-MoE)")

    dtype = data.get("dtype")
    if dtype is not None and DTYPE_ALIASES.get(str(dtype).lower()) is None:
        c.add("dtype", f"unknown dtype {dtype!r}; use one of {', '.join(RECIPE_DTYPES)}")
    seed = data.get("random_seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        c.add("random_seed", f"expected a non-negative integer, got {seed!r}")

    if c.problems:
        raise RecipeError(c.problems)
    return MoeRecipe(
        text=text,
        base_model=base,
        experts=experts,
        gate_mode=gate_mode,
        experts_per_token=k,
        shared_experts=shared,
        architecture=ARCHITECTURES[arch] if arch else None,
        dtype=DTYPE_ALIASES[str(dtype).lower()] if dtype is not None else None,
        random_seed=seed,
        name=data.get("name"),
    )


def _experts(c: Checker, path: str, raw: Any, needs_prompts: bool) -> tuple[Expert, ...]:
    if raw is None:
        c.add(path, "missing; list the expert models as {source_model, positive_prompts}")
        return ()
    if not isinstance(raw, list):
        c.add(path, f"expected a list of {{source_model, positive_prompts, negative_prompts}}, got {raw!r}")
        return ()
    out = []
    for i, entry in enumerate(raw):
        at = f"{path}[{i}]"
        if not isinstance(entry, dict) or "source_model" not in entry:
            c.add(at, "expected {source_model: <reference>, positive_prompts: [...]}")
            continue
        c.unknown_keys(at, entry, EXPERT_FIELDS)
        ref = c.model(f"{at}.source_model", entry["source_model"])
        positive = _prompts(c, f"{at}.positive_prompts", entry.get("positive_prompts"))
        negative = _prompts(c, f"{at}.negative_prompts", entry.get("negative_prompts"))
        if needs_prompts and not positive:
            c.add(f"{at}.positive_prompts", "missing; the gate mode needs example prompts for each expert "
                                            "(or use gate_mode: random)")
        scales = {}
        for key in ("noise_scale", "residual_scale"):
            v = entry.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                                  or (key == "noise_scale" and v < 0)):
                c.add(f"{at}.{key}", f"expected a {'non-negative ' if key == 'noise_scale' else ''}number, got {v!r}")
                v = None
            scales[key] = float(v) if v is not None else None
        if ref:
            out.append(Expert(ref, positive, negative, **scales))
    return tuple(out)


def _prompts(c: Checker, path: str, raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(p, str) and p.strip() for p in raw):
        c.add(path, f"expected a list of non-empty prompt strings, got {raw!r}")
        return ()
    return tuple(raw)
