"""Low-bit weight formats as pure functions of tensors: decoding to float32, and BitNet's ternary
encoding. No I/O here; sources/unpacked.py maps checkpoint tensors onto these.

Layouts, as the published checkpoints store them:
- FP8 with block scales (DeepSeek-V3, Qwen3-FP8; quant_method fp8): `W.weight` F8_E4M3 `[..., N, K]`
  and `W.weight_scale_inv` F32 `[..., ceil(N/bn), ceil(K/bk)]` for `weight_block_size` `[bn, bk]`;
  the float weight is `fp8 * scale` block by block (the name says inverse: it undoes the division
  made when quantizing). Without a block size the scale is one number for the tensor.
- MXFP4 (gpt-oss experts; quant_method mxfp4): `P_blocks` U8 `[E, N, G, 16]` and `P_scales` U8
  `[E, N, G]`. Each byte holds two FP4 E2M1 codes (low nibble first); 32 codes share one E8M0
  exponent, `scale - 127`. Decoded, a row is `N x G*32` and the parameter is its transpose per
  expert, `[E, G*32, N]` (gpt-oss multiplies activations by `gate_up_proj[e]` from the left).
- BitNet b1.58, packed (quant_method bitnet): `W.weight` U8 `[N/4, K]`, each byte four ternary
  values of rows `r, r + N/4, r + N/2, r + 3N/4` (2 bits each, lowest first, stored as value + 1),
  and `W.weight_scale` `[1]`: with linear_class autobitlinear the float weight is `ternary * scale`
  (scale = mean |W|, the b1.58 absmean rule); with bitlinear it is `ternary / scale`.
"""

from __future__ import annotations

import math

import torch

FP4_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)  # E2M1 codes 0-7; bit 3 is the sign
MX_BLOCK = 32  # FP4 values per shared exponent
E8M0_BIAS = 127
TERNARY_PER_BYTE = 4
ABSMEAN_FLOOR = 1e-5  # the smallest scale: an all-zero tensor stays zero instead of dividing by zero
# What a packed b1.58 output declares: its layers multiply by the stored scale (mean |W|)
BITNET_CONFIG = {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "offline"}


def dequantize_fp8(weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int] | None,
                   first_row: int = 0) -> torch.Tensor:
    """Float32 values of FP8 `weight` with its scales. `weight` may be rows [first_row, ...) of a
    2-D tensor, with `scale_inv` the scale rows that cover them (from block row first_row // bn);
    tensors with leading dimensions (fused experts) come whole along the last two."""
    w = weight.to(torch.float32)
    scale = scale_inv.to(torch.float32)
    if block is None or scale.numel() == 1:
        return w.mul_(scale.reshape(()))
    bn, bk = block
    rows, cols = w.shape[-2:]
    start = first_row % bn if w.dim() == 2 else 0
    by_row = scale.repeat_interleave(bn, dim=-2)[..., start:start + rows, :]
    return w.mul_(by_row.repeat_interleave(bk, dim=-1)[..., :cols])


def fp8_scale_shape(shape: tuple[int, ...], block: tuple[int, int]) -> tuple[int, ...]:
    """The shape of the block scales an FP8 weight of `shape` comes with."""
    bn, bk = block
    return (*shape[:-2], math.ceil(shape[-2] / bn), math.ceil(shape[-1] / bk))


