"""Model references: a local folder, a Hub repo `org/name[@revision]`, optionally `+adapter`."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import RecipeError
from ..hub import is_repo_id
from .text import load_yaml


@dataclass(frozen=True)
class ModelRef:
    """A model reference: a local folder, a Hub repo `org/name[@revision]`, optionally `+adapter`."""

    path: str
    revision: str | None = None
    adapter: "ModelRef | None" = None
    local: bool = False

    @classmethod
    def parse(cls, text: str, *, probe_disk: bool = True) -> "ModelRef":
        """`probe_disk=False` (service mode) decides by the text alone: `org/name` is a Hub repo
        even if the server happens to have a folder of that name, and the server's disk is never
        looked at on a caller's behalf."""
        text = text.strip()
        base, plus, adapter = text.partition("+")
        adapter_ref = cls.parse(adapter, probe_disk=probe_disk) if plus and adapter else None
        if _looks_local(base, probe_disk):
            return cls(path=base, adapter=adapter_ref, local=True)
        repo, at, rev = base.partition("@")
        return cls(path=repo, revision=rev if at else None, adapter=adapter_ref, local=False)

    def __str__(self) -> str:
        text = self.path + (f"@{self.revision}" if self.revision else "")
        return text + (f"+{self.adapter}" if self.adapter else "")

    @property
    def weights(self) -> "ModelRef":
        """The reference without its adapter: where the base weights come from."""
        return ModelRef(self.path, self.revision, None, self.local)


def _looks_local(text: str, probe_disk: bool = True) -> bool:
    if text.startswith(("/", "./", "../", "~", ".\\")) or text in (".", ".."):
        return True
    if probe_disk and os.path.isdir(os.path.expanduser(text)):
        return True
    return not is_repo_id(text.partition("@")[0])


def model_refs_of(text: str) -> list[str]:
    """Every model reference written in a merge recipe's YAML, however malformed the rest (none
    when the YAML itself does not load), so a typo elsewhere does not hide a missing model."""
    try:
        data = load_yaml(text)
    except RecipeError:
        return []
    if not isinstance(data, dict):
        return []
    refs = [data.get("base_model")]
    entries = list(data["models"]) if isinstance(data.get("models"), list) else []
    for sl in data["slices"] if isinstance(data.get("slices"), list) else []:
        if isinstance(sl, dict) and isinstance(sl.get("sources"), list):
            entries += sl["sources"]
    refs += [e.get("model") if isinstance(e, dict) else e for e in entries]
    return list(dict.fromkeys(r for r in refs if isinstance(r, str) and r.strip()))
