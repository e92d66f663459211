"""Sharded safetensors output, written tensor by tensor as the merge produces them.

The plan knows every output tensor's shape and dtype up front, so shard boundaries and each
shard's header are fixed before the first tensor is computed. Tensors (or blocks of rows) are
then written straight to their final offsets; a shard is complete, closed and announced the
moment its last byte lands, so it can be uploaded while the merge goes on. A ternary task
(out_dtype: ternary) is stored as two tensors, its packed values and their scale, encoded here
from the merged float weight.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..errors import MergeError
from ..model import quant
from ..model.format import DTYPES, build_header, to_bytes
from .plan import TensorTask

INDEX_NAME = "model.safetensors.index.json"
PROGRESS_NAME = ".hubbot-shards-done"
DEFAULT_SHARD_BYTES = 5 * 1000**3


@dataclass
class Shard:
    name: str
    header: bytes
    offsets: dict[str, int]
    remaining: int
    fd: int | None = None
    done: bool = False
    tensors: list[str] = field(default_factory=list)


class ShardWriter:
    """Writes planned tensors into shards of at most `shard_bytes` (a bigger tensor gets its own).

    `on_shard(path)` is called as each shard completes. With `resume`, shards recorded as
    complete in the folder by an earlier, interrupted run are kept and reported by `done`.
    `durable` shards reach the disk (fsync) before they are recorded as complete, so a later
    run may resume from them even after a machine crash; a run whose partial output is
    deleted on failure has no use for that and skips the wait.
    """

    def __init__(self, folder: Path, tasks: list[TensorTask], shard_bytes: int = DEFAULT_SHARD_BYTES,
                 on_shard: Callable[[Path], None] | None = None, resume: bool = False, durable: bool = True):
        self.folder = folder
        self.on_shard = on_shard
        self.durable = durable
        self.shards = self._layout(tasks, shard_bytes)
        self.where = {name: s for s in self.shards for name in s.tensors}
        self.ternary = {t.name: t for t in tasks if t.ternary}
        self.sizes = {t.name: t.nbytes for t in tasks}
        self.total_size = sum(self.sizes.values())
        folder.mkdir(parents=True, exist_ok=True)
        finished = set((folder / PROGRESS_NAME).read_text().split()) if resume and (folder / PROGRESS_NAME).exists() else set()
        for shard in self.shards:
            if shard.name in finished and (folder / shard.name).exists():
                shard.done, shard.remaining = True, 0

    @staticmethod
    def _layout(tasks: list[TensorTask], shard_bytes: int) -> list[Shard]:
        groups: list[list[TensorTask]] = [[]]
        size = 0
        for t in tasks:
            if groups[-1] and size + t.nbytes > shard_bytes:
                groups.append([])
                size = 0
            groups[-1].append(t)
            size += t.nbytes
        n = len(groups)
        shards = []
        for i, group in enumerate(groups):
            name = "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            entries = [e for t in group for e in _stored(t)]
            header, starts = build_header(entries, {"format": "pt"})
            shards.append(Shard(name, header, {e[0]: s for e, s in zip(entries, starts)},
                                sum(t.nbytes for t in group), tensors=[t.name for t in group]))
        return shards

    def is_done(self, tensor: str) -> bool:
        return self.where[tensor].done

    def write(self, tensor: str, data: torch.Tensor, byte_offset: int = 0) -> None:
        """Write `data` (CPU, final dtype; a ternary task's whole float32 weight) at `byte_offset`
        within the tensor's bytes."""
        shard = self.where[tensor]
        if shard.done:
            return
        if shard.fd is None:
            shard.fd = os.open(self.folder / shard.name, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            self._pwrite(shard, shard.header, 0)
        task = self.ternary.get(tensor)
        parts = [(tensor, data)]
        if task is not None:
            packed, scale = quant.encode_ternary(data)
            parts = [(tensor, packed), (quant.ternary_scale_name(tensor), torch.tensor([scale], dtype=DTYPES[task.dtype]))]
        for name, part in parts:
            raw = to_bytes(part)
            self._pwrite(shard, raw, shard.offsets[name] + byte_offset)
            shard.remaining -= len(raw)
        if shard.remaining == 0:
            self._finish(shard)

    def _pwrite(self, shard: Shard, raw: bytes | memoryview, offset: int) -> None:
        view = memoryview(raw)
        try:
            while view:
                n = os.pwrite(shard.fd, view, offset)
                view, offset = view[n:], offset + n
        except OSError as exc:
            raise MergeError(f"writing {shard.name} in {self.folder} failed: {exc.strerror}; "
                             "free some disk space or choose another --out folder") from None

    def _finish(self, shard: Shard) -> None:
        if self.durable:
            os.fsync(shard.fd)
        os.close(shard.fd)
        shard.fd, shard.done = None, True
        with open(self.folder / PROGRESS_NAME, "a") as f:
            f.write(shard.name + "\n")
        if self.on_shard:
            self.on_shard(self.folder / shard.name)

    def close(self) -> list[Path]:
        """Check every byte was written, write the index (sharded output) and return the files."""
        unfinished = [s.name for s in self.shards if not s.done]
        if unfinished:
            raise MergeError(f"internal error: shards {unfinished} were not filled")
        (self.folder / PROGRESS_NAME).unlink(missing_ok=True)
        files = [self.folder / s.name for s in self.shards]
        if len(self.shards) > 1:
            index = {"metadata": {"total_size": self.total_size},
                     "weight_map": {t: s.name for s in self.shards for t in s.offsets}}  # scales too
            (self.folder / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
            files.append(self.folder / INDEX_NAME)
        return files

    def abort(self) -> None:
        for s in self.shards:
            if s.fd is not None:
                os.close(s.fd)
                s.fd = None


def _stored(task: TensorTask) -> list[tuple[str, str, tuple[int, ...], int]]:
    """The tensors a task writes, as (name, dtype code, shape, nbytes): one, or a ternary
    weight's packed values (U8, a quarter of the rows) and its scale."""
    if not task.ternary:
        return [(task.name, task.dtype, task.shape, task.nbytes)]
    packed = (task.shape[0] // quant.TERNARY_PER_BYTE, *task.shape[1:])
    itemsize = DTYPES[task.dtype].itemsize
    return [(task.name, "U8", packed, task.nbytes - itemsize),
            (quant.ternary_scale_name(task.name), task.dtype, (1,), itemsize)]
