"""Recipe parsing: the format as users write it, and errors that name the field and the fix."""

from __future__ import annotations

import re

import pytest

from hubbot.errors import RecipeError
from hubbot.recipe.merge import parse
from hubbot.recipe.refs import ModelRef
from hubbot.recipe.values import FilterRule, evaluate


def problems(text: str, **kw) -> list[str]:
    with pytest.raises(RecipeError) as exc:
        parse(text, **kw)
    return exc.value.problems


def test_model_references():
    assert ModelRef.parse("org/name") == ModelRef("org/name", None, None, False)
    assert ModelRef.parse("org/name@v1.0") == ModelRef("org/name", "v1.0", None, False)
    ref = ModelRef.parse("org/name+org/lora@abc")
    assert ref.adapter == ModelRef("org/lora", "abc", None, False) and str(ref) == "org/name+org/lora@abc"
    assert ModelRef.parse("./models/x").local and ModelRef.parse("/abs/x").local


def test_gradients_and_filters():
    assert evaluate((0.0, 1.0), "x", 0.25) == pytest.approx(0.25)
    assert evaluate((0.0, 0.5, 1.0, 0.0), "x", 0.5) == pytest.approx(0.75)
    assert evaluate((True, False), "x", 0.4) is True and evaluate((True, False), "x", 1.0) is False
    rules = (FilterRule("mlp", 0.1), FilterRule(None, (0.0, 1.0)))
    assert evaluate(rules, "model.layers.0.mlp.up_proj.weight", 1.0) == 0.1
    assert evaluate(rules, "model.layers.0.self_attn.q_proj.weight", 1.0) == 1.0
    assert evaluate((FilterRule("mlp", 0.1),), "other", 0.0) is None


def test_full_recipe_parses():
    r = parse("""
merge_method: dare_ties
base_model: org/base@main
models:
  - model: org/a
    parameters: {weight: [0.2, 0.8], density: 0.5}
  - model: org/b
    parameters:
      weight: [{filter: mlp, value: 0.3}, {value: 0.6}]
      density: 0.7
parameters: {normalize: true, int8_mask: true}
dtype: bf16
out_dtype: float16
tokenizer_source: base
chat_template: chatml
random_seed: 42
""")
    assert r.merge_method == "dare_ties" and r.dtype == "bfloat16" and r.out_dtype == "float16"
    assert [str(m) for m in r.model_refs()] == ["org/base@main", "org/a", "org/b"]
    assert r.uses_gradients and r.random_seed == 42


def test_errors_name_field_value_and_fix():
    ps = problems("merge_method: dare-ties\nbase_model: org/b\nmodels: [{model: org/a}]\n")
    assert "merge_method" in ps[0] and "did you mean 'dare_ties'" in ps[0]
    ps = problems("merge_method: ties\nmodels: [{model: org/a, parameters: {weight: 1, density: 1.5}}]\n")
    assert any("base_model" in p and "needs a base_model" in p for p in ps)
    assert any("models[0].parameters.density" in p and "1.5 is outside (0, 1]" in p for p in ps)
    ps = problems("merge_method: ties\nbase_model: org/b\nmodels: [{model: org/a, parameters: {weight: 1, densty: 0.5}}]\n")
    assert "models[0].parameters.densty" in ps[0] and "did you mean 'density'" in ps[0]


def test_structure_errors_are_all_reported():
    ps = problems("""
merge_method: passthrough
slices:
  - sources:
      - {model: org/a, layer_range: [0, 4]}
      - {model: org/b, layer_range: [0, 2]}
  - sources: [{model: org/a, layer_range: [5, 3]}]
dtypo: bfloat16
""")
    joined = "\n".join(ps)
    assert "dtypo: unknown field; did you mean 'dtype'" in joined
    assert "slices[0].sources: every source of a slice must span the same number of layers" in joined
    assert "slices[1].sources[0].layer_range" in joined
    ps = problems("merge_method: tiess\nmodels: []\n")  # no inputs, and a misspelt method: both said
    assert any(p.startswith("models: expected a non-empty list") for p in ps)
    assert any(p.startswith("merge_method: unknown merge method 'tiess'; did you mean 'ties'?") for p in ps)


