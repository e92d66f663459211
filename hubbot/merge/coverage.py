"""Tensor coverage: what happens to every tensor of every input.

Each input tensor is merged (an output tensor takes it with other inputs), copied (an output
tensor takes it alone), or left out for a named reason (a slice that skips its layer, a head the
output ties to the embedding). A tensor the plan has no rule for would be dropped silently; it
is listed as unmatched, and the plan reports it as a problem with what the recipe must say.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from ..sources import Source
    from .plan import TensorTask

MAX_LISTED = 5

# Reasons a tensor is left out on purpose.
OUTSIDE_SLICES = "its layer is outside every slice's layer_range"
TIED_HEAD = "tied head: the output ties lm_head to the input embedding"
OTHER_SLICE = ("non-layer tensors come from the first slice's sources (embeddings, vision parts) "
               "and the last slice's (final norm, head)")


@dataclass
class SourceCoverage:
    """One input's tensors, by what the plan does with them."""

    label: str
    total: int
    merged: int = 0
    copied: int = 0
    left_out: dict[str, list[str]] = field(default_factory=dict)  # reason -> tensor names
    unmatched: list[str] = field(default_factory=list)

    @property
    def left_out_count(self) -> int:
        return sum(len(v) for v in self.left_out.values())


@dataclass
class Coverage:
    sources: list[SourceCoverage]

    @property
    def complete(self) -> bool:
        """Every tensor of every input is merged, copied, or left out for a named reason."""
        return not any(s.unmatched for s in self.sources)

    def lines(self) -> list[str]:
        """The summary `hubbot validate` prints."""
        head = ("coverage: every input tensor is merged, copied or left out for a named reason" if self.complete
                else "coverage: INCOMPLETE, some input tensors have no rule (see the problems)")
        out = [head]
        for s in self.sources:
            parts = [f"{s.merged} merged", f"{s.copied} copied", f"{s.left_out_count} left out"]
            if s.unmatched:
                parts.append(f"{len(s.unmatched)} without a rule")
            out.append(f"  {s.label}: {s.total} tensors: " + ", ".join(parts))
            out += [f"    left out ({len(names)}): {reason}" for reason, names in s.left_out.items()]
        return out


def account(sources: list["Source"], tasks: list["TensorTask"],
            reason: Callable[[int, str], str | None]) -> Coverage:
    """Classify every tensor of every model source; `reason(source, name)` names why a tensor no
    task takes is left out, or None when the plan has no rule for it."""
    merged: set[tuple[int, str]] = set()
    copied: set[tuple[int, str]] = set()
    for t in tasks:
        used = t.reads
        into = copied if t.copy or len(used) == 1 else merged
        into.update((i.source, i.name) for i in used)
    out = []
    for k, src in enumerate(sources):
        if not src.is_model:
            continue
        names = list(src.tensors())
        cov = SourceCoverage(src.label, len(names))
        for n in names:
            if (k, n) in merged:
                cov.merged += 1
            elif (k, n) in copied:
                cov.copied += 1
            elif (why := reason(k, n)) is not None:
                cov.left_out.setdefault(why, []).append(n)
            else:
                cov.unmatched.append(n)
        out.append(cov)
    return Coverage(out)


def unmatched_problem(label: str, names: list[str], holders: dict[str, list[str]], names_from: str) -> str:
    """The problem for tensors of `label` no output tensor takes. `holders[name]` lists the
    models that have that tensor; `names_from` is the model whose names the output takes."""
    listed = ", ".join(f"'{n}'" for n in names[:MAX_LISTED])
    more = f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else ""
    owners = sorted({h for n in names for h in holders.get(n, [label])})
    only = "only " + ", ".join(owners) + (" has them" if len(owners) == 1 else " have them")
    return (f"{label}: {len(names)} tensors are not in the output and have no rule: {listed}{more} ({only}; the "
            f"output takes its tensor names from {names_from}). To include them, make a model that has them "
            "the base_model (or the first model when there is none) and give every model of the merge those "
            "tensors; otherwise merge models without them (the merge would drop them)")


def markdown(coverage: Coverage | None) -> list[str]:
    """The model card's coverage section (Markdown lines); none for plans made elsewhere (MoE)."""
    if coverage is None:
        return []
    lines = ["## Tensor coverage", ""]
    lines.append("Every tensor of every source is merged, copied from one source, or left out for the reason "
                 "given here." if coverage.complete else "Some source tensors had no rule in this merge.")
    lines += ["", "| source | tensors | merged | copied | left out |", "|---|---|---|---|---|"]
    for s in coverage.sources:
        reasons = "; ".join(f"{len(v)}: {r}" for r, v in s.left_out.items())
        lines.append(f"| {s.label} | {s.total} | {s.merged} | {s.copied} | {s.left_out_count}"
                     f"{f' ({reasons})' if reasons else ''} |")
    return lines + [""]
