"""The engine end to end on tiny models: outputs load in transformers, problems are found from
headers, failures leave no partial output, seeds reproduce, memory stays bounded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hubbot.errors import MergeError, PlanError
from hubbot.merge import engine
from hubbot.merge.plan import build
from hubbot.recipe.merge import parse
from tests.models import load_state, make_family
from tests.test_parity import assert_close


def merge(text: str, out: Path, **kw) -> engine.RunResult:
    return engine.run(build(parse(text)), out, device="cpu", **kw)


def forward_is_finite(folder: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    ids = tok("model merging combines weights", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert torch.isfinite(logits).all()
    assert logits.shape[-1] == model.config.vocab_size


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2_sharded", "gpt2", "llama_tied"])
def test_merged_models_load_and_run(families, tmp_path, family):
    base, ft1, ft2 = families(family)
    res = merge(f"""merge_method: ties
base_model: {base}
models:
  - {{model: {ft1}, parameters: {{weight: 0.5, density: 0.6}}}}
  - {{model: {ft2}, parameters: {{weight: 0.5, density: 0.6}}}}
dtype: bfloat16
""", tmp_path / "out", shard_bytes=120_000)
    names = {p.name for p in res.folder.iterdir()}
    assert {"config.json", "mergekit_config.yml", "tokenizer.json", "model.safetensors.index.json"} <= names
    index = json.loads((res.folder / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(load_state(res.folder))
    src_names = set(load_state(base))
    assert set(load_state(res.folder)) == src_names, "tied models must not grow an lm_head"
    forward_is_finite(res.folder)


def test_frankenmerge_config_and_layers(families, tmp_path):
    base, ft1, _ = families("qwen2")
    res = merge(f"""merge_method: passthrough
slices:
  - sources: [{{model: {base}, layer_range: [0, 4]}}]
  - sources: [{{model: {ft1}, layer_range: [2, 4]}}]
""", tmp_path / "out")
    cfg = json.loads((res.folder / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 6
    if "layer_types" in cfg:
        assert len(cfg["layer_types"]) == 6
    state, src = load_state(res.folder), load_state(ft1)
    assert torch.equal(state["model.layers.5.mlp.up_proj.weight"], src["model.layers.3.mlp.up_proj.weight"])
    forward_is_finite(res.folder)


def test_plan_reports_all_mismatches_before_reading_weights(families, tmp_path):
    llama, qwen = families("llama")[0], families("qwen2")[1]
    deep = families("llama_deep")[0]
    plan = build(parse(f"merge_method: linear\nmodels: [{{model: {llama}, parameters: {{weight: 1}}}}, "
                       f"{{model: {deep}, parameters: {{weight: 1}}}}]\n"))
    assert any("different numbers of layers" in p and "use 'slices'" in p for p in plan.problems)
    plan = build(parse(f"merge_method: linear\nmodels: [{{model: {llama}, parameters: {{weight: 1}}}}, "
                       f"{{model: {qwen}, parameters: {{weight: 1}}}}]\n"))
    assert any("different architectures" in p for p in plan.problems)
    assert any("tensors are not in the output" in p for p in plan.problems)
    plan = build(parse(f"merge_method: passthrough\nslices:\n  - sources: [{{model: {llama}, layer_range: [0, 9]}}]\n"))
    assert any("slices[0].sources[0].layer_range: [0, 9] goes past" in p for p in plan.problems)
    with pytest.raises(PlanError):
        plan.raise_for_problems()
    with pytest.raises(PlanError) as exc:
        build(parse(f"merge_method: linear\nmodels: [{{model: {tmp_path / 'nope'}}}]\n"))
    assert "no such folder" in str(exc.value)


def test_missing_required_parameter(families):
    base, ft1, _ = families("llama")
    plan = build(parse(f"merge_method: task_arithmetic\nbase_model: {base}\nmodels: [{{model: {ft1}}}]\n"))
    assert any("parameter 'weight' is required" in p and str(ft1) in p for p in plan.problems)


def test_non_finite_output_is_an_error_and_leaves_nothing(families, tmp_path):
    base, ft1, _ = families("llama")
    text = (f"merge_method: task_arithmetic\nbase_model: {base}\nmodels: [{{model: {ft1}, parameters: {{weight: 1.0e+38}}}}]\n"
            "parameters: {lambda: 1.0e+38}\ndtype: float32\n")
    with pytest.raises(MergeError, match="NaN or Inf"):
        merge(text, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_dare_is_seeded_and_keeps_density(families, tmp_path):
    base, ft1, ft2 = families("llama_f32")
    text = f"""merge_method: dare_linear
