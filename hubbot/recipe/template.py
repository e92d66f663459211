"""Search templates: a recipe whose values may be search markers, rendered at a point of the
unit cube (one coordinate per searched number).

    weight: {search: [0, 1]}                 # one number in [0, 1]
    density: {search: [0.1, 1], points: 3}   # a gradient of 3 points over the layers
    weight: {search: [0, 2], init: 0.5}      # where the search starts (default: the middle)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Sequence

import yaml

from ..errors import RecipeError
from .merge import Recipe, parse
from .text import load_yaml
from .values import number_problem

MARKER_FIELDS = ("search", "points", "init")


MAX_POINTS = 64


DECIMALS = 4


@dataclass(frozen=True)
class Dim:
    """One searched value: at `path` in the template, `points` numbers (a gradient when > 1)
    in [low, high]. `where` locates it in the YAML tree."""

    path: str
    low: float
    high: float
    points: int
    init: tuple[float, ...]
    where: tuple[str | int, ...]


class Template:
    """A recipe template with search markers; `render(x)` gives a recipe for a point x in the
    unit cube (one coordinate per searched number)."""

    def __init__(self, text: str):
        self.text = text
        self.data = load_yaml(text, "recipe template")
        if not isinstance(self.data, dict):
            raise RecipeError("the recipe template must be a YAML mapping (a recipe with search markers)")
        problems: list[str] = []
        self.dims: list[Dim] = []
        self._walk(self.data, "", (), problems)
        if problems:
            raise RecipeError(problems)
        if not self.dims:
            raise RecipeError("the template has nothing to search; mark values like weight: {search: [0, 1]}")

    @property
    def size(self) -> int:
        return sum(d.points for d in self.dims)

    def _walk(self, node: Any, path: str, where: tuple, problems: list[str]) -> None:
        if isinstance(node, dict) and "search" in node:
            dim = _marker(node, path, where, problems)
            if dim:
                self.dims.append(dim)
        elif isinstance(node, dict):
            for key, value in node.items():
                self._walk(value, f"{path}.{key}" if path else str(key), (*where, key), problems)
        elif isinstance(node, list):
            for i, value in enumerate(node):
                self._walk(value, f"{path}[{i}]", (*where, i), problems)

    def x0(self) -> list[float]:
        return [(v - d.low) / (d.high - d.low) for d in self.dims for v in d.init]

    def values(self, x: Sequence[float]) -> dict[str, float | list[float]]:
        """Each searched value at point x, by template path, rounded as the recipe writes it."""
        out: dict[str, float | list[float]] = {}
        i = 0
        for d in self.dims:
            nums = [round(d.low + min(1.0, max(0.0, float(v))) * (d.high - d.low), DECIMALS) for v in x[i:i + d.points]]
            out[d.path] = nums[0] if d.points == 1 else nums
            i += d.points
        return out

    def render(self, x: Sequence[float], comment: str = "") -> str:
        data = copy.deepcopy(self.data)
        for d, value in zip(self.dims, self.values(x).values()):
            node = data
            for key in d.where[:-1]:
                node = node[key]
            node[d.where[-1]] = value
        header = "".join(f"# {line}\n" for line in comment.splitlines())
        return header + yaml.safe_dump(data, sort_keys=False)


def _marker(node: dict, path: str, where: tuple, problems: list[str]) -> Dim | None:
    bad = [k for k in node if k not in MARKER_FIELDS]
    if bad:
        problems.append(f"{path}: unknown field '{bad[0]}' in a search marker; use {{search: [low, high], "
                        "points: n, init: value}")
        return None
    rng, points = node["search"], node.get("points", 1)
    if not (isinstance(rng, list) and len(rng) == 2 and all(_is_number(v) for v in rng) and rng[0] < rng[1]):
        problems.append(f"{path}.search: expected [low, high] with low < high, got {rng!r}")
        return None
    if isinstance(points, bool) or not isinstance(points, int) or not 1 <= points <= MAX_POINTS:
        problems.append(f"{path}.points: expected a whole number from 1 to {MAX_POINTS}, got {points!r}")
        return None
    low, high = float(rng[0]), float(rng[1])
    init = node.get("init", (low + high) / 2)
    init = list(init) if isinstance(init, list) else [init] * points
    if len(init) != points or not all(_is_number(v) and low <= v <= high for v in init):
        problems.append(f"{path}.init: expected {points} number(s) within [{low:g}, {high:g}], got {node.get('init')!r}")
        return None
    return Dim(path, low, high, points, tuple(float(v) for v in init), where)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and number_problem(v) is None


def check_template(tpl: Template, allow_local: bool = True) -> Recipe:
    """The template must give valid recipes at its start and at both ends of every range;
    returns the recipe at the start."""
    recipes = []
    for label, x in (("start", tpl.x0()), ("lowest", [0.0] * tpl.size), ("highest", [1.0] * tpl.size)):
        try:
            recipes.append(parse(tpl.render(x), allow_local=allow_local))
        except RecipeError as exc:
            raise RecipeError([f"at the {label} values of the search ranges: {p}" for p in exc.problems]) from None
    return recipes[0]
