"""Mixture-of-experts merges: recipes are checked, problems are found from headers, outputs load in
transformers with every tensor where it expects it, and the prompt-initialised routers send the
tokens of each kind of text to the expert that learned it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hubbot.cli import main
from hubbot.errors import RecipeError
from hubbot.merge import moe
from hubbot.recipe.merge import parse
from hubbot.recipe.moe import parse_moe
from hubbot.recipe.text import kind_of
from tests.trained import sentences


def load(folder: Path):
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    return model.eval()


def test_recipe_problems_are_all_reported_with_their_fields():
    with pytest.raises(RecipeError) as err:
        parse_moe("""base_model: org/base
gate_mode: hiden
experts_per_token: 3
experts:
  - source_model: org/a
    positive_prompts: []
    noise_scale: -1
  - {source_model: org/b, positive_prompt: [x]}
""")
    text = "\n".join(err.value.problems)
    for needle in ("gate_mode: unknown gate mode 'hiden'", "experts_per_token: 3 experts per token but only 2",
                   "experts[0].noise_scale", "experts[1].positive_prompt: unknown field; did you mean 'positive_prompts'"):
        assert needle in text
    with pytest.raises(RecipeError, match="every expert has the same prompts"):
        parse_moe("base_model: org/base\nexperts:\n  - {source_model: org/a, positive_prompts: [x]}\n"
                  "  - {source_model: org/b, positive_prompts: [x]}\n")
    with pytest.raises(RecipeError, match="local path"):
        parse_moe("base_model: ./base\ngate_mode: random\nexperts: [{source_model: org/a}]\n", allow_local=False)


def test_the_merge_parser_points_moe_recipes_to_their_command():
    text = "base_model: org/base\ngate_mode: random\nexperts: [{source_model: org/a}, {source_model: org/b}]\n"
    assert kind_of(text) == "moe" and kind_of("merge_method: linear\nmodels: [org/a]\n") == "merge"
    with pytest.raises(RecipeError, match="hubbot moe"):
        parse(text)
    recipe = parse_moe(text)
    assert recipe.experts_per_token == 2 and recipe.gate_mode == "random" and recipe.FILE_NAME == "mergekit_moe_config.yml"


def test_mixtral_of_copies_of_one_model_computes_that_model(families, tmp_path):
    """With every expert a copy of the base, any routing gives the base's MLP: the output must
    reproduce the base's logits, which checks every tensor's name, layout and the config."""
    from transformers import AutoModelForCausalLM

    base = families("llama_f32")[0]
    res = moe.run(f"base_model: {base}\ngate_mode: random\nexperts:\n  - source_model: {base}\n"
                  f"  - source_model: {base}\n  - source_model: {base}\n  - source_model: {base}\n",
                  tmp_path / "out", device="cpu")
    cfg = json.loads((res.folder / "config.json").read_text())
    assert cfg["architectures"] == ["MixtralForCausalLM"]
    assert (cfg["num_local_experts"], cfg["num_experts_per_tok"]) == (4, 2)
    assert (res.folder / "mergekit_moe_config.yml").exists() and (res.folder / "tokenizer.json").exists()
    ids = torch.tensor([[0, 5, 17, 42, 99, 7]])
    with torch.no_grad():
        want = AutoModelForCausalLM.from_pretrained(base)(ids).logits
        got = load(res.folder)(ids).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def routed_share(model, tok, texts: list[str], expert: int) -> float:
    """The share of tokens whose first-choice expert is `expert`, over all layers."""
    hits = total = 0
    with torch.no_grad():
        for text in texts:
            out = model(tok(text, return_tensors="pt").input_ids, output_router_logits=True)
            for logits in out.router_logits:
                hits += int((logits.argmax(-1) == expert).sum())
                total += logits.shape[0]
    return hits / total


def test_mixtral_routes_each_kind_of_text_to_the_expert_that_learned_it(trained, tmp_path):
    from transformers import AutoTokenizer

    prompts = {k: sentences(k, 4, seed=100 + i) for i, k in enumerate(trained.tunes)}
    experts = "".join(f"  - source_model: {trained.tunes[k]}\n    positive_prompts: {json.dumps(prompts[k])}\n"
                      for k in trained.tunes)
    res = moe.run(f"base_model: {trained.base}\nexperts_per_token: 1\nexperts:\n{experts}", tmp_path / "out",
                  device="cpu")
    model, tok = load(res.folder), AutoTokenizer.from_pretrained(res.folder)
    for expert, kind in enumerate(trained.tunes):
        own = routed_share(model, tok, prompts[kind], expert)
        unseen = routed_share(model, tok, trained.heldout_by_kind[kind][:10], expert)
        assert own > 0.8 and unseen > 0.7, (f"{own:.0%} of the tokens of the {kind} prompts and {unseen:.0%} of "
                                             f"held-out {kind} tokens chose expert {expert}")


@pytest.mark.parametrize("family,gate", [("qwen2", "hidden"), ("llama", "cheap_embed")])
def test_qwen2_moe_with_a_shared_expert(families, tmp_path, family, gate):
    from transformers import AutoTokenizer

    base, ft1, ft2 = families(family)
    a, b = "the quick brown fox jumps over the lazy dog", "slerp, ties and dare are ways to merge task vectors"
    res = moe.run(f"""base_model: {base}