base_model: {base}
models:
  - {{model: {ft1}, parameters: {{weight: 1.0, density: 0.3}}}}
random_seed: 7
dtype: float32
"""
    a = load_state(merge(text, tmp_path / "a").folder)
    b = load_state(merge(text, tmp_path / "b").folder)
    c = load_state(merge(text.replace("random_seed: 7", "random_seed: 8"), tmp_path / "c").folder)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    bs, fs = load_state(base), load_state(ft1)
    name = "model.layers.1.mlp.down_proj.weight"
    delta, kept = fs[name] - bs[name], a[name] - bs[name]
    nonzero = kept.abs() > 0
    assert abs(nonzero.float().mean().item() - 0.3) < 0.02
    ratio = kept[nonzero] / delta[nonzero]
    assert torch.allclose(ratio, torch.full_like(ratio, 1 / 0.3), rtol=1e-4)


def test_elementwise_blocks_match_whole_tensors(families, tmp_path):
    base, ft1, ft2 = families("llama_f32")
    text = f"merge_method: linear\nmodels: [{{model: {base}, parameters: {{weight: 1}}}}, {{model: {ft1}, parameters: {{weight: 2}}}}]\n"
    whole = load_state(merge(text, tmp_path / "a").folder)
    blocks = load_state(merge(text, tmp_path / "b", chunk_bytes=4096).folder)
    assert all(torch.equal(whole[k], blocks[k]) for k in whole)


def _blockwise_recipe(method: str, base: Path, ft1: Path, ft2: Path) -> str:
    sparse = (f"base_model: {base}\nmodels:\n  - model: {ft1}\n    parameters: {{weight: 0.6, density: 0.3}}\n"
              f"  - model: {ft2}\n    parameters: {{weight: 0.5, density: [0.9, 0.5]}}\n")
    three = f"models: [{{model: {base}}}, {{model: {ft1}}}, {{model: {ft2}}}]\n"
    body = {
        "slerp": f"base_model: {base}\nmodels: [{{model: {base}}}, {{model: {ft1}}}]\nparameters: {{t: [0.2, 0.9]}}\n",
        "nuslerp": (f"base_model: {base}\nmodels:\n  - model: {ft1}\n    parameters: {{weight: 0.3}}\n"
                    f"  - model: {ft2}\n    parameters: {{weight: 0.7}}\n"),
        "multislerp": (f"models:\n  - model: {base}\n    parameters: {{weight: 0.5}}\n  - model: {ft1}\n    parameters: "
                       f"{{weight: [0.2, 0.8]}}\n  - model: {ft2}\n    parameters: {{weight: 0.3}}\n"),
        "karcher": three,
        "model_stock": f"base_model: {base}\n{three}",
        "sce": f"base_model: {base}\n{three}parameters: {{select_topk: 0.4}}\n",
        "della": f"{sparse}parameters: {{epsilon: 0.05}}\n",
    }.get(method, sparse)  # ties, breadcrumbs_ties, dare_ties
    return f"merge_method: {method}\n{body}random_seed: 7\n"


# cuts, ties at the cuts and random draws do not depend on the blocks: identical outputs
EXACT = ("ties", "breadcrumbs_ties", "dare_ties", "della")


@pytest.mark.parametrize("family", ["llama_f32", "llama"])
@pytest.mark.parametrize("method", [*EXACT, "slerp", "nuslerp", "multislerp", "karcher", "model_stock", "sce"])
def test_blockwise_methods_match_whole_tensors(families, tmp_path, family, method):
    """Methods with a blockwise form gather their statistics block by block (inner products,
    cuts with their ties, energies) and then merge each block, or draw by rows (DARE, DELLA):
    the result is the whole-tensor merge's."""
    text = _blockwise_recipe(method, *families(family))
    whole = load_state(merge(text, tmp_path / "whole").folder)
    blocks = load_state(merge(text, tmp_path / "blocks", chunk_bytes=2048).folder)
    if method in EXACT:
        assert all(torch.equal(blocks[k], whole[k]) for k in whole)
    else:  # inner products and energies are summed block by block: agree to float32 rounding
        assert_close(blocks, whole, atol=1e-7, ulps=0 if family.endswith("f32") else 1)


