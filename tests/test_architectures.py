"""Architectures beyond Llama: a representative part of the matrix in tests/architectures.py (the
full matrix writes docs/architectures.md), and vision-language models planned over their
language model's layers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from hubbot.merge import coverage, engine
from hubbot.merge.plan import build
from hubbot.recipe.merge import parse
from tests.architectures import DOC, forward_finite, run_arch
from tests.models import ARCHS, load_state, make_arch_family

# A vision-language model of each layout, a mixture of experts with shared experts and layers of
# two kinds, a dense decoder mergekit cannot merge, and an encoder.
REPRESENTATIVE = ("llava", "qwen2_vl", "qwen3_next", "falcon", "bert")


@pytest.fixture(scope="module")
def arch_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("archs")


@pytest.mark.parametrize("name", REPRESENTATIVE)
def test_architecture_matrix_row(name, arch_root):
    row = run_arch(name, arch_root, parity=name in ("qwen3_next",))
    assert row.ok, row.failures


def test_doc_lists_every_architecture():
    doc = DOC.read_text()
    rows = {m[1] for m in re.finditer(r"^\| (\w+) \| ", doc, re.M)} - {"architecture"}
    assert rows == set(ARCHS), "rerun `python -m tests.architectures --write-doc`"


@pytest.fixture(scope="module")
def llava(arch_root) -> list[Path]:
    return make_arch_family(arch_root / "llava-slices", "llava")


def test_vlm_slices_apply_to_the_language_model(llava, tmp_path):
    """Slices over the text model's layers (2), while the vision tower has 3: the vision tower and
    projector come whole from the first slice's source, the config's text layer count follows
    the slices and the vision config keeps its own."""
    base, ft1, _ = llava
    text = f"""merge_method: passthrough
slices:
  - sources: [{{model: {base}, layer_range: [0, 2]}}]
  - sources: [{{model: {ft1}, layer_range: [1, 2]}}]
dtype: float32
"""
    plan = build(parse(text))
    assert not plan.problems and plan.coverage.complete and plan.out_layers == 3
    out = engine.run(plan, tmp_path / "out", device="cpu").folder
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["text_config"]["num_hidden_layers"] == 3 and cfg["vision_config"]["num_hidden_layers"] == 3
    state, b, f = load_state(out), load_state(base), load_state(ft1)
    assert torch.equal(state["language_model.model.layers.2.mlp.up_proj.weight"],
                       f["language_model.model.layers.1.mlp.up_proj.weight"])
    vision = [n for n in b if n.startswith(("vision_tower.", "multi_modal_projector."))]
    assert vision and all(torch.equal(state[n], b[n]) for n in vision)
    assert not any(n.startswith("language_model.model.layers.3") for n in state)
    ft1_cov = next(c for c in plan.coverage.sources if c.label == str(ft1))
    assert len(ft1_cov.left_out[coverage.OTHER_SLICE]) == len(vision) + 1  # + the embedding
    assert forward_finite(out, ARCHS["llava"][2])


def test_vlm_layer_ranges_count_the_text_layers(llava):
    base, _, _ = llava
    plan = build(parse(f"merge_method: passthrough\nslices:\n  - sources: [{{model: {base}, layer_range: [0, 3]}}]\n"))
    assert any("[0, 3] goes past" in p and "which has 2 layers" in p for p in plan.problems)


def test_vlm_layer_gradients_and_filters(llava, tmp_path):
    """A gradient over the layers runs over the text model's layers; a filter reaches the vision tower."""
    base, ft1, _ = llava
    plan = build(parse(f"""merge_method: slerp
base_model: {base}
models: [{{model: {base}}}, {{model: {ft1}}}]
parameters:
  t:
    - filter: vision_tower
      value: 0
    - value: [0, 1]
dtype: float32
"""))
    assert not plan.problems
    by_name = {t.name: t for t in plan.tasks}
    assert by_name["language_model.model.layers.0.mlp.up_proj.weight"].params["t"] == 0
    assert by_name["language_model.model.layers.1.mlp.up_proj.weight"].params["t"] == 1
    assert by_name["vision_tower.encoder.layers.2.mlp.fc1.weight"].params["t"] == 0
    assert by_name["vision_tower.encoder.layers.2.mlp.fc1.weight"].layer is None


def test_moe_sources_merge_expert_by_expert(arch_root, tmp_path):
    """Expert i of each model merges with expert i of the others, routers and shared experts too;
    a TIES density cut on an expert keeps its share of that expert's own entries."""
    base, ft1, ft2 = make_arch_family(arch_root / "qwen2_moe-experts", "qwen2_moe")
    text = (f"merge_method: ties\nbase_model: {base}\nmodels:\n"
            f"  - {{model: {ft1}, parameters: {{weight: 1.0, density: 0.25}}}}\ndtype: float32\n")
    plan = build(parse(text))
    assert not plan.problems and plan.coverage.complete
    out = load_state(engine.run(plan, tmp_path / "out", device="cpu").folder)
    b, f = load_state(base), load_state(ft1)
    for name in ("model.layers.1.mlp.experts.2.up_proj.weight", "model.layers.1.mlp.gate.weight",
                 "model.layers.1.mlp.shared_expert.down_proj.weight", "model.layers.1.mlp.shared_expert_gate.weight"):
        changed = (out[name] != b[name]).float().mean().item()
        assert abs(changed - 0.25) < 0.05, f"{name}: {changed:.0%} of entries moved"
        moved = out[name] != b[name]
        assert torch.equal(out[name][moved], f[name][moved])


def test_the_language_models_stack_is_found_by_name_and_config():
    from hubbot.model import arch

    llava = ["vision_tower.encoder.layers.2.mlp.fc1.weight", "language_model.model.layers.1.mlp.up_proj.weight",
             "language_model.model.embed_tokens.weight", "multi_modal_projector.linear_1.weight",
             "language_model.lm_head.weight"]
    assert arch.main_stack({"text_config": {"num_hidden_layers": 2}}, llava) == "language_model.model.layers"
    assert arch.outside_text_model("multi_modal_projector.linear_1.weight", "language_model.model.layers")
    assert not arch.outside_text_model("language_model.lm_head.weight", "language_model.model.layers")
    qwen_vl = ["visual.blocks.2.attn.qkv.weight", "model.layers.1.mlp.up_proj.weight", "visual.merger.mlp.0.weight"]
    assert arch.main_stack({"num_hidden_layers": 2}, qwen_vl) == "model.layers"
    neox = ["gpt_neox.layers.0.attention.dense.weight", "embed_out.weight"]
    assert arch.main_stack({}, neox) == "gpt_neox.layers"
    assert not arch.outside_text_model("embed_out.weight", "gpt_neox.layers")
    assert arch.main_stack({}, ["model.norm.weight"]) is None
