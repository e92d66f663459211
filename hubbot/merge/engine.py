"""The streaming merge: read a few tensors, merge them on the device, write, repeat.

Memory holds only the tensors in flight (the current one and the next ones being prefetched
on a thread), whatever the model size. Elementwise methods go further and merge a large
tensor block of rows by block, reading only those rows; methods with a blockwise form (SLERP,
TIES and most of the catalogue) first read the blocks once per statistics pass, then merge
them block by block; the passes run on a thread of their own, a task or more ahead of the
merges, so their counting uses the CPU the merges leave idle. Blocks are a few MB, so they stay in the CPU caches and the allocator
reuses their memory. A fused expert tensor ([experts, ...]) is merged one expert's slice at a
time, as that expert's own tensor (its cuts, norms and random draws per expert). The output is
written into `<out>.partial` and renamed into place when complete, so a failed merge leaves no
output that looks finished.
"""

from __future__ import annotations

import ctypes
import gc
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..errors import Cancelled, MergeError
from ..methods import Block, Blockwise
from ..model.format import DTYPES, TORCH_NAMES
from ..sources.computed import ComputedSource
from .card import RunFacts
from .plan import CHUNK_BYTES, Plan, TensorTask
from .transfer import Returning, Staged, Transfer
from .writer import DEFAULT_SHARD_BYTES, ShardWriter

PREFETCH = 2  # units read ahead at most,
PREFETCH_BYTES = 32 << 20  # and input bytes read ahead beyond the next unit: whole large tensors are not queued twice
WRITE_BEHIND = 2  # results handed to the write thread and not yet written
CUDA_CHUNK_BYTES = (64 << 20, 512 << 20)  # the least and most float32 bytes of a block on a GPU (see `chunk_bytes_for`)
TILE_BYTES = 1 << 20  # float32 bytes of a tile per intra-op thread: a block's kernel runs tile by tile on the CPU (see `_tiled`)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8  # glibc mallopt parameters
SIDE_FILES = ("generation_config.json",)
_DELTA_DTYPES = (torch.bfloat16, torch.float16, torch.float32)  # widened exactly by a subtraction from float32


@dataclass
class Progress:
    tensors_done: int
    tensors_total: int
    bytes_done: int
    bytes_total: int


@dataclass
class RunResult:
    folder: Path
    files: list[Path]
    seconds: float
    device: str
    bytes_read: int
    bytes_written: int
    tensors: int
    resumed_shards: int = 0
    side_files: list[str] = field(default_factory=list)

    def facts(self) -> RunFacts:
        """What the model card says about this run."""
        return RunFacts(self.seconds, self.device, self.bytes_written, self.tensors)