@pytest.mark.parametrize("method", ["ties", "breadcrumbs_ties"])
def test_guessed_cuts_that_miss_fall_back_to_the_exact_passes(families, tmp_path, monkeypatch, method):
    """A cut guessed from a sample of the rows is checked by the window pass: a window that
    misses the cut (here, forced to the smallest values) or no window at all runs the exact
    passes, and the merge is the whole-tensor merge's."""
    from hubbot.methods import _sparsify, task_arithmetic

    text = _blockwise_recipe(method, *families("llama"))
    whole = load_state(merge(text, tmp_path / "whole").folder)
    for name, guess in (("missed", lambda counts, k, spread: _sparsify.Window(0, 1)), ("none", lambda counts, k, spread: None)):
        monkeypatch.setattr(task_arithmetic, "guess_window", guess)
        blocks = load_state(merge(text, tmp_path / name, chunk_bytes=2048).folder)
        assert all(torch.equal(blocks[k], whole[k]) for k in whole), name


def test_cuts_found_in_their_windows_read_no_more_passes(tmp_path, monkeypatch):
    """Where the sample's window holds a cut, the tensor is read three times: a sample of each
    block's rows, the window pass and the merge; the exact passes are skipped, reads included."""
    from safetensors.torch import load_file, save_file

    from hubbot.sources.local import LocalSource

    base, ft1, ft2 = make_family(tmp_path / "wide", hidden=256, intermediate=512, layers=1, dtype=torch.float32)
    weights = load_file(base / "model.safetensors")
    for seed, ft in enumerate((ft1, ft2)):
        gen = torch.Generator().manual_seed(seed)
        # every |delta| in one bin of the top 16 bits (2**-10 up to 2**-10 + 2**-18): the sample's window holds the cut
        deltas = {k: (torch.rand(v.shape, generator=gen) * 2 ** -18 + 2 ** -10) * (torch.rand(v.shape, generator=gen) - 0.5).sign()
                  for k, v in weights.items()}
        save_file({k: v + deltas[k] for k, v in weights.items()}, ft / "model.safetensors", metadata={"format": "pt"})
    text = _blockwise_recipe("ties", base, ft1, ft2)
    whole = load_state(merge(text, tmp_path / "whole").folder)
    reads: list[tuple[str, tuple[int, int] | None]] = []
    original = LocalSource.read

    def spy(self, name, rows=None):
        reads.append((name, rows))
        return original(self, name, rows)

    monkeypatch.setattr(LocalSource, "read", spy)
    blocks = load_state(merge(text, tmp_path / "blocks", chunk_bytes=64 << 10).folder)
    assert all(torch.equal(blocks[k], whole[k]) for k in whole)
    name = "model.layers.0.mlp.up_proj.weight"  # [512, 256]: 8 blocks of 64 rows
    rows = [r for n, r in reads if n == name]
    assert sorted(set(rows)) == sorted({(r, r + 4) for r in range(0, 512, 64)} | {(r, r + 64) for r in range(0, 512, 64)})
    assert len(rows) == 3 * 8 * 3  # three inputs: the sample, the window pass and the merge


