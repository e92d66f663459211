"""The recipe form: a method, a base model, one row per model and rows of shared parameters,
written out as recipe YAML so the editor stays the single source of truth.

Cells take a number (`0.5`), `true`/`false`, or a per-layer curve as comma-separated points
(`0, 0.5, 1`), interpolated over the layers like any mergekit gradient.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from .. import methods
from ..errors import RecipeError
from ..model.dtypes import RECIPE_DTYPES, TERNARY

DTYPES = RECIPE_DTYPES  # the form offers what a recipe may ask for
OUT_DTYPES = (*RECIPE_DTYPES, TERNARY)  # and for the output: a float type, or BitNet b1.58 ternary weights
OUT_DTYPE_NOTES = {TERNARY: "re-quantises the layers' linear weights to BitNet b1.58 (-1, 0, +1 times one scale "
                            "per tensor, the absmean rule) and packs them; everything else is written in dtype"}
SHARED_COLUMNS = ["parameter", "filter", "value"]
_RANGE = re.compile(r"^\s*\[?\s*(\d+)\s*[-,:]\s*(\d+)\s*\]?\s*$")


def model_columns(method_name: str) -> list[str]:
    """Table headers for the models of `method_name`: the model, its per-model parameters, and
    an optional layer range (`0-24`; required for passthrough, whose rows become slices)."""
    method = methods.get(method_name)
    return ["model", *(p.name for p in method.params if p.per_model), "layers"]


def parse_cell(text: Any) -> Any:
    """A table cell as a recipe value: None when empty, a bool, a number, or a list (curve)."""
    if text is None:
        return None
    if isinstance(text, (bool, int, float)):
        return text
    t = str(text).strip().strip("[]").strip()
    if not t:
        return None
    if "," in t:
        return [parse_cell(part) for part in t.split(",") if part.strip()]
    if t.lower() in ("true", "false"):
        return t.lower() == "true"
    try:
        number = float(t)
    except ValueError:
        return t
    return int(number) if number.is_integer() and "." not in t else number


def _layers(text: Any, where: str) -> list[int] | None:
    if text is None or not str(text).strip():
        return None
    m = _RANGE.match(str(text))
    if not m:
        raise RecipeError(f"{where}: write a layer range as start-end with the end excluded, e.g. 0-24; got {text!r}")
    return [int(m.group(1)), int(m.group(2))]


class _FlowLists(yaml.SafeDumper):
    """Dumps lists of scalars inline (`[0, 0.5, 1]`) and indents nested lists, as recipes are
    usually written."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        return super().increase_indent(flow, False)


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(isinstance(v, (int, float, str, bool)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_FlowLists.add_representer(list, _represent_list)


def to_yaml(method_name: str, base_model: str, model_rows: list[list[Any]], shared_rows: list[list[Any]],
            dtype: str | None, out_dtype: str | None = None) -> str:
    """The recipe the form describes. Rows are lists in `model_columns` / `SHARED_COLUMNS` order;
    empty rows are skipped; `out_dtype` (one of OUT_DTYPES, None or empty: as dtype) is written when
    given. Raises RecipeError naming the row at fault."""
    method = methods.get(method_name)
    columns = model_columns(method_name)
    recipe: dict[str, Any] = {"merge_method": method.name}
    if base_model and base_model.strip():
        recipe["base_model"] = base_model.strip()

    entries = []
    for i, row in enumerate(model_rows or []):
        cells = dict(zip(columns, list(row) + [None] * (len(columns) - len(row))))
        model = str(cells.get("model") or "").strip()
        if not model:
            continue
        params = {k: v for k in columns[1:-1] if (v := parse_cell(cells.get(k))) is not None}
        layers = _layers(cells.get("layers"), f"models row {i + 1} ({model})")
        entries.append((model, params, layers))
    if not entries:
        raise RecipeError("add at least one model to the models table")

    if method.models[1] == 1:
        missing = [m for m, _, lr in entries if lr is None]
        if missing:
            raise RecipeError(f"'{method.name}' stacks layer ranges: give every row a layer range such as 0-24 "
                              f"(missing for {', '.join(missing)})")
        recipe["slices"] = [{"sources": [_source(m, p, lr)]} for m, p, lr in entries]
    elif any(lr is not None for _, _, lr in entries):
        missing = [m for m, _, lr in entries if lr is None]
        if missing:
            raise RecipeError(f"give every model a layer range, or none (missing for {', '.join(missing)})")
        recipe["slices"] = [{"sources": [_source(m, p, lr) for m, p, lr in entries]}]
    else:
        recipe["models"] = [{"model": m, **({"parameters": p} if p else {})} for m, p, _ in entries]

    shared: dict[str, list[dict[str, Any]]] = {}
    for i, row in enumerate(shared_rows or []):
        name, flt, value = (list(row) + [None] * 3)[:3]
        name = str(name or "").strip()
        value = parse_cell(value)
        if not name and value is None:
            continue
        if not name or value is None:
            raise RecipeError(f"shared parameters row {i + 1}: give both a parameter name and a value")
        rule = {"filter": str(flt).strip()} if flt and str(flt).strip() else {}
        shared.setdefault(name, []).append({**rule, "value": value})
    if shared:
        recipe["parameters"] = {
            name: rules[0]["value"] if len(rules) == 1 and "filter" not in rules[0] else _fallback_last(rules)
            for name, rules in shared.items()
        }
    if dtype:
        recipe["dtype"] = dtype
    if out_dtype:
        if out_dtype not in OUT_DTYPES:
            raise RecipeError(f"out_dtype: {out_dtype!r} is not one of {', '.join(OUT_DTYPES)}")
        recipe["out_dtype"] = out_dtype
    return yaml.dump(recipe, Dumper=_FlowLists, sort_keys=False, default_flow_style=False)


def _source(model: str, params: dict, layers: list[int]) -> dict[str, Any]:
    return {"model": model, "layer_range": layers, **({"parameters": params} if params else {})}


def _fallback_last(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Filtered rules first, the unfiltered fallback last: the first matching rule wins."""
    return [r for r in rules if "filter" in r] + [r for r in rules if "filter" not in r]