gate_mode: {gate}
architecture: qwen
experts_per_token: 1
experts:
  - {{source_model: {ft1}, positive_prompts: ["{a}"], negative_prompts: ["{b}"], noise_scale: 0.001}}
  - {{source_model: {ft2}, positive_prompts: ["{b}"], residual_scale: 0.5}}
shared_experts:
  - {{source_model: {base}, positive_prompts: ["hello world"]}}
dtype: float32
""", tmp_path / "out", device="cpu")
    cfg = json.loads((res.folder / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen2MoeForCausalLM"] and cfg["num_experts"] == 2
    assert cfg["qkv_bias"] == (family == "qwen2")
    model, tok = load(res.folder), AutoTokenizer.from_pretrained(res.folder)
    state = model.state_dict()
    from tests.models import load_state

    src = load_state(ft2)
    assert torch.equal(state["model.layers.1.mlp.experts.down_proj"][1],
                       src["model.layers.1.mlp.down_proj.weight"].float() * 0.5)
    noise = state["model.layers.1.mlp.experts.down_proj"][0] - load_state(ft1)["model.layers.1.mlp.down_proj.weight"]
    assert 0.0005 < float(noise.std()) < 0.002, "noise_scale adds seeded noise of that size"
    with torch.no_grad():
        assert torch.isfinite(model(tok(a, return_tensors="pt").input_ids).logits).all()
    assert routed_share(model, tok, [a], 0) > 0.5 and routed_share(model, tok, [b], 1) > 0.5


def test_problems_are_found_from_headers(families):
    llama, ft1, _ = families("llama")
    qwen = families("qwen2")[0]
    deep = families("llama_deep")[0]
    plan = moe.build(parse_moe(f"base_model: {qwen}\ngate_mode: random\narchitecture: mixtral\n"
                               f"experts: [{{source_model: {qwen}}}, {{source_model: {deep}}}]\n"))
    text = "\n".join(plan.problems)
    assert "has bias tensors" in text and "different numbers of layers" in text
    plan = moe.build(parse_moe(f"base_model: {llama}\ngate_mode: random\n"
                               f"experts: [{{source_model: {llama}}}, {{source_model: {ft1}}}]\n"
                               f"shared_experts: [{{source_model: {llama}}}]\narchitecture: mixtral\n"))
    assert any("Mixtral has no shared expert" in p for p in plan.problems)
    plan = moe.build(parse_moe(f"base_model: {qwen}\ngate_mode: random\n"
                               f"experts: [{{source_model: {qwen}}}, {{source_model: {qwen}}}]\n"))
    assert any("Qwen2-MoE needs one shared expert" in p for p in plan.problems)
    assert any("every expert is the same model" in w for w in plan.warnings)


def test_cli_validates_and_runs_moe_recipes(families, tmp_path, capsys):
    base, ft1, ft2 = families("mistral")
    recipe = tmp_path / "moe.yml"
    recipe.write_text(f"base_model: {base}\nexperts: [{{source_model: {ft1}, positive_prompts: [hello world]}},\n"
                      f"  {{source_model: {ft2}, positive_prompts: [the quick brown fox]}}]\n")
    assert main(["validate", str(recipe)]) == 0
    assert "mixture of experts → Mixtral: 2 experts, 2 per token" in capsys.readouterr().out
    assert main(["moe", str(recipe), "--out", str(tmp_path / "out"), "-q"]) == 0
    assert load(tmp_path / "out").config.architectures == ["MixtralForCausalLM"]
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| expert 1 (1 prompts) |" in card and "hubbot merge mergekit_moe_config.yml" in card
    assert "router weights" not in card, "computed tensors are not listed as source models"
    merge = tmp_path / "merge.yml"
    merge.write_text(f"merge_method: linear\nmodels: [{{model: {ft1}, parameters: {{weight: 1}}}}]\n")
    assert main(["moe", str(merge), "--out", str(tmp_path / "out2")]) == 2
    assert "run it with 'hubbot merge'" in capsys.readouterr().err


def test_moe_from_hub_sources(hub, alice_api, families, tmp_path):
    """Service mode: Hub sources only (the router pass and the experts read by range), and a
    local path in the recipe is refused."""
    from hubbot.hub import HubOptions
    from hubbot.sources import open_source
    from tests.hub_fixtures import ALICE_TOKEN

    for name, folder in zip(("base", "ft1", "ft2"), families("llama")):
        alice_api.create_repo(f"alice/{name}")
        alice_api.upload_folder(folder_path=str(folder), repo_id=f"alice/{name}")
    opts = HubOptions(token=ALICE_TOKEN, cache_dir=tmp_path / "cache")
    text = ("base_model: alice/base\nexperts:\n  - {source_model: alice/ft1, positive_prompts: [hello world]}\n"
            "  - {source_model: alice/ft2, positive_prompts: [the quick brown fox]}\n")
    hub.reset_stats()
    res = moe.run(text, tmp_path / "out", allow_local=False, device="cpu",
                  opener=lambda ref: open_source(ref, allow_local=False, hub=opts))
    assert load(res.folder).config.num_local_experts == 2
    assert hub.tensor_bytes_served("alice/ft1") > 0 and hub.tensor_bytes_served("alice/ft2") > 0
    with pytest.raises(RecipeError, match="local path"):
        moe.run(text.replace("alice/ft1", str(families("llama")[1])), tmp_path / "out2", allow_local=False)