@pytest.mark.parametrize("threads", [1, 2])
def test_statistics_passes_run_beside_the_merges(families, tmp_path, monkeypatch, threads):
    """With a second CPU, the statistics passes of each tensor merged block by block run on a
    lane of their own, ahead of the merges; with one they run when the tensor comes. A tensor
    merged whole (a vector here) is read once, its passes run with its merge. The merge is the same."""
    import threading

    from hubbot.methods import task_arithmetic

    text = _blockwise_recipe("ties", *families("llama"))
    reference = load_state(merge(text, tmp_path / "ref").folder)
    counted_on: set[tuple[str, int]] = set()  # (thread, dimensions of what was counted)
    original = task_arithmetic.high_counts

    def spy(values):
        counted_on.add((threading.current_thread().name, values.dim(), torch.get_num_threads()))
        return original(values)

    monkeypatch.setattr(task_arithmetic, "high_counts", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = load_state(merge(text, tmp_path / "out", chunk_bytes=2048).folder)
        assert torch.get_num_threads() == threads  # the merge's split of the CPUs is undone
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(got[k], reference[k]) for k in reference)
    blocks_on = "MainThread" if threads == 1 else "hubbot-stats_0"
    assert counted_on == {(blocks_on, 2, 1), ("MainThread", 1, 1)}  # two CPUs: one each


@pytest.mark.parametrize("method", [*EXACT, "sce", "slerp"])
def test_merges_in_tiles_match_whole_blocks(families, tmp_path, monkeypatch, method):
    """On the CPU a block, or a whole tensor after its passes, is merged tile by tile (a few rows
    each here): ties at the cuts are kept in index order across the tiles, draws keyed on each
    tile's rows, so the merge is the same."""
    text = _blockwise_recipe(method, *families("llama"))
    runs, default = {}, engine.TILE_BYTES
    for tile_bytes in (default, 64):
        monkeypatch.setattr(engine, "TILE_BYTES", tile_bytes)
        for chunk_bytes in (None, 2048):
            runs[tile_bytes, chunk_bytes] = load_state(merge(text, tmp_path / f"{tile_bytes}-{chunk_bytes}",
                                                             chunk_bytes=chunk_bytes).folder)
    for chunk_bytes in (None, 2048):
        untiled, tiled = runs[default, chunk_bytes], runs[64, chunk_bytes]
        assert all(torch.equal(tiled[k], untiled[k]) for k in untiled), chunk_bytes


def test_a_failing_or_cancelled_statistics_pass_stops_the_merge(families, tmp_path, monkeypatch):
    """A pass that fails names its tensor; failing reads (the lane's among them) and a cancel
    seen by the lane stop the merge, with no hang; none leaves output behind."""
    import threading

    from hubbot.errors import Cancelled
    from hubbot.methods import task_arithmetic

    text = _blockwise_recipe("ties", *families("llama"))

    def refuse(values):
        raise ValueError("no counts today")

    monkeypatch.setattr(task_arithmetic, "high_counts", refuse)
    with pytest.raises(MergeError, match="tensor '.*': no counts today"):
        merge(text, tmp_path / "failed", chunk_bytes=2048)  # in blocks: the passes run on the lane
    assert not (tmp_path / "failed").exists() and not (tmp_path / "failed.partial").exists()
    cancel = threading.Event()
    original = task_arithmetic.window_counts

    def cancel_then_count(values, window):
        cancel.set()
        return original(values, window)

    monkeypatch.undo()
    from hubbot.errors import SourceError
    from hubbot.sources.local import LocalSource

    def unreadable(self, name, rows=None):  # a disk error on every read
        raise SourceError(f"{self.label}: reading {name} failed: Input/output error")

    monkeypatch.setattr(LocalSource, "read", unreadable)
    with pytest.raises(SourceError, match="Input/output error"):
        merge(text, tmp_path / "unread", chunk_bytes=2048)
    assert not (tmp_path / "unread").exists() and not (tmp_path / "unread.partial").exists()
    monkeypatch.undo()
    monkeypatch.setattr(task_arithmetic, "window_counts", cancel_then_count)
    with pytest.raises(Cancelled):
        merge(text, tmp_path / "cancelled", cancel=cancel, chunk_bytes=2048)
    assert not (tmp_path / "cancelled").exists() and not (tmp_path / "cancelled.partial").exists()


