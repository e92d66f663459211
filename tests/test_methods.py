"""The method catalogue beyond the core: parity with mergekit 0.1.5 for every deterministic
method, statistics and seeds for DELLA, and parameter rules checked when the recipe is read.

float32 (llama_f32): both sides compute in float32 with the same formulas, so results agree to
float32 rounding. bfloat16 (llama): the reference computes in the recipe's `dtype`, i.e. in
bfloat16 arithmetic for `dtype: bfloat16`, while hubbot always computes in float32 and rounds
once; so on bf16 weights our `dtype: bfloat16` run is compared with the reference run at
`dtype: float32, out_dtype: bfloat16`, which is the same computation. Results then agree to one
bf16 step (two for the iterative Karcher mean), except where magnitude selections meet ties: bf16
task vectors have many entries of equal magnitude at the cut, which the reference's sort orders
arbitrarily and hubbot keeps in index order, so there a small share of entries differ.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hubbot.errors import RecipeError
from hubbot.merge import engine
from hubbot.merge.plan import build
from hubbot.recipe.merge import parse
from tests.models import load_state
from tests.oracle import mergekit_merge, ulp_distance
from tests.test_parity import assert_close

# method, needs base, shared parameters, per-model parameters (for ft1, ft2), models used
CASES = [
    ("nuslerp", True, {}, [{"weight": 0.3}, {"weight": 0.7}], 2),
    ("nuslerp", False, {"nuslerp_flatten": False}, [{"weight": 0.3}, {"weight": 0.7}], 2),
    ("nuslerp", False, {"nuslerp_flatten": False, "nuslerp_row_wise": True}, [{"weight": 0.4}, {"weight": 0.6}], 2),
    ("multislerp", False, {}, [{"weight": 0.3}, {"weight": 0.7}], 2),
    ("multislerp", True, {"normalize_weights": False}, [{"weight": 0.5}, {"weight": 0.4}], 2),
    ("karcher", False, {"max_iter": 20}, [{}, {}], 2),
    ("karcher", True, {}, [{}, {}], 2),
    ("breadcrumbs", True, {}, [{"weight": 0.6, "density": 0.5, "gamma": 0.05}, {"weight": 0.4, "density": 0.8}], 2),
    ("breadcrumbs_ties", True, {"normalize": True}, [{"weight": 0.6, "density": 0.5}, {"weight": 0.4, "density": 0.9, "gamma": 0.1}], 2),
    ("sce", True, {}, [{}, {}], 2),
    ("sce", True, {"select_topk": 0.5}, [{}, {}], 2),
    ("model_stock", True, {}, [{}, {}], 2),
    ("model_stock", True, {"filter_wise": True}, [{}, {}], 2),
    ("nearswap", True, {"t": 0.01}, [{}], 1),
    ("arcee_fusion", True, {}, [{}], 1),
]
SELECTING = ("breadcrumbs", "breadcrumbs_ties", "sce")


def recipe(folders: list[Path], method: str, with_base: bool, shared: dict, per_model: list[dict], n: int,
           dtype: str) -> str:
    base, *fts = folders
    lines = [f"merge_method: {method}"] + ([f"base_model: {base}"] if with_base else []) + ["models:"]
    if method == "karcher" and not with_base:
        lines.append(f"  - model: {base}")
    for folder, params in zip(fts[:n], per_model):
        lines.append(f"  - model: {folder}")
        if params:
            lines.append(f"    parameters: {params}")
    lines += [f"parameters: {shared or '{}'}", dtype]
    return "\n".join(lines) + "\n"


def case_id(case: tuple) -> str:
    return case[0] + ("-base" if case[1] else "") + "".join(f"-{k}={v}" for k, v in case[2].items())


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_parity_float32(families, tmp_path, case):
    text = recipe(families("llama_f32"), *case, "dtype: float32")
    ours = load_state(engine.run(build(parse(text)), tmp_path / "ours", device="cpu").folder)
    theirs = load_state(mergekit_merge(text, tmp_path / "theirs"))
    assert_close(ours, theirs, atol=1e-6)
    base = load_state(families("llama_f32")[0])
    assert any(not torch.equal(ours[k], base[k]) for k in base), "the merge changed nothing"


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_parity_bfloat16(families, tmp_path, case):
    folders = families("llama")
    ours = load_state(engine.run(build(parse(recipe(folders, *case, "dtype: bfloat16"))), tmp_path / "ours",
                                 device="cpu").folder)
    theirs = load_state(mergekit_merge(recipe(folders, *case, "dtype: float32\nout_dtype: bfloat16"), tmp_path / "theirs"))
    if case[0] not in SELECTING or case[2].get("select_topk", 0) == 1:
        assert_close(ours, theirs, ulps=2 if case[0] == "karcher" else 1)
        return
    assert set(ours) == set(theirs)
    close = total = 0
    for name, ref in theirs.items():
        ok = ulp_distance(ours[name], ref) <= 1
        close, total = close + int(ok.sum()), total + ok.numel()
    assert close / total >= 0.99, f"only {close / total:.2%} of entries within one bf16 step"


def test_della_keeps_density_in_expectation_and_follows_seeds(families, tmp_path):
    """DELLA keeps each entry with a probability that rises with its magnitude rank (mean
    `density`), and rescaled survivors keep every entry's expectation; a seed fixes the draw."""
    base, ft1, _ = families("llama_f32")
    text = f"""merge_method: della_linear
base_model: {base}
models:
  - {{model: {ft1}, parameters: {{weight: 1.0, density: 0.4, epsilon: 0.3}}}}
random_seed: 3
dtype: float32
"""
    runs = [load_state(engine.run(build(parse(t)), tmp_path / f"o{i}", device="cpu").folder)
            for i, t in enumerate([text, text, text.replace("random_seed: 3", "random_seed: 4")])]
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert any(not torch.equal(runs[0][k], runs[2][k]) for k in runs[0])
    bs, fs = load_state(base), load_state(ft1)
    name = "model.layers.2.mlp.down_proj.weight"
    delta, kept = fs[name] - bs[name], runs[0][name] - bs[name]
    alive = kept.abs() > 0
    assert abs(alive.float().mean().item() - 0.4) < 0.02
    small, large = delta.abs() < delta.abs().median(), delta.abs() >= delta.abs().median()
    assert alive[large].float().mean() > alive[small].float().mean() + 0.2, "large changes must survive more often"
    ratio = kept[alive] / delta[alive]
    assert ratio.min() >= 1 / 0.7 - 1e-3 and ratio.max() <= 1 / 0.1 + 1e-2, "survivors are divided by their keep probability"
    assert abs((kept.sum() - delta.sum()) / delta.abs().sum()) < 0.05


