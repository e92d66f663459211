"""The shared tables and the one merge path: sizes, float types, repo ids, YAML blocks, and the
device that planning hands to a mixture of experts."""

from __future__ import annotations

import pytest

from hubbot.hub import is_repo_id
from hubbot.model.dtypes import CODE_NAMES, DTYPE_ALIASES, DTYPE_CODES, RECIPE_DTYPES
from hubbot.model.format import DTYPES, TORCH_NAMES
from hubbot.recipe.markdown import yaml_blocks
from hubbot.recipe.refs import ModelRef
from hubbot.sizes import human_bytes, parse_size


@pytest.mark.parametrize("n, shown", [(None, "-"), (0, "0 B"), (999, "999 B"), (1000, "1.0 KB"),
                                      (12_345_678, "12.3 MB"), (5 * 1000**3, "5.0 GB")])
def test_sizes_are_shown_one_way(n, shown):
    assert human_bytes(n) == shown


@pytest.mark.parametrize("text, size", [("2000000000", 2 * 1000**3), ("2GB", 2 * 1000**3), ("500 mb", 500 * 1000**2),
                                        ("1.5GiB", int(1.5 * 1024**3)), ("64KiB", 65536), ("lots", None), ("GB", None)])
def test_sizes_are_read_one_way(text, size):
    assert parse_size(text) == size


def test_float_types_come_from_one_table():
    assert set(DTYPE_CODES) == set(RECIPE_DTYPES) and set(DTYPE_ALIASES.values()) == set(RECIPE_DTYPES)
    assert DTYPE_ALIASES["bf16"] == "bfloat16" and DTYPE_ALIASES["half"] == "float16" and DTYPE_ALIASES["fp32"] == "float32"
    for name, code in DTYPE_CODES.items():
        assert CODE_NAMES[code] == name and TORCH_NAMES[name] is DTYPES[code]


@pytest.mark.parametrize("text, namespaced, ok", [("org/name", True, True), ("name", False, True), ("name", True, False),
                                                  ("org/name/extra", False, False), ("org/na..me", True, False),
                                                  ("-org/name", True, False), ("org/name.git", True, False)])
def test_repo_ids_follow_the_hub_rules(text, namespaced, ok):
    assert is_repo_id(text, namespaced=namespaced) is ok


def test_model_refs_tell_hub_ids_from_local_paths():
    assert not ModelRef.parse("org/model@main").local
    assert ModelRef.parse("./models/a").local and ModelRef.parse("a/b/c").local


def test_yaml_blocks_of_a_card():
    card = "intro\n```yaml\nmerge_method: linear\n```\nmore\n```yml title\na: 1\n```\n```python\nx = 1\n```\n"
    assert yaml_blocks(card) == ["merge_method: linear\n", "a: 1\n"]


def test_plan_any_hands_the_device_to_the_moe_planner(monkeypatch):
    from hubbot.merge import moe, run
    from hubbot.recipe.moe import parse_moe

    seen = {}
    monkeypatch.setattr(moe, "build", lambda recipe, *, opener=None, device=None: seen.setdefault("device", device))
    recipe = parse_moe("base_model: org/base\ngate_mode: random\nexperts:\n  - source_model: org/a\n"
                       "  - source_model: org/b\n", allow_local=False)
    run.plan_any(recipe, device="cpu")
    assert seen == {"device": "cpu"}
