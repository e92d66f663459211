"""The community recipes: every file in recipes/ is a valid recipe with complete metadata, every
method has one, each one plans against stand-in models of the right depth, and the gallery's
search, import and share behave."""

from __future__ import annotations

from pathlib import Path

import pytest

from hubbot import methods
from hubbot.errors import RecipeError, SourceError
from hubbot.gallery import (Gallery, default_folder, import_recipe, parse_entry, read_metadata, recipe_from_card,
                            strip_metadata, with_metadata)
from hubbot.plan import build
from hubbot.recipe import ModelRef, parse
from hubbot.sources import LocalSource

GALLERY = Gallery(default_folder())
FILES = GALLERY.files()
STANDIN_LAYERS = 32  # the depth of the 7B/8B models the gallery names, so layer ranges are checked too


def test_gallery_is_not_empty_and_every_file_is_listed():
    assert len(FILES) >= 7
    assert len(GALLERY.list()) == len(FILES), "a recipe file has broken metadata; parse_entry says why"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_recipe_is_valid_with_complete_metadata(path: Path):
    entry = parse_entry(path.read_text(), path.stem)
    recipe = parse(entry.text, allow_local=False)  # gallery recipes name Hub models only
    assert recipe.merge_method == entry.method
    assert entry.method in methods.all_methods()
    assert len(entry.title) <= 80 and len(entry.description) >= 40
    assert entry.method in entry.tags, "tag each recipe with its method so the tag filter finds it"
    named = {str(r) for r in recipe.model_refs()}
    assert named <= set(entry.models), f"list every model the recipe reads in '# models:' (missing {named - set(entry.models)})"
    for model in entry.models:
        assert ModelRef.parse(model).local is False, f"{model} is not a Hub model id"


def test_every_method_has_a_recipe():
    covered = {e.method for e in GALLERY.list()}
    missing = set(methods.all_methods()) - covered
    assert not missing, f"add a recipe to recipes/ for: {', '.join(sorted(missing))}"


def test_titles_and_slugs_are_unique():
    entries = GALLERY.list()
    assert len({e.title for e in entries}) == len(entries)
    assert len({e.slug for e in entries}) == len(entries)


class _Standin(LocalSource):
    """A tiny local model answering for a Hub repo id."""

    def __init__(self, ref: ModelRef, folder: Path):
        super().__init__(ModelRef(str(folder), local=True))
        self.ref = ref


@pytest.fixture(scope="module")
def standins(tmp_path_factory) -> dict[str, list[Path]]:
    """32-layer tiny families (base and three fine-tunes) per architecture the gallery uses."""
    from tests.models import make_family

    root = tmp_path_factory.mktemp("gallery-standins")
    return {kind: make_family(root / kind, kind, variants=3, layers=STANDIN_LAYERS, hidden=32, intermediate=64)
            for kind in ("llama", "mistral", "qwen2")}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_recipe_plans_against_standin_models(path: Path, standins):
    entry = parse_entry(path.read_text(), path.stem)
    recipe = parse(entry.text, allow_local=False)
    kind = "qwen2" if any("qwen" in t for t in entry.tags) else "mistral" if "mistral" in entry.tags else "llama"
    refs = recipe.model_refs()
    assert len(refs) <= len(standins[kind])
    folders = dict(zip(refs, standins[kind]))
    plan = build(recipe, opener=lambda ref: _Standin(ref, folders[ref]))
    assert not plan.problems, plan.problems
    assert plan.tasks
    if recipe.slices:
        assert plan.out_layers == sum(s.sources[0].layer_range[1] - s.sources[0].layer_range[0] for s in recipe.slices)


def test_search_by_words_and_tag(tmp_path):
    g = Gallery(default_folder())
    assert all("qwen2.5" in e.tags for e in g.search("qwen"))
    assert {e.method for e in g.search("", tag="slerp")} == {"slerp"}
    assert g.search("no such thing anywhere") == []
    assert set(g.tags()) >= {"linear", "slerp", "ties"}
    with pytest.raises(RecipeError, match="no gallery recipe"):
        g.load("missing")


