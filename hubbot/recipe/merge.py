"""Merge recipes: the mergekit YAML format, parsed into typed values with every field checked.

Parsing needs no weights and no network. Each problem names its field path
(`models[1].parameters.density`), the bad value and what is allowed, and all problems
are reported together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar

from ..errors import RecipeError
from ..model.dtypes import DTYPE_ALIASES, RECIPE_DTYPES, TERNARY
from .checker import Checker
from .refs import ModelRef
from .text import KIND_HINTS, kind_of_data, load_yaml, text_hash
from .values import Params, uses_gradient

MAX_NAME = 200
MAX_LAYERS = 10_000
MAX_PAD = 1 << 16  # tokenizer.pad_to_multiple_of: beyond this the padding alone is a huge embedding

TOP_LEVEL_FIELDS = (
    "merge_method", "base_model", "models", "slices", "parameters", "dtype", "out_dtype",
    "tokenizer_source", "tokenizer", "chat_template", "random_seed", "name",
)


@dataclass(frozen=True)
class InputModel:
    model: ModelRef
    parameters: Params = field(default_factory=dict)


@dataclass(frozen=True)
class SliceSource:
    model: ModelRef
    layer_range: tuple[int, int]
    parameters: Params = field(default_factory=dict)


@dataclass(frozen=True)
class Slice:
    sources: tuple[SliceSource, ...]
    parameters: Params = field(default_factory=dict)


@dataclass(frozen=True)
class TokenRule:
    """Where one output token's embedding row comes from (`tokenizer.tokens.<token>`).

    `zero`: a zero row. Otherwise `model`'s row for `token_id`, for `token`, or (neither given)
    for the same token. `force` applies the rule to every model, even those that have the token.
    No model and not zero: the default rules apply (see hubbot.vocab).
    """

    model: ModelRef | None = None
    token: str | None = None
    token_id: int | None = None
    zero: bool = False
    force: bool = False


@dataclass(frozen=True)
class TokenizerSpec:
    source: str = "base"  # "base", "union" or a model reference
    tokens: dict[str, TokenRule] = field(default_factory=dict)
    pad_to_multiple_of: int | None = None


@dataclass(frozen=True)
class Recipe:
    """A parsed, checked merge recipe. `text` keeps the YAML exactly as submitted."""

    FILE_NAME: ClassVar[str] = "mergekit_config.yml"  # how the output folder stores the recipe

    merge_method: str
    text: str
    base_model: ModelRef | None = None
    models: tuple[InputModel, ...] | None = None
    slices: tuple[Slice, ...] | None = None
    parameters: Params = field(default_factory=dict)
    dtype: str | None = None
    out_dtype: str | None = None
    tokenizer: TokenizerSpec | None = None
    chat_template: str | None = None
    random_seed: int | None = None
    name: str | None = None

    @cached_property
    def hash(self) -> str:
        """Stable identity of what the recipe asks for (whitespace and comments ignored)."""
        return text_hash(self.text)

    def model_refs(self) -> list[ModelRef]:
        """Every model the recipe reads, deduplicated, in recipe order, base first if set."""
        refs: list[ModelRef] = [self.base_model] if self.base_model else []
        if self.models:
            refs += [m.model for m in self.models]
        for s in self.slices or ():
            refs += [src.model for src in s.sources]
        return list(dict.fromkeys(refs))

    @property
    def uses_gradients(self) -> bool:
        scopes = [self.parameters] + [m.parameters for m in self.models or ()]
        for s in self.slices or ():
            scopes += [s.parameters] + [src.parameters for src in s.sources]
        return any(uses_gradient(v) for scope in scopes for v in scope.values())


def parse(text: str, *, allow_local: bool = True) -> Recipe:
    """Parse and check a recipe; raise RecipeError listing every problem found.

    `allow_local=False` (service mode) refuses local paths so a recipe cannot read the
    server's disk.
    """
    from .checks import check_recipe, method_problems

    data = load_yaml(text)
    if not isinstance(data, dict):
        raise RecipeError("the recipe must be a YAML mapping with at least 'merge_method' and 'models' or 'slices'")
    if kind_of_data(data) != "merge":
        raise RecipeError(KIND_HINTS[kind_of_data(data)])

    c = Checker(allow_local)
    c.unknown_keys("", data, TOP_LEVEL_FIELDS)

    method = data.get("merge_method")
    if not isinstance(method, str) or not method:
        c.add("merge_method", "missing; name a merge method such as linear, slerp, ties or passthrough")
        method = ""

    base = c.model("base_model", data["base_model"]) if data.get("base_model") is not None else None

    models = slices = None
    if ("models" in data) == ("slices" in data):
        c.add("", "give exactly one of 'models' (a list of models) or 'slices' (layer ranges per model)")
    elif "models" in data:
        models = _parse_models(c, data["models"])
    else:
        slices = _parse_slices(c, data["slices"])

    dtypes = {}
    for key in ("dtype", "out_dtype"):
        raw = data.get(key)
        lowered = str(raw).lower()
        if key == "out_dtype" and lowered == TERNARY:
            dtypes[key] = TERNARY
            continue
        if raw is not None and DTYPE_ALIASES.get(lowered) is None:
            if lowered == TERNARY:
                c.add(key, f"{TERNARY} is an out_dtype only (the merge reads and computes in floats); set dtype to "
                           f"one of {', '.join(RECIPE_DTYPES)} and out_dtype: {TERNARY}")
            else:
                also = f" (or {TERNARY})" if key == "out_dtype" else ""
                c.add(key, f"unknown dtype {raw!r}; use one of {', '.join(RECIPE_DTYPES)}{also}")
        dtypes[key] = DTYPE_ALIASES.get(lowered) if raw is not None else None

    seed = data.get("random_seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
        c.add("random_seed", f"expected an integer from 0 to 2**63 - 1, got {seed!r}")
        seed = None
    name = data.get("name")
    if name is not None and not (isinstance(name, str) and len(name) <= MAX_NAME):
        c.add("name", f"expected a short text (at most {MAX_NAME} characters), got {name!r}")
        name = None

    refs = ([base] if base else []) + [m.model for m in models or ()] + [x.model for sl in slices or () for x in sl.sources]
    tokenizer = _parse_tokenizer(c, data, refs)
    template = data.get("chat_template")
    if template is not None:
        from .chat_templates import template_problem

        why = template_problem(template)
        if why:
            c.add("chat_template", why)

    recipe = Recipe(
        merge_method=method,
        text=text,
        base_model=base,
        models=models,
        slices=slices,
        parameters=c.params("parameters", data.get("parameters")),
        dtype=dtypes["dtype"],
        out_dtype=dtypes["out_dtype"],
        tokenizer=tokenizer,
        chat_template=template,
        random_seed=seed,
        name=name,
    )
    if method and (models or slices):  # method checks still run beside other fields' problems
        c.problems += check_recipe(recipe)
    elif method:  # without inputs to check against, at least whether the method exists
        c.problems += method_problems(method)
    if c.problems:
        raise RecipeError(c.problems)
    return recipe


def _parse_models(c: Checker, raw: Any) -> tuple[InputModel, ...]:
    if not isinstance(raw, list) or not raw:
        c.add("models", "expected a non-empty list of {model, parameters}")
        return ()
    out = []
    for i, entry in enumerate(raw):
        path = f"models[{i}]"
        if isinstance(entry, str):
            entry = {"model": entry}
        if not isinstance(entry, dict) or "model" not in entry:
            c.add(path, "expected {model: <reference>, parameters: {...}}")
            continue
        c.unknown_keys(path, entry, ("model", "parameters"))
        ref = c.model(f"{path}.model", entry["model"])
        params = c.params(f"{path}.parameters", entry.get("parameters"))
        if ref:
            out.append(InputModel(ref, params))
    return tuple(out)


def _parse_slices(c: Checker, raw: Any) -> tuple[Slice, ...]:
    if not isinstance(raw, list) or not raw:
        c.add("slices", "expected a non-empty list of {sources: [...]}")
        return ()
    out = []
    for i, entry in enumerate(raw):
        path = f"slices[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("sources"), list) or not entry["sources"]:
            c.add(path, "expected {sources: [{model, layer_range: [start, end]}, ...]}")
            continue
        c.unknown_keys(path, entry, ("sources", "parameters"))
        sources = []
        for j, src in enumerate(entry["sources"]):
            spath = f"{path}.sources[{j}]"
            if not isinstance(src, dict) or "model" not in src:
                c.add(spath, "expected {model: <reference>, layer_range: [start, end]}")
                continue
            c.unknown_keys(spath, src, ("model", "layer_range", "parameters"))
            ref = c.model(f"{spath}.model", src["model"])
            lr = src.get("layer_range")
            if not (isinstance(lr, list) and len(lr) == 2
                    and all(isinstance(x, int) and not isinstance(x, bool) for x in lr)
                    and 0 <= lr[0] < lr[1] <= MAX_LAYERS):
                c.add(f"{spath}.layer_range", f"expected [start, end] with 0 <= start < end <= {MAX_LAYERS} "
                                              f"(end excluded), got {lr!r}")
                continue
            params = c.params(f"{spath}.parameters", src.get("parameters"))
            if ref:
                sources.append(SliceSource(ref, (lr[0], lr[1]), params))
        lengths = {s.layer_range[1] - s.layer_range[0] for s in sources}
        if len(lengths) > 1:
            desc = ", ".join(f"{s.model} {list(s.layer_range)}" for s in sources)
            c.add(f"{path}.sources", f"every source of a slice must span the same number of layers; got {desc}")
        out.append(Slice(tuple(sources), c.params(f"{path}.parameters", entry.get("parameters"))))
    return tuple(out)


def _parse_tokenizer(c: Checker, data: dict, refs: list[ModelRef]) -> TokenizerSpec | None:
    """`tokenizer_source` or the `tokenizer:` form (whose source defaults to union, as in mergekit).
    Models it names must be models the recipe reads (`refs`)."""
    if "tokenizer" in data and "tokenizer_source" in data:
        c.add("tokenizer", "give either 'tokenizer' or 'tokenizer_source', not both")
    if data.get("tokenizer_source") is not None:
        src = data["tokenizer_source"]
        if not isinstance(src, str):
            c.add("tokenizer_source", f"expected base, union or a model reference, got {src!r}")
            return None
        _check_member(c, "tokenizer_source", src, refs)
        return TokenizerSpec(source=src)
    raw = data.get("tokenizer")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        c.add("tokenizer", "expected {source, tokens, pad_to_multiple_of}")
        return None
    c.unknown_keys("tokenizer", raw, ("source", "tokens", "pad_to_multiple_of"))
    pad = raw.get("pad_to_multiple_of")
    if pad is not None and (isinstance(pad, bool) or not isinstance(pad, int) or not 0 < pad <= MAX_PAD):
        c.add("tokenizer.pad_to_multiple_of", f"expected a positive integer (at most {MAX_PAD}), got {pad!r}")
        pad = None
    tokens = raw.get("tokens") or {}
    if not isinstance(tokens, dict):
        c.add("tokenizer.tokens", "expected a mapping of token text to {source, force}")
        tokens = {}
    rules = {str(tok): rule for tok, entry in tokens.items() if (rule := _token_rule(c, f"tokenizer.tokens.{tok}", entry))}
    source = raw.get("source", "union")
    if not isinstance(source, str):
        c.add("tokenizer.source", f"expected base, union or a model reference, got {source!r}")
        source = "union"
    _check_member(c, "tokenizer.source", source, refs)
    for tok, rule in rules.items():
        if rule.model is not None:
            _check_member(c, f"tokenizer.tokens.{tok}.source", str(rule.model), refs)
    return TokenizerSpec(source=source, tokens=rules, pad_to_multiple_of=pad)


def _token_rule(c: Checker, path: str, raw: Any) -> TokenRule | None:
    """`{source: <model> | {kind: zero} | {kind: model_token, model, token | token_id}, force}`."""
    if raw is None:
        return TokenRule()
    if not isinstance(raw, dict):
        c.add(path, f"expected {{source, force}}, got {raw!r}")
        return None
    c.unknown_keys(path, raw, ("source", "force"))
    force = raw.get("force", False)
    if not isinstance(force, bool):
        c.add(f"{path}.force", f"expected true or false, got {force!r}")
        return None
    src = raw.get("source")
    if src is None:
        if force:
            c.add(path, "force needs a source: a model, {kind: zero} or {kind: model_token, model, token}")
        return TokenRule(force=force)
    if isinstance(src, str):
        ref = c.model(f"{path}.source", src)
        return TokenRule(model=ref, force=force) if ref else None
    if not isinstance(src, dict):
        c.add(f"{path}.source", f"expected a model reference or {{kind: zero | model_token, ...}}, got {src!r}")
        return None
    kind = src.get("kind")
    if kind == "zero":
        c.unknown_keys(f"{path}.source", src, ("kind",))
        return TokenRule(zero=True, force=force)
    if kind != "model_token":
        c.add(f"{path}.source.kind", f"expected zero or model_token, got {kind!r}")
        return None
    c.unknown_keys(f"{path}.source", src, ("kind", "model", "token", "token_id"))
    ref = c.model(f"{path}.source.model", src.get("model"))
    token, token_id = src.get("token"), src.get("token_id")
    if (token is None) == (token_id is None):
        c.add(f"{path}.source", "give exactly one of 'token' (its text) or 'token_id' (its id in that model)")
        return None
    if token_id is not None and (isinstance(token_id, bool) or not isinstance(token_id, int)
                                 or not 0 <= token_id < 2**31):
        c.add(f"{path}.source.token_id", f"expected a token id (an integer from 0 to 2**31 - 1), got {token_id!r}")
        return None
    if token is not None and not isinstance(token, str):
        c.add(f"{path}.source.token", f"expected the token's text, got {token!r}")
        return None
    return TokenRule(model=ref, token=token, token_id=token_id, force=force) if ref else None


def _check_member(c: Checker, path: str, source: str, refs: list[ModelRef]) -> None:
    if source not in ("base", "union") and refs and ModelRef.parse(source) not in refs:
        c.add(path, f"{source!r} is not one of the recipe's models ({', '.join(str(r) for r in dict.fromkeys(refs))})")