def test_resume_keeps_finished_shards(families, tmp_path):
    base, ft1, _ = families("llama")
    text = f"merge_method: linear\nmodels: [{{model: {base}, parameters: {{weight: 1}}}}, {{model: {ft1}, parameters: {{weight: 1}}}}]\n"
    plan = build(parse(text))
    shards: list[Path] = []

    def stop_after_first(path: Path) -> None:
        shards.append(path)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        engine.run(plan, tmp_path / "out", shard_bytes=100_000, on_shard=stop_after_first, keep_partial=True)
    assert (tmp_path / "out.partial" / shards[0].name).exists()
    res = engine.run(build(parse(text)), tmp_path / "out", shard_bytes=100_000, resume=True)
    assert res.resumed_shards == 1
    fresh = load_state(merge(text, tmp_path / "fresh", shard_bytes=100_000).folder)
    got = load_state(res.folder)
    assert all(torch.equal(got[k], fresh[k]) for k in fresh)


def test_cli_validate_and_merge(families, tmp_path):
    base, ft1, _ = families("llama")
    recipe = tmp_path / "r.yml"
    recipe.write_text(f"merge_method: slerp\nbase_model: {base}\nmodels: [{{model: {base}}}, {{model: {ft1}}}]\n"
                      "parameters: {t: [0, 1]}\n")
    cli = [sys.executable, "-m", "hubbot.cli"]
    out = subprocess.run(cli + ["validate", str(recipe)], capture_output=True, text=True)
    assert out.returncode == 0 and "method: slerp" in out.stdout and "output:" in out.stdout
    out = subprocess.run(cli + ["merge", str(recipe), "--out", str(tmp_path / "m"), "--shard-size", "200KB"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert len(list((tmp_path / "m").glob("*.safetensors"))) >= 2
    bad = tmp_path / "bad.yml"
    bad.write_text("merge_method: slerpp\nmodels: [{model: org/a}]\n")
    out = subprocess.run(cli + ["merge", str(bad), "--out", str(tmp_path / "n")], capture_output=True, text=True)
    assert out.returncode == 2 and "did you mean 'slerp'" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "n").exists()


def test_pickled_weights_load_only_safely(tmp_path, families):
    from safetensors.torch import load_file

    base = families("llama")[0]
    pick = tmp_path / "pickled"
    pick.mkdir()
    for f in base.iterdir():
        if f.suffix != ".safetensors":
            (pick / f.name).write_bytes(f.read_bytes())
    torch.save(load_file(base / "model.safetensors"), pick / "pytorch_model.bin")
    res = merge(f"merge_method: linear\nmodels: [{{model: {pick}, parameters: {{weight: 1}}}}]\n", tmp_path / "out")
    assert torch.equal(load_state(res.folder)["model.norm.weight"], load_file(base / "model.safetensors")["model.norm.weight"])

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "config.json").write_text((base / "config.json").read_text())
    torch.save({"x": Evil()}, evil / "pytorch_model.bin", _use_new_zipfile_serialization=True)
    with pytest.raises(PlanError, match="could not be loaded safely"):
        build(parse(f"merge_method: linear\nmodels: [{{model: {evil}, parameters: {{weight: 1}}}}]\n"))


