"""Sparsification of task vectors: keep a fraction `density` of each delta's entries.

Shared by the task-vector family (ties, dare, breadcrumbs, della) and sce. Magnitude pruning
finds its cut values with a radix select over the float bits (two counting passes; on a GPU each
histogram is counted by sorting, see `sorted_counts`), not a sort of the values; the passes also
run block by block, so TIES can merge a large tensor a block of rows at a time. Only DELLA, whose
keep probabilities follow each entry's rank within its row, sorts (row by row). Random masks
(DARE, DELLA) come from a counter-based generator: a hash of (seed, entry index), the same on
every device and for every split into blocks.
"""

from __future__ import annotations

import math
import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import torch

HIGH_BINS = 1 << 15  # the top 16 bits of a non-negative float32 (its sign bit is clear)
LOW_BINS = 1 << 16
SPLIT_COUNT = 1 << 20  # entries from which a histogram is counted in two halves at once
_helper: tuple[int, ThreadPoolExecutor] | None = None  # (process id, the thread counting second halves)


def _counting_thread() -> ThreadPoolExecutor:
    """This process's helper thread; a forked child makes its own (it inherits its parent's pool,
    not its thread)."""
    global _helper
    if _helper is None or _helper[0] != os.getpid():
        _helper = (os.getpid(), ThreadPoolExecutor(max_workers=1, thread_name_prefix="hubbot-count"))
    return _helper[1]


def _bincount(ints: torch.Tensor, bins: int) -> torch.Tensor:
    """`torch.bincount` of a flat tensor of ints in [0, bins). Its CPU loop runs on one core
    whatever torch's thread count, and it is the costliest step of a top-k cut: with two
    threads allowed, the second half is counted on another thread (the loop leaves Python's
    lock) while this one counts the first. On a GPU the counts come from a sort (`sorted_counts`)."""
    if ints.device.type != "cpu":
        return sorted_counts(ints, bins)
    if ints.numel() < SPLIT_COUNT or torch.get_num_threads() < 2:
        return torch.bincount(ints, minlength=bins)
    half = ints.numel() // 2
    second = _counting_thread().submit(torch.bincount, ints[half:], minlength=bins)
    return torch.bincount(ints[:half], minlength=bins).add_(second.result())


def sorted_counts(ints: torch.Tensor, bins: int) -> torch.Tensor:
    """What `torch.bincount(ints, minlength=bins)` counts, found by sorting. A GPU's bincount of
    tens of thousands of bins adds into memory atomically, one add after another for a bin, and
    a top-k cut's histograms pile most values into a few bins (the second pass all but the cut's
    bin into two); a sort and a search of its bin edges make no such queue."""
    ordered = torch.sort(ints.reshape(-1)).values
    edges = torch.arange(bins + 1, dtype=ordered.dtype, device=ordered.device)
    return torch.searchsorted(ordered, edges).diff()


def _bits(values: torch.Tensor) -> torch.Tensor:
    """Non-negative float32 values (magnitudes, squares: never -0) as int32 bit patterns, which
    order like the values."""
    return values.float().contiguous().view(torch.int32)


def high_counts(values: torch.Tensor) -> torch.Tensor:
    """How many values fall in each bin of their top 16 bits (the first pass of a radix select)."""
    return _bincount((_bits(values) >> 16).reshape(-1), HIGH_BINS)


def kth_bin(counts: torch.Tensor, k: int) -> tuple[int, int]:
    """The highest bin with at least k values at or above it (so the one holding the k-th
    largest), and how many of the k largest lie in it (1 <= k <= the values counted)."""
    below = counts.cumsum(0)  # below[b]: the values in bins <= b
    total = int(below[-1])
    b = int(torch.searchsorted(below, total - k, right=True))  # the first b with below[b] > total - k
    return b, k - (total - int(below[b]))


def low_counts(values: torch.Tensor, high: int) -> torch.Tensor:
    """How many of the values whose top 16 bits are `high` have each low 16 bits (the second
    pass of a radix select): one histogram, without gathering the bin's values first, which took
    longer and, over a large tensor's blocks, held a fifth of its entries until the cut was known."""
    # 0 below the bin, 1 + its low bits inside it, LOW_BINS + 1 above it
    offsets = torch.sub(_bits(values).reshape(-1), (high << 16) - 1).clamp_(0, LOW_BINS + 1)
    return _bincount(offsets, LOW_BINS + 2)[1:LOW_BINS + 1]


