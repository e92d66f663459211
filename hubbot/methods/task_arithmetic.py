"""The task-vector family: task arithmetic, TIES, and DARE (linear and TIES).

Each fine-tune minus the base is a task vector. The family sparsifies each vector, weights it,
optionally keeps only entries that agree with the elected sign (TIES), and adds the combination
to the base: out = base + lambda * sum_i(w_i m_i d_i) [/ sum_i(w_i m_i) when normalize].
Other members (breadcrumbs, della) are declared with `family` from their own
modules.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Callable

import torch

from ._sparsify import (
    HIGH_BINS,
    LOW_BINS,
    SAMPLE,
    Window,
    derive_seed,
    elect_signs,
    final_cut,
    first_cut,
    guess_window,
    high_counts,
    keep_band,
    l1_rescale,
    low_counts,
    magnitude_mask,
    random_mask,
    row_spread,
    row_sums,
    settled,
    window_counts,
    window_cut,
)
from .method import Block, Blockwise, Method, Param, Pass

# (delta, density, rescale, seed, row, **per-model extras such as gamma or epsilon) -> pruned delta;
# `row` is the index of delta's first row in its tensor (random draws are keyed on rows)
Sparsifier = Callable[..., torch.Tensor]
SPARSIFIER_PARAMS = ("gamma", "epsilon")


def _magnitude(delta: torch.Tensor, density: float, rescale: bool, seed: int, row: int) -> torch.Tensor:
    if density >= 1:
        return delta
    mask = magnitude_mask(delta, density, delta.dtype)
    if not rescale:
        return delta.mul_(mask)  # delta is the kernel's own (x - base)
    return l1_rescale(delta * mask, delta)


def _random(delta: torch.Tensor, density: float, rescale: bool, seed: int, row: int) -> torch.Tensor:
    """DARE: drop each entry with probability 1 - density; survivors scaled by 1 / density."""
    if density >= 1:
        return delta
    pruned = delta.mul_(random_mask(delta.shape, density, seed, delta.device, row, delta.dtype))  # delta is the kernel's own
    return pruned.div_(density) if rescale else pruned


def combine(
    base: torch.Tensor,
    tensors: list[torch.Tensor],
    params: dict[str, Any],
    prune: Callable[[int, torch.Tensor], torch.Tensor] | None,
    elect_sign: bool,
) -> torch.Tensor:
    """The shared body of the family: `prune(i, delta)` sparsifies model i's task vector and
    `elect_sign` adds TIES's sign election."""
    weights = params["weight"]
    deltas = []
    for i, (x, w) in enumerate(zip(tensors, weights)):
        d = x - base
        if prune is not None:
            d = prune(i, d)
        deltas.append(d.mul_(w))
    if not deltas:
        return base.clone()
    if elect_sign:
        return _elect_and_add(base, deltas, weights, params["normalize"], params["lambda"])
    mixed = deltas[0]
    for d in deltas[1:]:
        mixed.add_(d)
    if params["normalize"]:
        total = sum(weights)
        mixed = mixed.div_(total if abs(total) >= 1e-8 else 1.0)  # mixed is this kernel's own
    if params["lambda"] != 1:
        mixed = mixed.mul_(params["lambda"])
    return mixed.add_(base)


def _elect_and_add(base: torch.Tensor, deltas: list[torch.Tensor], weights: list[float], normalize: bool,
                   lam: float) -> torch.Tensor:
    """TIES's sign election over the weighted, pruned task vectors (the kernel's own, reused as
    working memory), then base + lambda * the sum of the entries of the elected sign [/ the sum of
    their weights]: s * relu(s * d) per vector, so each step is one in-place pass."""
    total = torch.add(deltas[0], deltas[1]) if len(deltas) > 1 else deltas[0].clone()
    for d in deltas[2:]:
        total.add_(d)
    signs = elect_signs(total)
    mixed = deltas[0].mul_(signs).clamp_(min=0)
    divisor = torch.gt(mixed, 0, out=total).mul_(weights[0])  # 0.0 / 1.0 written directly: no widening pass
    for d, w in zip(deltas[1:], weights[1:]):
        along = d.mul_(signs).clamp_(min=0)
        mixed.add_(along)
        divisor.add_(torch.gt(along, 0, out=along), alpha=w)  # along is spent: its memory holds the flags
    if not normalize:
        return torch.add(base, mixed.mul_(signs), alpha=lam)
    if min(weights) > 0:  # a sum of positive weights is 0 or at least the least of them; where it is 0, so is mixed
        divisor.clamp_(min=min(weights))
    else:
        spare = deltas[-1] if len(deltas) > 1 else torch.empty_like(base)
        divisor.add_(torch.eq(divisor, 0, out=spare))  # no agreeing entry: divide by 1
    return torch.addcdiv(base, mixed, divisor.mul_(signs), value=lam)


