"""The merge-method registry.

A method is a pure kernel `(base, tensors, params) -> tensor` plus a declaration of what it
needs. Each lives in its own small module here and calls `register`; every module in this
package is imported on first use, so adding a method is adding one file.

Kernels receive float32 tensors on the merge device; per-model parameters arrive as lists
aligned with `tensors`, shared ones as scalars, and seeded methods get `params["seed"]`.

A method whose only need for the whole tensor is a few statistics (inner products for the SLERP
family, Karcher and Model Stock; the cuts of TIES, Breadcrumbs and SCE) declares a `Blockwise`
form instead: passes that gather those statistics block by block, and a kernel that merges each
block with them. The engine then holds only a block of rows of a large tensor at a time; the
whole-tensor kernel is the same passes over one block, so there is one definition of the method.
"""

from __future__ import annotations

import difflib
import importlib
import itertools
import pkgutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal, NamedTuple

if TYPE_CHECKING:
    import torch

    from ..recipe import Params, Recipe, Scalar, Value

Kernel = Callable[["torch.Tensor | None", "list[torch.Tensor]", dict[str, Any]], "torch.Tensor"]


class Block(NamedTuple):
    """Where a block lies in its tensor: its position among the blocks, and the index of its
    first row (random methods key their draws on rows)."""

    index: int
    row: int


# (base block, blocks, params, statistics, block) -> merged block
BlockKernel = Callable[["torch.Tensor | None", "list[torch.Tensor]", dict[str, Any], dict[str, Any], Block],
                       "torch.Tensor"]
REQUIRED = object()