def _compare(op: Callable[..., torch.Tensor], values: torch.Tensor, level: float | torch.Tensor,
             dtype: torch.dtype) -> torch.Tensor:
    """`op(values, level)` as a mask of `dtype`: written as 0.0 / 1.0 directly for a float mask, which a
    kernel multiplies by (a boolean mask would be widened to floats first, a pass of its own)."""
    return op(values, level, out=torch.empty(values.shape, dtype=dtype, device=values.device))


@dataclass
class Cut:
    """A top-k cut: the k-th largest value's bit pattern, how many values equal to it are kept
    (the first ones in index order), and, while a tensor's blocks are masked in order, how many
    of those are still to come. The running count (on a GPU, a device scalar: reading it would
    make the GPU wait) lets the statistics passes add every block's histogram into one: held
    until the cut was known, to give each block its share of the ties, they fragmented the heap
    by some 4 MB a block (a third more peak memory on a 1 B model)."""

    bits: int
    ties: int
    left: int | torch.Tensor = 0


def _level(cut: Cut) -> float:
    """The cut's value (exactly a float32)."""
    return struct.unpack("<f", struct.pack("<i", cut.bits))[0]


def _ties_done(cut: Cut) -> bool:
    """Whether every value tied with the cut that is kept has been met (on a GPU the running
    count is a device scalar, which is never read: there, ties are always looked for)."""
    return isinstance(cut.left, int) and cut.left <= 0


def _counts_on_host(values: torch.Tensor) -> bool:
    """Whether the ties still to keep may be counted on the host (the CPU), or must stay a
    device scalar (a GPU would wait for each count read back)."""
    return values.device.type == "cpu"


def cut_mask(values: torch.Tensor, cut: Cut, dtype: torch.dtype = torch.bool) -> torch.Tensor:
    """1 above the cut and for the next `cut.left` values equal to it, in index order (which it
    counts down); 0 elsewhere. Boolean, or 0.0 / 1.0 of a float `dtype`. The values are compared
    as floats with the cut's value (for non-negative floats, the same order as their bits, and
    faster)."""
    values = values.float()
    level = _level(cut)
    mask = _compare(torch.gt, values, level, dtype)
    if _ties_done(cut):
        return mask
    tied = _compare(torch.eq, values, level, dtype)
    flat = tied.reshape(-1)
    if not _counts_on_host(tied):  # a running count: finding the position would make a GPU wait for it
        cut.left = _keep_first(flat, cut.left)
        return mask.logical_or_(tied) if dtype == torch.bool else mask.add_(tied)
    end, found = _past_nth_true(flat, cut.left)
    cut.left -= found
    kept, extra = mask.reshape(-1)[:end], flat[:end]  # disjoint: above the cut, and equal to it
    if dtype == torch.bool:
        kept.logical_or_(extra)
    else:
        kept.add_(extra)
    return mask


def _keep_first(flags: torch.Tensor, n: int | torch.Tensor) -> torch.Tensor:
    """Clear all but the first n non-zeros of a flat 0/1 tensor, in place, and return how many of
    the n are left over, as a tensor where `flags` is: a device never waits for a count."""
    running = flags.cumsum(0, dtype=torch.int32)
    flags.mul_(running <= n)
    return (n - running[-1]).clamp_(min=0)


def _past_nth_true(flags: torch.Tensor, n: int, chunk: int = 1 << 16) -> tuple[int, int]:
    """The index just past the n-th non-zero of a flat 0/1 tensor, boolean or float (n >= 1; all
    of it when it has fewer), and how many non-zeros lie before it (n, or all of them): counted
    per chunk first, so only one chunk is searched entry by entry."""
    whole = flags.numel() // chunk
    head = flags[:whole * chunk].reshape(whole, chunk)
    if head.dtype == torch.bool:  # summed as bytes: a sum of booleans widens each to int64 first
        head = head.view(torch.uint8)
    per_chunk = head.sum(1, dtype=torch.int32 if head.dtype == torch.uint8 else None).cumsum(0)
    c = int(torch.searchsorted(per_chunk, n))  # the chunk holding the n-th True (whole: the tail)
    before = int(per_chunk[c - 1]) if c > 0 else 0
    where = flags[c * chunk:(c + 1) * chunk].nonzero().reshape(-1)
    if n - before <= len(where):
        return c * chunk + int(where[n - before - 1]) + 1, n
    return flags.numel(), before + len(where)


