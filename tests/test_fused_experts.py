"""Fused expert tensors ([experts, ...], as transformers 5 and gpt-oss store mixtures of experts)
merge per expert: expert e of a fused tensor comes out exactly as the per-expert layout's tensor
`experts.e.*` of the same weights, for every method (cuts, norms and seeded random draws included).

The two layouts are written here from one tiny Qwen3-MoE family: fused `mlp.experts.gate_up_proj`
[E, 2I, H] and `mlp.experts.down_proj` [E, H, I] (the names and shapes transformers 5 loads), and
per expert `mlp.experts.e.gate_up_proj.weight` and `mlp.experts.e.down_proj.weight`.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hubbot import methods
from hubbot.merge import engine
from hubbot.merge.plan import build
from hubbot.model import arch
from hubbot.recipe.merge import parse
from tests.models import load_state, make_arch_family

PER_EXPERT = re.compile(r"^(?P<head>.+\.experts)\.(?P<e>\d+)\.(?P<proj>gate|up|down)_proj\.weight$")


def write_model(src: Path, dst: Path, tensors: dict[str, torch.Tensor]) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if not f.name.endswith(".safetensors"):
            shutil.copy(f, dst / f.name)
    save_file({k: v.contiguous() for k, v in tensors.items()}, dst / "model.safetensors")
    return dst


def two_layouts(src: Path, root: Path) -> tuple[Path, Path]:
    """`src` (transformers' per-expert checkpoint) written fused and per expert, with gate and up
    joined into gate_up as transformers 5 does."""
    state = load_state(src)
    experts: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    rest = {}
    for name, t in state.items():
        m = PER_EXPERT.match(name)
        if m:
            experts.setdefault(m["head"], {}).setdefault(int(m["e"]), {})[m["proj"]] = t
        else:
            rest[name] = t
    fused, per_expert = dict(rest), dict(rest)
    for head, by_expert in experts.items():
        order = sorted(by_expert)
        gate_up = [torch.cat([by_expert[e]["gate"], by_expert[e]["up"]]) for e in order]
        down = [by_expert[e]["down"] for e in order]
        fused[f"{head}.gate_up_proj"], fused[f"{head}.down_proj"] = torch.stack(gate_up), torch.stack(down)
        for e in order:
            per_expert[f"{head}.{e}.gate_up_proj.weight"] = gate_up[e]
            per_expert[f"{head}.{e}.down_proj.weight"] = down[e]
    return write_model(src, root / "fused" / src.name, fused), write_model(src, root / "per_expert" / src.name,
                                                                            per_expert)


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, list[Path]]:
    """'fused' and 'per_expert': base, ft1, ft2 of the same weights in each layout."""
    root = tmp_path_factory.mktemp("fused_experts")
    family = make_arch_family(root / "src", "qwen3_moe")
    pairs = [two_layouts(f, root) for f in family]
    return {"fused": [p[0] for p in pairs], "per_expert": [p[1] for p in pairs]}


def recipe(method: str, base: Path, ft1: Path, ft2: Path) -> str:
    sparse = (f"base_model: {base}\nmodels:\n  - model: {ft1}\n    parameters: {{weight: 0.6, density: 0.3}}\n"
              f"  - model: {ft2}\n    parameters: {{weight: 0.5, density: 0.6}}\n")
    pair = (f"base_model: {base}\nmodels:\n  - model: {ft1}\n    parameters: {{weight: 0.3}}\n"
            f"  - model: {ft2}\n    parameters: {{weight: 0.7}}\n")
    three = f"models: [{{model: {base}}}, {{model: {ft1}}}, {{model: {ft2}}}]\n"
    body = {
        "linear": pair.replace(f"base_model: {base}\n", ""),
        "task_arithmetic": pair,
        "breadcrumbs": f"{sparse}parameters: {{gamma: 0.05}}\n",
        "breadcrumbs_ties": f"{sparse}parameters: {{gamma: 0.05}}\n",
        "della": f"{sparse}parameters: {{epsilon: 0.1}}\n",
        "della_linear": f"{sparse}parameters: {{epsilon: 0.1}}\n",
        "slerp": f"base_model: {base}\nmodels: [{{model: {base}}}, {{model: {ft1}}}]\nparameters: {{t: 0.4}}\n",
        "nearswap": f"base_model: {base}\nmodels: [{{model: {base}}}, {{model: {ft1}}}]\nparameters: {{t: 0.01}}\n",
        "nuslerp": pair,
        "nuslerp_row_wise": pair + "parameters: {nuslerp_row_wise: true, nuslerp_flatten: false}\n",
        "multislerp": pair.replace(f"base_model: {base}\n", ""),
        "karcher": three,
        "model_stock": f"base_model: {base}\n{three}",
        "model_stock_filter_wise": f"base_model: {base}\n{three}parameters: {{filter_wise: true}}\n",
        "sce": f"base_model: {base}\n{three}parameters: {{select_topk: 0.4}}\n",
        "arcee_fusion": f"base_model: {base}\nmodels: [{{model: {base}}}, {{model: {ft1}}}]\n",
    }.get(method, sparse)  # ties, dare_linear, dare_ties
    name = method.removesuffix("_row_wise").removesuffix("_filter_wise")
    return f"merge_method: {name}\n{body}random_seed: 7\ndtype: float32\n"


METHODS = ("linear", "task_arithmetic", "ties", "breadcrumbs", "breadcrumbs_ties", "dare_linear", "dare_ties",
           "della", "della_linear", "sce", "slerp", "nearswap", "nuslerp", "nuslerp_row_wise", "multislerp",
           "karcher", "model_stock", "model_stock_filter_wise", "arcee_fusion")


def test_every_method_is_checked_here():
    names = {m.removesuffix("_row_wise").removesuffix("_filter_wise") for m in METHODS}
    assert set(methods.all_methods()) - {"passthrough"} == names  # passthrough takes one model


def merged(text: str, out: Path) -> dict[str, torch.Tensor]:
    plan = build(parse(text))
    plan.raise_for_problems()
    engine.run(plan, out)
    return load_state(out)


@pytest.mark.parametrize("method", METHODS)
def test_fused_experts_merge_as_the_per_expert_layout(layouts, tmp_path, method):
    fused = merged(recipe(method, *layouts["fused"]), tmp_path / "fused")
    per_expert = merged(recipe(method, *layouts["per_expert"]), tmp_path / "per_expert")
    fused_names = [n for n in fused if arch.FUSED_EXPERTS.match(n)]
    assert len(fused_names) == 4  # gate_up_proj and down_proj in each of 2 layers
    for name, t in fused.items():
        if name in fused_names:
            for e in range(t.shape[0]):
                assert torch.equal(t[e], per_expert[arch.expert_name(name, e)]), (name, e)
        else:
            assert torch.equal(t, per_expert[name]), name


def test_a_cut_over_the_whole_fused_tensor_would_differ(layouts, tmp_path):
    """The check above tells the two definitions apart: TIES over all experts at once gives
    another result than per expert."""
    out = merged(recipe("ties", *layouts["fused"]), tmp_path / "out")
    base, ft1, ft2 = (load_state(f) for f in layouts["fused"])
    plan = build(parse(recipe("ties", *layouts["fused"])))
    task = next(t for t in plan.tasks if t.name.endswith("layers.1.mlp.experts.down_proj"))
    whole = methods.get("ties").kernel(base[task.name], [ft1[task.name], ft2[task.name]], task.params)
    assert not torch.equal(whole, out[task.name])


def test_seeded_methods_draw_each_experts_own_masks(layouts, tmp_path):
    """Each expert's slice takes the seed of its per-expert tensor: the same recipe gives the same
    bytes, another random_seed other masks, and experts do not share a mask."""
    text = recipe("dare_linear", *layouts["fused"])
    plan = build(parse(text))
    task = next(t for t in plan.tasks if t.experts)
    assert task.experts == 4 and len(set(task.expert_seeds)) == 4
    a, b = merged(text, tmp_path / "a"), merged(text, tmp_path / "b")
    c = merged(text.replace("random_seed: 7", "random_seed: 8"), tmp_path / "c")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a[task.name], c[task.name])
    base, ft1 = load_state(layouts["fused"][0])[task.name], load_state(layouts["fused"][1])[task.name]
    kept = [((a[task.name][e] - base[e]) * (ft1[e] - base[e]) != 0) for e in range(4)]
    assert not torch.equal(kept[0], kept[1])


def test_fused_tensors_stream_one_expert_at_a_time(layouts):
    """The engine holds one expert's slice of each input at a time; elementwise methods split as before."""
    ties = build(parse(recipe("ties", *layouts["fused"])))
    task = next(t for t in ties.tasks if t.experts)
    assert ties.blocks(task) == ([(e, e + 1) for e in range(4)], 0)
    linear = build(parse(recipe("linear", *layouts["fused"])))
    task = next(t for t in linear.tasks if t.experts)
    assert not linear.per_expert(task)
    per_expert = build(parse(recipe("ties", *layouts["per_expert"])))
    assert not any(t.experts for t in per_expert.tasks)


def test_fused_output_loads_and_runs(layouts, tmp_path):
    import transformers

    merged(recipe("ties", *layouts["fused"]), tmp_path / "out")
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[0, 5, 17, 42]])).logits
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("config", [{"num_local_experts": 4}, {"num_experts": 4}, {"n_routed_experts": 4},
                                    {"text_config": {"num_experts": 4}}])