def test_della_ties_runs_and_loads(families, tmp_path):
    from tests.test_engine import forward_is_finite

    base, ft1, ft2 = families("llama")
    res = engine.run(build(parse(f"""merge_method: della
base_model: {base}
models:
  - {{model: {ft1}, parameters: {{weight: 0.5, density: 0.5}}}}
  - {{model: {ft2}, parameters: {{weight: 0.5, density: 0.6, epsilon: 0.1}}}}
parameters: {{lambda: 1.1}}
""")), tmp_path / "out", device="cpu")
    forward_is_finite(res.folder)


def problems(text: str) -> list[str]:
    with pytest.raises(RecipeError) as exc:
        parse(text)
    return exc.value.problems


@pytest.mark.parametrize("params,where,bad", [
    ("models: [{model: org/a, parameters: {weight: 1, density: 0.1}}]", "models[0].parameters", "[-0.05, 0.25]"),
    ("models: [{model: org/a, parameters: {weight: 1, density: 0.9, epsilon: 0.2}}]", "models[0].parameters", "[0.7, 1.1]"),
    ("models: [{model: org/a, parameters: {weight: 1}}]\nparameters: {density: [0.5, 0.1]}", "models[0].parameters", "[-0.05, 0.25]"),
    ("models: [{model: org/a, parameters: {weight: 1}}]\nparameters: {density: 0.5, epsilon: [{filter: mlp, value: 0.6}, {value: 0.1}]}",
     "models[0].parameters", "[-0.1, 1.1]"),
])
def test_della_density_epsilon_rule_is_checked_with_the_recipe(params, where, bad):
    ps = problems(f"merge_method: della\nbase_model: org/b\n{params}\n")
    assert len(ps) == 1 and ps[0].startswith(f"{where}: density ± epsilon must stay inside (0, 1)") and bad in ps[0], ps