# A top-k cut found block by block: `first_cut` after the counting pass over every block's
# `high_counts`, `final_cut` after the pass over every block's `low_counts` of the cut's bin
# (each pass adds them into one histogram), then `block_mask` for each block, in order.
# k >= n keeps everything (True), k <= 0 nothing (False).


def settled(k: int, n: int) -> bool | None:
    """A cut that needs no counting: True when it keeps all n values, False when none, else None."""
    return True if k >= n else False if k <= 0 else None


def first_cut(counts: torch.Tensor, k: int) -> bool | tuple[int, int]:
    """True, False, or the bin holding the k-th largest value and how many of the k lie in it."""
    known = settled(k, int(counts.sum()))
    return kth_bin(counts, k) if known is None else known


def final_cut(lows: torch.Tensor, first: bool | tuple[int, int]) -> bool | Cut:
    """True, False, or the cut, from the `low_counts` of every block added up."""
    if isinstance(first, bool):
        return first
    low, ties = kth_bin(lows, first[1])
    return Cut((first[0] << 16) | low, ties)


# A guessed cut: a pass over a sample of every block's rows (the first 1/SAMPLE of them) finds the
# few high bins the k-th largest value most likely lies in (`guess_window`); one pass over the
# blocks then counts every bit pattern in those bins and how many values lie above them
# (`window_counts`), which fixes the cut unless it fell outside (`window_cut`: None, and the
# exact passes above run). One full counting pass instead of two.
SAMPLE = 16
WINDOW_BINS = 4  # high bins a window may span (its histogram: 65,536 counts each)
SPREAD = 0.002  # a sample's rank error beyond its binomial error, as a fraction of it: rows differ
LIKELY = 0.8  # the least chance of holding the cut worth a window (else: the exact passes at once)


@dataclass(frozen=True)
class Window:
    """High bins [low, low + bins) guessed to hold the cut."""

    low: int
    bins: int

    @property
    def size(self) -> int:
        """Counts in its histogram: below it, each bit pattern in it, above it."""
        return (self.bins << 16) + 2


def row_sums(values: torch.Tensor) -> torch.Tensor:
    """Of the mean value of each row (the leading axis): their sum, the sum of their squares and
    how many rows (float64, to add up over blocks), for `row_spread`."""
    means = values.reshape(values.shape[0] if values.dim() > 1 else 1, -1).mean(1).double()
    return torch.stack([means.sum(), means.square().sum(), torch.tensor(float(len(means)), dtype=torch.float64,
                                                                          device=values.device)])


def row_spread(sums: torch.Tensor) -> float:
    """How far a sample's ranks may stray because its rows differ (the coefficient of variation
    of the rows' means over the square root of their number): rows are sampled whole, so rows
    unlike each other make a sample less telling than its entry count says."""
    total, squares, rows = (float(v) for v in sums)
    if rows < 2 or total <= 0:
        return 0.0
    mean = total / rows
    return math.sqrt(max(0.0, squares / rows - mean * mean)) / mean / math.sqrt(rows)


