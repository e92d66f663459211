"""Shared fixtures: tiny model families built once per test session, and a mergekit oracle."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "0")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


class Families:
    """Model families by name, built on first use into one session folder."""

    SPECS = {
        "llama": dict(kind="llama", variants=2),
        "llama_f32": dict(kind="llama", variants=2, dtype="float32"),
        "llama_sharded": dict(kind="llama", variants=2, shard_bytes=150_000),
        "llama_tied": dict(kind="llama", variants=2, tied=True),
        "mistral": dict(kind="mistral", variants=2),
        "qwen2": dict(kind="qwen2", variants=2),
        "qwen2_sharded": dict(kind="qwen2", variants=2, shard_bytes=100_000),
        "gpt2": dict(kind="gpt2", variants=2),
        "llama_deep": dict(kind="llama", variants=1, layers=6, seed=3),
        "llama_vocab": dict(kind="llama", variants=2, dtype="float32",
                            extra_tokens={1: ["<tool>", "<|im_start|>"], 2: ["<|im_start|>", "<|im_end|>"]}),
        "llama_tied_vocab": dict(kind="llama", variants=2, tied=True, extra_tokens={2: ["<|im_start|>", "<|im_end|>"]}),
    }

    def __init__(self, root: Path):
        self.root = root
        self._built: dict[str, list[Path]] = {}

    def __call__(self, name: str) -> list[Path]:
        if name not in self._built:
            import torch

            from tests.models import make_family

            spec = dict(self.SPECS[name])
            if spec.get("dtype") == "float32":
                spec["dtype"] = torch.float32
            self._built[name] = make_family(self.root / name, **spec)
        return self._built[name]


@pytest.fixture(scope="session")
def families(tmp_path_factory: pytest.TempPathFactory) -> Families:
    return Families(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory):
    """A base and two fine-tunes that each learned a different small text (tests/trained.py)."""
    from tests.trained import make_trained

    return make_trained(tmp_path_factory.mktemp("trained"))


@pytest.fixture(scope="session")
def space_app(families, tmp_path_factory):
    """`hubbot serve` in local mode with a gallery over tiny models, shared by the UI and browser tests."""
    from tests.app_server import AppServer, tiny_gallery

    root = tmp_path_factory.mktemp("space")
    recipes = tiny_gallery(root / "recipes", *families("llama"))
    with AppServer(root / "data", recipes) as server:
        yield server
