"""Tensor coverage: every tensor of every input is merged, copied or left out for a named reason;
anything else, and any config.json that contradicts its tensors, is a problem at validation that
says what to do."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from hubbot import cli
from hubbot.merge import coverage
from hubbot.merge.plan import build
from hubbot.model import arch
from hubbot.recipe.merge import parse
from tests.models import models_yaml


def variant(src: Path, dest: Path, *, add: dict[str, torch.Tensor] | None = None, config: dict | None = None) -> Path:
    """A copy of a model folder with extra tensors and config.json entries."""
    shutil.copytree(src, dest)
    if add:
        shard = next(dest.glob("*.safetensors"))
        state = load_file(shard)
        state.update(add)
        save_file(state, shard, metadata={"format": "pt"})
        index = dest / "model.safetensors.index.json"
        if index.exists():
            data = json.loads(index.read_text())
            data["weight_map"].update({k: shard.name for k in add})
            index.write_text(json.dumps(data))
    if config:
        cfg = json.loads((dest / "config.json").read_text())
        cfg.update(config)
        (dest / "config.json").write_text(json.dumps(cfg))
    return dest


def linear(*folders: Path) -> str:
    return f"merge_method: linear\n{models_yaml(list(folders), [{'weight': 1.0}] * len(folders))}\n"


def test_complete_coverage_is_summarised(families, tmp_path, capsys):
    base, ft1, _ = families("llama")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(linear(base, ft1))
    assert cli.main(["validate", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert "coverage: every input tensor is merged, copied or left out for a named reason" in out
    n = len(build(parse(linear(base, ft1))).sources[0].tensors())
    assert f"{n} tensors: {n} merged, 0 copied, 0 left out" in out
    card = "\n".join(coverage.markdown(build(parse(linear(base, ft1))).coverage))
    assert "## Tensor coverage" in card and f"| {n} | {n} | 0 | 0 |" in card


def test_tensor_in_one_source_only_is_a_problem_naming_what_to_do(families, tmp_path, capsys):
    base, ft1, ft2 = families("llama")
    extra = variant(ft1, tmp_path / "ft1-head", add={"score.weight": torch.zeros(2, 64, dtype=torch.bfloat16)})
    plan = build(parse(linear(base, extra, ft2)))
    [problem] = [p for p in plan.problems if "score.weight" in p]
    assert f"{extra}: 1 tensors are not in the output and have no rule: 'score.weight'" in problem
    assert f"only {extra} has them" in problem and f"output takes its tensor names from {base}" in problem
    assert "make a model that has them the base_model" in problem
    assert not plan.coverage.complete and plan.coverage.sources[1].unmatched == ["score.weight"]
    recipe = tmp_path / "r.yaml"
    recipe.write_text(linear(base, extra, ft2))
    assert cli.main(["validate", str(recipe)]) == 1
    out = capsys.readouterr().out
    assert "coverage: INCOMPLETE" in out and "1 without a rule" in out and "problem: " in out


def test_tensor_with_no_rule_in_several_sources(families, tmp_path):
    """Tensors the output's names (the base's) lack, though every other model has them: each model
    gets a problem listing them and who has them."""
    base, ft1, ft2 = families("llama")
    add = {"model.layers.0.self_attn.q_proj.bias": torch.zeros(64, dtype=torch.bfloat16)}
    a, b = variant(ft1, tmp_path / "a", add=add), variant(ft2, tmp_path / "b", add=add)
    plan = build(parse(linear(base, a, b)))
    problems = [p for p in plan.problems if "q_proj.bias" in p]
    assert len(problems) == 2 and all(f"only {a}, {b} have them" in p for p in problems)
    # with a model that has them as the base, the output has them and nothing is left without a rule
    plan = build(parse(f"merge_method: linear\nbase_model: {a}\n{models_yaml([a, b], [{'weight': 1}] * 2)}\n"))
    assert plan.coverage.complete and not plan.problems
    assert "model.layers.0.self_attn.q_proj.bias" in {t.name for t in plan.tasks}


def test_contradicting_config_is_refused_at_planning(families, tmp_path):
    base, ft1, _ = families("llama")
    layers = variant(ft1, tmp_path / "layers", config={"num_hidden_layers": 3})
    plan = build(parse(f"merge_method: passthrough\nslices:\n"
                       f"  - sources: [{{model: {layers}, layer_range: [0, 2]}}]\n"))
    assert any(f"{layers}: config.json contradicts its tensors: num_hidden_layers is 3 but the tensors hold 4 "
               "layers ('model.layers.N')" in p and "fix the model's config.json" in p for p in plan.problems)
    vocab = variant(ft1, tmp_path / "vocab", config={"vocab_size": 1000, "num_attention_heads": 8})
    problems = build(parse(linear(base, vocab))).problems
    assert any("vocab_size is 1000 but 'model.embed_tokens.weight' has" in p for p in problems)
    assert any("num_attention_heads x head_dim is 8 x 16 = 128 but 'model.layers.0.self_attn.q_proj.weight' has 64 rows"
               in p for p in problems)


def test_config_contradictions_checks_what_both_sides_state():
    shapes = {"model.embed_tokens.weight": (320, 64), "model.layers.0.self_attn.q_proj.weight": (64, 64),
              "model.layers.0.self_attn.k_proj.weight": (32, 64), "model.layers.1.mlp.up_proj.weight": (128, 64)}
    good = {"vocab_size": 320, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2}
    assert arch.config_contradictions(good, shapes) == []
    assert arch.config_contradictions({"text_config": good}, shapes) == []
    bad = arch.config_contradictions({**good, "hidden_size": 32}, shapes)
    assert any("hidden size is 32 but 'model.embed_tokens.weight' is 64 wide" in c for c in bad)
    bad = arch.config_contradictions({**good, "num_key_value_heads": 4}, shapes)
    assert bad == ["num_key_value_heads x head_dim is 4 x 16 = 64 but 'model.layers.0.self_attn.k_proj.weight' "
                   "has 32 rows"]
    assert arch.config_contradictions({}, shapes) == []


def test_left_out_tensors_name_their_reason(families):
    base, ft1, _ = families("llama")
    plan = build(parse(f"""merge_method: passthrough
slices:
  - sources: [{{model: {base}, layer_range: [0, 2]}}]
  - sources: [{{model: {ft1}, layer_range: [3, 4]}}]
"""))
    assert not plan.problems and plan.coverage.complete
    by_label = {c.label: c for c in plan.coverage.sources}
    base_out, ft1_out = by_label[str(base)].left_out, by_label[str(ft1)].left_out
    assert {arch.split_layer(n).index for n in base_out[coverage.OUTSIDE_SLICES]} == {2, 3}
    assert {arch.split_layer(n).index for n in ft1_out[coverage.OUTSIDE_SLICES]} == {0, 1, 2}
    assert ft1_out[coverage.OTHER_SLICE] == ["model.embed_tokens.weight"]
    assert sorted(base_out[coverage.OTHER_SLICE]) == ["lm_head.weight", "model.norm.weight"]
    assert any("left out" in line and coverage.OUTSIDE_SLICES in line for line in plan.coverage.lines())


def test_model_card_has_a_coverage_section(families):
    from hubbot.merge.card import build_card

    base, ft1, _ = families("llama")
    card, _ = build_card(build(parse(linear(base, ft1))), repo_id=None, run=None)
    assert "## Tensor coverage" in card and "Every tensor of every source is merged" in card
    from huggingface_hub import ModelCard

    read = ModelCard(card)
    assert str(read) == card, "the front matter is what the Hub client itself writes"
    assert read.data.library_name == "transformers" and "merge" in read.data.tags
