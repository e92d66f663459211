"""Recipe-like YAML texts: loading them safely, their identity, and what kind of text each is.

Recipes come from strangers, so loading is bounded before anything looks at the tree: the
text's size, how deep it nests, and how many values it holds once every alias is expanded
(nine nested anchors of nine elements are 387 million values, from a few hundred bytes).
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, Literal

import yaml

from ..errors import RecipeError

MAX_RECIPE_BYTES = 256 * 1024  # the hard cap; the service's HUBBOT_MAX_RECIPE_BYTES may only lower it
MAX_DEPTH = 64  # nesting levels; real recipes use fewer than ten
MAX_NODES = 50_000  # values with aliases expanded; real recipes hold a few hundred


def text_hash(text: str) -> str:
    """sha256 of a YAML document's content, whitespace and comments ignored."""
    canonical = yaml.safe_dump(load_yaml(text), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def decode_text(data: bytes, what: str = "recipe") -> str:
    """A recipe file's bytes as text; anything but UTF-8 is refused with what to do."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        hint = " (it starts like UTF-16)" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise RecipeError(f"the {what} is not UTF-8 text{hint}: byte 0x{data[exc.start]:02x} at position "
                          f"{exc.start}; save it as UTF-8") from None


def load_yaml(text: str | bytes, what: str = "recipe", limit: int = MAX_RECIPE_BYTES) -> Any:
    """The YAML tree of a recipe-like text, bounded in size, depth and expanded values, with the
    error's line and column. `limit` (bytes) can lower the hard cap, never raise it."""
    if isinstance(text, bytes):
        text = decode_text(text, what)
    if not isinstance(text, str):
        raise RecipeError(f"the {what} must be YAML text, got {type(text).__name__}")
    limit = min(limit, MAX_RECIPE_BYTES)
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > limit:
        raise RecipeError(f"the {what} is {size} bytes; the limit is {limit} bytes. "
                          "Recipes are short YAML files; remove pasted weights or long comments")
    loader = None
    try:
        loader = _BoundedLoader(text)  # refuses unprintable characters at once
        node = loader.get_single_node()
        if node is None:
            return None
        _measure(node)
        return loader.construct_document(node)
    except _TooLarge as exc:
        raise RecipeError(f"the {what} {exc.problem}{_where(exc.problem_mark)}; {exc.note}") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"the {what} is not valid YAML{_where(getattr(exc, 'problem_mark', None))}: "
                          f"{getattr(exc, 'problem', None) or exc}") from None
    except ValueError as exc:  # a number too long for int() (Python caps its digits)
        raise RecipeError(f"the {what} holds a value that cannot be read ({exc})") from None
    finally:
        if loader is not None:
            loader.dispose()


class _TooLarge(yaml.YAMLError):
    def __init__(self, problem: str, mark: Any, note: str):
        super().__init__(problem)
        self.problem, self.problem_mark, self.note = problem, mark, note


class _BoundedLoader(yaml.SafeLoader):
    """The safe loader, refusing nesting deeper than MAX_DEPTH while it composes (composing
    recurses once per level, so 20 000 brackets would exhaust Python's stack)."""

    def __init__(self, text: str):
        super().__init__(text)
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _TooLarge(f"nests deeper than {MAX_DEPTH} levels", self.peek_event().start_mark,
                                "recipes need only a few levels of lists and mappings")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_yaml_float(self, node):
        value = super().construct_yaml_float(node)
        if math.isinf(value) and "inf" not in node.value.lower():
            return Overflowed(node.value)
        return value


_BoundedLoader.add_constructor("tag:yaml.org,2002:float", _BoundedLoader.construct_yaml_float)


class Overflowed(float):
    """A number written beyond a float's range (1.0e+400): infinite, but it keeps its spelling so
    the error can quote what the user wrote."""

    def __new__(cls, written: str) -> "Overflowed":
        obj = super().__new__(cls, math.inf if not written.lstrip().startswith("-") else -math.inf)
        obj.written = written
        return obj


def _measure(root: yaml.Node) -> None:
    """Refuse a tree that, aliases expanded, holds more than MAX_NODES values, nests deeper than
    MAX_DEPTH, or refers to itself. Each node is sized once (no expansion), without recursion."""
    sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (values, depth), aliases expanded
    open_: set[int] = set()  # the nodes on the path being walked: meeting one again is a cycle
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        kids = _children(node)
        if done:
            count = 1 + sum(sizes[id(k)][0] for k in kids)
            depth = 1 + max((sizes[id(k)][1] for k in kids), default=0)
            if count > MAX_NODES:
                raise _TooLarge(f"holds more than {MAX_NODES} values once its aliases are expanded", node.start_mark,
                                "expand fewer aliases (*name), or write the values out")
            if depth > MAX_DEPTH:
                raise _TooLarge(f"nests deeper than {MAX_DEPTH} levels once its aliases are expanded",
                                node.start_mark, "recipes need only a few levels of lists and mappings")
            sizes[id(node)] = (count, depth)
            open_.discard(id(node))
            continue
        if id(node) in sizes:
            continue
        if id(node) in open_:
            raise _TooLarge("has an alias inside the value it names", node.start_mark,
                            "an anchor (&name) cannot contain its own alias (*name)")
        open_.add(id(node))
        stack.append((node, True))
        stack.extend((k, False) for k in kids if id(k) not in sizes)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _where(mark: Any) -> str:
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


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
    return kind_of_data(load_yaml(text))


def kind_of_data(data: Any) -> Kind:
    if isinstance(data, dict):
        return next((kind for key, kind in KIND_KEYS.items() if key in data), "merge")
    return "merge"
