"""Community recipes: the curated gallery in `recipes/`, importing a recipe from a merged model on
the Hub, and sharing a recipe back to the community.

A gallery entry is a plain mergekit recipe whose leading comment block carries its metadata, so
every file still runs unchanged anywhere mergekit recipes do:

    # title: Llama 3.1 8B chat soup
    # description: An even average of three instruction tunes; continuation lines
    #   start with two spaces after the '#'.
    # tags: linear, soup, llama-3.1
    # models: meta-llama/Llama-3.1-8B-Instruct, NousResearch/Hermes-3-Llama-3.1-8B
    merge_method: linear
    ...
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import HubbotError, RecipeError, SourceError
from ..hub import describe, is_repo_id
from ..recipe.markdown import yaml_blocks
from ..recipe.merge import parse

FIELDS = ("title", "description", "tags", "models", "source")
REQUIRED_FIELDS = ("title", "description", "tags", "models")
_FIELD_LINE = re.compile(r"^#\s?(" + "|".join(FIELDS) + r"):\s*(.*)$")
_CONTINUATION = re.compile(r"^#\s{2,}(\S.*)$")
RECIPE_FILES = ("mergekit_config.yml", "mergekit_config.yaml")


@dataclass(frozen=True)
class Entry:
    """One gallery recipe. `text` is the whole file, metadata comments included."""

    slug: str
    title: str
    description: str
    tags: tuple[str, ...]
    models: tuple[str, ...]
    method: str
    text: str
    source: str = ""

    def matches(self, query: str) -> bool:
        """True when every word of `query` appears in the title, description, tags, models or method."""
        haystack = " ".join((self.title, self.description, self.method, *self.tags, *self.models)).lower()
        return all(word in haystack for word in query.lower().split())


def read_metadata(text: str) -> dict[str, str]:
    """The `# key: value` fields of the leading comment block (continuations joined)."""
    meta: dict[str, str] = {}
    key = None
    for line in text.splitlines():
        if not line.startswith("#"):
            if line.strip():
                break
            continue
        if m := _FIELD_LINE.match(line):
            key = m.group(1)
            meta[key] = m.group(2).strip()
        elif key and (m := _CONTINUATION.match(line)):
            meta[key] = f"{meta[key]} {m.group(1).strip()}".strip()
        else:
            key = None
    return meta


def _split_list(value: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))


def parse_entry(text: str, slug: str) -> Entry:
    """A gallery entry from a recipe file's text; RecipeError names missing metadata or bad YAML."""
    meta = read_metadata(text)
    problems = [f"{slug}: the '# {k}:' line is missing or empty" for k in REQUIRED_FIELDS if not meta.get(k)]
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RecipeError(f"{slug}: not valid YAML: {exc}") from None
    method = data.get("merge_method") if isinstance(data, dict) else None
    if not isinstance(method, str) or not method:
        problems.append(f"{slug}: no merge_method")
    if problems:
        raise RecipeError(problems)
    return Entry(
        slug=slug,
        title=meta["title"],
        description=meta["description"],
        tags=_split_list(meta["tags"]),
        models=_split_list(meta["models"]),
        method=method,
        text=text,
        source=meta.get("source", ""),
    )


def default_folder() -> Path:
    """`recipes/` next to the hubbot package: the project root in a checkout, the Space root on a Space."""
    return Path(__file__).resolve().parents[2] / "recipes"


class Gallery:
    """The recipes in one folder (`*.yml` / `*.yaml`), read fresh on every call so edits show at once."""

    def __init__(self, folder: Path | str | None = None):
        self.folder = Path(folder) if folder else default_folder()

    def files(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.iterdir() if p.suffix in (".yml", ".yaml") and p.is_file())

    def list(self) -> list[Entry]:
        """Every readable entry, sorted by title. A broken file is skipped here (the tests
        reject it); `load` reports why."""
        entries = []
        for path in self.files():
            try:
                entries.append(parse_entry(path.read_text(), path.stem))
            except (RecipeError, OSError, UnicodeDecodeError):
                continue
        return sorted(entries, key=lambda e: e.title.lower())

    def search(self, query: str = "", tag: str | None = None) -> list[Entry]:
        return [e for e in self.list() if e.matches(query or "") and (not tag or tag in e.tags)]

    def tags(self) -> list[str]:
        return sorted({t for e in self.list() for t in e.tags})

    def load(self, slug: str) -> Entry:
        for path in self.files():
            if path.stem == slug:
                return parse_entry(path.read_text(), slug)
        raise RecipeError(f"no gallery recipe named {slug!r}; pick one from the list")


