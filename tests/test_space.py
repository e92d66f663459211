"""The Space's files: front matter the Hub needs for a Gradio app with OAuth, requirements in step
with pyproject, and a deploy that ships the package and the gallery."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parent.parent
SPACE = ROOT / "space"


def _front_matter() -> dict:
    text = (SPACE / "README.md").read_text()
    m = re.match(r"^---\n(.*?)\n---\n", text, re.DOTALL)
    assert m, "space/README.md must start with a YAML front matter block"
    return yaml.safe_load(m.group(1))


def test_front_matter():
    meta = _front_matter()
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py"
    assert meta["hf_oauth"] is True
    assert {"write-repos", "manage-repos"} <= set(meta["hf_oauth_scopes"])
    assert meta["title"] and meta["emoji"] and meta["colorFrom"] and meta["colorTo"]
    import gradio

    assert meta["sdk_version"].split(".")[0] == gradio.__version__.split(".")[0]


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[ ;]", r.strip(), maxsplit=1)[0].lower().replace("_", "-") for r in requirements if r.strip()}


def test_requirements_cover_the_service_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    needed = _names(project["dependencies"]) | _names(project["optional-dependencies"]["service"])
    needed.discard("gradio")  # the Space's sdk_version installs it
    lines = [line for line in (SPACE / "requirements.txt").read_text().splitlines() if not line.startswith("#")]
    assert needed <= _names(lines), f"space/requirements.txt lacks {needed - _names(lines)}"


def test_deploy_ships_app_package_and_recipes():
    spec = importlib.util.spec_from_file_location("space_deploy", SPACE / "deploy.py")
    deploy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(deploy)
    files = deploy.space_files()
    assert {"README.md", "app.py", "requirements.txt", "hubbot/app/ui.py", "hubbot/app/server.py"} <= set(files)
    assert any(p.startswith("recipes/") for p in files)
    assert not any(p.startswith(("tests/", "space/")) or "__pycache__" in p for p in files)
    assert all(local.is_file() for local in files.values())
