"""Sparsification of task vectors: keep a fraction `density` of each delta's entries.

Shared by the task-vector family (ties, dare, breadcrumbs, della) and sce. Magnitude pruning
finds its cut values with a selection (k-th value), not a full sort; only DELLA, whose keep
probabilities follow each entry's rank within its row, sorts (row by row).
"""

from __future__ import annotations

import zlib

import torch


def top_k_mask(values: torch.Tensor, k: int) -> torch.Tensor:
    """True for exactly k entries of `values` with the largest value (k clamped to [0, n]).

    Entries tied with the cut are kept in index order, so the kept count is exact, the result
    does not depend on a sort's tie order, and top_k_mask(v, j) lies inside top_k_mask(v, k)
    for j <= k.
    """
    n = values.numel()
    if k >= n:
        return torch.ones_like(values, dtype=torch.bool)
    if k <= 0:
        return torch.zeros_like(values, dtype=torch.bool)
    flat = values.reshape(-1)
    cut = torch.kthvalue(flat, n - k + 1).values
    mask = flat > cut
    short = k - int(mask.sum())
    if short > 0:
        tied = (flat == cut).nonzero().squeeze(1)[:short]
        mask[tied] = True
    return mask.reshape(values.shape)


def magnitude_mask(delta: torch.Tensor, density: float) -> torch.Tensor:
    """True for the max(1, int(density * n)) entries of largest magnitude (TIES)."""
    return top_k_mask(delta.abs(), max(1, int(density * delta.numel())))


def band_mask(delta: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """Model Breadcrumbs: drop the largest int(gamma * n) magnitudes as outliers, then the
    smallest, keeping int(density * n) entries. When outliers and kept entries together exceed
    n, fewer outliers are dropped so the kept count holds."""
    n = delta.numel()
    keep = int(density * n)
    below = max(0, n - keep - int(gamma * n))  # entries dropped at the small end
    mags = delta.abs()
    return top_k_mask(mags, n - below) & ~top_k_mask(mags, n - below - keep)


def rank_keep_probs(delta: torch.Tensor, density: float, epsilon: float) -> torch.Tensor:
    """DELLA's MagPrune keep probabilities: within each row (the leading axis; a vector is one
    row), entries ranked by magnitude get probabilities rising linearly from density - epsilon
    (smallest) to density + epsilon (largest), so the expected kept fraction is `density`."""
    rows = delta.reshape(1, -1) if delta.dim() < 2 else delta.reshape(delta.shape[0], -1)
    width = rows.shape[1]
    if width == 1:
        return torch.full_like(delta, density)
    order = rows.abs().argsort(dim=1)
    ranks = torch.empty_like(rows)
    ranks.scatter_(1, order, torch.arange(width, dtype=rows.dtype, device=rows.device).expand_as(rows))
    probs = ranks.mul_(2 * epsilon / (width - 1)).add_(density - epsilon)
    return probs.reshape(delta.shape)


def random_mask(shape: torch.Size, density: float | torch.Tensor, seed: int, device: torch.device) -> torch.Tensor:
    """Keep each entry with probability `density` (a scalar or one per entry), drawn on the CPU
    so every device draws the same mask."""
    gen = torch.Generator().manual_seed(seed)
    draws = torch.rand(shape, generator=gen)
    if isinstance(density, torch.Tensor):
        return draws.to(device) < density
    return (draws < density).to(device)


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