def dequantize_mxfp4(blocks: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Float32 parameter `[E, G*32, N]` from MXFP4 `blocks` `[E, N, G, 16]` and `scales` `[E, N, G]`."""
    codes = torch.stack((blocks & 0x0F, blocks >> 4), dim=-1).reshape(*blocks.shape[:-1], MX_BLOCK).long()
    magnitudes = torch.tensor(FP4_MAGNITUDES, dtype=torch.float32)[codes & 7]
    values = torch.where(codes >= 8, -magnitudes, magnitudes)
    exponents = scales.to(torch.int32) - E8M0_BIAS
    values = torch.ldexp(values, exponents.unsqueeze(-1).to(torch.float32))
    return values.reshape(*blocks.shape[:-2], -1).transpose(-1, -2).contiguous()


def mxfp4_shape(blocks_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The parameter's shape for MXFP4 blocks of `blocks_shape` `[E, N, G, 16]`."""
    e, n, g, _ = blocks_shape
    return (e, g * MX_BLOCK, n)


def unpack_ternary(packed: torch.Tensor) -> torch.Tensor:
    """Ternary values (-1, 0, 1) as float32 `[4 * N, ...]` from a whole packed tensor `[N, ...]`."""
    planes = [(packed >> (2 * k)) & 3 for k in range(TERNARY_PER_BYTE)]
    return torch.cat(planes, dim=0).to(torch.float32).sub_(1)


def ternary_packed_span(height: int, rows: tuple[int, int]) -> tuple[int, int]:
    """The packed rows [lo, hi) that hold unpacked rows [rows) of a tensor `height` packed rows high."""
    a, b = rows
    parts = [(max(a, k * height) - k * height, min(b, (k + 1) * height) - k * height)
             for k in range(TERNARY_PER_BYTE) if a < (k + 1) * height and b > k * height]
    return min(p[0] for p in parts), max(p[1] for p in parts)


def unpack_ternary_rows(packed: torch.Tensor, height: int, rows: tuple[int, int], lo: int) -> torch.Tensor:
    """Unpacked rows [rows) as float32 from packed rows [lo, lo + len(packed)) of a tensor `height`
    packed rows high (the span `ternary_packed_span` gives)."""
    a, b = rows
    out = []
    for k in range(TERNARY_PER_BYTE):
        s, e = max(a, k * height), min(b, (k + 1) * height)
        if s < e:
            part = packed[s - k * height - lo:e - k * height - lo]
            out.append((part >> (2 * k)) & 3)
    return torch.cat(out, dim=0).to(torch.float32).sub_(1)


def absmean_ternary(weight: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The b1.58 rule: scale = mean |W| (at least ABSMEAN_FLOOR), W_q = round(clip(W / scale, -1, 1))."""
    w = weight.to(torch.float32)
    scale = max(float(w.abs().mean()), ABSMEAN_FLOOR) if w.numel() else 1.0
    return (w / scale).clamp_(-1, 1).round_(), scale


def pack_ternary(values: torch.Tensor) -> torch.Tensor:
    """Ternary `values` `[N, ...]` (N divisible by 4) packed into U8 `[N/4, ...]`, BitNet's layout."""
    n = values.shape[0]
    if n % TERNARY_PER_BYTE:
        raise ValueError(f"{n} rows cannot be packed four to a byte")
    codes = (values.to(torch.int16) + 1).to(torch.uint8)
    height = n // TERNARY_PER_BYTE
    packed = torch.zeros((height, *values.shape[1:]), dtype=torch.uint8)
    for k in range(TERNARY_PER_BYTE):
        packed |= codes[k * height:(k + 1) * height] << (2 * k)
    return packed


def ternary_scale_name(weight: str) -> str:
    """The scale tensor stored beside a packed ternary weight."""
    return weight + "_scale"


def ternary_nbytes(shape: tuple[int, ...], scale_itemsize: int) -> int:
    """Bytes a packed ternary weight of `shape` takes with its one scale."""
    return math.prod(shape) // TERNARY_PER_BYTE + scale_itemsize


def encode_ternary(weight: torch.Tensor) -> tuple[torch.Tensor, float]:
    """A merged float weight as BitNet stores it: packed absmean-ternary values and the scale."""
    values, scale = absmean_ternary(weight)
    return pack_ternary(values), scale


def looks_ternary(values: torch.Tensor) -> bool:
    """Whether float `values` take at most three values, -s, 0 and s (exactly, as a ternary
    weight times its scale stored in floats is), with some nonzero."""
    magnitudes = values.to(torch.float32).abs().flatten()
    nonzero = magnitudes[magnitudes > 0]
    return bool(nonzero.numel()) and bool(nonzero.max() == nonzero.min())