@dataclass(frozen=True)
class Pass:
    """One read over a tensor's blocks, in order, gathering statistics for a blockwise kernel.

    `gather(base, blocks, params, stats, block)` returns this block's share;
    `finish(shares, stats, params)` turns every block's share, in block order, into the
    statistics this pass adds (a dict merged into `stats` for later passes and the kernel).
    """

    gather: Callable[["torch.Tensor | None", "list[torch.Tensor]", dict[str, Any], dict[str, Any], "Block"], Any]
    finish: Callable[[list[Any], dict[str, Any], dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Blockwise:
    """A method merged block by block: `passes` gather whole-tensor statistics first, then
    `kernel` merges each block. `applies(params)` says whether these parameters allow it. With
    no passes the kernel needs only the block and where it lies (random draws keyed on rows), so
    the engine splits as for elementwise methods."""

    kernel: BlockKernel
    passes: tuple[Pass, ...] = ()
    applies: Callable[[dict[str, Any]], bool] = lambda params: True

    def whole(self, base: "torch.Tensor | None", tensors: "list[torch.Tensor]", params: dict[str, Any]) -> "torch.Tensor":
        """The whole-tensor kernel: every pass over a single block."""
        stats: dict[str, Any] = {}
        for p in self.passes:
            stats.update(p.finish([p.gather(base, tensors, params, stats, Block(0, 0))], stats, params))
        return self.kernel(base, tensors, params, stats, Block(0, 0))


@dataclass(frozen=True)
class Param:
    """A method parameter. `per_model` ones may differ per input model (weight, density)."""

    name: str
    kind: type = float
    default: Any = REQUIRED
    per_model: bool = False
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    doc: str = ""

    def check(self, value: Any) -> str | None:
        """Why one scalar value is not allowed, or None."""
        if self.kind is bool:
            return None if isinstance(value, bool) else f"expected true or false, got {value!r}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"expected a number, got {value!r}"
        if self.kind is int and value != int(value):
            return f"expected a whole number, got {value!r}"
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return f"{value} is outside {self.range_text()}"
        if self.high is not None and value > self.high:
            return f"{value} is outside {self.range_text()}"
        return None

    def range_text(self) -> str:
        lo = "-inf" if self.low is None else f"{self.low:g}"
        hi = "inf" if self.high is None else f"{self.high:g}"
        return f"{'(' if self.low_open or self.low is None else '['}{lo}, {hi}]"


@dataclass(frozen=True)
class Method:
    """A merge method's declaration and kernel.

    base: "required" (task vectors are measured from it), "optional", or "none".
    models: (fewest, most) inputs counting the base; most None means no limit.
    elementwise: each output element depends only on the same element of the inputs, so the
    engine may merge a large tensor block by block to bound memory.
    blockwise: the block-by-block form of a method that needs whole-tensor statistics; its
    `whole` is the kernel when none is given.
    """

    name: str
    kernel: Kernel | None
    title: str
    summary: str
    paper: str = ""
    base: Literal["required", "optional", "none"] = "none"
    params: tuple[Param, ...] = ()
    models: tuple[int, int | None] = (1, None)
    elementwise: bool = False
    seeded: bool = False
    check: Callable[[dict[str, Any]], str | None] | None = None
    aliases: tuple[str, ...] = field(default=())
    blockwise: Blockwise | None = None

    def __post_init__(self) -> None:
        if self.kernel is None:
            if self.blockwise is None:
                raise ValueError(f"merge method {self.name!r} needs a kernel or a blockwise form")
            object.__setattr__(self, "kernel", self.blockwise.whole)

    def blockwise_for(self, params: dict[str, Any]) -> Blockwise | None:
        """The blockwise form when it applies to these parameters."""
        return self.blockwise if self.blockwise is not None and self.blockwise.applies(params) else None

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in _REGISTRY:
        raise ValueError(f"merge method {method.name!r} is registered twice")
    _REGISTRY[method.name] = method
    return method


def _load_all() -> None:
    if not _REGISTRY:
        for mod in pkgutil.iter_modules(__path__):
            if not mod.name.startswith("_"):
                importlib.import_module(f"{__name__}.{mod.name}")


def all_methods() -> dict[str, Method]:
    _load_all()
    return dict(sorted(_REGISTRY.items()))


def get(name: str) -> Method:
    """The method called `name`; a typo gets the closest names in the error."""
    methods = all_methods()
    if name in methods:
        return methods[name]
    normalized = name.strip().lower().replace("-", "_").replace(" ", "_")
    hint = [normalized] if normalized in methods else difflib.get_close_matches(normalized, methods, n=2)
    tip = f"did you mean {' or '.join(repr(h) for h in hint)}? " if hint else ""
    raise KeyError(f"unknown merge method {name!r}; {tip}known methods: {', '.join(methods)}")


def check_recipe(recipe: "Recipe") -> list[str]:
    """Method-level checks that need no model: base, input count, parameter names and ranges."""
    try:
        method = get(recipe.merge_method)
    except KeyError as exc:
        return [f"merge_method: {exc.args[0]}"]
    problems: list[str] = []
    has_base = recipe.base_model is not None
    if method.base == "required" and not has_base:
        problems.append(f"base_model: merge_method '{method.name}' needs a base_model "
                        "(the model the others are compared with); add one")
    if recipe.models is not None:
        problems += _count_problem(method, "models", _input_count(method, recipe, [m.model for m in recipe.models]))
    for i, s in enumerate(recipe.slices or ()):
        problems += _count_problem(method, f"slices[{i}].sources",
                                   _input_count(method, recipe, [x.model for x in s.sources]))

    scopes: list[tuple[str, dict]] = [("parameters", recipe.parameters)]
    scopes += [(f"models[{i}].parameters", m.parameters) for i, m in enumerate(recipe.models or ())]
    for i, s in enumerate(recipe.slices or ()):
        scopes.append((f"slices[{i}].parameters", s.parameters))
        scopes += [(f"slices[{i}].sources[{j}].parameters", src.parameters) for j, src in enumerate(s.sources)]
    from ..recipe import scalars_of

    known = [p.name for p in method.params]
    for path, scope in scopes:
        for name, value in scope.items():
            param = method.param(name)
            if param is None:
                hint = difflib.get_close_matches(name, known, n=1)
                tip = f"did you mean '{hint[0]}'? " if hint else ""
                allowed = ", ".join(known) if known else "none"
                problems.append(f"{path}.{name}: '{method.name}' has no parameter '{name}'; {tip}its parameters: {allowed}")
                continue
            for scalar in scalars_of(value):
                why = param.check(scalar)
                if why:
                    problems.append(f"{path}.{name}: {why}")
                    break
    if method.check is not None and not problems:
        problems += _cross_parameter_problems(method, recipe)
    return problems


def _input_count(method: Method, recipe: "Recipe", models: list) -> int:
    """Inputs as `Method.models` counts them: with the base when required, without when optional."""
    named = set(models)
    if method.base == "required" and recipe.base_model is not None:
        named.add(recipe.base_model)
    elif method.base == "optional":
        named.discard(recipe.base_model)
    return len(named)


MAX_COMBINATIONS = 1000


def _cross_parameter_problems(method: Method, recipe: "Recipe") -> list[str]:
    """Run `method.check` on every value one input model's parameters can take.

    Each input model sees its scopes (slice source > slice > model > global); a filter list may
    give any of its values, and a gradient is checked at every breakpoint of the gradients
    involved (rules linear in the values hold between breakpoints). Problems name the innermost
    scope that sets any of the values.
    """
    chains: list[tuple[tuple[str, ...], tuple["Params", ...]]] = []
    for i, m in enumerate(recipe.models or ()):
        if m.model != recipe.base_model or method.base == "none":
            chains.append(((f"models[{i}].parameters", "parameters"), (m.parameters, recipe.parameters)))
    for i, s in enumerate(recipe.slices or ()):
        for j, src in enumerate(s.sources):
            if src.model != recipe.base_model or method.base == "none":
                chains.append(((f"slices[{i}].sources[{j}].parameters", f"slices[{i}].parameters", "parameters"),
                               (src.parameters, s.parameters, recipe.parameters)))
    problems: list[str] = []
    for paths, scopes in chains:
        values: dict[str, "Value"] = {}
        where = len(scopes) - 1
        for p in method.params:
            for k, scope in enumerate(scopes):
                if p.name in scope:
                    values[p.name] = scope[p.name]
                    where = min(where, k)
                    break
            else:
                if p.default is not REQUIRED and p.default is not None:
                    values[p.name] = p.default
        for sample in _samples(values):
            why = method.check(sample)
            if why:
                problem = f"{paths[where]}: {why}"
                if problem not in problems:
                    problems.append(problem)
                break
    return problems


def _samples(values: dict[str, "Value"]) -> Iterator[dict[str, "Scalar"]]:
    """Scalar assignments covering every filter alternative and gradient breakpoint."""
    from ..recipe import FilterRule, evaluate

    alternatives = []
    for value in values.values():
        if isinstance(value, tuple) and value and isinstance(value[0], FilterRule):
            alternatives.append([rule.value for rule in value])
        else:
            alternatives.append([value])
    for combo in itertools.islice(itertools.product(*alternatives), MAX_COMBINATIONS):
        points = {0.0, 1.0}
        for v in combo:
            if isinstance(v, tuple) and len(v) > 1:
                points.update(k / (len(v) - 1) for k in range(len(v)))
        for t in sorted(points):
            sample: dict[str, "Scalar"] = {}
            for name, v in zip(values, combo):
                scalar = evaluate(v, "", t)
                if scalar is not None:
                    sample[name] = scalar
            yield sample


def _count_problem(method: Method, path: str, count: int) -> list[str]:
    low, high = method.models
    if count < low or (high is not None and count > high):
        want = f"exactly {low}" if low == high else (f"at least {low}" if high is None else f"{low} to {high}")
        base_note = {"required": " counting the base model", "optional": " besides the base model"}.get(method.base, "")
        return [f"{path}: merge_method '{method.name}' takes {want} models{base_note}, got {count}"]
    return []
