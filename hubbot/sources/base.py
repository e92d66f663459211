"""What every model source answers: its config, its files, its tensors and their bytes.

Local folders and Hub repos differ only in how bytes arrive; planning and the engine see
this interface alone.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod

import torch

from ..errors import SourceError
from ..model.format import TensorInfo, decode, header_length, json_kind, parse_header
from ..recipe.refs import ModelRef

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
BIN_INDEX_FILE = "pytorch_model.bin.index.json"
BIN_FILE = "pytorch_model.bin"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json")


class Source(ABC):
    """One model's weights and side files. `revision` is the pinned commit for Hub sources."""

    is_model = True  # False for tensors computed in this process: no files, revision or license

    def __init__(self, ref: ModelRef):
        self.ref = ref
        self.revision: str | None = None
        self._config: dict | None = None
        self._tensors: dict[str, TensorInfo] | None = None

    @property
    def label(self) -> str:
        return str(self.ref)

    def pinned(self) -> str:
        """The reference with a Hub source's revision pinned to the commit that was read."""
        if self.ref.local or not self.revision:
            return str(self.ref)
        return f"{self.ref.path}@{self.revision}"

    @abstractmethod
    def files(self) -> list[str]:
        """Every file path in the model, relative to its root."""

    @abstractmethod
    def read_file(self, path: str) -> bytes:
        """A whole (small) file such as config.json or tokenizer.json."""

    @abstractmethod
    def read_range(self, path: str, offset: int, length: int) -> bytearray | memoryview:
        """`length` bytes of a file from `offset`."""

    @abstractmethod
    def _load_tensor_infos(self) -> dict[str, TensorInfo]:
        """Read headers only: names, dtypes, shapes and byte positions."""

    def config(self) -> dict:
        if self._config is None:
            if "config.json" not in self.files():
                raise SourceError(f"{self.label}: has no config.json; is it a transformers model?")
            try:
                config = json.loads(self.read_file("config.json"))
            except (ValueError, RecursionError) as exc:
                raise SourceError(f"{self.label}: config.json is not valid JSON ({exc})") from None
            if not isinstance(config, dict):
                raise SourceError(f"{self.label}: config.json holds a JSON {json_kind(config)}, not an object "
                                  "of settings; is it a transformers model?")
            self._config = config
        return self._config

    def tensors(self) -> dict[str, TensorInfo]:
        if self._tensors is None:
            self._tensors = self._load_tensor_infos()
        return self._tensors

    def weight_files(self) -> list[str]:
        """The safetensors shards that hold the weights, from the index when there is one."""
        files = self.files()
        if INDEX_FILE in files:
            return self.index_shards(INDEX_FILE)
        if SINGLE_FILE in files:
            return [SINGLE_FILE]
        shards = sorted(f for f in files if f.endswith(".safetensors") and "/" not in f)
        if shards:
            return shards
        if BIN_FILE in files or BIN_INDEX_FILE in files:
            raise SourceError(
                f"{self.label}: holds only pickled .bin weights; convert it to safetensors "
                "(hubbot reads pickles only from local folders, with torch.load(weights_only=True))"
            )
        raise SourceError(f"{self.label}: has no safetensors weights")

    def index_shards(self, index_file: str) -> list[str]:
        """The shard files an index's `weight_map` names, each one a file of this model (an index
        cannot point reads anywhere else)."""
        try:
            weight_map = json.loads(self.read_file(index_file))["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            raise SourceError(f"{self.label}: {index_file} is damaged ({type(exc).__name__}: {exc}); it needs "
                              "a 'weight_map' of tensor names to shard files") from None
        files = set(self.files())
        strays = [s for s in shards if s not in files]
        if strays:
            raise SourceError(f"{self.label}: {index_file} names shard {strays[0]!r}, which the model does not "
                              "have; the index is damaged")
        return shards

    def read_header(self, path: str) -> dict[str, TensorInfo]:
        """The tensors of one safetensors file: its 8-byte length, then exactly the header, so
        planning reads no tensor bytes even from small files."""
        first8 = bytes(self.read_range(path, 0, 8))
        size = self.file_size(path)
        n = header_length(first8, f"{self.label}/{path}", size)
        found, _ = parse_header(bytes(self.read_range(path, 8, n)), path, self.label, size)
        return found

    def file_size(self, path: str) -> int | None:
        """The length of a file in bytes, where the source knows it without another request:
        headers are checked against it, so no tensor is planned past the end of its file."""
        return None

    def read(self, name: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
        """One tensor (or a block of its rows) in its stored dtype, on the CPU."""
        info = self.tensors()[name]
        if rows is None:
            offset, length = info.offset, info.nbytes
        else:
            offset, length = info.row_range(*rows)
        return decode(self.read_range(info.file, offset, length), info, rows)

    def close(self) -> None:
        """Release open files or connections."""
