"""Method-level recipe checks that need no model: base, input counts, parameter names, ranges
and the rules that tie a method's parameters together."""

from __future__ import annotations

import difflib
import itertools
from collections.abc import Iterator
from typing import TYPE_CHECKING

from .. import methods
from ..methods import REQUIRED, Method
from .values import FilterRule, Params, Scalar, Value, evaluate, scalars_of

if TYPE_CHECKING:
    from .merge import Recipe

def method_problems(name: str) -> list[str]:
    """The problem with merge_method `name`: none, or that no such method exists (with a guess)."""
    try:
        methods.get(name)
    except KeyError as exc:
        return [f"merge_method: {exc.args[0]}"]
    return []


def check_recipe(recipe: "Recipe") -> list[str]:
    """Method-level checks that need no model: base, input count, parameter names and ranges."""
    unknown = method_problems(recipe.merge_method)
    if unknown:
        return unknown
    method = methods.get(recipe.merge_method)
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
