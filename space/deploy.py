"""Publish this project as a Hugging Face Space: space/README.md, app.py and requirements.txt at
the Space's root, next to the hubbot package and the recipes/ gallery, in one commit.

    python space/deploy.py your-name/hubbot            # uses HF_TOKEN or the cached login
"""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
AT_ROOT = ("README.md", "app.py", "requirements.txt")


def space_files(root: Path = ROOT) -> dict[str, Path]:
    """Path in the Space repo -> file in this checkout."""
    files = {name: root / "space" / name for name in AT_ROOT}
    for pattern in ("hubbot/**/*.py", "recipes/*.yml", "recipes/*.yaml"):
        files.update({str(p.relative_to(root)): p for p in sorted(root.glob(pattern)) if "__pycache__" not in p.parts})
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("space", help="the Space to create or update, e.g. your-name/hubbot")
    parser.add_argument("--private", action="store_true", help="create the Space private")
    args = parser.parse_args(argv)

    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    api = HfApi()
    api.create_repo(args.space, repo_type="space", space_sdk="gradio", private=args.private, exist_ok=True)
    files = space_files()
    operations: list = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(local))
                        for path, local in files.items()]
    # Modules removed here go from the Space too; recipes merged there from pull requests stay.
    stale = [p for p in api.list_repo_files(args.space, repo_type="space") if p.startswith("hubbot/") and p not in files]
    operations += [CommitOperationDelete(path_in_repo=p) for p in stale]
    commit = api.create_commit(args.space, repo_type="space", operations=operations,
                               commit_message="Deploy hubbot")
    print(f"deployed {len(operations)} files: {commit.commit_url}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
