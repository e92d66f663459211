"""What a merge method declares: its kernel (or block-by-block form), parameters and needs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal, NamedTuple

if TYPE_CHECKING:
    import torch

Kernel = Callable[["torch.Tensor | None", "list[torch.Tensor]", dict[str, Any]], "torch.Tensor"]


class Block(NamedTuple):
    """Where a block lies in its tensor: its position among the blocks (0 for the first, where a
    walk over them starts; the engine may merge a block as several smaller ones, in order), the
    index of its first row (random methods key their draws on rows), and the tensor's entries (a
    pass that reads a sample of the rows learns the whole's size from it)."""

    index: int
    row: int
    entries: int


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
    `fold(total, share)`, when given, adds a share into a running total (in place), so that a
    large tensor's shares (histograms) are not all held until the end: `finish` then gets one.
    `sample` > 1 reads only the first 1/sample of each block's rows (at least one), for
    statistics a sample can estimate. `needed(stats)`, when given, says after the passes before
    it whether this one must run at all: a pass that is not needed is neither read nor run.
    """

    gather: Callable[["torch.Tensor | None", "list[torch.Tensor]", dict[str, Any], dict[str, Any], "Block"], Any]
    finish: Callable[[list[Any], dict[str, Any], dict[str, Any]], dict[str, Any]]
    fold: Callable[[Any, Any], Any] | None = None
    sample: int = 1
    needed: Callable[[dict[str, Any]], bool] | None = None

    def runs(self, stats: dict[str, Any]) -> bool:
        return self.needed is None or self.needed(stats)


@dataclass(frozen=True)
class Blockwise:
    """A method merged block by block: `passes` gather whole-tensor statistics first, then
    `kernel` merges each block. `applies(params)` says whether these parameters allow it. With
    no passes the kernel needs only the block and where it lies (random draws keyed on rows), so
    the engine splits as for elementwise methods."""

    kernel: BlockKernel
    passes: tuple[Pass, ...] = ()
    applies: Callable[[dict[str, Any]], bool] = lambda params: True

    def statistics(self, base: "torch.Tensor | None", tensors: "list[torch.Tensor]",
                   params: dict[str, Any]) -> dict[str, Any]:
        """A whole tensor's statistics: every pass that is needed over a single block (a sampling
        pass over its first rows, as over a block's)."""
        stats: dict[str, Any] = {}
        block = Block(0, 0, tensors[0].numel())
        for p in self.passes:
            if p.runs(stats):
                rows = max(1, len(tensors[0]) // p.sample) if tensors[0].dim() > 1 else len(tensors[0])
                share = p.gather(None if base is None else base[:rows], [x[:rows] for x in tensors], params, stats, block)
                stats.update(p.finish([share], stats, params))
        return stats

    def whole(self, base: "torch.Tensor | None", tensors: "list[torch.Tensor]", params: dict[str, Any]) -> "torch.Tensor":
        """The whole-tensor kernel: the statistics, then the kernel over the tensor as one block."""
        return self.kernel(base, tensors, params, self.statistics(base, tensors, params), Block(0, 0, tensors[0].numel()))


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
    `whole` is the kernel when none is given, and must be the kernel's result wherever it
    applies (the engine may merge a whole tensor by it, in tiles).
    deltas: the kernel (and its passes) use each model only as its difference from the base,
    which is float32: the engine hands the models over in their own float dtype, since the
    subtraction widens them anyway (no float32 copy of each model is made and held; a GPU reads
    the narrow dtype in the subtraction itself).
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
    deltas: bool = False

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
