"""Models in a local folder: safetensors read with pread, pickles only with weights_only."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..errors import SourceError
from ..model.format import CODES, TensorInfo
from ..recipe.refs import ModelRef
from .base import BIN_FILE, BIN_INDEX_FILE, Source


class LocalSource(Source):
    """A model folder on this machine. Reads only the byte ranges asked for.

    pread into a fresh buffer (rather than mmap) keeps the process's resident memory at
    the tensors in flight: mapped pages would count until the kernel evicts them.
    """

    def __init__(self, ref: ModelRef):
        super().__init__(ref)
        self.root = Path(os.path.expanduser(ref.path)).resolve()
        if not self.root.is_dir():
            raise SourceError(f"{ref}: no such folder ({self.root}); check the path in the recipe")
        self._fds: dict[str, int] = {}
        self._pickled: dict[str, torch.Tensor] | None = None

    def files(self) -> list[str]:
        return sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*") if p.is_file())

    def read_file(self, path: str) -> bytes:
        return (self.root / path).read_bytes()

    def _fd(self, path: str) -> int:
        if path not in self._fds:
            self._fds[path] = os.open(self.root / path, os.O_RDONLY)
        return self._fds[path]

    def read_range(self, path: str, offset: int, length: int) -> memoryview:
        # an uninitialised buffer: zero-filling it first would write every byte twice
        view = memoryview(torch.empty(length, dtype=torch.uint8).numpy())
        done = 0
        while done < length:
            try:
                n = os.preadv(self._fd(path), [view[done:]], offset + done)
            except OSError as exc:
                raise SourceError(f"{self.label}: reading {path} failed: {exc.strerror}") from None
            if n <= 0:
                raise SourceError(f"{self.label}: {path} ended early at byte {offset + done}; the file is truncated")
            done += n
        return view

    def _load_tensor_infos(self) -> dict[str, TensorInfo]:
        files = self.files()
        if not any(f.endswith(".safetensors") for f in files) and (BIN_FILE in files or BIN_INDEX_FILE in files):
            return self._load_pickled(files)
        infos: dict[str, TensorInfo] = {}
        for path in self.weight_files():
            infos.update(self.read_header(path))
        return infos

    def _load_pickled(self, files: list[str]) -> dict[str, TensorInfo]:
        """Pickled checkpoints: torch.load with weights_only (no code runs) and mmap (lazy)."""
        if BIN_INDEX_FILE in files:
            shards = sorted(set(json.loads(self.read_file(BIN_INDEX_FILE))["weight_map"].values()))
        else:
            shards = [BIN_FILE]
        self._pickled = {}
        infos = {}
        for shard in shards:
            try:
                state = torch.load(self.root / shard, map_location="cpu", weights_only=True, mmap=True)
            except Exception as exc:  # the unpickler refuses anything but plain tensors
                raise SourceError(f"{self.label}: {shard} could not be loaded safely ({exc}); "
                                  "convert it to safetensors") from None
            for name, tensor in state.items():
                if tensor.dtype not in CODES:
                    raise SourceError(f"{self.label}: tensor '{name}' has dtype {tensor.dtype}, which hubbot cannot merge")
                self._pickled[name] = tensor
                infos[name] = TensorInfo(name, CODES[tensor.dtype], tuple(tensor.shape), shard, -1,
                                         tensor.numel() * tensor.element_size())
        return infos

    def read(self, name: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
        if self._pickled is None:
            return super().read(name, rows)
        tensor = self._pickled[name]
        return (tensor if rows is None else tensor[rows[0]:rows[1]]).clone()

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