def guess_window(counts: torch.Tensor, k: float, spread: float = 0.0) -> Window | None:
    """The run of at most WINDOW_BINS high bins most likely to hold the k-th largest value, from
    a sample's `high_counts` (k at the sample's scale; its error a binomial one, `spread` (see
    `row_spread`) and `SPREAD`), trimmed of bins that add little; None when even that is not
    LIKELY to hold it."""
    s = int(counts.sum())
    if not 0 < k < s:
        return None
    sigma = math.sqrt(k * (s - k) / s) + (spread + SPREAD) * s + 0.5
    start = kth_bin(counts, max(1, round(k)))[0]
    first = max(0, start - WINDOW_BINS + 1)  # the bins any window may span: first .. start + WINDOW_BINS - 1
    near = counts[first:start + WINDOW_BINS].tolist()
    above = [s - int(counts[:first].sum())]  # above[b - first]: the sample's values in bins >= b
    for c in near:
        above.append(above[-1] - c)

    def chance(low: int, high: int) -> float:
        """That the k-th largest lies in bins low..high."""
        phi = lambda r: 0.5 * math.erfc((k - r - 0.5) / (sigma * math.sqrt(2)))  # noqa: E731
        return phi(above[low - first]) - phi(above[high + 1 - first])

    runs = [(lo, min(lo + WINDOW_BINS, len(counts)) - 1) for lo in range(first, start + 1)]
    low, high = max(runs, key=lambda r: chance(*r))
    best = chance(low, high)
    if best < LIKELY:
        return None
    while low < high and chance(low + 1, high) > best - 0.002:
        low += 1
    while high > low and chance(low, high - 1) > best - 0.002:
        high -= 1
    return Window(low, high - low + 1)


def window_counts(values: torch.Tensor, window: Window) -> torch.Tensor:
    """How many values lie below the window, have each bit pattern inside it, and lie above it."""
    offsets = torch.sub(_bits(values).reshape(-1), (window.low << 16) - 1).clamp_(0, window.size - 1)
    return _bincount(offsets, window.size)


def window_cut(counts: torch.Tensor, window: Window, k: int) -> bool | Cut | None:
    """The cut from a window's counts over every block (k of all the values counted), or None
    when the k-th largest value lies outside the window."""
    known = settled(k, int(counts.sum()))
    if known is not None:
        return known
    above = int(counts[-1])
    inside = counts[1:-1]
    if not above < k <= above + int(inside.sum()):
        return None
    pattern, ties = kth_bin(inside, k - above)
    return Cut((window.low << 16) + pattern, ties)


def block_mask(values: torch.Tensor, cut: bool | Cut, block: int, dtype: torch.dtype = torch.bool) -> torch.Tensor:
    """The k largest entries' mask over one block's values (of `dtype`, as `cut_mask`); a walk
    over the blocks starts at block 0 (a method may walk them more than once: SCE's energy
    pass, then its merge)."""
    if isinstance(cut, bool):
        return torch.full_like(values, cut, dtype=dtype)
    if block == 0:
        cut.left = cut.ties
    return cut_mask(values, cut, dtype)


def keep_top(delta: torch.Tensor, cut: bool | Cut, block: int) -> torch.Tensor:
    """`delta` (the caller's own, float32) with only its entries inside `block_mask(|delta|, cut,
    block)` kept, in place. Entries above the cut's value are kept by one shrink (zero where
    |x| <= value) rather than a magnitude, a mask and a product; the entries tied with it that
    are kept, the first `cut.left` in index order, are put back afterwards."""
    if isinstance(cut, bool):
        return delta if cut else delta.zero_()
    if block == 0:
        cut.left = cut.ties
    level = _level(cut)
    if _ties_done(cut):
        return _shrink(delta, level)
    tied = _compare(torch.eq, delta.abs(), level, delta.dtype).reshape(-1)
    flat = delta.view(-1)  # a view: its edits are delta's
    if not _counts_on_host(delta):  # a running count (see `cut_mask`)
        cut.left = _keep_first(tied, cut.left)
        kept_ties = tied.mul_(flat)
        _shrink(delta, level)
        flat.add_(kept_ties)  # disjoint: the shrink zeroed every tied entry
        return delta
    end, found = _past_nth_true(tied, cut.left)
    cut.left -= found
    if cut.bits > 0:  # entries before `end` keep their ties: shrunk at the value just below the cut's
        _shrink(flat[:end], struct.unpack("<f", struct.pack("<i", cut.bits - 1))[0])
    _shrink(flat[end:], level)
    return delta


def _shrink(x: torch.Tensor, level: float) -> torch.Tensor:
    """x with every entry of magnitude at or below `level` zeroed, in place."""
    return torch.ops.aten.hardshrink.out(x, level, out=x)


