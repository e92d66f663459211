"""Models in a local folder: safetensors read with pread, pickles only with weights_only."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import SourceError
from ..model.format import CODES, TensorInfo
from ..recipe.refs import ModelRef
from .base import BIN_FILE, BIN_INDEX_FILE, Source

MAX_FILES = 10_000
MODEL_MARKERS = ("config.json", "adapter_config.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin")


def _looks_like_model(root: Path) -> bool:
    """Whether a folder holds a model or an adapter at its top: checked before anything walks
    it, so a path such as `/` is refused at once instead of listing the whole disk."""
    try:
        with os.scandir(root) as entries:
            return any(e.name in MODEL_MARKERS or e.name.endswith(WEIGHT_SUFFIXES) for e in entries)
    except OSError:
        return False


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
        if not _looks_like_model(self.root):
            raise SourceError(f"{ref}: {self.root} is not a model folder (it has no config.json, "
                              "adapter_config.json or weights); check the path in the recipe")
        self._fds: dict[str, int] = {}
        self._pickled: dict[str, torch.Tensor] | None = None
        self._files: list[str] | None = None

    def files(self) -> list[str]:
        """Every file under the folder, listed once; unreadable subfolders are skipped and a
        folder of more than MAX_FILES files is refused (it is not one model)."""
        if self._files is None:
            found = []
            for folder, dirs, names in os.walk(self.root):
                dirs.sort()
                found += [os.path.relpath(os.path.join(folder, n), self.root) for n in names
                          if os.path.isfile(os.path.join(folder, n))]
                if len(found) > MAX_FILES:
                    raise SourceError(f"{self.label}: {self.root} holds more than {MAX_FILES} files; is it one "
                                      "model's folder? check the path in the recipe")
            self._files = sorted(found)
        return self._files

    def file_size(self, path: str) -> int:
        return os.fstat(self._fd(path)).st_size

    def read_file(self, path: str) -> bytes:
        try:
            return (self.root / path).read_bytes()
        except OSError as exc:
            raise SourceError(f"{self.label}: cannot read {path}: {exc.strerror}") from None

    def _fd(self, path: str) -> int:
        if path not in self._fds:
            try:
                self._fds[path] = os.open(self.root / path, os.O_RDONLY)
            except OSError as exc:
                raise SourceError(f"{self.label}: cannot open {path}: {exc.strerror}") from None
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
            shards = self.index_shards(BIN_INDEX_FILE)
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