def test_valid_della_values_pass():
    parse("merge_method: della_linear\nbase_model: org/b\nmodels:\n"
          "  - {model: org/b}\n"
          "  - {model: org/a, parameters: {weight: 1, density: [0.2, 0.8], epsilon: [0.1, 0.15]}}\n"
          "  - {model: org/c, parameters: {weight: 1, density: 1.0}}\n")


@pytest.mark.parametrize("text,needle", [
    ("merge_method: nuslerp\nmodels: [{model: org/a, parameters: {weight: 1}}]\n",
     "models: merge_method 'nuslerp' takes exactly 2 models besides the base model, got 1"),
    ("merge_method: nuslerp\nbase_model: org/a\nmodels: [{model: org/a}, {model: org/b, parameters: {weight: 1}}]\n",
     "takes exactly 2 models besides the base model, got 1"),
    ("merge_method: model_stock\nbase_model: org/b\nmodels: [{model: org/a}]\n",
     "takes at least 3 models counting the base model, got 2"),
    ("merge_method: nearswap\nbase_model: org/b\nmodels: [{model: org/a}]\nparameters: {t: -1}\n",
     "parameters.t: -1 is outside [0, inf]"),
    ("merge_method: breadcrumbs\nbase_model: org/b\nmodels: [{model: org/a, parameters: {weight: 1, gamma: 2}}]\n",
     "models[0].parameters.gamma: 2 is outside [0, 1]"),
    ("merge_method: karcher\nmodels: [{model: org/a}, {model: org/b}]\nparameters: {max_iter: 0}\n",
     "parameters.max_iter: 0 is outside [1, inf]"),
    ("merge_method: karcher\nmodels: [{model: org/a}, {model: org/b}]\nparameters: {max_iter: 2.5}\n",
     "parameters.max_iter: expected a whole number, got 2.5"),
])
def test_method_inputs_and_ranges(text, needle):
    assert any(needle in p for p in problems(text)), problems(text)


def test_optional_base_is_used_when_named(families, tmp_path):
    """nuslerp with a base interpolates task vectors; without, the weights themselves."""
    base, ft1, ft2 = families("llama_f32")
    models = f"models:\n  - {{model: {ft1}, parameters: {{weight: 1}}}}\n  - {{model: {ft2}, parameters: {{weight: 1}}}}\n"
    plain = build(parse("merge_method: nuslerp\n" + models))
    based = build(parse(f"merge_method: nuslerp\nbase_model: {base}\n" + models))
    assert all(t.base is None for t in plain.tasks) and all(t.base is not None for t in based.tasks)
    a = load_state(engine.run(plain, tmp_path / "a", device="cpu").folder)
    b = load_state(engine.run(based, tmp_path / "b", device="cpu").folder)
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_magnitude_selections_do_not_sort(monkeypatch):
    """Breadcrumbs and TIES find their cuts by selection: no full sort of the tensor."""
    from hubbot.methods._sparsify import band_mask, magnitude_mask

    def no_sort(*args, **kwargs):
        raise AssertionError("sorted a whole tensor")

    monkeypatch.setattr(torch, "sort", no_sort)
    monkeypatch.setattr(torch, "argsort", no_sort)
    monkeypatch.setattr(torch.Tensor, "sort", no_sort)
    monkeypatch.setattr(torch.Tensor, "argsort", no_sort)
    x = torch.randn(1000)
    mask = band_mask(x, 0.5, 0.1)
    assert int(mask.sum()) == 500
    kept = x.abs()[mask]
    order = x.abs().reshape(-1).kthvalue(1000 - 100).values
    assert kept.max() <= order and kept.min() >= x.abs().kthvalue(401).values
    assert int(magnitude_mask(x, 0.3).sum()) == 300


