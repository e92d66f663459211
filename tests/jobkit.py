"""Helpers for the job service tests: settings in a temporary folder, small recipes, waiting."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Callable, TypeVar

from hubbot.jobs.settings import Settings

T = TypeVar("T")


def make_settings(tmp_path: Path, env: dict[str, str] | None = None, **overrides) -> Settings:
    """Local-mode settings under `tmp_path/data`, ticking fast; `env` as if exported."""
    overrides.setdefault("dispatch_seconds", 0.2)
    return Settings.from_env(env or {}, data_dir=tmp_path / "data", **overrides)


def linear(a: Path | str, b: Path | str, weight: float = 0.5) -> str:
    return f"""merge_method: linear
models:
  - {{model: {a}, parameters: {{weight: {weight}}}}}
  - {{model: {b}, parameters: {{weight: {round(1 - weight, 6)}}}}}
"""


def ties(base: Path | str, a: Path | str, b: Path | str) -> str:
    return f"""merge_method: ties
base_model: {base}
models:
  - {{model: {a}, parameters: {{weight: 0.6, density: 0.5}}}}
  - {{model: {b}, parameters: {{weight: 0.4, density: 0.7}}}}
dtype: float32
"""


def copy_family(folders: list[Path], dest: Path) -> list[Path]:
    """Private copies of model folders, for tests that change a source."""
    dest.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copytree(f, dest / f.name)) for f in folders]


def wait_for(check: Callable[[], T], timeout: float = 60.0, every: float = 0.1, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def same_files(a: Path, b: Path, ignore: tuple[str, ...] = ()) -> None:
    """The two folders hold the same files (but `ignore`) with the same bytes."""
    names_a = sorted(p.name for p in a.iterdir() if p.name not in ignore)
    names_b = sorted(p.name for p in b.iterdir() if p.name not in ignore)
    assert names_a == names_b, (names_a, names_b)
    for name in names_a:
        assert (a / name).read_bytes() == (b / name).read_bytes(), f"{name} differs"


def change_weights(folder: Path, seed: int) -> None:
    """A new 'commit' of a local model: different weights, same names and shapes."""
    import torch
    from safetensors.torch import save_file

    from tests.models import load_state

    state = load_state(folder)
    gen = torch.Generator().manual_seed(seed)
    for f in sorted(folder.glob("*.safetensors")):
        f.unlink()
    save_file({k: (v.float() + 0.01 * torch.randn(v.shape, generator=gen)).to(v.dtype) for k, v in state.items()},
              str(folder / "model.safetensors"), metadata={"format": "pt"})