@pytest.mark.parametrize("text,needle", [
    ("merge_method: linear\nmodels: [{model: org/a\n", "not valid YAML at line"),
    ("- just a list", "must be a YAML mapping"),
    ("merge_method: linear\n", "exactly one of 'models'"),
    ("merge_method: slerp\nbase_model: org/a\nmodels: [{model: org/a}, {model: org/b}, {model: org/c}]\nparameters: {t: 0.5}\n",
     "takes exactly 2 models"),
    ("merge_method: linear\nmodels: [{model: org/a}]\ndtype: int4\n", "unknown dtype 'int4'"),
    ("merge_method: linear\nmodels: [{model: org/a}]\n" + "#" * 300_000, "the limit is"),
])
def test_malformed(text, needle):
    assert any(needle in p for p in problems(text)), problems(text)


def test_service_mode_refuses_local_paths():
    ps = problems("merge_method: linear\nmodels: [{model: /etc}, {model: org/b}]\n", allow_local=False)
    assert "models[0].model" in ps[0] and "local path" in ps[0]


def test_yaml_is_bounded_before_anything_reads_it(tmp_path):
    from hubbot.errors import HubbotError
    from hubbot.jobs.settings import Settings
    from hubbot.recipe.text import MAX_RECIPE_BYTES, load_yaml, text_hash

    nine = "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
        f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
    for read in (load_yaml, text_hash):
        with pytest.raises(RecipeError, match="more than .* values once its aliases are expanded"):
            read(nine)
    assert load_yaml("a: &x [1, 2]\nb: *x\n") == {"a": [1, 2], "b": [1, 2]}, "ordinary anchors still work"
    with pytest.raises(RecipeError, match="limit is 100 bytes"):
        load_yaml("x: " + "1" * 200, limit=100)
    with pytest.raises(RecipeError, match=f"limit is {MAX_RECIPE_BYTES} bytes"):
        load_yaml("x: " + "1" * (MAX_RECIPE_BYTES + 1), limit=10 * MAX_RECIPE_BYTES)
    with pytest.raises(HubbotError, match="HUBBOT_MAX_RECIPE_BYTES.*at most"):
        Settings.from_env({"HUBBOT_MAX_RECIPE_BYTES": str(MAX_RECIPE_BYTES + 1)}, data_dir=tmp_path)
    assert Settings.from_env({"HUBBOT_MAX_RECIPE_BYTES": "1000"}, data_dir=tmp_path).limits.recipe_bytes == 1000


def test_every_error_type_lives_in_errors_and_carries_problems():
    from hubbot import errors, hub
    from hubbot.search import evaluate

    assert hub.HubError is errors.HubError and evaluate.EvalError is errors.EvalError
    assert errors.HubError("push target x: no").problems == ["push target x: no"]
    assert RecipeError(["a: bad", "b: bad"]).problems == ["a: bad", "b: bad"]
    assert issubclass(errors.TransientError, errors.HubbotError)


@pytest.mark.parametrize("value, why", [
    ("1" + "0" * 400, "an integer of 401 digits is out of range"),
    (".nan", "nan is not a finite number"),
    ("-.inf", "-inf is not a finite number"),
    ("1.0e+400", "1.0e+400 is out of range"),
    ("[0, 1.0e+39]", "weight[1]: 1e+39 is out of range"),
])
def test_numbers_are_finite_and_in_range(value, why):
    text = f"merge_method: linear\nmodels:\n  - {{model: org/a, parameters: {{weight: {value}}}}}\n  - org/b\n"
    with pytest.raises(RecipeError, match=re.escape(why)):
        parse(text)