def test_top_k_masks_keep_exactly_k_in_index_order_in_every_form():
    """Boolean and float masks, counted on one thread or in two halves (large tensors), all keep
    the k largest magnitudes with ties kept in index order: a stable sort's top k."""
    from hubbot.methods import _sparsify

    gen = torch.Generator().manual_seed(3)
    x = torch.randint(-40, 41, (1536, 1400), generator=gen).float() * 0.01  # few distinct values: many ties
    assert x.numel() >= _sparsify.SPLIT_COUNT
    order = x.abs().reshape(-1).argsort(descending=True, stable=True)
    threads = torch.get_num_threads()
    try:
        for n_threads in (1, 2):
            torch.set_num_threads(n_threads)
            for k in (1, 1000, x.numel() // 3, x.numel() - 7):
                want = torch.zeros(x.numel(), dtype=torch.bool)
                want[order[:k]] = True
                got = _sparsify.top_k_mask(x.abs(), k)
                assert torch.equal(got.reshape(-1), want), (n_threads, k)
                as_float = _sparsify.top_k_mask(x.abs(), k, torch.float32)
                assert as_float.dtype == torch.float32 and torch.equal(as_float.bool().reshape(-1), want)
                assert set(as_float.unique().tolist()) <= {0.0, 1.0}
            band = _sparsify.band_mask(x, 0.4, 0.1, torch.float32)
            assert torch.equal(band.bool(), _sparsify.band_mask(x, 0.4, 0.1))
    finally:
        torch.set_num_threads(threads)


def test_block_by_block_cuts_keep_the_whole_tensors_ties_on_every_walk():
    """A cut found from every block's histograms added into one masks block by block exactly as
    the whole tensor: the ties at the cut go to the first blocks in index order, and a second
    walk over the blocks (SCE's energy pass, then its merge) keeps the same entries."""
    from hubbot.methods import _sparsify

    gen = torch.Generator().manual_seed(5)
    mags = torch.randint(0, 9, (96, 50), generator=gen).float()  # nine values: thousands of ties
    signed = mags * (torch.rand(mags.shape, generator=gen) - 0.5).sign()
    order = mags.reshape(-1).argsort(descending=True, stable=True)
    blocks = mags.split(7)
    for k in (1, 700, 2400, mags.numel() - 1):
        want = torch.zeros(mags.numel(), dtype=torch.bool)
        want[order[:k]] = True
        first = _sparsify.first_cut(sum(_sparsify.high_counts(b) for b in blocks), k)
        cut = _sparsify.final_cut(sum(_sparsify.low_counts(b, first[0]) for b in blocks), first)
        # the same cut from a window guessed on a sample (every block's first row), unless it misses
        window = _sparsify.guess_window(sum(_sparsify.high_counts(b[:1]) for b in blocks), k * len(blocks) / 96)
        missed = _sparsify.Window(first[0] + 1, 1) if first[0] + 1 < _sparsify.HIGH_BINS else _sparsify.Window(0, 1)
        assert _sparsify.window_cut(sum(_sparsify.window_counts(b, missed) for b in blocks), missed, k) is None
        if window is not None:
            found = _sparsify.window_cut(sum(_sparsify.window_counts(b, window) for b in blocks), window, k)
            assert found is None or (found.bits, found.ties) == (cut.bits, cut.ties)
        for _ in range(2):
            got = torch.cat([_sparsify.block_mask(b, cut, i) for i, b in enumerate(blocks)])
            assert torch.equal(got.reshape(-1), want)
        # pruning a signed delta in place keeps the same entries, with their signs, whether the
        # ties left are counted on the host or kept as a device scalar (a GPU's form, here on the CPU)
        for on_host in (True, False):
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(_sparsify, "_counts_on_host", lambda values: on_host)
                kept = torch.cat([_sparsify.keep_top(d.clone(), cut, i) for i, d in enumerate(signed.split(7))])
                masks = torch.cat([_sparsify.block_mask(b, cut, i) for i, b in enumerate(blocks)])
            assert torch.equal(kept.reshape(-1), signed.reshape(-1) * want), on_host
            assert torch.equal(masks.reshape(-1), want), on_host
        # the GPU's form of the count (a tensor, never read back) keeps the same ties
        level = mags.reshape(-1)[order[k - 1]]
        left: int | torch.Tensor = cut.ties
        tied = []
        for b in blocks:
            flags = (b == level).reshape(-1)
            left = _sparsify._keep_first(flags, left)
            tied.append(flags)
        assert torch.equal(torch.cat(tied) | (mags.reshape(-1) > level), want) and int(left) == 0


def test_large_histograms_count_the_same_in_two_halves_and_a_child_process_makes_its_own_helper(monkeypatch):
    """The second half of a large histogram is counted on a helper thread of this process; a forked
    child (another process id) makes its own helper rather than queue work for its parent's thread."""
    from hubbot.methods import _sparsify

    ints = (torch.arange(_sparsify.SPLIT_COUNT * 2 + 3) * 7919) % 1000
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert torch.equal(_sparsify._bincount(ints, 1000), torch.bincount(ints, minlength=1000))
        parents = _sparsify._counting_thread()
        monkeypatch.setattr(_sparsify.os, "getpid", lambda: -1)
        assert _sparsify._counting_thread() is not parents
        assert torch.equal(_sparsify._bincount(ints, 1000), torch.bincount(ints, minlength=1000))
    finally:
        torch.set_num_threads(threads)


def test_counts_by_sorting_equal_bincount():
    """The GPU's histograms (counted by sorting) are bincount's, empty and crowded bins alike."""
    from hubbot.methods._sparsify import sorted_counts

    values = (torch.randn(100_003) * 0.002).abs().view(torch.int32)
    for ints, bins in [((values >> 16), 1 << 15), ((values - values.median()).clamp(0, 70_000), 70_001),
                       (torch.zeros(5, dtype=torch.int32), 3), (torch.tensor([2, 2, 0], dtype=torch.int64), 4)]:
        assert torch.equal(sorted_counts(ints, bins), torch.bincount(ints, minlength=bins))


def test_every_method_has_a_gallery_recipe():
    """Each method has a community recipe in recipes/ that parses as the service reads it."""
    from hubbot.methods import all_methods

    folder = Path(__file__).resolve().parent.parent / "recipes"
    used = {parse(p.read_text(), allow_local=False).merge_method for p in folder.glob("*.yml")}
    new = {"nuslerp", "multislerp", "karcher", "breadcrumbs", "breadcrumbs_ties", "della", "della_linear", "sce",
           "model_stock", "nearswap", "arcee_fusion"}
    assert new <= used <= set(all_methods())


def test_multislerp_refuses_directions_that_cancel():
    from hubbot.methods import get

    x = torch.randn(4, 8)
    kernel = get("multislerp").kernel
    params = {"weight": [0.25, 0.5, 0.25], "normalize_weights": True, "eps": 1e-8}
    with pytest.raises(ValueError, match="cancel out"):
        kernel(None, [x, -x, x], params)
    two = kernel(None, [x, -x], {**params, "weight": [0.5, 0.5]})
    assert torch.allclose(two, torch.zeros_like(x)), "two opposite tensors fall back to a straight average"
