"""Merge recipes: the mergekit YAML format, parsed into typed values with every field checked.

Parsing needs no weights and no network. Each problem names its field path
(`models[1].parameters.density`), the bad value and what is allowed, and all problems
are reported together.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Union

import yaml

from .errors import RecipeError

Scalar = Union[float, int, bool, str]

MAX_RECIPE_BYTES = 256 * 1024

DTYPE_ALIASES = {
    "float32": "float32", "fp32": "float32", "float": "float32",
    "float16": "float16", "fp16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
}

TOP_LEVEL_FIELDS = (
    "merge_method", "base_model", "models", "slices", "parameters", "dtype", "out_dtype",
    "tokenizer_source", "tokenizer", "chat_template", "random_seed", "name",
)
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$|^[A-Za-z0-9][\w.-]*$")


@dataclass(frozen=True)
class FilterRule:
    """One entry of a `[{filter, value}]` list: applies to tensors whose name contains `filter`."""

    filter: str | None
    value: "Value"


Value = Union[Scalar, tuple[Scalar, ...], tuple[FilterRule, ...]]


def evaluate(value: Value, tensor_name: str, t: float) -> Scalar | None:
    """The scalar a parameter takes for one tensor at relative depth `t` in [0, 1].

    A list of numbers is a gradient, interpolated between its neighbouring points; a list of
    booleans or strings steps. A filter list takes its first rule whose filter is a
    substring of the tensor name (no filter, or `*`, matches all); None if none matches.
    """
    if isinstance(value, tuple) and value and isinstance(value[0], FilterRule):
        for rule in value:
            if rule.filter in (None, "*") or rule.filter in tensor_name:
                return evaluate(rule.value, tensor_name, t)
        return None
    if isinstance(value, tuple):
        if not value:
            return None
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        scaled = t * (len(value) - 1)
        i0 = int(scaled)
        if not numeric:
            return value[i0]
        i1 = min(len(value) - 1, i0 + 1)
        frac = scaled - i0
        return (1 - frac) * value[i0] + frac * value[i1]
    return value


def scalars_of(value: Value) -> list[Scalar]:
    """Every scalar a value can take, for range checks before any tensor exists."""
    if isinstance(value, tuple):
        out: list[Scalar] = []
        for v in value:
            out.extend(scalars_of(v.value) if isinstance(v, FilterRule) else [v])
        return out
    return [value]


def uses_gradient(value: Value) -> bool:
    if isinstance(value, tuple):
        return any(uses_gradient(v.value) if isinstance(v, FilterRule) else True for v in value)
    return False


@dataclass(frozen=True)
class ModelRef:
    """A model reference: a local folder, a Hub repo `org/name[@revision]`, optionally `+adapter`."""

    path: str
    revision: str | None = None
    adapter: "ModelRef | None" = None
    local: bool = False

    @classmethod
    def parse(cls, text: str) -> "ModelRef":
        text = text.strip()
        base, plus, adapter = text.partition("+")
        adapter_ref = cls.parse(adapter) if plus and adapter else None
        if _looks_local(base):
            return cls(path=base, adapter=adapter_ref, local=True)
        repo, at, rev = base.partition("@")
        return cls(path=repo, revision=rev if at else None, adapter=adapter_ref, local=False)

    def __str__(self) -> str:
        text = self.path + (f"@{self.revision}" if self.revision else "")
        return text + (f"+{self.adapter}" if self.adapter else "")

    @property
    def weights(self) -> "ModelRef":
        """The reference without its adapter: where the base weights come from."""
        return ModelRef(self.path, self.revision, None, self.local)


def _looks_local(text: str) -> bool:
    if text.startswith(("/", "./", "../", "~", ".\\")) or text in (".", ".."):
        return True
    if os.path.isdir(os.path.expanduser(text)):
        return True
    return not HUB_ID.match(text.partition("@")[0])


Params = dict[str, Value]


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

    @property
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


class _Checker:
    """Collects problems with their field paths while walking the YAML tree."""

    def __init__(self, allow_local: bool):
        self.problems: list[str] = []
        self.allow_local = allow_local

    def add(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}" if path else message)

    def unknown_keys(self, path: str, mapping: dict, allowed: tuple[str, ...]) -> None:
        for key in mapping:
            if key not in allowed:
                hint = difflib.get_close_matches(str(key), allowed, n=1)
                tip = f"; did you mean '{hint[0]}'?" if hint else f"; allowed: {', '.join(allowed)}"
                self.add(_join(path, str(key)), f"unknown field{tip}")

    def model(self, path: str, raw: Any) -> ModelRef | None:
        if not isinstance(raw, str) or not raw.strip():
            self.add(path, f"expected a model reference (org/name, org/name@revision or a local folder), got {raw!r}")
            return None
        ref = ModelRef.parse(raw)
        for part in (ref, ref.adapter):
            if part and part.local and not self.allow_local:
                self.add(path, f"'{part.path}' is a local path; the service reads only Hub repos "
                               "such as 'org/name' or 'org/name@revision'")
        return ref

    def value(self, path: str, raw: Any) -> Value | None:
        if isinstance(raw, bool) or isinstance(raw, (int, float, str)):
            return raw
        if isinstance(raw, list) and raw and all(isinstance(e, dict) for e in raw):
            rules = []
            for i, entry in enumerate(raw):
                self.unknown_keys(f"{path}[{i}]", entry, ("filter", "value"))
                if "value" not in entry:
                    self.add(f"{path}[{i}]", "a filter entry needs a 'value'")
                    continue
                flt = entry.get("filter")
                if flt is not None and not isinstance(flt, str):
                    self.add(f"{path}[{i}].filter", f"expected a substring of tensor names, got {flt!r}")
                    continue
                inner = self.value(f"{path}[{i}].value", entry["value"])
                if inner is not None:
                    rules.append(FilterRule(flt, inner))
            return tuple(rules)
        if isinstance(raw, list) and raw and all(
            isinstance(e, (int, float, str, bool)) for e in raw
        ):
            return tuple(raw)
        self.add(path, f"expected a number, a list of numbers (gradient) or a list of "
                       f"{{filter, value}} entries, got {raw!r}")
        return None

    def params(self, path: str, raw: Any) -> Params:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self.add(path, f"expected a mapping of parameter names to values, got {raw!r}")
            return {}
        out: Params = {}
        for name, value in raw.items():
            checked = self.value(_join(path, str(name)), value)
            if checked is not None:
                out[str(name)] = checked
        return out


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


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
    return _kind(load_yaml(text))


def _kind(data: Any) -> Kind:
    if isinstance(data, dict):
        return next((kind for key, kind in KIND_KEYS.items() if key in data), "merge")
    return "merge"


def parse(text: str, *, allow_local: bool = True) -> Recipe:
    """Parse and check a recipe; raise RecipeError listing every problem found.

    `allow_local=False` (service mode) refuses local paths so a recipe cannot read the
    server's disk.
    """
    from .methods import check_recipe

    data = load_yaml(text)
    if not isinstance(data, dict):
        raise RecipeError("the recipe must be a YAML mapping with at least 'merge_method' and 'models' or 'slices'")
    if _kind(data) != "merge":
        raise RecipeError(KIND_HINTS[_kind(data)])

    c = _Checker(allow_local)
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
        if raw is not None and DTYPE_ALIASES.get(str(raw).lower()) is None:
            c.add(key, f"unknown dtype {raw!r}; use one of float32, float16, bfloat16")
        dtypes[key] = DTYPE_ALIASES.get(str(raw).lower()) if raw is not None else None

    seed = data.get("random_seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        c.add("random_seed", f"expected a non-negative integer, got {seed!r}")

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
        random_seed=seed if isinstance(seed, int) else None,
        name=data.get("name"),
    )
    if method and not c.problems:
        c.problems += check_recipe(recipe)
    if c.problems:
        raise RecipeError(c.problems)
    return recipe


def _parse_models(c: _Checker, raw: Any) -> tuple[InputModel, ...]:
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


def _parse_slices(c: _Checker, raw: Any) -> tuple[Slice, ...]:
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
            if not (isinstance(lr, list) and len(lr) == 2 and all(isinstance(x, int) and not isinstance(x, bool) for x in lr)
                    and 0 <= lr[0] < lr[1]):
                c.add(f"{spath}.layer_range", f"expected [start, end] with 0 <= start < end (end excluded), got {lr!r}")
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


def _parse_tokenizer(c: _Checker, data: dict, refs: list[ModelRef]) -> TokenizerSpec | None:
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
    if pad is not None and (not isinstance(pad, int) or pad <= 0):
        c.add("tokenizer.pad_to_multiple_of", f"expected a positive integer, got {pad!r}")
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


def _token_rule(c: _Checker, path: str, raw: Any) -> TokenRule | None:
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
    if token_id is not None and (isinstance(token_id, bool) or not isinstance(token_id, int) or token_id < 0):
        c.add(f"{path}.source.token_id", f"expected a non-negative integer, got {token_id!r}")
        return None
    if token is not None and not isinstance(token, str):
        c.add(f"{path}.source.token", f"expected the token's text, got {token!r}")
        return None
    return TokenRule(model=ref, token=token, token_id=token_id, force=force) if ref else None


def _check_member(c: _Checker, path: str, source: str, refs: list[ModelRef]) -> None:
    if source not in ("base", "union") and refs and ModelRef.parse(source) not in refs:
        c.add(path, f"{source!r} is not one of the recipe's models ({', '.join(str(r) for r in dict.fromkeys(refs))})")