def test_broken_files_are_skipped_in_lists_but_explained_on_load(tmp_path):
    (tmp_path / "good.yml").write_text("# title: Good\n# description: fine\n# tags: linear\n# models: a/b\n"
                                       "merge_method: linear\nmodels: [{model: a/b, parameters: {weight: 1}}]\n")
    (tmp_path / "bad.yml").write_text("merge_method: linear\nmodels: [{model: a/b}]\n")
    g = Gallery(tmp_path)
    assert [e.slug for e in g.list()] == ["good"]
    with pytest.raises(RecipeError, match="title"):
        g.load("bad")


def test_metadata_round_trip_keeps_a_valid_recipe():
    text = FILES[0].read_text()
    new = with_metadata(text, title="My  soup", description="word " * 40, tags=["a", "b"], models=["x/y"],
                        source="https://huggingface.co/x/y")
    meta = read_metadata(new)
    assert meta["title"] == "My soup" and meta["description"] == ("word " * 40).strip()
    assert meta["tags"] == "a, b" and meta["source"] == "https://huggingface.co/x/y"
    assert all(len(line) <= 100 for line in new.splitlines() if line.startswith("#"))
    assert strip_metadata(new) == strip_metadata(text)
    assert parse(new).hash == parse(text).hash


CARD = """---
license: apache-2.0
tags: [merge]
---
# Some merge

```python
print("not a recipe")
```

## Configuration

```yaml
slices:
  - sources:
      - model: a/one
        layer_range: [0, 32]
      - model: a/two
        layer_range: [0, 32]
merge_method: slerp
base_model: a/one
parameters:
  t: 0.5
```
"""


def test_recipe_from_card_takes_the_yaml_recipe_block():
    text = recipe_from_card(CARD)
    assert text and parse(text).merge_method == "slerp"
    assert recipe_from_card("# no recipe here\n```yaml\nfoo: 1\n```\n") is None


class _FakeHub:
    """hf_hub_download over a dict of {(repo, filename): text}, raising like the client does."""

    def __init__(self, files: dict[tuple[str, str], str], tmp_path: Path):
        self.files, self.tmp = files, tmp_path

    def __call__(self, repo_id, filename, revision=None, token=None, endpoint=None):
        import httpx
        from huggingface_hub.errors import LocalEntryNotFoundError, RemoteEntryNotFoundError, RepositoryNotFoundError

        if repo_id == "org/offline":
            raise LocalEntryNotFoundError("cannot reach the Hub and the file is not cached")
        response = httpx.Response(404, request=httpx.Request("GET", f"https://hub.test/{repo_id}/{filename}"))
        if not any(r == repo_id for r, _ in self.files):
            raise RepositoryNotFoundError(f"{repo_id} not found", response=response)
        if (repo_id, filename) not in self.files:
            raise RemoteEntryNotFoundError(f"{filename} not found", response=response)
        path = self.tmp / repo_id.replace("/", "--") / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.files[(repo_id, filename)])
        return str(path)


def test_import_from_config_file_then_card(monkeypatch, tmp_path):
    import huggingface_hub

    hub = _FakeHub({("org/config-merge", "mergekit_config.yml"): "merge_method: linear\nmodels:\n"
                    "  - {model: a/b, parameters: {weight: 1}}\n",
                    ("org/config-merge", "README.md"): CARD,
                    ("org/card-merge", "README.md"): CARD,
                    ("org/not-a-merge", "README.md"): "# just a model\n"}, tmp_path)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub)
    text = import_recipe("https://huggingface.co/org/config-merge")
    assert read_metadata(text)["source"] == "https://huggingface.co/org/config-merge"
    assert parse(text).merge_method == "linear"
    assert parse(import_recipe("org/card-merge")).merge_method == "slerp"
    with pytest.raises(RecipeError, match="no mergekit_config.yml and no YAML recipe"):
        import_recipe("org/not-a-merge")
    with pytest.raises(SourceError, match="was not found on the Hub"):
        import_recipe("org/missing")
    with pytest.raises(SourceError, match="could not reach the Hub"):
        import_recipe("org/offline")
    with pytest.raises(RecipeError, match="not a Hub model id"):
        import_recipe("not an id")