def _pruner(params: dict[str, Any], sparsify: Sparsifier, row: int = 0) -> Callable[[int, torch.Tensor], torch.Tensor]:
    """Model i's sparsifier with its own density, extras and seed, for a tensor (or a block of
    rows from row `row`)."""
    densities = params.get("density") or [1.0] * len(params["weight"])
    seed = params.get("seed", 0)

    def prune(i: int, d: torch.Tensor) -> torch.Tensor:
        extra = {k: params[k][i] for k in SPARSIFIER_PARAMS if k in params}
        return sparsify(d, densities[i], params["rescale"], derive_seed(seed, i), row, **extra)

    return prune


# (params, model index, entries in the tensor) -> the band of magnitude ranks model i keeps:
# the top `outer` minus the top `inner` (None: it keeps everything)
Band = Callable[[dict[str, Any], int, int], "tuple[int, int] | None"]


def selection(band: Band, elect: bool) -> Blockwise:
    """Magnitude selections block by block (TIES, Model Breadcrumbs): each top-k cut of |delta|
    is guessed from a sample of every block's rows, then fixed by one counting pass over the
    blocks (`_sparsify`'s windows); a cut that falls outside its window is found by the exact
    radix select (two more counting passes, which run only then). Each block then keeps its
    entries inside the band, exactly as the whole-tensor `top_k_mask` does.

    stats["cuts"][i] is None (model i keeps everything) or its (outer, inner) cuts, each True,
    False, a `Cut`, or, while it is being searched, None (unknown) or a bin (see `first_cut`)."""
    def mags(base: torch.Tensor | None, tensors: list[torch.Tensor], models: list[int]) -> Iterator[torch.Tensor]:
        assert base is not None
        return ((tensors[i] - base).abs_() for i in models)

    def sample(base: torch.Tensor | None, tensors: list[torch.Tensor], params: dict[str, Any],
               stats: dict[str, Any], block: Block) -> torch.Tensor:
        """Each model's `high_counts` and `row_sums` of the sampled rows, then the tensor's
        entries (counted at its first block: the shares add up), as float64."""
        assert base is not None
        values = list(mags(base, tensors, list(range(len(tensors)))))
        counts = torch.stack([high_counts(m) for m in values]).double()
        rows = torch.stack([row_sums(m) for m in values])
        entries = torch.full((1,), block.entries if block.index == 0 else 0, dtype=torch.float64, device=base.device)
        return torch.cat([counts.reshape(-1), rows.reshape(-1), entries])

    def guess(shares: list[torch.Tensor], stats: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        total = shares[0].cpu()
        n, models = int(total[-1]), len(params["weight"])
        counts = total[:models * HIGH_BINS].reshape(models, HIGH_BINS).long()
        rows = total[models * HIGH_BINS:-1].reshape(models, 3)
        s = int(counts[0].sum())
        cuts: list[list[Any] | None] = []
        windows: list[list[Window | None] | None] = []
        for i, c in enumerate(counts):
            b = band(params, i, n)
            cuts.append(None if b is None else [settled(k, n) for k in b])
            windows.append(None if b is None else [None if cut is not None else guess_window(c, k * s / n, row_spread(rows[i]))
                                                   for k, cut in zip(b, cuts[-1])])
        return {"entries": n, "cuts": cuts, "windows": windows}

    def guessed(stats: dict[str, Any]) -> list[tuple[int, int, Window]]:
        return [(i, j, w) for i, ws in enumerate(stats["windows"]) if ws for j, w in enumerate(ws) if w is not None]

    def windowed(base: torch.Tensor | None, tensors: list[torch.Tensor], params: dict[str, Any],
                 stats: dict[str, Any], block: Block) -> torch.Tensor:
        """Every guessed window's counts, one after another."""
        assert base is not None
        counts, model, values = [], None, None
        for i, _, w in guessed(stats):  # in model order: one model's magnitudes at a time
            if i != model:
                model, values = i, next(mags(base, tensors, [i]))
            counts.append(window_counts(values, w))
        return torch.cat(counts)

    def placed(shares: list[torch.Tensor], stats: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        total, n = shares[0].cpu(), stats["entries"]
        cuts = [None if c is None else list(c) for c in stats["cuts"]]
        start = 0
        for i, j, w in guessed(stats):
            b = band(params, i, n)
            assert b is not None and cuts[i] is not None
            cuts[i][j] = window_cut(total[start:start + w.size], w, b[j])
            start += w.size
        return {"cuts": cuts}

    def unknown(stats: dict[str, Any]) -> list[int]:
        return [i for i, cuts in enumerate(stats["cuts"]) if cuts is not None and None in cuts]

    def high(base: torch.Tensor | None, tensors: list[torch.Tensor], params: dict[str, Any],
             stats: dict[str, Any], block: Block) -> torch.Tensor:
        assert base is not None
        counts = torch.zeros(len(tensors), HIGH_BINS, dtype=torch.int64, device=base.device)
        models = unknown(stats)
        for i, m in zip(models, mags(base, tensors, models)):
            counts[i] = high_counts(m)
        return counts

    def high_done(shares: list[torch.Tensor], stats: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        counts, n = shares[0].cpu(), stats["entries"]
        cuts = [None if c is None else list(c) for c in stats["cuts"]]
        for i in unknown(stats):
            b = band(params, i, n)
            assert b is not None
            cuts[i] = [first_cut(counts[i], k) if c is None else c for c, k in zip(cuts[i], b)]
        return {"cuts": cuts}

    def binned(stats: dict[str, Any]) -> list[int]:
        return [i for i, cuts in enumerate(stats["cuts"]) if cuts is not None and any(isinstance(c, tuple) for c in cuts)]

    def low(base: torch.Tensor | None, tensors: list[torch.Tensor], params: dict[str, Any],
            stats: dict[str, Any], block: Block) -> torch.Tensor:
        """Per model and cut, the counts of the low bits in the cut's bin (zeros where the cut is
        already known)."""
        assert base is not None
        counts = torch.zeros(len(tensors), 2, LOW_BINS, dtype=torch.int64, device=base.device)
        models = binned(stats)
        for i, m in zip(models, mags(base, tensors, models)):
            for j, c in enumerate(stats["cuts"][i]):
                if isinstance(c, tuple):
                    counts[i, j] = low_counts(m, c[0])
        return counts

    def low_done(shares: list[torch.Tensor], stats: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        lows = shares[0].cpu()
        return {"cuts": [None if cuts is None else [final_cut(lows[i, j], c) if isinstance(c, tuple) else c
                                                    for j, c in enumerate(cuts)]
                         for i, cuts in enumerate(stats["cuts"])]}

    def kernel(base: torch.Tensor | None, tensors: list[torch.Tensor], params: dict[str, Any],
               stats: dict[str, Any], block: Block) -> torch.Tensor:
        assert base is not None

        def prune(i: int, d: torch.Tensor) -> torch.Tensor:
            cuts = stats["cuts"][i]
            return d if cuts is None else keep_band(d, *cuts, block.index)

        return combine(base, tensors, params, prune, elect)

    return Blockwise(kernel, (Pass(sample, guess, torch.Tensor.add_, sample=SAMPLE),
                              Pass(windowed, placed, torch.Tensor.add_, needed=lambda stats: bool(guessed(stats))),
                              Pass(high, high_done, torch.Tensor.add_, needed=lambda stats: bool(unknown(stats))),
                              Pass(low, low_done, torch.Tensor.add_, needed=lambda stats: bool(binned(stats)))),
                     applies=lambda params: not params["rescale"])


def _top_density(params: dict[str, Any], i: int, n: int) -> tuple[int, int] | None:
    """TIES: the max(1, int(density * n)) largest magnitudes."""
    density = params["density"][i]
    return None if density >= 1 else (max(1, int(density * n)), 0)


def _by_rows(sparsify: Sparsifier, elect: bool) -> Blockwise:
    """The blockwise form of a member whose sparsifier looks at one row at a time and draws by
    row (DARE, DELLA): each block is pruned and merged on its own."""
    def kernel(base: torch.Tensor | None, tensors: list[torch.Tensor], params: dict[str, Any],
               stats: dict[str, Any], block: Block) -> torch.Tensor:
        assert base is not None
        return combine(base, tensors, params, _pruner(params, sparsify, block.row), elect)

    return Blockwise(kernel)


def family(name: str, title: str, summary: str, paper: str, sparsify: Sparsifier | None, elect: bool,
                    normalize: bool, rescale: bool, elementwise: bool = False, seeded: bool = False,
                    extra: tuple[Param, ...] = (), check: Callable[[dict[str, Any]], str | None] | None = None,
                    blockwise: Blockwise | None = None, by_rows: bool = False) -> Method:
    """One member of the family: `sparsify` prunes each task vector, `elect` adds TIES sign election;
    `extra` are the sparsifier's own per-model parameters, `check` its cross-parameter rule,
    `blockwise` its block-by-block form; `by_rows` says the sparsifier prunes row by row
    with draws keyed on rows, which gives that form."""
    params = [
        Param("weight", per_model=True, doc="scale of this model's task vector"),
        Param("normalize", bool, default=normalize, doc="divide by the sum of the weights that contribute"),
        Param("lambda", default=1.0, doc="scale of the combined task vector"),
        Param("rescale", bool, default=rescale, doc="restore the magnitude of pruned task vectors"),
        Param("int8_mask", bool, default=False, doc="accepted for compatibility; masks are always compact"),
    ]
    if sparsify is not None:
        params.insert(1, Param("density", per_model=True, default=1.0, low=0.0, high=1.0, low_open=True,
                               doc="fraction of the task vector to keep"))
    params += extra

    def kernel(base: torch.Tensor | None, tensors: list[torch.Tensor], p: dict[str, Any]) -> torch.Tensor:
        """The whole tensor: by the blockwise form where it has passes and applies (its cuts come
        from a sample and one counting pass, where the sparsifier's take two)."""
        assert base is not None
        if blockwise is not None and blockwise.passes and blockwise.applies(p):
            return blockwise.whole(base, tensors, p)
        return combine(base, tensors, p, None if sparsify is None else _pruner(p, sparsify), elect)

    kernel.__name__ = name
    return Method(name=name, kernel=kernel, title=title, summary=summary, paper=paper, base="required",
                    params=tuple(params), models=(1, None), elementwise=elementwise,
                    seeded=seeded, check=check, deltas=True,
                    blockwise=_by_rows(sparsify, elect) if by_rows and sparsify else blockwise)


TASK_ARITHMETIC = family("task_arithmetic", "Task arithmetic",
                         "Adds the weighted task vectors (fine-tune minus base) of every model to the base model, so the "
                         "skills each fine-tune learned add up.",
                         "Ilharco et al. 2023, Editing models with task arithmetic, arXiv:2212.04089",
                         None, False, normalize=False, rescale=False, elementwise=True)
TIES = family("ties", "TIES",
              "Trims each task vector to its largest entries, elects a sign per parameter from the summed "
              "vectors, and averages only the entries that agree with it, which reduces interference between "
              "fine-tunes.",
              "Yadav et al. 2023, TIES-Merging, arXiv:2306.01708",
              _magnitude, True, normalize=True, rescale=False, blockwise=selection(_top_density, True))
DARE_LINEAR = family("dare_linear", "DARE (linear)",
                     "Drops each task-vector entry at random with probability 1 - density and rescales the survivors "
                     "by 1 / density, then adds the weighted vectors to the base.",
                     "Yu et al. 2024, Language models are Super Mario (DARE), arXiv:2311.03099",
                     _random, False, normalize=False, rescale=True, seeded=True, by_rows=True)
DARE_TIES = family("dare_ties", "DARE (TIES)",
                   "Drops task-vector entries at random and rescales the survivors (DARE), then keeps only entries "
                   "that agree with the elected sign (TIES) before adding them to the base.",
                   "Yu et al. 2024, Language models are Super Mario (DARE), arXiv:2311.03099",
                   _random, True, normalize=False, rescale=True, seeded=True, by_rows=True)

METHODS = (TASK_ARITHMETIC, TIES, DARE_LINEAR, DARE_TIES)
