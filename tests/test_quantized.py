"""Quantized and low-bit sources: FP8 with block scales, MXFP4 experts, packed BitNet b1.58.

Each quantized checkpoint is built here from known float weights, and decoded here by code
written from the formats' definitions (loops over blocks, the E2M1 bit layout, the ternary
packing row by row), independently of hubbot/model/quant.py.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hubbot.errors import PlanError, RecipeError
from hubbot.merge import engine
from hubbot.merge.plan import build, open_sources, ternary_float_warnings
from hubbot.recipe.merge import parse
from hubbot.recipe.refs import ModelRef
from tests.models import load_state, tokenizer

FP8_BLOCK = (24, 40)  # uneven against the tiny models' 64 / 128 sizes, so edge blocks are partial
FP8_MAX = 448.0


def is_linear(name: str, t: torch.Tensor) -> bool:
    return ".layers." in name and name.endswith(".weight") and t.dim() == 2


def write_model(src: Path, dst: Path, tensors: dict[str, torch.Tensor], quantization: dict | None) -> Path:
    """`src`'s side files (tokenizer, config with `quantization` set) and `tensors` in one file."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if not f.name.endswith(".safetensors") and f.name != "model.safetensors.index.json":
            shutil.copy(f, dst / f.name)
    config = json.loads((src / "config.json").read_text())
    config.pop("quantization_config", None)
    if quantization is not None:
        config["quantization_config"] = quantization
    (dst / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in tensors.items()}, dst / "model.safetensors")
    return dst


def merge(text: str, out: Path, **kw) -> dict[str, torch.Tensor]:
    plan = build(parse(text))
    plan.raise_for_problems()
    engine.run(plan, out, **kw)
    return load_state(out)


def linear_recipe(a: Path, b: Path, extra: str = "dtype: float32") -> str:
    return (f"merge_method: linear\nmodels:\n  - model: {a}\n    parameters: {{weight: 0.3}}\n"
            f"  - model: {b}\n    parameters: {{weight: 0.7}}\n{extra}\n")


def assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(want)
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        assert torch.equal(got[name], want[name]), name


# FP8 with block scales ------------------------------------------------------------------------

