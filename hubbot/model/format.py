"""The safetensors format, read and written without mmap-ing whole files.

A safetensors file is an 8-byte little-endian header length n, n bytes of JSON
(`{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}`) and the data;
offsets count from byte 8 + n. So one tensor, or a block of its rows, is one byte range:
the same code reads local files (pread) and Hub files (HTTP ranges).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass

import torch

from ..errors import SourceError
from .dtypes import CODE_NAMES

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
CODES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}
TORCH_NAMES: dict[str, torch.dtype] = {name: DTYPES[code] for code, name in CODE_NAMES.items()}
MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor's bytes live: `offset` is absolute within `file`."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: str
    offset: int
    nbytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def itemsize(self) -> int:
        return DTYPES[self.dtype].itemsize

    def row_range(self, start: int, stop: int) -> tuple[int, int]:
        """Byte offset and length of rows [start, stop) along the first axis."""
        row = self.nbytes // self.shape[0] if self.shape and self.shape[0] else self.nbytes
        return self.offset + start * row, (stop - start) * row


def json_kind(value: object) -> str:
    """What a JSON value is, in JSON's words, for errors about files that hold the wrong kind."""
    kinds = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


def header_length(first8: bytes, file: str, size: int | None = None) -> int:
    """The header length from a file's first 8 bytes, refused when it cannot be right (`size`:
    the file's length in bytes, where known)."""
    if len(first8) < 8:
        raise SourceError(f"{file}: too short to be a safetensors file")
    (n,) = struct.unpack("<Q", first8[:8])
    if n > MAX_HEADER or n < 2:
        raise SourceError(f"{file}: safetensors header of {n} bytes is implausible; the file is damaged")
    if size is not None and 8 + n > size:
        raise SourceError(f"{file}: safetensors header of {n} bytes runs past the end of the file ({size} bytes); "
                          "the file is damaged or truncated")
    return n


def parse_header(raw: bytes, file: str, label: str,
                 size: int | None = None) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Tensor infos and `__metadata__` from the header JSON `raw` (the bytes after the length),
    every entry checked: what planning trusts here decides which bytes the engine reads.

    `file` is the path within the model; `label` names the model in errors; `size` is the
    file's length in bytes, where known."""
    where = f"{label}/{file}"
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise SourceError(f"{where}: the safetensors header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise SourceError(f"{where}: the safetensors header is a JSON {json_kind(header)}, not an object of "
                          "tensors; the file is damaged or not a safetensors file")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise SourceError(f"{where}: the safetensors __metadata__ must map names to strings; the file is damaged")
    base = 8 + len(raw)
    infos = {name: _entry(name, entry, file, where, base) for name, entry in header.items()}
    _check_layout(infos, where, base, size)
    return infos, meta


def _entry(name: str, entry: object, file: str, where: str, base: int) -> TensorInfo:
    """One header entry as a TensorInfo, its dtype, shape and offsets checked against each other."""
    damaged = f"{where}: tensor '{name}'"
    if not isinstance(entry, dict):
        raise SourceError(f"{damaged}: its header entry is a {json_kind(entry)}, not "
                          "{dtype, shape, data_offsets}; the file is damaged")
    code = entry.get("dtype")
    if code not in DTYPES:
        raise SourceError(f"{damaged} has dtype {code!r}, which hubbot cannot read")
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not isinstance(shape, list) or not all(_count(d) for d in shape):
        raise SourceError(f"{damaged}: shape {shape!r} is not a list of non-negative integers; the file is damaged")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_count(o) for o in offsets)):
        raise SourceError(f"{damaged}: data_offsets {offsets!r} is not [begin, end]; the file is damaged")
    begin, end = offsets
    if end < begin:
        raise SourceError(f"{damaged}: data_offsets [{begin}, {end}] end before they begin; the file is damaged")
    nbytes = math.prod(shape) * DTYPES[code].itemsize
    if end - begin != nbytes:
        raise SourceError(f"{damaged}: data_offsets [{begin}, {end}] hold {end - begin} bytes, but shape {shape} "
                          f"of {code} needs {nbytes}; the file is damaged")
    return TensorInfo(name, code, tuple(shape), file, base + begin, nbytes)


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_layout(infos: dict[str, TensorInfo], where: str, base: int, size: int | None) -> None:
    """No two tensors share bytes, and none reaches past the end of the file."""
    previous: TensorInfo | None = None
    for info in sorted((i for i in infos.values() if i.nbytes), key=lambda i: i.offset):
        if previous is not None and info.offset < previous.offset + previous.nbytes:
            raise SourceError(f"{where}: tensors '{previous.name}' and '{info.name}' share bytes "
                              f"(offsets {previous.offset - base}+{previous.nbytes} and {info.offset - base}); "
                              "the file is damaged")
        previous = info
    if size is not None and previous is not None and previous.offset + previous.nbytes > size:
        raise SourceError(f"{where}: tensor '{previous.name}' ends at byte {previous.offset + previous.nbytes}, "
                          f"past the end of the file ({size} bytes); the file is damaged or truncated")


def decode(buf: bytearray | memoryview, info: TensorInfo, rows: tuple[int, int] | None = None) -> torch.Tensor:
    """A tensor over `buf` without copying (rows: a block along the first axis)."""
    shape = info.shape if rows is None else (rows[1] - rows[0], *info.shape[1:])
    if math.prod(shape) == 0:
        return torch.empty(shape, dtype=DTYPES[info.dtype])
    return torch.frombuffer(buf, dtype=DTYPES[info.dtype]).reshape(shape)


def to_bytes(tensor: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a contiguous CPU tensor, without a copy."""
    flat = tensor.contiguous().reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return memoryview(flat.view(torch.uint8).numpy())


def build_header(entries: list[tuple[str, str, tuple[int, ...], int]], metadata: dict[str, str]) -> tuple[bytes, list[int]]:
    """Header bytes (length prefix included, padded to 8) and each entry's absolute offset.

    `entries` are (name, dtype code, shape, nbytes) in file order.
    """
    header: dict[str, object] = {"__metadata__": metadata}
    pos = 0
    starts = []
    for name, code, shape, nbytes in entries:
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [pos, pos + nbytes]}
        starts.append(pos)
        pos += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    prefix = struct.pack("<Q", len(raw)) + raw
    return prefix, [len(prefix) + s for s in starts]