def pick_device(name: str | None = None) -> torch.device:
    """`name` if given and usable here, else CUDA when present, else the CPU. Checked before any
    work, so a wrong --device fails at once rather than once per tensor or candidate."""
    if not name or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise MergeError(f"--device {name}: hubbot merges on the CPU or on CUDA GPUs; use --device cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MergeError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise MergeError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                         f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return dev


@dataclass(frozen=True)
class _Unit:
    """A task, or a block of its rows [rows[0], rows[1]), in one of its phases: a statistics
    pass (0 .. passes-1) or the merge itself (`phase == passes`)."""

    task: TensorTask
    rows: tuple[int, int] | None
    block: int = 0
    blocks: int = 1
    phase: int = 0
    passes: int = 0
    sample: int = 1

    @property
    def merges(self) -> bool:
        return self.phase == self.passes

    @property
    def read_rows(self) -> tuple[int, int] | None:
        """The rows read: all of the block's, or the first 1/sample of them for a sampling pass."""
        if self.rows is None or self.sample == 1:
            return self.rows
        return self.rows[0], self.rows[0] + max(1, (self.rows[1] - self.rows[0]) // self.sample)


def _units(plan: Plan, writer: ShardWriter, chunk_bytes: int) -> list[_Unit]:
    units = []
    for task in plan.tasks:
        if writer.is_done(task.name):
            continue
        rows, passes = plan.blocks(task, chunk_bytes)
        if rows is None:
            units.append(_Unit(task, None))
        else:
            steps = plan.method.blockwise.passes if passes else ()
            units += [_Unit(task, r, j, len(rows), phase, passes, steps[phase].sample if phase < passes else 1)
                      for phase in range(passes + 1) for j, r in enumerate(rows)]
    return units


def _reuse_freed_memory() -> None:
    """Ask glibc's allocator to keep freed blocks for reuse. By default it hands memory above a
    few MB back to the system and faults it in again on the next allocation, which on the
    CPU made each kernel operation on a block take twice as long; and it gives each thread
    a heap of its own, where memory one thread freed waits for that thread (some 50 MB more
    at the peak of a 255 M TIES merge, with its passes on a thread of their own)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return
    libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)  # blocks and layer tensors from the heap, not fresh mappings
    libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)   # and the heap not trimmed between blocks
    libc.mallopt(M_ARENA_MAX, 1)  # one heap for every thread: the statistics lane's blocks reuse the merges' memory


def chunk_bytes_for(dev: torch.device) -> int:
    """The float32 bytes of a block of rows on `dev`: cache-sized on the CPU; on a GPU a 128th of
    its memory, within CUDA_CHUNK_BYTES. Every tensor of a 7 B model but its embeddings is then
    merged whole, its statistics passes within the kernel: in 64 MB blocks their passes read the
    inputs a second time, and a 7 B-shaped model's Model Stock took 1.5x the time of its linear merge."""
    if dev.type != "cuda":
        return CHUNK_BYTES
    low, high = CUDA_CHUNK_BYTES
    return max(low, min(high, torch.cuda.get_device_properties(dev).total_memory // 128))


def settle_imports() -> None:
    """For a process that runs one merge (`hubbot merge`, a job's worker), once its libraries are
    imported: the garbage collector stops looking at what importing torch left (some 170,000
    objects, never freed), which it otherwise walks through again and again as the plan and the
    merge loop allocate (planning a small model took 0.25 s instead of 0.04 s)."""
    gc.collect()
    gc.freeze()


def check_output_folder(out: Path) -> None:
    """The output folder must be new or empty (so nothing finished is overwritten), and
    creatable: checked before any work."""
    if out.exists() and not out.is_dir():
        raise MergeError(f"{out} is a file, not a folder; choose a new --out folder")
    if out.is_dir() and any(out.iterdir()):
        raise MergeError(f"{out} already exists and is not empty; choose a new --out folder or remove it")
    parent = next(p for p in Path(os.path.abspath(out)).parents if p.exists())
    try:
        # a real try: permission bits alone miss /proc and read-only mounts
        os.rmdir(tempfile.mkdtemp(prefix=".hubbot-probe-", dir=parent))
    except OSError as exc:
        raise MergeError(f"{out} cannot be created: {parent} is not a folder this process may write to "
                         f"({exc.strerror}); choose another --out folder") from None


def run(
    plan: Plan,
    out: Path,
    *,
    device: str | None = None,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    chunk_bytes: int | None = None,
    progress: Callable[[Progress], None] | None = None,
    cancel: threading.Event | None = None,
    on_shard: Callable[[Path], None] | None = None,
    on_written: Callable[[Path], None] | None = None,
    resume: bool = False,
    keep_partial: bool = False,
) -> RunResult:
    """Merge `plan` into the folder `out` and return what was written.

    `on_shard(path)` hears of each shard as it completes; `on_written(folder)` runs once every
    file is written, before the folder takes its final name (a failure there fails the run).
    `resume` keeps shards that an interrupted run with the same plan completed;
    `keep_partial` leaves `<out>.partial` behind on failure so a later run can resume.
    `chunk_bytes` sizes the blocks of rows (default: cache-sized on the CPU, larger on a GPU).
    """
    plan.raise_for_problems()
    out = Path(out)
    check_output_folder(out)
    partial = out.with_name(out.name + ".partial")
    if partial.exists() and not resume:
        shutil.rmtree(partial)
    dev = pick_device(device)
    if dev.type == "cpu":
        _reuse_freed_memory()
    if chunk_bytes is None:
        chunk_bytes = chunk_bytes_for(dev)
    started = time.monotonic()
    writer = ShardWriter(partial, plan.tasks, shard_bytes, on_shard=on_shard, resume=resume, durable=keep_partial)
    resumed = sum(1 for s in writer.shards if s.done)
    try:
        bytes_read = _merge(plan, writer, dev, chunk_bytes, progress, cancel)
        files = writer.close()
        side = _write_side_files(plan, partial)
        if on_written:
            on_written(partial)
    except BaseException:
        writer.abort()
        if not keep_partial:
            shutil.rmtree(partial, ignore_errors=True)
        raise
    if out.exists():
        out.rmdir()
    partial.rename(out)
    return RunResult(
        folder=out,
        files=[out / f.name for f in files],
        seconds=time.monotonic() - started,
        device=str(dev),
        bytes_read=bytes_read,
        bytes_written=writer.total_size,
        tensors=len(plan.tasks),
        resumed_shards=resumed,
        side_files=side,
    )


def _merge(plan: Plan, writer: ShardWriter, dev: torch.device, chunk_bytes: int,
           progress: Callable[[Progress], None] | None, cancel: threading.Event | None) -> int:
    """Run every unit: the statistics passes of each task on a lane of their own (one thread
    going through the tasks in order, ahead of the merges, so that their counting runs beside
    the kernels rather than between them), the merges here, with their reads prefetched on one
    thread and their writes (after the copies back) done on another. Returns the bytes read."""
    units = _units(plan, writer, chunk_bytes)
    if units:  # tensors computed here (MoE routers) first: the work may be long, and may be cancelled
        for source in plan.sources:
            if isinstance(source, ComputedSource):
                source.compute(cancel)
    total = len(plan.tasks)
    done_tensors = total - len({u.task.name for u in units})
    done_bytes = writer.total_size - sum(_unit_bytes(u) for u in units if u.merges)
    bytes_read = 0
    method = plan.method
    inputs = _Inputs(dev, TORCH_NAMES[plan.input_dtype] if plan.input_dtype else None, method.deltas)
    transfer = Transfer(dev)
    merges = [u for u in units if u.merges]
    passes: dict[str, list[_Unit]] = {}
    for u in units:
        if not u.merges:
            passes.setdefault(u.task.name, []).append(u)
    stop = threading.Event()  # the merge ended early: the lane stops at its next block

    def fetch(unit: _Unit) -> tuple[int, Staged]:
        """The unit's inputs (base first) and the bytes read; embedding rows in output vocabulary order."""
        reads = unit.task.reads
        raw = [plan.sources[i.source].read(i.name, unit.read_rows) for i in reads]
        nbytes = sum(x.numel() * x.element_size() for x in raw)
        if unit.task.vocab:
            raw = plan.vocab.align([i.source for i in reads], raw)
        return nbytes, transfer.stage(raw)

    def statistics(todo: list[_Unit]) -> tuple[dict, int]:
        """A task's statistics and the bytes read for them: its passes over its blocks in order,
        one read ahead; a pass that is not needed (`Pass.needed`) is neither read nor run."""
        task = todo[0].task
        task_stats: dict = {}
        nbytes = 0
        for phase, step in enumerate(method.blockwise.passes):
            if not step.runs(task_stats):
                continue
            blocks = [u for u in todo if u.phase == phase]
            shares: list = []
            next_read = pool.submit(fetch, blocks[0])
            for i, unit in enumerate(blocks):
                n, staged = next_read.result()
                if stop.is_set() or (cancel is not None and cancel.is_set()):
                    raise Cancelled("the merge was cancelled")
                if i + 1 < len(blocks):
                    next_read = pool.submit(fetch, blocks[i + 1])
                nbytes += n
                base, tensors = inputs.prepare(task, transfer.arrive(staged))
                with _refusals(task, dev):
                    share = step.gather(base, tensors, task.params, task_stats, _block(plan, unit))
                if step.fold is not None and shares:  # one running total, not every share
                    shares[0] = step.fold(shares[0], share)
                else:
                    shares.append(share)
            with _refusals(task, dev):
                task_stats.update(step.finish(shares, task_stats, task.params))
        return task_stats, nbytes

    def write(task: TensorTask, result: Returning, row_offset: int) -> None:
        host, finite = result.wait()
        if not finite:
            raise _not_finite(task)
        writer.write(task.name, host, row_offset)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="hubbot-read") as pool, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="hubbot-write") as out, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="hubbot-stats") as lane:
        # with a second CPU to use the lane runs ahead; with one, a task's passes run when it comes
        threads = torch.get_num_threads()
        beside = threads >= 2 and bool(passes)
        pending = {name: lane.submit(_with_threads, threads // 2, statistics, todo)
                   for name, todo in passes.items()} if beside else {}
        stats: dict[str, dict] = {}
        reading: dict[int, Future] = {}
        taken = -1  # the last unit whose read was taken

        def read_ahead(k: int) -> None:
            """Keep unit k and up to PREFETCH units after it reading, within PREFETCH_BYTES
            beyond the next one."""
            beyond = 0
            for j in range(k, min(len(merges), k + PREFETCH + 1)):
                if j >= k + 2:
                    beyond += _input_bytes(merges[j])
                    if beyond > PREFETCH_BYTES:
                        break
                if j > taken and j not in reading:
                    reading[j] = pool.submit(fetch, merges[j])

        try:
            if beside:  # the CPUs shared between the merges and the lane
                torch.set_num_threads(threads - threads // 2)
            writes: list[Future] = []
            for k, unit in enumerate(merges):
                if cancel is not None and cancel.is_set():
                    raise Cancelled("the merge was cancelled")
                read_ahead(k)
                nbytes, staged = reading.pop(k).result()
                taken = k
                read_ahead(k)
                raw = transfer.arrive(staged)
                bytes_read += nbytes
                task = unit.task
                if unit.block == 0 and task.name in passes:  # its first block: its statistics are needed now
                    job = pending.pop(task.name, None)
                    stats[task.name], nbytes = job.result() if job is not None else statistics(passes[task.name])
                    bytes_read += nbytes
                blockwise = method.blockwise_for(task.params)
                if task.copy:
                    result = Returning(raw[-1].cpu())
                elif unit.rows is not None and plan.per_expert(task):  # a block is one expert's slice
                    kernel = _one_expert(method.kernel, task.expert_params(unit.block))
                    result = _compute(task, raw, transfer, inputs, kernel)
                elif blockwise is not None:  # a whole tensor's passes run with its merge
                    task_stats = stats.get(task.name, {}) if unit.rows is not None else None
                    result = _tiled(task, raw, transfer, inputs, blockwise, task_stats, _block(plan, unit))
                else:
                    result = _compute(task, raw, transfer, inputs, method.kernel)
                row_offset = 0
                if unit.rows is not None:
                    row_offset = unit.rows[0] * (task.nbytes // task.shape[0])
                writes.append(out.submit(write, task, result, row_offset))
                if len(writes) > WRITE_BEHIND:
                    writes.pop(0).result()  # a failed write surfaces here
                done_bytes += _unit_bytes(unit)
                if unit.block == unit.blocks - 1:
                    done_tensors += 1
                    stats.pop(task.name, None)
                if progress:
                    progress(Progress(done_tensors, total, done_bytes, writer.total_size))
            for f in writes:
                f.result()
        finally:
            torch.set_num_threads(threads)
            stop.set()
            for f in [*pending.values(), *reading.values()]:
                f.cancel()
    return bytes_read


def _with_threads(n: int, work: Callable, *args: object) -> object:
    """`work(*args)` with torch's intra-op threads set to `n` on this thread (the lane's own, so
    nothing to restore): two threads each splitting every operation over all the CPUs woke each
    other's workers all the time (a tenth more time on two cores)."""
    torch.set_num_threads(n)
    return work(*args)


def _block(plan: Plan, unit: _Unit) -> Block:
    """Where the unit's block lies in its task's tensor."""
    task = unit.task
    entries = task.numel // max(1, unit.blocks) if plan.per_expert(task) else task.numel
    return Block(unit.block, unit.rows[0] if unit.rows else 0, entries)


def _rows_bytes(task: TensorTask, rows: tuple[int, int] | None) -> int:
    """The output bytes of `rows` of the task's tensor (None: all of it)."""
    return task.nbytes if rows is None else (rows[1] - rows[0]) * (task.nbytes // task.shape[0])


def _unit_bytes(unit: _Unit) -> int:
    return _rows_bytes(unit.task, unit.rows)


def _input_bytes(unit: _Unit) -> int:
    """About what reading the unit's inputs holds in memory (at the output dtype's size)."""
    return _rows_bytes(unit.task, unit.read_rows) * len(unit.task.reads)


@dataclass(frozen=True)
class _Inputs:
    """How a unit's raw inputs become a kernel's: cast to the recipe dtype first (as the format
    defines), then float32 on the device, except the models of a method that reads them only as
    differences from the (float32) base (`Method.deltas`), which keep their float dtype."""

    dev: torch.device
    dtype: torch.dtype | None
    deltas: bool

    def prepare(self, task: TensorTask, raw: list[torch.Tensor]) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        """The base (float32) split off, and the models."""
        def prep(x: torch.Tensor, widen: bool) -> torch.Tensor:
            if self.dtype is not None:
                x = x.to(self.dtype)
            if not widen and x.dtype in _DELTA_DTYPES:
                return x.to(self.dev)
            return x.to(device=self.dev, dtype=torch.float32)

        keep = self.deltas and task.base is not None  # the base comes first
        tensors = [prep(x, widen=j == 0 or not keep) for j, x in enumerate(raw)]
        base = tensors.pop(0) if task.base else None
        return base, tensors


@contextmanager
def _refusals(task: TensorTask, dev: torch.device) -> Iterator[None]:
    """Errors from a method's passes or kernel, as errors that name the tensor and what to do."""
    try:
        yield
    except torch.OutOfMemoryError:
        raise MergeError(f"tensor '{task.name}': out of {dev.type} memory while merging; "
                         "try --device cpu or a machine with more memory") from None
    except ValueError as exc:  # a method's own refusal (e.g. directions that cancel out)
        raise MergeError(f"tensor '{task.name}': {exc}") from None


def _not_finite(task: TensorTask) -> MergeError:
    return MergeError(f"tensor '{task.name}': the merge produced NaN or Inf values; check the parameters "
                      "of this tensor (weights summing to zero, extreme lambda) and the input models")


def _check_finite(task: TensorTask, out: torch.Tensor) -> None:
    """On the CPU: a sum is finite exactly when every entry is (unless it overflows), so one cheap
    reduction, and the entry-by-entry check only to confirm."""
    if not bool(torch.isfinite(out.sum())) and not bool(torch.isfinite(out).all()):
        raise _not_finite(task)


def _compute(task: TensorTask, raw: list[torch.Tensor], transfer: Transfer, inputs: _Inputs,
             kernel: Callable) -> Returning:
    """Merge in float32, check the result is finite, cast it to the output dtype on its way back."""
    base, tensors = inputs.prepare(task, raw)
    with _refusals(task, transfer.dev):
        out = kernel(base, tensors, task.params)
    if not transfer.cuda:  # a GPU checks on the way back
        _check_finite(task, out)
    return transfer.send_back(out, out.dtype if task.ternary else DTYPES[task.dtype])  # the writer encodes ternary


def _tiled(task: TensorTask, raw: list[torch.Tensor], transfer: Transfer, inputs: _Inputs, blockwise: Blockwise,
           stats: dict | None, block: Block) -> Returning:
    """`_compute` by a blockwise form, whose kernel merges any run of a tensor's rows once its
    statistics are known (None: a whole tensor, whose passes run here first): on the CPU, tile
    by tile of TILE_BYTES per thread, each cast into the output as it is done. A block's dozen
    and more passes over its float32 temporaries then run within the caches: on one thread a
    4 MB block of TIES took 12 ms whole and 8 ms in 1 MB tiles (0.5 to 2 MB: the same; smaller,
    Python's share grows), of DARE 25 and 21 ms; on two, DARE was fastest in 2 MB tiles (a
    linear merge's few passes gain nothing: it is not tiled). The tiles are the block's, in
    order, as smaller blocks: only the first tile of a tensor is its first (a walk over the
    blocks that keeps ties in index order starts there), and each knows its first row (draws
    keyed on rows)."""
    rows = raw[0].shape[0] if raw[0].dim() > 1 else 1  # a vector is one row (DELLA ranks within rows)
    step = max(1, TILE_BYTES * torch.get_num_threads() // 4 // max(1, raw[0].numel() // rows))
    if transfer.cuda or step >= rows:
        return _compute(task, raw, transfer, inputs, blockwise.whole if stats is None else
                        lambda b, xs, p, s=stats: blockwise.kernel(b, xs, p, s, block))
    whole = None
    if stats is None:  # prepared once: its passes, then its tiles, read the same tensors
        whole = inputs.prepare(task, raw)
        with _refusals(task, transfer.dev):
            stats = blockwise.statistics(*whole, task.params)
    merged: torch.Tensor | None = None
    for first in range(0, rows, step):
        tile = Block(block.index if first == 0 else block.index + 1, block.row + first, block.entries)
        if whole is None:  # a block: each tile widened as it comes, while it is in the caches
            base, tensors = inputs.prepare(task, [x[first:first + step] for x in raw])
        else:
            base = None if whole[0] is None else whole[0][first:first + step]
            tensors = [x[first:first + step] for x in whole[1]]
        with _refusals(task, transfer.dev):
            out = blockwise.kernel(base, tensors, task.params, stats, tile)
        _check_finite(task, out)
        if merged is None:
            merged = torch.empty(raw[0].shape, dtype=out.dtype if task.ternary else DTYPES[task.dtype])
        merged[first:first + step].copy_(out)
    assert merged is not None
    return Returning(merged)


def _one_expert(kernel: Callable, params: dict) -> Callable:
    """`kernel` on one expert's slice (the inputs' single row of a fused expert tensor), with that
    expert's parameters; the result keeps the row, as the writer places it."""
    def merge(base: torch.Tensor | None, tensors: list[torch.Tensor], _: dict) -> torch.Tensor:
        return kernel(None if base is None else base[0], [x[0] for x in tensors], params).unsqueeze(0)

    return merge


def _write_side_files(plan: Plan, folder: Path) -> list[str]:
    """config.json, tokenizer and generation files, and the recipe (mergekit_config.yml, or
    mergekit_moe_config.yml for a mixture of experts)."""
    import json

    recipe_file = plan.recipe.FILE_NAME
    written = ["config.json", recipe_file]
    (folder / "config.json").write_text(json.dumps(plan.config, indent=2) + "\n")
    (folder / recipe_file).write_text(plan.recipe.text if plan.recipe.text.endswith("\n")
                                      else plan.recipe.text + "\n")
    if plan.tokenizer is not None:
        for name, data in plan.tokenizer.files().items():
            (folder / name).write_bytes(data)
            written.append(name)
    ref = plan.sources[0]
    have = set(ref.files())
    for name in SIDE_FILES:
        if name in have:
            (folder / name).write_bytes(ref.read_file(name))
            written.append(name)
    return written
