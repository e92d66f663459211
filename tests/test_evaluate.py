"""The evaluator: text sets from files, perplexity that knows which model learned which text,
a generation smoke test with and without a chat template, and eval_results in the card."""

from __future__ import annotations

import json
import shutil

import pytest

from hubbot.search.evaluate import (
    EvalError,
    Evaluator,
    TextSet,
    card_eval_results,
    load_texts,
    smoke_test,
    write_card_results,
)


def test_text_sets_from_each_file_format(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = ["one document", "another one"]
    (tmp_path / "a.txt").write_text("one document\n\n  another one  \n")
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"body": d}) for d in docs) + "\n")
    (tmp_path / "a.json").write_text(json.dumps([{"body": d} for d in docs]))
    pq.write_table(pa.table({"body": docs}), tmp_path / "a.parquet")
    assert load_texts(str(tmp_path / "a.txt")).documents == tuple(docs)
    for ext in ("jsonl", "json", "parquet"):
        assert load_texts(str(tmp_path / f"a.{ext}"), text_field="body").documents == tuple(docs)
    assert load_texts(str(tmp_path / "a.txt"), max_documents=1).documents == ("one document",)
    with pytest.raises(EvalError, match="no column 'text'.*--text-field"):
        load_texts(str(tmp_path / "a.parquet"))
    with pytest.raises(EvalError, match="service mode"):
        load_texts(str(tmp_path / "a.txt"), allow_local=False)
    with pytest.raises(EvalError, match="expected hf://datasets/org/name"):
        load_texts("hf://datasets/justaname")
    with pytest.raises(EvalError, match="unsupported file type .csv"):
        (tmp_path / "a.csv").write_text("x")
        load_texts(str(tmp_path / "a.csv"))


def test_perplexity_knows_which_model_learned_which_text(trained):
    for kind, folder in trained.tunes.items():
        other = next(k for k in trained.tunes if k != kind)
        own = Evaluator(TextSet(kind, tuple(trained.heldout_by_kind[kind]))).evaluate(folder)
        foreign = Evaluator(TextSet(other, tuple(trained.heldout_by_kind[other]))).evaluate(folder)
        assert 1 < own.perplexity < foreign.perplexity
        assert own.documents == 40 and own.tokens > 40


def test_smoke_test_with_and_without_a_chat_template(trained, tmp_path):
    plain = smoke_test(trained.tunes["animals"], "the cat", max_new_tokens=8)
    assert plain.ok and not plain.chat_template and plain.new_tokens > 0
    folder = tmp_path / "chat"
    shutil.copytree(trained.tunes["animals"], folder)
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg["chat_template"] = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    chat = smoke_test(folder, "the cat", max_new_tokens=8)
    assert chat.chat_template and chat.new_tokens > 0


def test_eval_results_are_written_into_the_card(tmp_path):
    from huggingface_hub import ModelCard

    texts = TextSet("hf://datasets/org/held@v1/test.jsonl", ("x",), dataset="org/held", revision="v1")
    readme = tmp_path / "README.md"
    write_card_results(readme, "my-merge", card_eval_results(3.14159, texts.describe()))
    write_card_results(readme, "my-merge", card_eval_results(2.5, texts.describe()))
    card = ModelCard.load(readme)
    assert card.data.model_name == "my-merge"
    [result] = card.data.eval_results
    assert (result.metric_type, result.metric_value, result.dataset_type, result.dataset_revision) == (
        "perplexity", 2.5, "org/held", "v1")


def test_cli_evaluate_writes_the_card(trained, tmp_path, capsys):
    from huggingface_hub import ModelCard

    from hubbot.cli import main

    folder = tmp_path / "model"
    shutil.copytree(trained.tunes["arithmetic"], folder)
    assert main(["evaluate", str(folder), "--eval", str(trained.heldout), "--prompt", "two plus", "--card"]) == 0
    out = capsys.readouterr().out
    assert "perplexity" in out and "'two plus' ->" in out
    [result] = ModelCard.load(folder / "README.md").data.eval_results
    assert result.metric_type == "perplexity" and result.metric_value > 1
