"""The community recipes: every file in recipes/ is a valid recipe with complete metadata, every
method has one, each one plans against stand-in models of the right depth, and the gallery's
search, import and share behave."""

from __future__ import annotations

from pathlib import Path

import pytest

from hubbot import methods
from hubbot.app.gallery import (
    Gallery,
    default_folder,
    import_recipe,
    parse_entry,
    read_metadata,
    recipe_from_card,
    share,
    strip_metadata,
    with_metadata,
)
from hubbot.errors import HubbotError, RecipeError, SourceError
from hubbot.hub import HubOptions
from hubbot.merge.plan import build
from hubbot.recipe.merge import parse
from hubbot.recipe.refs import ModelRef
from hubbot.sources import open_source
from tests.hub_fixtures import ALICE_TOKEN, BOB_TOKEN

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


def _kind(entry) -> str:
    return "qwen2" if any("qwen" in t for t in entry.tags) else "mistral" if "mistral" in entry.tags else "llama"


@pytest.fixture(scope="module")
def gallery_on_hub(hub_server, tmp_path_factory):
    """Every model the gallery names, as a tiny 32-layer model of the right architecture
    uploaded under that repo id to the Hub stand-in (bases get the family's base)."""
    from tests.models import make_family

    hub_server.reset()
    root = tmp_path_factory.mktemp("gallery-standins")
    families = {kind: make_family(root / kind, kind, variants=3, layers=STANDIN_LAYERS, hidden=32, intermediate=64)
                for kind in ("llama", "mistral", "qwen2")}
    names: dict[str, str] = {}
    for entry in GALLERY.list():
        recipe = parse(entry.text, allow_local=False)
        for ref in recipe.model_refs():
            names.setdefault(ref.path, _kind(entry))
    used = {kind: 0 for kind in families}
    for name, kind in sorted(names.items()):
        is_base = not any(w in name.lower() for w in ("instruct", "chat", "hermes", "zephyr", "distill", "lite"))
        folder = families[kind][0] if is_base else families[kind][1 + used[kind] % 3]
        used[kind] += 0 if is_base else 1
        files = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        hub_server.create_repo_direct(name, files)
    return hub_server


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_recipe_plans_against_the_hub(path: Path, gallery_on_hub, tmp_path):
    """Plans as the service would: Hub sources only, headers read with range requests."""
    entry = parse_entry(path.read_text(), path.stem)
    recipe = parse(entry.text, allow_local=False)
    opts = HubOptions(cache_dir=tmp_path / "cache")
    plan = build(recipe, opener=lambda ref: open_source(ref, allow_local=False, hub=opts))
    assert not plan.problems, plan.problems
    assert plan.tasks and all(s.revision and len(s.revision) == 40 for s in plan.sources)
    if recipe.slices:
        assert plan.out_layers == sum(s.sources[0].layer_range[1] - s.sources[0].layer_range[0] for s in recipe.slices)


def test_search_by_words_and_tag(tmp_path):
    g = Gallery(default_folder())
    assert all("qwen2.5" in e.tags for e in g.search("qwen"))
    tagged = g.search("", tag="slerp")
    assert "slerp" in {e.method for e in tagged} and all("slerp" in e.tags for e in tagged)
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


def test_import_from_config_file_then_card(hub):
    hub.create_repo_direct("org/config-merge", {
        "mergekit_config.yml": b"merge_method: linear\nmodels:\n  - {model: a/b, parameters: {weight: 1}}\n",
        "README.md": CARD.encode()})
    hub.create_repo_direct("org/card-merge", {"README.md": CARD.encode()})
    hub.create_repo_direct("org/not-a-merge", {"README.md": b"# just a model\n"})
    hub.create_repo_direct("org/gated-merge", {"README.md": CARD.encode()}, gated="manual")

    text = import_recipe("https://huggingface.co/org/config-merge")
    assert read_metadata(text)["source"] == "https://huggingface.co/org/config-merge"
    assert parse(text).merge_method == "linear"
    assert parse(import_recipe("org/card-merge")).merge_method == "slerp"
    with pytest.raises(RecipeError, match="no mergekit_config.yml and no YAML recipe"):
        import_recipe("org/not-a-merge")
    with pytest.raises(SourceError, match="was not found on the Hub"):
        import_recipe("org/missing")
    with pytest.raises(SourceError, match="gated"):
        import_recipe("org/gated-merge", token=BOB_TOKEN)
    with pytest.raises(RecipeError, match="not a Hub model id"):
        import_recipe("not an id")


def test_import_without_a_connection(monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def unreachable(*args, **kwargs):
        raise LocalEntryNotFoundError("cannot reach the Hub and the file is not in the cache")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    with pytest.raises(SourceError, match="could not reach the Hub"):
        import_recipe("org/anything")


@pytest.mark.parametrize("repo_type, repo_id", [("dataset", "merge-lab/community-recipes"), ("space", "merge-lab/hubbot")])
def test_share_opens_a_pull_request(hub, repo_type, repo_id):
    hub.create_repo_direct(repo_id, {"README.md": b"# recipes\n"}, repo_type=repo_type)
    text = "# source: https://huggingface.co/org/card-merge\n" + (FILES[0].read_text())
    url = share(text, title="My  chat soup", description="Three chat tunes averaged.", tags=["linear", "chat"],
                repo_id=repo_id, repo_type=repo_type, token=ALICE_TOKEN)
    assert "/discussions/" in url
    files = hub.repo_files(repo_id, revision="refs/pr/1", repo_type=repo_type)
    shared = files["recipes/my-chat-soup.yml"].decode()
    entry = parse_entry(shared, "my-chat-soup")
    assert entry.title == "My chat soup" and entry.tags == ("linear", "chat")
    assert entry.source == "https://huggingface.co/org/card-merge"
    assert set(entry.models) == {str(r) for r in parse(text).model_refs()}
    assert "recipes/my-chat-soup.yml" not in hub.repo_files(repo_id, repo_type=repo_type)  # main is untouched


def test_share_refuses_what_cannot_be_shared(hub, families):
    hub.create_repo_direct("merge-lab/community-recipes", {"README.md": b"#\n"}, repo_type="dataset")
    good = FILES[0].read_text()
    kw = dict(repo_id="merge-lab/community-recipes", repo_type="dataset", token=ALICE_TOKEN, tags=[])
    with pytest.raises(RecipeError, match="title"):
        share(good, title=" ", description="x", **kw)
    local = f"merge_method: linear\nmodels: [{{model: {families('llama')[1]}, parameters: {{weight: 1}}}}]\n"
    with pytest.raises(RecipeError, match="local path"):
        share(local, title="Mine", description="x", **kw)
    with pytest.raises(HubbotError, match="could not open a pull request"):
        share(good, title="Mine", description="x", **{**kw, "token": "hf_not_a_token"})
