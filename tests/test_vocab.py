"""Tokenizers and vocabularies: models whose tokenizers share most tokens (fine-tunes that added
chat tokens) merged into one output vocabulary, against mergekit 0.1.5 token by token.

The reference appends a union's new tokens in hash order, so ids of new tokens may differ;
rows are compared by token text. Every output must load in transformers with every token id
inside the embedding and config `vocab_size` equal to the embedding rows.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from hubbot.errors import RecipeError
from hubbot.merge import engine
from hubbot.merge.plan import build
from hubbot.recipe.merge import parse
from tests.models import load_state
from tests.oracle import mergekit_merge, ulp_distance

VOCAB_TENSORS = ("model.embed_tokens.weight", "lm_head.weight")


def vocab_of(folder: Path) -> dict[str, int]:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(folder / "tokenizer.json")).get_vocab(with_added_tokens=True)


def merge(text: str, out: Path) -> Path:
    return engine.run(build(parse(text)), out, device="cpu").folder


def assert_same_by_token(ours: Path, theirs: Path, ulps: int = 0) -> None:
    """Same vocabulary and config size; every tensor equal, embedding rows matched by token."""
    vo, vt = vocab_of(ours), vocab_of(theirs)
    assert set(vo) == set(vt)
    co, ct = (json.loads((f / "config.json").read_text()) for f in (ours, theirs))
    assert co["vocab_size"] == ct["vocab_size"]
    so, st = load_state(ours), load_state(theirs)
    assert set(so) == set(st)
    tokens = list(vo)
    for name, ref in st.items():
        got = so[name]
        assert got.shape == ref.shape, name
        if name in VOCAB_TENSORS:
            rows = len(vo)
            got = torch.cat([got[[vo[t] for t in tokens]], got[rows:]])
            ref = torch.cat([ref[[vt[t] for t in tokens]], ref[rows:]])
        if ulps:
            assert int(ulp_distance(got, ref).max()) <= ulps, name
        else:
            assert torch.allclose(got, ref, atol=1e-6, rtol=0), f"{name}: {(got - ref).abs().max():.3g}"


def assert_loads_and_runs(folder: Path, text: str = "<|im_start|>hello world<|im_end|>") -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    rows = model.get_input_embeddings().weight.shape[0]
    assert rows == model.config.vocab_size
    assert max(vocab_of(folder).values()) < rows and len(tok) <= rows
    ids = tok(text, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert torch.isfinite(logits).all() and logits.shape[-1] == rows


def models_block(folders: list[Path], params: list[dict]) -> str:
    return "models:\n" + "".join(f"  - model: {f}\n    parameters: {p}\n" for f, p in zip(folders, params))


@pytest.mark.parametrize("tokenizer", ["tokenizer_source: union", "tokenizer_source: base", "tokenizer_source: {ft2}"])
def test_linear_vocabularies_match_reference(families, tmp_path, tokenizer):
    base, ft1, ft2 = families("llama_vocab")
    # base_model names the tokenizer base explicitly: without it the reference picks one of its
    # models in set order
    text = (f"merge_method: linear\nbase_model: {base}\n"
            + models_block([base, ft1, ft2], [{"weight": 0.5}, {"weight": 0.3}, {"weight": 0.2}])
            + tokenizer.format(ft2=ft2) + "\ndtype: float32\n")
    ours = merge(text, tmp_path / "ours")
    assert_same_by_token(ours, mergekit_merge(text, tmp_path / "theirs"))
    assert_loads_and_runs(ours)


def test_ties_union_with_token_rules_and_padding_matches_reference(families, tmp_path):
    """Explicit rules (a model's row, forced; zero; another token's row; a row by id) and
    padding rows (each model's mean row) against the reference."""
    base, ft1, ft2 = families("llama_vocab")
    text = f"""merge_method: ties
base_model: {base}
{models_block([ft1, ft2], [{"weight": 0.6, "density": 0.5}, {"weight": 0.4, "density": 0.7}])}
tokenizer:
  source: union
  pad_to_multiple_of: 8
  tokens:
    <|im_start|>:
      source: {ft2}
      force: true
    <tool>:
      source: {{kind: zero}}
    <new_tok>:
      source: {{kind: model_token, model: {ft1}, token: "<tool>"}}
    <|im_end|>:
      source: {{kind: model_token, model: {base}, token_id: 5}}
      force: true
dtype: float32
"""
    ours = merge(text, tmp_path / "ours")
    assert_same_by_token(ours, mergekit_merge(text, tmp_path / "theirs"))
    cfg = json.loads((ours / "config.json").read_text())
    assert cfg["vocab_size"] == 328 and len(vocab_of(ours)) == 324
    state, b = load_state(ours), load_state(base)
    vo = vocab_of(ours)
    emb = "model.embed_tokens.weight"
    assert torch.equal(state[emb][vo["<|im_end|>"]], b[emb][5]), "a forced rule gives every model the same row"
    assert_loads_and_runs(ours, "<new_tok> hello <|im_end|>")


def test_union_of_tied_models_stays_tied(families, tmp_path):
    base, ft1, ft2 = families("llama_tied_vocab")
    text = (f"merge_method: linear\nbase_model: {base}\n" + models_block([base, ft1, ft2], [{"weight": 1}, {"weight": 1}, {"weight": 1}])
            + "tokenizer_source: union\ndtype: bfloat16\n")
    ours = merge(text, tmp_path / "ours")
    assert "lm_head.weight" not in load_state(ours)
    assert json.loads((ours / "config.json").read_text())["tie_word_embeddings"] is True
    assert_same_by_token(ours, mergekit_merge(text, tmp_path / "theirs"), ulps=1)
    assert_loads_and_runs(ours)


def test_tied_base_never_grows_an_lm_head(families, tmp_path):
    """A tied base merged with an untied model of the same shapes: the output stays tied (no
    duplicate lm_head), the untied model's lm_head is reported as left out."""
    tied, untied = families("llama_tied")[0], families("llama")[1]
    text = (f"merge_method: linear\nbase_model: {tied}\n"
            + models_block([tied, untied], [{"weight": 0.5}, {"weight": 0.5}]) + "tokenizer_source: union\n")
    plan = build(parse(text))
    assert any("not in the output" in w and "lm_head" in w for w in plan.warnings)
    out = engine.run(plan, tmp_path / "out", device="cpu").folder
    assert "lm_head.weight" not in load_state(out)
    assert_loads_and_runs(out, "hello world")


def test_union_adds_added_tokens_only(families, tmp_path):
    """Regular tokens of another tokenizer stay out of a union (they would split ordinary text)."""
    base = families("llama_vocab")[0]
    other = tmp_path / "other"
    shutil.copytree(base, other)
    data = json.loads((other / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    token, _ = max(vocab.items(), key=lambda kv: kv[1])
    vocab["Ġzebra"] = vocab.pop(token)
    (other / "tokenizer.json").write_text(json.dumps(data))
    plan = build(parse("merge_method: linear\n" + models_block([base, other], [{"weight": 1}, {"weight": 1}])
                       + "tokenizer_source: union\n"))
    assert "Ġzebra" not in plan.vocab.tokens and plan.vocab.size == 320
    assert any("1 regular tokens" in w and "Ġzebra" in w for w in plan.warnings)
    assert plan.vocab.rows[1][vocab_of(base)[token]] == -1, "the renamed token is missing from the other model"


def test_plan_reads_tokenizers_not_weights(families, monkeypatch):
    from hubbot.sources.local import LocalSource

    def no_weights(self, path, offset, length):
        assert not path.endswith(".safetensors") or offset in (0, 8), "read weight bytes while planning"
        return original(self, path, offset, length)

    original = LocalSource.read_range
    monkeypatch.setattr(LocalSource, "read_range", no_weights)
    base, ft1, ft2 = families("llama_vocab")
    plan = build(parse("merge_method: linear\n" + models_block([base, ft1, ft2], [{"weight": 1}] * 3)
                       + "tokenizer_source: union\nchat_template: chatml\n"))
    assert not plan.problems and plan.vocab.size == 323
    assert {t.name for t in plan.tasks if t.vocab} == set(VOCAB_TENSORS)
    assert all(t.shape[0] == 323 for t in plan.tasks if t.name in VOCAB_TENSORS)


def test_different_vocabularies_without_a_tokenizer_setting_are_refused(families):
    base, ft1, _ = families("llama_vocab")
    plan = build(parse("merge_method: linear\n" + models_block([base, ft1], [{"weight": 1}] * 2)))
    assert any("set tokenizer_source: union" in p for p in plan.problems)


@pytest.mark.parametrize("name,marker", [("chatml", "<|im_start|>"), ("llama3", "<|start_header_id|>"),
                                         ("alpaca", "### Instruction:"), ("mistral", "[INST]")])
def test_named_chat_templates_land_in_the_tokenizer(families, tmp_path, name, marker):
    from transformers import AutoTokenizer

    base, ft1, _ = families("llama")
    out = merge(f"merge_method: linear\n{models_block([base, ft1], [{'weight': 1}] * 2)}chat_template: {name}\n",
                tmp_path / "out")
    tok = AutoTokenizer.from_pretrained(out)
    text = tok.apply_chat_template([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                                    {"role": "assistant", "content": "hello"}, {"role": "user", "content": "bye"}],
                                   tokenize=False, add_generation_prompt=True)
    assert marker in text and "be brief" in text and "bye" in text


def test_auto_chat_template_takes_the_most_common(families, tmp_path):
    from transformers import AutoTokenizer

    folders = []
    for i, (src, template) in enumerate(zip(families("llama"), ["{{ 'A' }}", "{{ 'B' }}", "{{ 'B' }}"])):
        folders.append(tmp_path / f"m{i}")
        shutil.copytree(src, folders[-1])
        if i == 2:
            cfg = json.loads((folders[-1] / "tokenizer_config.json").read_text())
            (folders[-1] / "tokenizer_config.json").write_text(json.dumps({**cfg, "chat_template": template}))
        else:
            (folders[-1] / "chat_template.jinja").write_text(template)
    out = merge(f"merge_method: linear\n{models_block(folders, [{'weight': 1}] * 3)}chat_template: auto\n",
                tmp_path / "out")
    assert (out / "chat_template.jinja").read_text() == "{{ 'B' }}"
    assert "chat_template" not in json.loads((out / "tokenizer_config.json").read_text())
    assert AutoTokenizer.from_pretrained(out).chat_template == "{{ 'B' }}"


@pytest.mark.parametrize("text,needle", [
    ("chat_template: chatm1\n", "chat_template: unknown template 'chatm1'; use auto, chatml"),
    ("tokenizer_source: org/elsewhere\n", "tokenizer_source: 'org/elsewhere' is not one of the recipe's models"),
    ("tokenizer: {tokens: {x: {source: {kind: one}}}}\n", "tokenizer.tokens.x.source.kind: expected zero or model_token"),
    ("tokenizer: {tokens: {x: {force: true}}}\n", "tokenizer.tokens.x: force needs a source"),
    ("tokenizer: {tokens: {x: {source: {kind: model_token, model: org/a}}}}\n", "give exactly one of 'token'"),
    ("tokenizer: {tokens: {x: {source: org/zzz}}}\n", "tokenizer.tokens.x.source: 'org/zzz' is not one of"),
    ("tokenizer: {pad_to_multiple_of: 0}\n", "tokenizer.pad_to_multiple_of: expected a positive integer"),
])
def test_tokenizer_settings_are_checked_with_the_recipe(text, needle):
    with pytest.raises(RecipeError) as exc:
        parse("merge_method: linear\nmodels: [{model: org/a, parameters: {weight: 1}}]\n" + text)
    assert any(needle in p for p in exc.value.problems), exc.value.problems


def test_token_rules_naming_missing_tokens_are_plan_problems(families):
    base, ft1, _ = families("llama_vocab")
    plan = build(parse("merge_method: linear\n" + models_block([base, ft1], [{"weight": 1}] * 2)
                       + f"tokenizer:\n  tokens:\n    <|im_start|>: {{source: {base}}}\n"
                       + f"    <x>: {{source: {{kind: model_token, model: {ft1}, token: nope}}}}\n"))
    assert any(f"{base} has no token '<|im_start|>'" in p for p in plan.problems)
    assert any(f"{ft1} has no token 'nope'" in p for p in plan.problems)


def test_tokenizer_ids_past_the_embedding_get_rows(families, tmp_path):
    """A tokenizer with a token beyond its model's embedding (the reference truncates such
    vocabularies or leaves ids outside the embedding): the output embedding covers every id."""
    base, ft1, _ = families("llama_vocab")
    grown = tmp_path / "grown"
    shutil.copytree(base, grown)
    data = json.loads((grown / "tokenizer.json").read_text())
    data["added_tokens"].append({"id": 320, "content": "<|extra|>", "single_word": False, "lstrip": False,
                                 "rstrip": False, "normalized": False, "special": True})
    (grown / "tokenizer.json").write_text(json.dumps(data))
    text = (f"merge_method: linear\nbase_model: {grown}\n" + models_block([grown, ft1], [{"weight": 1}] * 2)
            + "tokenizer_source: base\n")
    plan = build(parse(text))
    assert any("1 tokens of the output tokenizer are in no model's embedding" in w for w in plan.warnings)
    out = engine.run(plan, tmp_path / "out", device="cpu").folder
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 321
    assert torch.equal(load_state(out)["model.embed_tokens.weight"][320], torch.zeros(64))
    assert_loads_and_runs(out, "<|extra|> hello")