def keep_band(delta: torch.Tensor, outer: bool | Cut, inner: bool | Cut, block: int) -> torch.Tensor:
    """`delta` (the caller's own) with only the entries inside the top `outer` but not the top
    `inner` of its magnitudes (see `block_mask`), in place: the inner top lies inside the outer
    and keeps the same values, so subtracting it leaves exact zeros."""
    if inner is False:
        return keep_top(delta, outer, block)
    innermost = keep_top(delta.clone(), inner, block)
    return keep_top(delta, outer, block).sub_(innermost)


def top_k_mask(values: torch.Tensor, k: int, dtype: torch.dtype = torch.bool) -> torch.Tensor:
    """True for exactly k entries of the non-negative `values` with the largest value (k clamped
    to [0, n]): the block-by-block radix select over a single block (no sort, no copy for a
    k-th value).

    Entries tied with the cut are kept in index order, so the kept count is exact, the result
    does not depend on a sort's tie order, and top_k_mask(v, j) lies inside top_k_mask(v, k)
    for j <= k. Boolean, or 0.0 / 1.0 of a float `dtype` (see `cut_mask`).
    """
    bits = _bits(values)
    high = bits >> 16
    first = first_cut(_bincount(high.reshape(-1), HIGH_BINS), k)
    if isinstance(first, bool):
        return torch.full_like(values, first, dtype=dtype)
    del high
    cut = final_cut(low_counts(values, first[0]), first)
    return block_mask(values, cut, 0, dtype)


def magnitude_mask(delta: torch.Tensor, density: float, dtype: torch.dtype = torch.bool) -> torch.Tensor:
    """1 for the max(1, int(density * n)) entries of largest magnitude (TIES), 0 elsewhere."""
    return top_k_mask(delta.abs(), max(1, int(density * delta.numel())), dtype)


def band_of(n: int, density: float, gamma: float) -> tuple[int, int]:
    """Model Breadcrumbs' band of magnitude ranks, as (outer, inner): keep the top `outer` minus
    the top `inner`. The largest int(gamma * n) magnitudes are outliers, then the smallest are
    dropped, keeping int(density * n) entries; when outliers and kept entries together exceed
    n, fewer outliers are dropped so the kept count holds."""
    keep = int(density * n)
    below = max(0, n - keep - int(gamma * n))  # entries dropped at the small end
    return n - below, n - below - keep


def band_mask(delta: torch.Tensor, density: float, gamma: float, dtype: torch.dtype = torch.bool) -> torch.Tensor:
    """Model Breadcrumbs' mask of a whole task vector (see `band_of`), of `dtype` as `cut_mask`."""
    outer, inner = band_of(delta.numel(), density, gamma)
    mags = delta.abs()
    if dtype == torch.bool:
        return top_k_mask(mags, outer) & ~top_k_mask(mags, inner)
    return top_k_mask(mags, outer, dtype).sub_(top_k_mask(mags, inner, dtype))  # the inner top-k lies inside


def rank_keep_probs(delta: torch.Tensor, density: float, epsilon: float) -> torch.Tensor:
    """DELLA's MagPrune keep probabilities: within each row (the leading axis; a vector is one
    row), entries ranked by magnitude get probabilities rising linearly from density - epsilon
    (smallest) to density + epsilon (largest), so the expected kept fraction is `density`."""
    rows = delta.reshape(1, -1) if delta.dim() < 2 else delta.reshape(delta.shape[0], -1)
    width = rows.shape[1]
    if width == 1:
        return torch.full_like(delta, density)
    # ties ranked by index, the same on every device; the magnitudes' bit patterns (which order like
    # them) sort in two thirds of the floats' time on the CPU
    order = _bits(rows.abs()).argsort(dim=1, stable=True)
    ranks = torch.empty_like(rows)
    ranks.scatter_(1, order, torch.arange(width, dtype=rows.dtype, device=rows.device).expand_as(rows))
    probs = ranks.mul_(2 * epsilon / (width - 1)).add_(density - epsilon)
    return probs.reshape(delta.shape)


def elect_signs(total: torch.Tensor) -> torch.Tensor:
    """TIES's sign election: +1 where the summed task vectors are >= 0, else -1. A sum of -0
    (which only all-zero task vectors give) elects -1 here; no entry agrees with either sign
    there, so the merge is the same. `copysign` rather than `torch.where` or `sign`, several
    times faster on the CPU."""
    return torch.copysign(torch.ones((), dtype=total.dtype, device=total.device), total)