def fp8_quantize(w: torch.Tensor, block: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    bn, bk = block
    rows, cols = w.shape
    scale = torch.empty(math.ceil(rows / bn), math.ceil(cols / bk))
    q = torch.empty(rows, cols, dtype=torch.float8_e4m3fn)
    for i in range(scale.shape[0]):
        for j in range(scale.shape[1]):
            part = w[i * bn:(i + 1) * bn, j * bk:(j + 1) * bk].float()
            s = float(part.abs().max()) / FP8_MAX or 1.0
            scale[i, j] = s
            q[i * bn:(i + 1) * bn, j * bk:(j + 1) * bk] = (part / s).to(torch.float8_e4m3fn)
    return q, scale


def fp8_dequantize(q: torch.Tensor, scale: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    bn, bk = block
    out = torch.empty(q.shape)
    for i in range(scale.shape[0]):
        for j in range(scale.shape[1]):
            out[i * bn:(i + 1) * bn, j * bk:(j + 1) * bk] = q[i * bn:(i + 1) * bn, j * bk:(j + 1) * bk].float() * scale[i, j]
    return out


def fp8_pair(src: Path, root: Path) -> tuple[Path, Path]:
    """An FP8 checkpoint of `src` (linear weights quantized in blocks) and its dequantized floats."""
    quantized, floats = {}, {}
    for name, t in load_state(src).items():
        if is_linear(name, t):
            q, s = fp8_quantize(t, FP8_BLOCK)
            quantized[name], quantized[name + "_scale_inv"] = q, s
            floats[name] = fp8_dequantize(q, s, FP8_BLOCK)
        else:
            quantized[name] = floats[name] = t
    qc = {"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3", "weight_block_size": list(FP8_BLOCK)}
    return write_model(src, root / "fp8", quantized, qc), write_model(src, root / "float", floats, None)


def test_fp8_block_scales_round_trip(families, tmp_path):
    fp8, floats = fp8_pair(families("llama")[1], tmp_path)
    [source] = open_sources([ModelRef.parse(str(fp8))])
    want = load_state(floats)
    assert set(source.tensors()) == set(want)  # the scales are no tensors of the float model
    assert "quantization_config" not in source.config()
    for name, t in want.items():
        assert torch.equal(source.read(name), t), name
        if t.dim() == 2:
            rows = (5, min(50, t.shape[0]))
            assert torch.equal(source.read(name, rows), t[rows[0]:rows[1]]), name


def test_fp8_merge_equals_merge_of_dequantized_floats(families, tmp_path):
    _, ft1, ft2 = families("llama")
    q1, f1 = fp8_pair(ft1, tmp_path / "a")
    q2, f2 = fp8_pair(ft2, tmp_path / "b")
    want = merge(linear_recipe(f1, f2, "dtype: bfloat16"), tmp_path / "want")
    got = merge(linear_recipe(q1, q2, "dtype: bfloat16"), tmp_path / "got", chunk_bytes=4096)  # blocks of rows too
    assert_same(got, want)
    assert not any("scale" in n for n in got)
    assert "quantization_config" not in json.loads((tmp_path / "got" / "config.json").read_text())


def test_fp8_without_scales_is_refused_by_name(families, tmp_path):
    src = families("llama")[0]
    state = load_state(src)
    name = "model.layers.0.mlp.up_proj.weight"
    state[name] = state[name].to(torch.float8_e4m3fn)
    bad = write_model(src, tmp_path / "bad", state, {"quant_method": "fp8", "weight_block_size": [128, 128]})
    with pytest.raises(PlanError, match=f"'{name}' has no '{name}_scale_inv'"):
        build(parse(f"merge_method: linear\nmodels: [{{model: {bad}, parameters: {{weight: 1}}}}]\n"))


# MXFP4 experts (gpt-oss) ----------------------------------------------------------------------

def e2m1(code: torch.Tensor) -> torch.Tensor:
    """FP4 E2M1 by its definition: sign bit, two exponent bits (bias 1), one mantissa bit."""
    sign = torch.where(code & 8 > 0, -1.0, 1.0)
    exp, man = ((code >> 1) & 3).float(), (code & 1).float()
    magnitude = torch.where(exp == 0, 0.5 * man, 2 ** (exp - 1) * (1 + 0.5 * man))
    return sign * magnitude


def mxfp4_quantize(param: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """gpt-oss's layout: param [E, K, N] -> blocks [E, N, K/32, 16] and E8M0 scales [E, N, K/32]."""
    rows = param.float().transpose(1, 2)
    e, n, k = rows.shape
    groups = rows.reshape(e, n, k // 32, 32)
    exp = torch.ceil(torch.log2(groups.abs().amax(-1).clamp(min=2 ** -100) / 6)).clamp(-127, 127)
    scaled = groups / torch.exp2(exp)[..., None]
    grid = e2m1(torch.arange(16))
    codes = (scaled[..., None] - grid).abs().argmin(-1).to(torch.uint8)
    return codes[..., 0::2] | (codes[..., 1::2] << 4), (exp + 127).to(torch.uint8)


def mxfp4_dequantize(blocks: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    e, n, g, _ = blocks.shape
    out = torch.empty(e, n, g * 32)
    for j in range(16):  # byte j of each group holds values 2j (low nibble) and 2j + 1
        out[..., 2 * j::32] = e2m1(blocks[..., j] & 0x0F) * torch.exp2(scales.float() - 127)
        out[..., 2 * j + 1::32] = e2m1(blocks[..., j] >> 4) * torch.exp2(scales.float() - 127)
    return out.transpose(1, 2).contiguous()


@pytest.fixture(scope="module")
def gpt_oss(tmp_path_factory) -> list[Path]:
    """A tiny gpt-oss base and two fine-tunes (bfloat16, experts fused [E, ...] as transformers stores them)."""
    from transformers import AutoModelForCausalLM, GptOssConfig

    root = tmp_path_factory.mktemp("gpt_oss")
    tok = tokenizer(root / "_tokenizer")
    torch.manual_seed(0)
    config = GptOssConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=4,
                          num_experts_per_tok=2, max_position_embeddings=256, bos_token_id=0, eos_token_id=1,
                          rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    model = AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    folders = []
    for i in range(3):
        gen = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(base[name] + (torch.randn(p.shape, generator=gen) * 0.02 * (i > 0)).to(p.dtype))
        model.save_pretrained(root / f"ft{i}")
        tok.save_pretrained(root / f"ft{i}")
        folders.append(root / f"ft{i}")
    return folders


def mxfp4_pair(src: Path, root: Path) -> tuple[Path, Path]:
    quantized, floats = {}, {}
    for name, t in load_state(src).items():
        if name.endswith(("experts.gate_up_proj", "experts.down_proj")):
            blocks, scales = mxfp4_quantize(t)
            quantized[name + "_blocks"], quantized[name + "_scales"] = blocks, scales
            floats[name] = mxfp4_dequantize(blocks, scales)
        else:
            quantized[name] = floats[name] = t
    qc = {"quant_method": "mxfp4", "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                                              "model.embed_tokens", "lm_head"]}
    return write_model(src, root / "mxfp4", quantized, qc), write_model(src, root / "float", floats, None)


def test_mxfp4_experts_round_trip(gpt_oss, tmp_path):
    q, floats = mxfp4_pair(gpt_oss[1], tmp_path)
    [source] = open_sources([ModelRef.parse(str(q))])
    want = load_state(floats)
    assert set(source.tensors()) == set(want)
    name = "model.layers.1.mlp.experts.gate_up_proj"
    assert source.tensors()[name].shape == (4, 64, 128)
    for n, t in want.items():
        assert torch.equal(source.read(n), t), n
    assert torch.equal(source.read(name, (1, 3)), want[name][1:3])
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors  # transformers reads it the same way

    stored = load_state(q)
    assert torch.equal(convert_moe_packed_tensors(stored[name + "_blocks"], stored[name + "_scales"],
                                                  dtype=torch.float32), want[name])
    # the encoding is lossy but close: the checkpoint really encodes the float weights
    original = load_state(gpt_oss[1])[name].float()
    assert (want[name] - original).abs().max() < 0.25 * original.abs().max()


def test_mxfp4_merge_equals_merge_of_dequantized_floats_and_runs(gpt_oss, tmp_path):
    from transformers import AutoModelForCausalLM

    q1, f1 = mxfp4_pair(gpt_oss[1], tmp_path / "a")
    q2, f2 = mxfp4_pair(gpt_oss[2], tmp_path / "b")
    want = merge(linear_recipe(f1, f2), tmp_path / "want")
    got = merge(linear_recipe(q1, q2), tmp_path / "got", chunk_bytes=8192)
    assert_same(got, want)
    assert not any(n.endswith(("_blocks", "_scales")) for n in got)
    config = json.loads((tmp_path / "got" / "config.json").read_text())
    assert "quantization_config" not in config
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "got")
    logits = model(torch.tensor([[0, 5, 9, 3]])).logits
    assert torch.isfinite(logits).all()


# BitNet b1.58: packed ternary -----------------------------------------------------------------

def absmean(w: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The b1.58 rule as the paper states it: scale = mean |W|, W_q = round(clip(W / scale, -1, 1))."""
    scale = max(float(w.float().abs().mean()), 1e-5)
    return torch.round(torch.clamp(w.float() / scale, -1, 1)), scale


def pack(values: torch.Tensor) -> torch.Tensor:
    """Row r of [N, K] goes to packed row r mod N/4, bits 2 * (r // (N/4)), stored as value + 1."""
    height = values.shape[0] // 4
    packed = torch.zeros(height, *values.shape[1:], dtype=torch.uint8)
    for r in range(values.shape[0]):
        packed[r % height] |= ((values[r] + 1).to(torch.uint8) << (2 * (r // height)))
    return packed


def unpack(packed: torch.Tensor) -> torch.Tensor:
    height = packed.shape[0]
    out = torch.empty(4 * height, *packed.shape[1:])
    for r in range(4 * height):
        out[r] = ((packed[r % height] >> (2 * (r // height))) & 3).float() - 1
    return out


def bitnet_pair(src: Path, root: Path, linear_class: str = "autobitlinear") -> tuple[Path, Path]:
    """A packed BitNet checkpoint of `src` (its linear weights made ternary by absmean) and its floats."""
    packed, floats = {}, {}
    for name, t in load_state(src).items():
        if is_linear(name, t):
            values, scale = absmean(t)
            stored = torch.tensor([scale if linear_class == "autobitlinear" else 1 / scale], dtype=torch.bfloat16)
            packed[name], packed[name + "_scale"] = pack(values), stored
            s = float(stored.float())
            floats[name] = values * s if linear_class == "autobitlinear" else values / s
        else:
            packed[name] = floats[name] = t
    qc = {"quant_method": "bitnet", "linear_class": linear_class, "quantization_mode": "offline"}
    return write_model(src, root / "packed", packed, qc), write_model(src, root / "float", floats, None)


@pytest.mark.parametrize("linear_class", ["autobitlinear", "bitlinear"])
def test_packed_ternary_round_trip(families, tmp_path, linear_class):
    packed, floats = bitnet_pair(families("llama")[1], tmp_path, linear_class)
    [source] = open_sources([ModelRef.parse(str(packed))])
    want = load_state(floats)
    assert set(source.tensors()) == set(want)
    for name, t in want.items():
        assert torch.equal(source.read(name).to(t.dtype), t), name
        if t.dim() == 2 and t.shape[0] >= 64:
            for rows in ((3, 9), (10, 40), (0, t.shape[0])):  # within a quarter, across quarters, all
                assert torch.equal(source.read(name, rows).to(t.dtype), t[rows[0]:rows[1]]), (name, rows)


def test_packed_ternary_merge_equals_merge_of_floats(families, tmp_path):
    _, ft1, ft2 = families("llama")
    p1, f1 = bitnet_pair(ft1, tmp_path / "a")
    p2, f2 = bitnet_pair(ft2, tmp_path / "b")
    want = merge(linear_recipe(f1, f2), tmp_path / "want")
    got = merge(linear_recipe(p1, p2), tmp_path / "got", chunk_bytes=4096)
    assert_same(got, want)


def test_ternary_out_dtype_writes_packed_absmean_weights(families, tmp_path):
    _, ft1, ft2 = families("llama")
    p1, f1 = bitnet_pair(ft1, tmp_path / "a")
    p2, f2 = bitnet_pair(ft2, tmp_path / "b")
    floats = merge(linear_recipe(f1, f2), tmp_path / "floats")
    out = tmp_path / "ternary"
    plan = build(parse(linear_recipe(p1, p2, "dtype: float32\nout_dtype: ternary")))
    plan.raise_for_problems()
    engine.run(plan, out, shard_bytes=60_000)
    got = load_state(out)
    index = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    assert set(index) == set(got) and len(set(index.values())) > 1
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"] == {"quant_method": "bitnet", "linear_class": "autobitlinear",
                                             "quantization_mode": "offline"}
    linear = [n for n, t in floats.items() if is_linear(n, t)]
    assert linear and set(got) == set(floats) | {n + "_scale" for n in linear}
    for name, t in floats.items():
        if name in linear:
            values, scale = absmean(t)
            assert got[name].dtype == torch.uint8 and got[name].shape == (t.shape[0] // 4, t.shape[1])
            assert torch.equal(unpack(got[name]), values), name
            assert got[name + "_scale"].shape == (1,) and float(got[name + "_scale"]) == pytest.approx(scale, rel=1e-6)
        else:  # norms, embeddings and the head stay in the recipe's dtype
            assert torch.equal(got[name], t), name
    # a ternary output read back is the float model it encodes
    [back] = open_sources([ModelRef.parse(str(out))])
    name = linear[0]
    assert torch.allclose(back.read(name), absmean(floats[name])[0] * absmean(floats[name])[1])


def test_ternary_floats_without_quantization_config_are_reported(families, tmp_path):
    src = families("llama")[1]
    _, floats = bitnet_pair(src, tmp_path)  # ternary values times their scale, stored as plain floats
    plan = build(parse(linear_recipe(floats, src)))
    assert not any("BitNet" in w for w in plan.warnings)  # planning reads headers only
    [warning] = ternary_float_warnings(plan)
    assert "BitNet b1.58 model stored as floats" in warning and warning.startswith(str(floats))
    assert "out_dtype: ternary" in warning
    assert ternary_float_warnings(build(parse(linear_recipe(floats, src, "out_dtype: ternary")))) == []
    recipe = tmp_path / "r.yml"
    recipe.write_text(linear_recipe(floats, src))
    out = subprocess.run([sys.executable, "-m", "hubbot.cli", "validate", str(recipe)], capture_output=True, text=True)
    assert out.returncode == 0 and "BitNet b1.58 model stored as floats" in out.stdout, out.stderr


def test_the_service_validation_reports_ternary_floats(families, tmp_path):
    """The Space and the JSON API validate through the job service: the same warning as the CLI's."""
    from hubbot.jobs.service import Service
    from tests.jobkit import make_settings

    src = families("llama")[1]
    _, floats = bitnet_pair(src, tmp_path)
    service = Service(make_settings(tmp_path))
    try:
        v = service.validate(linear_recipe(floats, src))
        assert v.ok and not v.problems
        [warning] = [w for w in v.warnings if "BitNet" in w]
        assert "BitNet b1.58 model stored as floats" in warning and "out_dtype: ternary" in warning
        assert f"warning: {warning}" in v.summary
        assert not any("BitNet" in w for w in service.validate(linear_recipe(floats, src, "out_dtype: ternary")).warnings)
        assert not any("BitNet" in w for w in service.validate(linear_recipe(src, src)).warnings)
    finally:
        service.close()


def test_ternary_is_an_out_dtype_only():
    with pytest.raises(RecipeError, match="out_dtype only"):
        parse("merge_method: linear\nmodels: [{model: a/b, parameters: {weight: 1}}]\ndtype: ternary\n")
    recipe = parse("merge_method: linear\nmodels: [{model: a/b, parameters: {weight: 1}}]\nout_dtype: ternary\n")
    assert recipe.out_dtype == "ternary"


def test_quantized_sources_are_shown_and_a_missing_dtype_is_warned(families, tmp_path):
    _, ft1, ft2 = families("llama")
    q1, _ = fp8_pair(ft1, tmp_path / "a")
    plan = build(parse(linear_recipe(q1, ft2, "")))
    assert f"model: {q1} (fp8, read as float32)" in plan.summary()
    assert any("written as float32" in w and "dtype: bfloat16" in w for w in plan.warnings)
    assert not any("float32" in w for w in build(parse(linear_recipe(q1, ft2, "dtype: bfloat16"))).warnings)


def test_adapter_on_a_quantized_base_corrects_its_floats(families, tmp_path):
    from hubbot.sources import open_source
    from tests.test_lora import peft_adapter

    fp8, floats = fp8_pair(families("llama")[0], tmp_path)
    adapter = peft_adapter(floats, tmp_path / "adapter", r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"])
    got, want = (open_source(ModelRef.parse(f"{m}+{adapter}")) for m in (fp8, floats))
    assert set(got.tensors()) == set(want.tensors())
    for name in want.tensors():
        assert torch.equal(got.read(name), want.read(name)), name


def test_quantized_sources_on_the_hub_merge_as_local_ones(hub, alice_api, families, tmp_path):
    """Hub sources read the values and scales by range (and blocks of rows) like local ones."""
    from hubbot.hub import HubOptions
    from hubbot.sources import open_source
    from tests.hub_fixtures import ALICE_TOKEN

    _, ft1, ft2 = families("llama")
    q1, _ = fp8_pair(ft1, tmp_path / "a")
    p2, _ = bitnet_pair(ft2, tmp_path / "b")
    for folder, repo in ((q1, "alice/fp8"), (p2, "alice/bitnet")):
        alice_api.create_repo(repo)
        alice_api.upload_folder(folder_path=str(folder), repo_id=repo)
    opts = HubOptions(token=ALICE_TOKEN, cache_dir=tmp_path / "cache")
    plan = build(parse(linear_recipe("alice/fp8", "alice/bitnet"), allow_local=False),
                 opener=lambda ref: open_source(ref, allow_local=False, hub=opts))
    plan.raise_for_problems()
    got = load_state(engine.run(plan, tmp_path / "hub", chunk_bytes=4096).folder)
    assert_same(got, merge(linear_recipe(q1, p2), tmp_path / "local"))


@pytest.mark.parametrize("qc", [{"quant_method": "fbgemm_fp8"}, {"quant_method": "gptq", "bits": 4},
                                {"quant_method": "bitnet", "quantization_mode": "online"}])
def test_other_quantized_formats_stay_refused(families, tmp_path, qc):
    src = families("llama")[0]
    q = write_model(src, tmp_path / "q", load_state(src), qc)
    with pytest.raises(PlanError, match=rf"is quantized \({qc['quant_method']}\); merge the original"):
        build(parse(f"merge_method: linear\nmodels: [{{model: {q}, parameters: {{weight: 1}}}}]\n"))