def test_quantized_models_are_refused(tmp_path, families):
    base = families("llama")[0]
    q = tmp_path / "q"
    q.mkdir()
    for f in base.iterdir():
        (q / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((q / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (q / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PlanError, match=r"is quantized \(gptq\)"):
        build(parse(f"merge_method: linear\nmodels: [{{model: {q}, parameters: {{weight: 1}}}}]\n"))
    from safetensors.torch import save_file

    fp8 = tmp_path / "fp8"
    fp8.mkdir()
    (fp8 / "config.json").write_text((base / "config.json").read_text())
    save_file({"model.layers.0.mlp.up_proj.weight": torch.zeros(4, 4).to(torch.float8_e4m3fn)}, fp8 / "model.safetensors")
    with pytest.raises(PlanError, match="packed or quantized tensors"):
        build(parse(f"merge_method: linear\nmodels: [{{model: {fp8}, parameters: {{weight: 1}}}}]\n"))


def _reference_draw(seed: int, index: int) -> float:
    """The counter-based draw for entry `index`, in plain integer arithmetic: what any device's
    implementation must give."""
    from hubbot.methods._sparsify import MASK32, _keys

    def mix(x: int) -> int:
        x ^= x >> 16
        x = x * 0x21F0AAAD & MASK32
        x ^= x >> 15
        x = x * 0x735A2D97 & MASK32
        return x ^ (x >> 15)

    first, second = _keys(seed)
    x = mix((index & MASK32) ^ first) ^ (index >> 32) ^ second
    return (mix(x) >> 8) / 2**24


def test_random_masks_are_a_function_of_seed_and_index():
    """DARE and DELLA draw from a hash of (seed, entry index) in torch integer operations: the
    same bits as the plain-integer definition (so on every device), in int32 arithmetic below
    index 2**31 and int64 beyond; a block of rows draws what the whole tensor draws there, even
    past 2**32 entries, and other seeds draw other masks."""
    from hubbot.methods._sparsify import random_mask, uniform

    cpu = torch.device("cpu")
    whole = uniform(11, 0, (64, 48), cpu)
    assert whole.dtype == torch.float32 and 0 <= float(whole.min()) and float(whole.max()) < 1
    for index in (0, 1, 47, 48, 1000, 64 * 48 - 1):
        assert float(whole.view(-1)[index]) == _reference_draw(11, index)
    assert torch.equal(torch.cat([uniform(11, r, (8, 48), cpu) for r in range(0, 64, 8)]), whole)
    for far in ((1 << 31) // 48 - 3, (1 << 31) // 48 - 1, (1 << 32) // 48 - 1):
        # blocks just below index 2**31 (int32 arithmetic), crossing it (int64), and crossing 2**32
        block = uniform(11, far, (3, 48), cpu)
        assert [float(v) for v in block.view(-1)[::13]] == [_reference_draw(11, far * 48 + i) for i in range(0, 144, 13)]
    big = uniform(5, 0, (512, 512), cpu)
    assert abs(float(big.mean()) - 0.5) < 0.01
    assert abs(float((big < 0.3).float().mean()) - 0.3) < 0.01
    other = uniform(6, 0, (512, 512), cpu)
    assert abs(float(((big < 0.5) == (other < 0.5)).float().mean()) - 0.5) < 0.01
    mask = random_mask(torch.Size([64, 48]), 0.4, 11, cpu, row=0)
    assert torch.equal(mask, whole < 0.4)
    probs = torch.linspace(0.1, 0.9, 64 * 48).reshape(64, 48)
    assert torch.equal(random_mask(torch.Size([32, 48]), probs[32:], 11, cpu, row=32), whole[32:] < probs[32:])


def test_della_ranks_ties_by_index():
    """Equal magnitudes get ranks in index order (a stable sort), so keep probabilities, and with
    them the masks, do not depend on the device's sort."""
    from hubbot.methods._sparsify import rank_keep_probs

    delta = torch.tensor([[0.5, -0.5, 0.1, 0.5]])
    probs = rank_keep_probs(delta, 0.5, 0.3)
    assert torch.allclose(probs, torch.tensor([[0.4, 0.6, 0.2, 0.8]]))


def test_threads_come_from_the_cpus_available(tmp_path, monkeypatch):
    """Kernel threads: the CPUs of the affinity mask, capped by a cgroup CPU quota (v2 or v1),
    shared among worker slots; a requested count wins; HUBBOT_THREADS and --threads set it."""
    from hubbot.cli import build_parser
    from hubbot.errors import HubbotError
    from hubbot.jobs.settings import Settings
    from hubbot.merge import threads

    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("max 100000\n")
    assert threads.cgroup_quota(v2) is None and threads.available_cpus(v2) == 8
    (v2 / "cpu.max").write_text("250000 100000\n")
    assert threads.cgroup_quota(v2) == 2.5 and threads.available_cpus(v2) == 3
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert threads.available_cpus(v1) == 2
    none = tmp_path / "none"
    assert threads.cgroup_quota(none) is None
    assert threads.merge_threads(None, slots=1, root=none) == 8
    assert threads.merge_threads(None, slots=3, root=none) == 2
    assert threads.merge_threads(None, slots=4, root=v1) == 1
    assert threads.merge_threads(5, slots=4, root=v1) == 5
    with pytest.raises(ValueError):
        threads.merge_threads(0)

    env = {"HUBBOT_DATA_DIR": str(tmp_path / "data")}
    assert Settings.from_env(env).threads is None
    assert Settings.from_env({**env, "HUBBOT_THREADS": "3"}).threads == 3
    assert Settings.from_dict(Settings.from_env({**env, "HUBBOT_THREADS": "3"}).to_dict()).threads == 3
    with pytest.raises(HubbotError, match="HUBBOT_THREADS"):
        Settings.from_env({**env, "HUBBOT_THREADS": "0"})
    assert build_parser().parse_args(["merge", "r.yml", "--out", "o", "--threads", "2"]).threads == 2
    with pytest.raises(SystemExit):
        build_parser().parse_args(["merge", "r.yml", "--out", "o", "--threads", "0"])


def test_openmp_threads_wait_passively():
    """Importing hubbot before torch makes idle OpenMP threads sleep rather than spin."""
    code = "import os, hubbot, torch; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in __import__("os").environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "PASSIVE"


def test_prefetch_is_bounded_in_bytes(families, tmp_path, monkeypatch):
    """Reads run ahead by at most PREFETCH units, and beyond the next unit by at most
    PREFETCH_BYTES: a model of large tensors does not queue several of them whole."""
    from hubbot.sources.base import Source

    base, ft1, _ = families("llama")
    text = f"merge_method: linear\nmodels: [{{model: {base}, parameters: {{weight: 0.5}}}}, {{model: {ft1}, parameters: {{weight: 0.5}}}}]\n"
    reference = load_state(merge(text, tmp_path / "ref").folder)
    monkeypatch.setattr(engine, "PREFETCH_BYTES", 0)
    merged = [0]
    lead: list[int] = []  # per read: how many units past the last merged one it belongs to
    original = Source.read

    def read(self, name, rows=None):
        lead.append(len(lead) // 2 - merged[0])  # two inputs per unit
        return original(self, name, rows)

    def progress(p: engine.Progress) -> None:
        merged[0] += 1

    monkeypatch.setattr(Source, "read", read)
    got = load_state(engine.run(build(parse(text)), tmp_path / "out", device="cpu", progress=progress).folder)
    assert all(torch.equal(got[k], reference[k]) for k in reference)
    assert len(lead) == 2 * len(reference) and max(lead) <= 1