def agreement(delta: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """Where a task vector's entry is non-zero and has the elected sign."""
    return (delta * signs) > 0


MASK32 = 0xFFFFFFFF
MASK64 = (1 << 64) - 1


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (xor-shift-multiply) of every entry of `x` (int64 in [0, 2**32)),
    in place. The multipliers are below 2**31, so no int64 product overflows and every device
    computes the same bits."""
    x ^= x >> 16
    x.mul_(0x21F0AAAD).bitwise_and_(MASK32)
    x ^= x >> 15
    x.mul_(0x735A2D97).bitwise_and_(MASK32)
    x ^= x >> 15
    return x


def _mix32_narrow(x: torch.Tensor) -> torch.Tensor:
    """`_mix32` on int32 tensors holding the 32-bit patterns, in place: half the bytes of the
    int64 form. Products wrap modulo 2**32, which are the bits the int64 form keeps; right
    shifts are made logical by masking the copies of the sign bit they bring in."""
    x ^= (x >> 16) & 0xFFFF
    x.mul_(0x21F0AAAD)
    x ^= (x >> 15) & 0x1FFFF
    x.mul_(0x735A2D97)
    x ^= (x >> 15) & 0x1FFFF
    return x


def _signed32(v: int) -> int:
    """A 32-bit pattern as the int32 value with the same bits."""
    return v - (1 << 32) if v >= 1 << 31 else v


def _keys(seed: int) -> tuple[int, int]:
    """Two 32-bit round keys from a seed (a splitmix64 step, on Python integers)."""
    z = (seed * 0x9E3779B97F4A7C15 + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    z ^= z >> 31
    return z & MASK32, z >> 32


def uniform(seed: int, row: int, shape: torch.Size | tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Uniform [0, 1) draws for rows row, row + 1, ... (along the leading axis) of a tensor
    whose rows have the shape `shape[1:]`.

    Each draw is a hash of the seed and the entry's index in the whole tensor (a counter-based
    generator: two keyed rounds of an integer hash), computed where it is used: a block of rows
    draws what the whole tensor draws there, and every device draws the same bits. Draws are
    multiples of 2**-24, exact in float32."""
    width = math.prod(shape[1:]) if len(shape) else 1
    start, stop = row * width, (row + (shape[0] if len(shape) else 1)) * width
    first, second = _keys(seed)
    if stop <= 1 << 31:  # every index fits an int32: the same bits in half the memory traffic
        x = _mix32_narrow(torch.arange(start, stop, dtype=torch.int32, device=device) ^ _signed32(first))
        x ^= _signed32(second)
        x = (_mix32_narrow(x) >> 8) & 0xFFFFFF
        return x.to(torch.float32).mul_(2.0 ** -24).reshape(shape)
    index = torch.arange(start, stop, dtype=torch.int64, device=device)
    x = _mix32((index & MASK32) ^ first)
    x ^= (index >> 32) ^ second if stop > 1 << 32 else second  # the high half of the index, 0 below 2**32
    x = _mix32(x) >> 8
    return x.to(torch.float32).mul_(2.0 ** -24).reshape(shape)


def random_mask(shape: torch.Size, density: float | torch.Tensor, seed: int, device: torch.device,
                row: int = 0, dtype: torch.dtype = torch.bool) -> torch.Tensor:
    """Keep each entry with probability `density` (a scalar or one per entry); `row` is the
    index of the first row in its tensor. Boolean, or 0.0 / 1.0 of a float `dtype` (see `_compare`)."""
    draws = uniform(seed, row, shape, device)
    return draws < density if dtype == torch.bool else _compare(torch.lt, draws, density, dtype)


def l1_rescale(masked: torch.Tensor, original: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Scale a pruned delta back to the L1 mass of the unpruned one."""
    before = original.abs().sum()
    after = masked.abs().sum()
    if before < eps or after < eps:
        return masked
    return masked.mul_(before / after)


def derive_seed(seed: int, index: int) -> int:
    """A per-input seed: the same recipe seed and tensor always draw the same mask."""
    return zlib.crc32(f"{seed}:{index}".encode())
