"""Parameter values as recipes write them: scalars, gradients over the layers, and filter lists."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Union

Scalar = Union[float, int, bool, str]
MAX_MAGNITUDE = 3.4028234663852886e38  # float32's largest: kernels compute in float32, beyond it is Inf


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


def number_problem(raw: Any) -> str | None:
    """Why a number from a recipe cannot be used: not finite (.nan, .inf, 1.0e+400), or beyond
    MAX_MAGNITUDE (an integer of 400 digits overflows a float). None for any other value."""
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        return None
    if isinstance(raw, int) and abs(raw) > MAX_MAGNITUDE:
        shown = f"an integer of {len(str(abs(raw)))} digits" if abs(raw) > 10**15 else repr(raw)
        return f"{shown} is out of range; merges compute in float32, whose numbers lie within ±{MAX_MAGNITUDE:.3g}"
    if not math.isfinite(raw):
        written = getattr(raw, "written", None)  # recipe.text.Overflowed: a literal beyond a float's range
        if written is not None:
            return f"{written} is out of range; merges compute in float32, whose numbers lie within ±{MAX_MAGNITUDE:.3g}"
        return f"{raw!r} is not a finite number; give a number such as 0.5"
    if abs(raw) > MAX_MAGNITUDE:
        return f"{raw!r} is out of range; merges compute in float32, whose numbers lie within ±{MAX_MAGNITUDE:.3g}"
    return None


def uses_gradient(value: Value) -> bool:
    if isinstance(value, tuple):
        return any(uses_gradient(v.value) if isinstance(v, FilterRule) else True for v in value)
    return False


Params = dict[str, Value]
