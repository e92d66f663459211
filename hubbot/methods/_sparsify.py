"""Sparsification of task vectors: keep a fraction `density` of each delta's entries.

Shared by the task-vector family (ties, dare, breadcrumbs, della). Magnitude pruning finds the
k-th largest |value| with a selection, not a full sort.
"""

from __future__ import annotations

import zlib

import torch


def magnitude_mask(delta: torch.Tensor, density: float) -> torch.Tensor:
    """True for exactly max(1, int(density * n)) entries of largest magnitude.

    Entries tied with the cut are kept in index order, so the kept count is exact and the
    result does not depend on a sort's tie order.
    """
    n = delta.numel()
    k = max(1, int(density * n))
    if k >= n:
        return torch.ones_like(delta, dtype=torch.bool)
    mags = delta.abs().reshape(-1)
    cut = torch.kthvalue(mags, n - k + 1).values
    mask = mags > cut
    short = k - int(mask.sum())
    if short > 0:
        tied = (mags == cut).nonzero().squeeze(1)[:short]
        mask[tied] = True
    return mask.reshape(delta.shape)


def random_mask(shape: torch.Size, density: float, seed: int, device: torch.device) -> torch.Tensor:
    """Keep each entry with probability `density`, drawn on the CPU so every device agrees."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=gen) < density).to(device)


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