def test_fused_expert_tensors_are_recognised_by_name_and_expert_count(config):
    assert arch.fused_experts("model.layers.0.mlp.experts.down_proj", (4, 8, 16), config) == 4
    assert arch.fused_experts("model.layers.0.mlp.experts.gate_up_proj_bias", (4, 32), config) == 4
    assert arch.fused_experts("model.layers.0.mlp.experts.down_proj", (8, 8, 16), config) == 0  # not E first
    assert arch.fused_experts("model.layers.0.mlp.experts.3.down_proj.weight", (4, 16), config) == 0
    assert arch.fused_experts("model.layers.0.mlp.shared_experts.down_proj.weight", (4, 16), config) == 0
    assert arch.fused_experts("model.layers.0.mlp.experts.down_proj", (4,), config) == 0
    assert arch.fused_experts("model.layers.0.mlp.experts.down_proj", (4, 8, 16), {"num_experts_per_tok": 4}) == 0


def test_expert_names_follow_the_per_expert_layout():
    assert arch.expert_name("model.layers.2.mlp.experts.down_proj", 3) == \
        "model.layers.2.mlp.experts.3.down_proj.weight"
    assert arch.expert_name("model.layers.2.mlp.experts.gate_up_proj_bias", 0) == \
        "model.layers.2.mlp.experts.0.gate_up_proj.bias"
    assert arch.expert_name("m.experts.w1.weight", 1) == "m.experts.1.w1.weight"
    assert arch.fused_experts("m.experts.w1.weight", (2, 3, 4), {"num_local_experts": 2}) == 2
