"""Quantized checkpoints read as the float models they encode.

`unpack(source)` wraps a model whose `quantization_config` names a format hubbot decodes (fp8 with
`weight_scale_inv`, mxfp4 experts, packed BitNet b1.58): its tensors are then the float
parameters (each packed pair of values and scales becomes one float32 tensor under the
parameter's name; the scales themselves are not tensors of the view), read and decoded block by
block like any other tensor, and its config is the float model's, without quantization_config.
So planning, coverage and the engine see an ordinary float model, and the output never holds a
scale. Any other quantized format is not wrapped and stays refused at planning.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from ..errors import SourceError
from ..model import arch, quant
from ..model.dtypes import FLOAT_CODES
from ..model.format import TensorInfo
from .base import Source

FP8_CODES = ("F8_E4M3", "F8_E5M2")
FP8_SCALE = "_scale_inv"
MX_BLOCKS, MX_SCALES = "_blocks", "_scales"
PROBE_TENSORS, PROBE_ROWS = 2, 8


@dataclass(frozen=True)
class Packed:
    """One float parameter stored as two tensors: its low-bit `values` and their `scales`."""

    kind: str  # "fp8", "mxfp4", "ternary" (packed) or "scaled" (ternary values stored as floats)
    values: TensorInfo
    scales: TensorInfo


def quantization_config(config: dict) -> dict | None:
    qc = config.get("quantization_config") or arch.text_config(config).get("quantization_config")
    return qc if isinstance(qc, dict) else None


def unpack(source: Source) -> Source:
    """`source` as the float model it encodes, when it is stored in a format hubbot decodes;
    otherwise `source` itself."""
    if not source.is_model or isinstance(source, UnpackedSource):
        return source
    qc = quantization_config(source.config())
    method = qc.get("quant_method") if qc else None
    if method in ("fp8", "mxfp4") or method == "bitnet" and qc.get("quantization_mode", "offline") == "offline":
        return UnpackedSource(source, qc)
    return source


class UnpackedSource(Source):
    """`inner`'s weights decoded to float32 as they are read; files and bytes are `inner`'s."""

    def __init__(self, inner: Source, quantization: dict):
        super().__init__(inner.ref)
        self.inner = inner
        self.revision = inner.revision
        self.quantization = quantization
        self.method = quantization["quant_method"]
        self._packed: dict[str, Packed] = {}

    @property
    def label(self) -> str:
        return self.inner.label

    def pinned(self) -> str:
        return self.inner.pinned()

    def files(self) -> list[str]:
        return self.inner.files()

    def read_file(self, path: str) -> bytes:
        return self.inner.read_file(path)

    def read_range(self, path: str, offset: int, length: int) -> bytearray | memoryview:
        return self.inner.read_range(path, offset, length)

    def file_size(self, path: str) -> int | None:
        return self.inner.file_size(path)

    def config(self) -> dict:
        """The float model's config: the source's, without its quantization_config."""
        if self._config is None:
            config = copy.deepcopy(self.inner.config())
            config.pop("quantization_config", None)
            arch.text_config(config).pop("quantization_config", None)
            self._config = config
        return self._config

    def _load_tensor_infos(self) -> dict[str, TensorInfo]:
        stored = self.inner.tensors()
        pairs = {"fp8": self._fp8_pairs, "mxfp4": self._mxfp4_pairs, "bitnet": self._ternary_pairs}[self.method](stored)
        used = {p.scales.name for p in pairs.values()} | {p.values.name for p in pairs.values()}
        infos = {n: i for n, i in stored.items() if n not in used}
        for name, p in pairs.items():
            # where the bytes start and how many are read: the view's own dtype and shape are the float's
            infos[name] = TensorInfo(name, "F32", self._shape(p), p.values.file, p.values.offset,
                                     p.values.nbytes + p.scales.nbytes)
        self._packed = pairs
        return infos

    def _fail(self, message: str) -> SourceError:
        return SourceError(f"{self.label} (quant_method {self.method}): {message}")

    def _block(self) -> tuple[int, int] | None:
        block = self.quantization.get("weight_block_size")
        if block is None:
            return None
        if not (isinstance(block, list) and len(block) == 2
                and all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in block)):
            raise self._fail(f"quantization_config.weight_block_size is {block!r}; it must be two positive "
                             "integers such as [128, 128]")
        return block[0], block[1]

    def _fp8_pairs(self, stored: dict[str, TensorInfo]) -> dict[str, Packed]:
        block = self._block()
        pairs = {}
        for name, info in stored.items():
            if info.dtype in FP8_CODES:
                scale = stored.get(name + FP8_SCALE)
                if scale is None:
                    raise self._fail(f"FP8 tensor '{name}' has no '{name + FP8_SCALE}' beside it; hubbot reads fp8 "
                                     "checkpoints with block scales (as DeepSeek-V3 and Qwen3-FP8 publish them)")
                if block is None:
                    want = "one number"
                    ok = scale.numel == 1
                else:
                    want = str(list(quant.fp8_scale_shape(info.shape, block))) if len(info.shape) >= 2 else "?"
                    ok = len(info.shape) >= 2 and scale.shape == quant.fp8_scale_shape(info.shape, block)
                if not ok or scale.dtype not in FLOAT_CODES:
                    raise self._fail(f"'{scale.name}' is {scale.dtype} {list(scale.shape)}, but '{name}' "
                                     f"{list(info.shape)} with weight_block_size {list(block) if block else None} "
                                     f"needs float scales of shape {want}; the checkpoint is damaged")
                pairs[name] = Packed("fp8", info, scale)
        strays = [n for n in stored if n.endswith(FP8_SCALE) and n[:-len(FP8_SCALE)] not in pairs]
        if strays:
            raise self._fail(f"'{strays[0]}' scales no FP8 tensor; the checkpoint is damaged")
        return pairs

    def _mxfp4_pairs(self, stored: dict[str, TensorInfo]) -> dict[str, Packed]:
        pairs = {}
        for name, info in stored.items():
            if not name.endswith(MX_BLOCKS):
                continue
            param = name[:-len(MX_BLOCKS)]
            scales = stored.get(param + MX_SCALES)
            if scales is None:
                raise self._fail(f"'{name}' has no '{param + MX_SCALES}' beside it; the checkpoint is incomplete")
            if not (info.dtype == scales.dtype == "U8" and len(info.shape) == 4 and info.shape[-1] == 16
                    and scales.shape == info.shape[:-1]):
                raise self._fail(f"'{name}' is {info.dtype} {list(info.shape)} and '{scales.name}' {scales.dtype} "
                                 f"{list(scales.shape)}; MXFP4 experts are U8 [experts, rows, groups, 16] with U8 "
                                 "[experts, rows, groups] exponents (gpt-oss's layout)")
            pairs[param] = Packed("mxfp4", info, scales)
        strays = [n for n, i in stored.items() if n.endswith(MX_SCALES) and n[:-len(MX_SCALES)] not in pairs]
        if strays:
            raise self._fail(f"'{strays[0]}' scales no '{MX_BLOCKS}' tensor; the checkpoint is damaged")
        return pairs

    def _ternary_pairs(self, stored: dict[str, TensorInfo]) -> dict[str, Packed]:
        linear_class = self.quantization.get("linear_class", "bitlinear")
        if linear_class not in ("bitlinear", "autobitlinear"):
            raise self._fail(f"quantization_config.linear_class is {linear_class!r}; hubbot reads BitNet "
                             "checkpoints with bitlinear or autobitlinear layers")
        pairs = {}
        for name, info in stored.items():
            scale_name = quant.ternary_scale_name(name)
            scale = stored.get(scale_name)
            packed = info.dtype == "U8" and name.endswith(".weight")
            if not packed and scale is None:
                continue
            if scale is None or scale.numel != 1 or scale.dtype not in FLOAT_CODES:
                raise self._fail(f"ternary tensor '{name}' needs one float '{scale_name}' beside it "
                                 "(BitNet b1.58's per-tensor scale); the checkpoint is incomplete")
            # unpacked ternary weights stored as floats carry the same scale
            pairs[name] = Packed("ternary" if packed else "scaled", info, scale)
        return pairs

    @staticmethod
    def _shape(p: Packed) -> tuple[int, ...]:
        if p.kind == "mxfp4":
            return quant.mxfp4_shape(p.values.shape)
        if p.kind == "ternary":
            return (p.values.shape[0] * quant.TERNARY_PER_BYTE, *p.values.shape[1:])
        return p.values.shape

    def read(self, name: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
        """A tensor (or rows of it) as stored, or decoded to float32 when it is packed."""
        self.tensors()
        p = self._packed.get(name)
        if p is None:
            return self.inner.read(name, rows)
        if p.kind == "fp8":
            return self._read_fp8(p, rows)
        if p.kind == "mxfp4":  # rows along the first axis are experts, the first axis of both tensors
            return quant.dequantize_mxfp4(self.inner.read(p.values.name, rows), self.inner.read(p.scales.name, rows))
        return self._read_ternary(p, rows)

    def _read_fp8(self, p: Packed, rows: tuple[int, int] | None) -> torch.Tensor:
        block = self._block()
        values = self.inner.read(p.values.name, rows)
        if rows is None or block is None or p.scales.numel == 1:
            return quant.dequantize_fp8(values, self.inner.read(p.scales.name), block)
        if len(p.values.shape) > 2:  # fused experts: rows are experts, as in the scales
            return quant.dequantize_fp8(values, self.inner.read(p.scales.name, rows), block)
        bn = block[0]
        scales = self.inner.read(p.scales.name, (rows[0] // bn, math.ceil(rows[1] / bn)))
        return quant.dequantize_fp8(values, scales, block, rows[0])

    def _read_ternary(self, p: Packed, rows: tuple[int, int] | None) -> torch.Tensor:
        scale = float(self.inner.read(p.scales.name).to(torch.float32).reshape(-1)[0])
        if p.kind == "scaled":
            values = self.inner.read(p.values.name, rows).to(torch.float32)
        elif rows is None:
            values = quant.unpack_ternary(self.inner.read(p.values.name))
        else:
            height = p.values.shape[0]
            lo, hi = quant.ternary_packed_span(height, rows)
            values = quant.unpack_ternary_rows(self.inner.read(p.values.name, (lo, hi)), height, rows, lo)
        return values.mul_(scale) if self.quantization.get("linear_class") == "autobitlinear" else values.div_(scale)

    def close(self) -> None:
        self.inner.close()


def stores_ternary_floats(source: Source, stack: str | None) -> bool:
    """Whether a float model looks like BitNet b1.58 stored as plain floats: a few rows of the
    smallest linear weights of its first layer each take three values, -s, 0 and s. No header
    tells, so this reads those rows."""
    if not source.is_model or isinstance(source, UnpackedSource) or stack is None:
        return False
    linear = [i for n, i in source.tensors().items()
              if (p := arch.split_layer(n)) and p.prefix == stack and p.index == 0 and n.endswith(".weight")
              and len(i.shape) == 2 and i.dtype in FLOAT_CODES and i.shape[0] > 0]
    probes = sorted(linear, key=lambda i: i.numel)[:PROBE_TENSORS]
    return bool(probes) and all(quant.looks_ternary(source.read(i.name, (0, min(PROBE_ROWS, i.shape[0]))))
                                for i in probes)
