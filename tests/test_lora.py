"""LoRA adapters: `model+adapter` sources against PEFT's own merge, and `extract-lora` outputs
that PEFT loads back onto the base."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hubbot.errors import PlanError, SourceError
from hubbot.merge import engine
from hubbot.merge.plan import build
from hubbot.recipe.merge import parse
from hubbot.recipe.refs import ModelRef
from hubbot.sources import open_source
from tests.models import load_state

IDS = torch.tensor([[5, 9, 30, 40, 100, 7, 2, 11]])


def peft_adapter(base: Path, out: Path, **config) -> Path:
    """A random (not zero-initialised) PEFT LoRA adapter for `base`, saved in `out`."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    get_peft_model(model, LoraConfig(init_lora_weights=False, **config)).save_pretrained(out)
    return out


def peft_merged(base: Path, adapter: Path) -> dict[str, torch.Tensor]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    return PeftModel.from_pretrained(model, adapter).merge_and_unload().state_dict()


@pytest.mark.parametrize("family,config", [
    ("llama_f32", dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                       rank_pattern={"v_proj": 2}, alpha_pattern={"layers.1.self_attn.q_proj": 3})),
    ("llama_f32", dict(r=8, lora_alpha=16, use_rslora=True, target_modules=["embed_tokens", "lm_head", "o_proj"],
                       modules_to_save=["norm"])),
    ("gpt2", dict(r=4, lora_alpha=4, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True)),
])
def test_adapter_source_matches_peft_merge(families, tmp_path, family, config):
    base = families(family)[0]
    adapter = peft_adapter(base, tmp_path / "adapter", **config)
    expected = peft_merged(base, adapter)
    source = open_source(ModelRef.parse(f"{base}+{adapter}"))
    assert source.label == f"{base}+{adapter}"
    changed = 0
    for name, info in source.tensors().items():
        got = source.read(name).float()
        ref = expected[name].to(source.read(name).dtype).float()
        assert torch.allclose(got, ref, atol=1e-5, rtol=1e-5), f"{name}: {(got - ref).abs().max():.3g}"
        changed += not torch.equal(got, load_state(base)[name].float()) if name in load_state(base) else 1
        if len(info.shape) == 2:  # a block of rows is the same rows (to float32 rounding of the matmul)
            assert torch.allclose(source.read(name, (2, 7)), source.read(name)[2:7], atol=1e-5, rtol=1e-6)
    assert changed > 0


def test_recipe_with_adapter_merges_without_materialising(families, tmp_path):
    """`model+adapter` in a recipe reads the model and the adapter only; the result equals
    merging PEFT's merged model."""
    base, ft1, _ = families("llama_f32")
    adapter = peft_adapter(base, tmp_path / "adapter", r=4, lora_alpha=8, target_modules=["q_proj", "up_proj"])
    text = f"""merge_method: linear
models:
  - model: {base}+{adapter}
    parameters: {{weight: 0.5}}
  - model: {ft1}
    parameters: {{weight: 0.5}}
dtype: float32
"""
    out = engine.run(build(parse(text)), tmp_path / "out", device="cpu").folder
    merged, ft = peft_merged(base, adapter), load_state(ft1)
    got = load_state(out)
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.3.mlp.up_proj.weight", "model.norm.weight"):
        assert torch.allclose(got[name], 0.5 * merged[name] + 0.5 * ft[name], atol=1e-6)
    assert not any(p.name.startswith("adapter") for p in out.iterdir())


def test_adapter_problems_are_reported(families, tmp_path):
    base = families("llama_f32")[0]
    dora = peft_adapter(base, tmp_path / "dora", r=2, target_modules=["q_proj"], use_dora=True)
    with pytest.raises(PlanError, match="DoRA adapters"):
        build(parse(f"merge_method: linear\nmodels: [{{model: {base}+{dora}, parameters: {{weight: 1}}}}]\n"))
    other = peft_adapter(families("gpt2")[0], tmp_path / "gpt2", r=2, target_modules=["c_attn"])
    with pytest.raises(SourceError, match="match no tensor of"):
        open_source(ModelRef.parse(f"{base}+{other}")).tensors()
    flipped = peft_adapter(base, tmp_path / "flipped", r=2, target_modules=["down_proj"])
    config = json.loads((flipped / "adapter_config.json").read_text())
    (flipped / "adapter_config.json").write_text(json.dumps({**config, "fan_in_fan_out": True}))
    with pytest.raises(SourceError, match="check fan_in_fan_out"):
        open_source(ModelRef.parse(f"{base}+{flipped}")).tensors()
    plain = tmp_path / "not-an-adapter"
    plain.mkdir()
    with pytest.raises(SourceError, match="adapter_config.json"):
        open_source(ModelRef.parse(f"{base}+{plain}"))


def linear_only_finetune(base: Path, donor: Path, out: Path) -> Path:
    """A fine-tune of `base` that changes only linear layer weights (what LoRA can carry)."""
    shutil.copytree(base, out)
    b, d = load_file(base / "model.safetensors"), load_file(donor / "model.safetensors")
    save_file({k: d[k] if v.dim() == 2 and "embed" not in k else v for k, v in b.items()},
              out / "model.safetensors", metadata={"format": "pt"})
    return out


