"""The field-path problem collector every recipe-like parser shares."""

from __future__ import annotations

import difflib
from typing import Any

from .refs import ModelRef
from .values import FilterRule, Params, Value, number_problem

MAX_MESSAGE = 400  # characters of one problem: a value quoted in full could be megabytes


class Checker:
    """Collects problems with their field paths while walking the YAML tree."""

    def __init__(self, allow_local: bool):
        self.problems: list[str] = []
        self.allow_local = allow_local

    def add(self, path: str, message: str) -> None:
        if len(message) > MAX_MESSAGE:
            message = message[:MAX_MESSAGE] + " ..."
        self.problems.append(f"{path}: {message}" if path else message)

    def number(self, path: str, raw: Any) -> bool:
        """Whether `raw` is usable as a number, or not a number at all; adds the problem if not."""
        why = number_problem(raw)
        if why:
            self.add(path, why)
        return why is None

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
        ref = ModelRef.parse(raw, probe_disk=self.allow_local)
        for part in (ref, ref.adapter):
            if part and part.local and not self.allow_local:
                self.add(path, f"'{part.path}' is a local path; the service reads only Hub repos "
                               "such as 'org/name' or 'org/name@revision'")
        return ref

    def value(self, path: str, raw: Any) -> Value | None:
        if isinstance(raw, (int, float, str)):
            return raw if self.number(path, raw) else None
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
        if isinstance(raw, list) and raw and all(isinstance(e, (int, float, str)) for e in raw):
            ok = [self.number(f"{path}[{i}]", e) for i, e in enumerate(raw)]
            return tuple(raw) if all(ok) else None
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
