"""The output model's tokenizer files: the chosen source's files, plus the tokens a vocabulary
merge added and the recipe's chat template."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..sources import Source
from ..sources.base import TOKENIZER_FILES

TEMPLATE_FILE = "chat_template.jinja"
CONFIG_FILE = "tokenizer_config.json"
ADDED_KEYS = ("content", "single_word", "lstrip", "rstrip", "normalized", "special")


def model_chat_template(source: Source) -> str | None:
    """The chat template a model ships: chat_template.jinja first (as transformers reads it),
    else tokenizer_config.json's (the default one of a named list)."""
    files = set(source.files())
    if TEMPLATE_FILE in files:
        return source.read_file(TEMPLATE_FILE).decode().strip() or None
    if CONFIG_FILE not in files:
        return None
    try:
        template = json.loads(source.read_file(CONFIG_FILE)).get("chat_template")
    except ValueError:
        return None
    if isinstance(template, list):
        template = next((t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"), None)
    return template.strip() if isinstance(template, str) and template.strip() else None


@dataclass
class OutputTokenizer:
    """`source`'s tokenizer files with `added` token entries appended and `chat_template` set."""

    source: Source
    added: list[dict] = field(default_factory=list)
    chat_template: str | None = None

    def files(self) -> dict[str, bytes]:
        have = set(self.source.files())
        out = {name: self.source.read_file(name) for name in TOKENIZER_FILES if name in have}
        if self.added:
            self._add_tokens(out)
        if self.chat_template is not None:
            out[TEMPLATE_FILE] = self.chat_template.encode()
            out.pop("chat_template.json", None)
            if CONFIG_FILE in out:
                config = json.loads(out[CONFIG_FILE])
                config.pop("chat_template", None)
                out[CONFIG_FILE] = _dump(config)
        return out

    def _add_tokens(self, out: dict[str, bytes]) -> None:
        """Register the new tokens everywhere transformers looks for added tokens."""
        if "tokenizer.json" in out:
            data = json.loads(out["tokenizer.json"])
            data.setdefault("added_tokens", []).extend(
                {"id": e["id"], **{k: e.get(k, False) for k in ADDED_KEYS}} for e in self.added)
            out["tokenizer.json"] = _dump(data)
        config = json.loads(out[CONFIG_FILE]) if CONFIG_FILE in out else {}
        if "added_tokens_decoder" in config:
            for e in self.added:
                config["added_tokens_decoder"][str(e["id"])] = {k: e.get(k, False) for k in ADDED_KEYS}
            out[CONFIG_FILE] = _dump(config)
        if "added_tokens.json" in out:
            table = json.loads(out["added_tokens.json"])
            table.update({e["content"]: e["id"] for e in self.added})
            out["added_tokens.json"] = _dump(table)


def _dump(data: object) -> bytes:
    return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode()
