"""The recipe form writes recipes the parser accepts, with curves, filters and slices, and says
which row is wrong; the views render records without crashing on partial data."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import yaml

from hubbot import methods
from hubbot.app import views
from hubbot.errors import RecipeError
from hubbot.recipe import form as recipe_form
from hubbot.recipe.merge import parse
from hubbot.recipe.values import FilterRule
from tests.fake_service import Job, Validation


def test_columns_follow_the_method():
    assert recipe_form.model_columns("ties") == ["model", "weight", "density", "layers"]
    assert recipe_form.model_columns("slerp") == ["model", "layers"]
    assert [p.name for p in methods.get("slerp").params if not p.per_model] == ["t"]


@pytest.mark.parametrize("cell, value", [
    ("0.5", 0.5), ("1", 1), ("true", True), ("0, 0.5, 1", [0, 0.5, 1]), ("[1, 0.5]", [1, 0.5]), ("", None),
    (None, None), (0.3, 0.3),
])
def test_cells(cell, value):
    assert recipe_form.parse_cell(cell) == value


def test_slerp_with_curves_and_filters():
    text = recipe_form.to_yaml("slerp", "org/base", [["org/base", ""], ["org/chat", ""]],
                               [["t", "self_attn", "0, 0.5, 1"], ["t", "", "0.5"], ["t", "mlp", "1, 0.5, 0"]],
                               "bfloat16")
    recipe = parse(text)
    assert recipe.base_model and recipe.base_model.path == "org/base"
    rules = recipe.parameters["t"]
    assert [r.filter for r in rules] == ["self_attn", "mlp", None], "the fallback must come last"
    assert rules[0] == FilterRule("self_attn", (0, 0.5, 1))
    assert "value: [0, 0.5, 1]" in text, "curves are written inline"


def test_per_model_parameters_and_shared_flags():
    text = recipe_form.to_yaml("ties", "org/base", [["org/a", "0.5", "0.6", ""], ["org/b", 0.5, "0.4", None], ["", "", "", ""]],
                               [["normalize", "", "false"]], None)
    recipe = parse(text)
    assert [m.parameters for m in recipe.models] == [{"weight": 0.5, "density": 0.6}, {"weight": 0.5, "density": 0.4}]
    assert recipe.parameters == {"normalize": False}
    assert "dtype" not in yaml.safe_load(text)


def test_passthrough_rows_become_slices():
    text = recipe_form.to_yaml("passthrough", "", [["org/m", "", "0-24"], ["org/m", "", "[8, 32]"]], [], "bfloat16")
    recipe = parse(text)
    assert [s.sources[0].layer_range for s in recipe.slices] == [(0, 24), (8, 32)]
    with pytest.raises(RecipeError, match="give every row a layer range"):
        recipe_form.to_yaml("passthrough", "", [["org/m", "", ""]], [], None)


def test_out_dtype_ternary_is_offered_and_written():
    assert "ternary" in recipe_form.OUT_DTYPES and "BitNet b1.58" in recipe_form.OUT_DTYPE_NOTES["ternary"]
    text = recipe_form.to_yaml("linear", "", [["org/a", "1", ""], ["org/b", "1", ""]], [], "bfloat16", "ternary")
    recipe = parse(text)
    assert (recipe.dtype, recipe.out_dtype) == ("bfloat16", "ternary")
    assert "out_dtype" not in yaml.safe_load(recipe_form.to_yaml("linear", "", [["org/a", "1", ""]], [], None, ""))


def test_errors_name_the_row():
    with pytest.raises(RecipeError, match="at least one model"):
        recipe_form.to_yaml("linear", "", [["", ""]], [], None)
    with pytest.raises(RecipeError, match="row 1"):
        recipe_form.to_yaml("linear", "", [["org/a", "1", "zero-ten"]], [], None)
    with pytest.raises(RecipeError, match="shared parameters row 1"):
        recipe_form.to_yaml("linear", "", [["org/a", "1", ""]], [["", "", "3"]], None)


def _job(**kw) -> Job:
    base = dict(id="j1", owner=None, recipe="merge_method: ties\n", recipe_hash="h", target=None, options={},
                state="running", created_at=datetime.now(timezone.utc) - timedelta(minutes=2),
                started_at=datetime.now(timezone.utc) - timedelta(minutes=1),
                progress={"tensors_done": 5, "tensors_total": 20, "bytes_done": 250, "bytes_total": 1000})
    base.update(kw)
    return Job(**base)


def test_job_views():
    html = views.job_html(_job())
    assert "Merging" in html and "5 / 20" in html and "width:25.0%" in html
    assert "number 3 in the queue" in views.job_html(_job(state="queued", position=3, started_at=None))
    assert "next in the queue" in views.job_html(_job(state="queued", position=1, started_at=None))
    assert "width:100.0%" in views.job_html(_job(state="done", progress={}))
    assert "<script>" not in views.job_html(_job(id="<script>"))
    assert "Saved to" in views.result_markdown(_job(state="done", result={"folder": "/x/y"}))
    published = views.result_markdown(_job(state="done", target="me/m", result={"url": "https://hub/me/m", "commit": "c" * 40}))
    assert "[me/m](https://hub/me/m)" in published and "`cccccccccccc`" in published
    assert "failed" in views.result_markdown(_job(state="failed", error="out of memory")).lower()
    assert views.jobs_rows([_job()])[0][:4] == ["j1", "Merging", "ties", "local folder"]


def test_validation_views():
    good = Validation(True, "method: ties", [], ["tokenizer from org/a"], [{"ref": "org/a", "revision": "f" * 40}],
                      10**9, 3 * 10**9, 10**8, 125.0, {"t": [0, 1]})
    text = views.validation_markdown(good)
    assert "Ready to merge" in text and "1.0 GB" in text and "`ffffffffffff`" in text and "2 min" in text
    bad = Validation(False, "", ["models[0].parameters.densty: 'ties' has no parameter 'densty'"], [], [])
    text = views.validation_markdown(bad)
    assert "1 problem to fix" in text and r"densty" in text and r"models\[0\]" in text
    frame = views.curves_frame({"t": [0.0, 0.5, 1.0], "weight[a/b]": [1.0, 1.0, 0.0]})
    assert list(frame.columns) == ["layer", "value", "parameter"] and len(frame) == 6