def with_metadata(text: str, *, title: str, description: str, tags: list[str] | tuple[str, ...],
                  models: list[str] | tuple[str, ...], source: str = "") -> str:
    """The recipe with its leading metadata block replaced by these fields."""
    body = strip_metadata(text)
    lines = [f"# title: {_one_line(title)}"]
    words, current = _one_line(description).split(), ""
    desc_lines: list[str] = []
    for word in words:
        if current and len(current) + len(word) + 1 > 84:
            desc_lines.append(current)
            current = word
        else:
            current = f"{current} {word}".strip()
    desc_lines.append(current)
    lines.append(f"# description: {desc_lines[0]}")
    lines += [f"#   {d}" for d in desc_lines[1:]]
    lines.append(f"# tags: {', '.join(_one_line(t) for t in tags)}")
    lines.append(f"# models: {', '.join(models)}")
    if source:
        lines.append(f"# source: {_one_line(source)}")
    return "\n".join(lines) + "\n" + body


def strip_metadata(text: str) -> str:
    """The recipe without its leading metadata comment block."""
    lines = text.splitlines(keepends=True)
    i = 0
    in_field = False
    while i < len(lines):
        line = lines[i].rstrip("\n")
        if _FIELD_LINE.match(line):
            in_field = True
        elif not (in_field and _CONTINUATION.match(line)):
            break
        i += 1
    return "".join(lines[i:])


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def slugify(title: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
    return slug[:80] or "recipe"


# ---- Hub: import and share ------------------------------------------------------------------


def recipe_from_card(card: str) -> str | None:
    """The first YAML block of a model card that is a merge recipe, or None."""
    for block in yaml_blocks(card):
        try:
            data = yaml.safe_load(block)
        except yaml.YAMLError:
            continue
        if isinstance(data, dict) and "merge_method" in data and ("models" in data or "slices" in data):
            return block if block.endswith("\n") else block + "\n"
    return None


def import_recipe(model_id: str, *, token: str | None = None, endpoint: str | None = None) -> str:
    """The recipe of an existing merge on the Hub, from its `mergekit_config.yml` or from the
    YAML block in its card, headed by a `# source:` line naming where it came from."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RemoteEntryNotFoundError

    model_id = model_id.strip().removeprefix("https://huggingface.co/").strip("/")
    repo, _, revision = model_id.partition("@")
    if not is_repo_id(repo, namespaced=True):
        raise RecipeError(f"{model_id!r} is not a Hub model id; write it as org/name, e.g. mlabonne/NeuralBeagle14-7B")
    text = None
    try:
        for filename in (*RECIPE_FILES, "README.md"):
            try:
                path = hf_hub_download(repo, filename, revision=revision or None, token=token, endpoint=endpoint)
            except RemoteEntryNotFoundError:
                continue
            content = Path(path).read_text(encoding="utf-8", errors="replace")
            text = content if filename != "README.md" else recipe_from_card(content)
            if text:
                break
    except HfHubHTTPError as exc:
        raise SourceError(describe(exc, repo if revision is None else f"{repo}@{revision}")) from None
    except (LocalEntryNotFoundError, OSError):
        raise SourceError(f"could not reach the Hub to read {repo}; check the connection and try again") from None
    if not text:
        raise RecipeError(f"{repo} has no mergekit_config.yml and no YAML recipe in its model card; "
                          "it may not be a merge, or its card does not show the recipe")
    return f"# source: https://huggingface.co/{repo}\n" + strip_metadata(text)


def share(text: str, *, title: str, description: str, tags: list[str], repo_id: str, repo_type: str,
          token: str, folder: str = "recipes", endpoint: str | None = None) -> str:
    """Propose a recipe to a community collection: a pull request adding `<folder>/<slug>.yml` to
    a Hub dataset (`repo_type="dataset"`) or to the Space's own `recipes/` (`"space"`).
    The recipe must name Hub models only; returns the pull request's URL."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    missing = [name for name, value in (("title", title), ("description", description)) if not value.strip()]
    if missing:
        raise RecipeError(f"give the recipe a {' and a '.join(missing)} before sharing it")
    recipe = parse(text, allow_local=False)
    full = with_metadata(text, title=title, description=description, tags=tags or [recipe.merge_method],
                         models=[str(r) for r in recipe.model_refs()], source=read_metadata(text).get("source", ""))
    path = f"{folder}/{slugify(title)}.yml"
    api = HfApi(token=token, endpoint=endpoint)
    try:
        commit = api.create_commit(
            repo_id=repo_id, repo_type=repo_type,
            operations=[CommitOperationAdd(path_in_repo=path, path_or_fileobj=full.encode())],
            commit_message=f"Add recipe: {_one_line(title)}",
            commit_description=_one_line(description), create_pr=True,
        )
    except HfHubHTTPError as exc:
        raise HubbotError(f"could not open a pull request on {repo_type} {repo_id}: {exc}") from None
    return commit.pr_url or commit.commit_url