def extract(base: Path, model: Path, rank: int, out: Path) -> Path:
    from hubbot.merge.lora_extract import extract as run

    return run(open_source(ModelRef.parse(str(base))), open_source(ModelRef.parse(str(model))), rank, out).folder


def extract_cli(base: Path, model: Path, rank: int, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hubbot.cli", "extract-lora", "--base", str(base), "--model",
                           str(model), "--rank", str(rank), "--out", str(out), "--device", "cpu"],
                          capture_output=True, text=True)


def test_extract_lora_full_rank_reproduces_the_finetune_in_peft(families, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base, donor, _ = families("llama_f32")
    ft = linear_only_finetune(base, donor, tmp_path / "ft")
    res = extract_cli(base, ft, 128, tmp_path / "lora")
    assert res.returncode == 0, res.stderr
    assert "rank-128 LoRA for 29 linear weights" in res.stdout
    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["rank_pattern"]["model.layers.0.self_attn.k_proj"] == 32
    with torch.no_grad():
        want = AutoModelForCausalLM.from_pretrained(ft)(IDS).logits
        got = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), tmp_path / "lora")(IDS).logits
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()

    # the same adapter applied by hubbot's adapter source gives the fine-tune's weights back
    source = open_source(ModelRef.parse(f"{base}+{tmp_path / 'lora'}"))
    ft_state = load_state(ft)
    assert all(torch.allclose(source.read(n), ft_state[n], atol=1e-5) for n in ft_state)


def test_extract_lora_rank_limits_the_error(families, tmp_path):
    """Lower ranks keep the largest singular directions: the error falls as the rank grows, and
    a difference that is low-rank to begin with is recovered exactly at that rank."""
    base, donor, _ = families("llama_f32")
    low = tmp_path / "low"
    shutil.copytree(base, low)
    b = load_file(base / "model.safetensors")
    gen = torch.Generator().manual_seed(0)
    name = "model.layers.1.mlp.up_proj.weight"
    state = dict(b)
    state[name] = b[name] + torch.randn(128, 3, generator=gen) @ torch.randn(3, 64, generator=gen) * 0.01
    save_file(state, low / "model.safetensors", metadata={"format": "pt"})
    extract(base, low, 3, tmp_path / "r3")
    got = open_source(ModelRef.parse(f"{base}+{tmp_path / 'r3'}")).read(name)
    assert torch.allclose(got, state[name], atol=1e-6)

    ft = linear_only_finetune(base, donor, tmp_path / "ft")
    errors = []
    for rank in (2, 16, 64):
        extract(base, ft, rank, tmp_path / f"e{rank}")
        got = open_source(ModelRef.parse(f"{base}+{tmp_path / f'e{rank}'}")).read(name)
        errors.append(float((got - load_state(ft)[name]).norm()))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-4


def test_extract_lora_reports_what_lora_cannot_carry(families, tmp_path):
    base, ft1, _ = families("llama_f32")
    res = extract_cli(base, ft1, 4, tmp_path / "lora")
    assert res.returncode == 0 and "other tensors differ and are not in the adapter" in res.stderr
    res = extract_cli(base, families("llama_vocab")[1], 4, tmp_path / "bad")
    assert res.returncode == 2 and "is it a fine-tune of that base?" in res.stderr and "Traceback" not in res.stderr


def test_adapter_from_the_hub_is_applied_and_pinned(hub, alice_api, families, tmp_path):
    """`org/model+org/lora` on the Hub: both are read by range, the result equals the local
    merge, and the card's recipe pins both commits."""
    from hubbot.hub import HubOptions
    from hubbot.merge.card import resolved_recipe
    from tests.hub_fixtures import ALICE_TOKEN

    base, ft1, _ = families("llama_f32")
    adapter = peft_adapter(base, tmp_path / "adapter", r=4, lora_alpha=8, target_modules=["q_proj", "up_proj"])
    shas = {}
    for folder, repo in ((base, "alice/base"), (adapter, "alice/lora"), (ft1, "alice/ft1")):
        alice_api.create_repo(repo)
        shas[repo] = alice_api.upload_folder(folder_path=str(folder), repo_id=repo).oid
    recipe = "merge_method: linear\nmodels:\n  - {{model: {a}, parameters: {{weight: 0.5}}}}\n" \
             "  - {{model: {b}, parameters: {{weight: 0.5}}}}\ndtype: float32\n"
    opts = HubOptions(token=ALICE_TOKEN, cache_dir=tmp_path / "cache")
    plan = build(parse(recipe.format(a="alice/base+alice/lora", b="alice/ft1"), allow_local=False),
                 opener=lambda ref: open_source(ref, allow_local=False, hub=opts))
    got = load_state(engine.run(plan, tmp_path / "hub", device="cpu").folder)
    want = load_state(engine.run(build(parse(recipe.format(a=f"{base}+{adapter}", b=ft1))), tmp_path / "local",
                                 device="cpu").folder)
    assert all(torch.equal(got[k], want[k]) for k in want)
    pinned = resolved_recipe(plan)
    assert f"alice/base@{shas['alice/base']}+alice/lora@{shas['alice/lora']}" in pinned
    assert f"alice/ft1@{shas['alice/ft1']}" in pinned
