"""The `hubbot` command line: validate and merge recipes, and run the service."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable

from . import __version__
from .errors import HubbotError, PlanError, RecipeError

log = logging.getLogger("hubbot")
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def _size_arg(text: str) -> int:
    """Bytes from '2000000000', '2GB', '500MB' or '1.5GiB'."""
    units = {"kib": 1024, "mib": 1024**2, "gib": 1024**3, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "b": 1}
    t = text.strip().lower()
    for suffix, mult in units.items():
        if t.endswith(suffix):
            try:
                return int(float(t[: -len(suffix)]) * mult)
            except ValueError:
                break
    try:
        return int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; write bytes such as 2000000000 or 2GB") from None


def _read_recipe(path: str):
    from .recipe import parse

    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        raise RecipeError(f"cannot read the recipe {path}: {exc.strerror}") from None
    return parse(text)


def cmd_validate(args: argparse.Namespace) -> int:
    from .plan import build

    recipe = _read_recipe(args.recipe)
    try:
        plan = build(recipe)
    except PlanError as exc:
        print(f"recipe {args.recipe}: invalid", file=sys.stderr)
        for p in exc.problems:
            print(f"problem: {p}", file=sys.stderr)
        return 1
    print(plan.summary())
    return 1 if plan.problems else 0


def cmd_merge(args: argparse.Namespace) -> int:
    from . import engine
    from .plan import build

    recipe = _read_recipe(args.recipe)
    if args.push:
        from .hub import HubOptions, check_push_target

        check_push_target(args.push, HubOptions.from_env())  # refuse before planning or merging
    plan = build(recipe)
    plan.raise_for_problems()
    bar = None
    if sys.stderr.isatty() and not args.quiet:
        from tqdm import tqdm

        bar = tqdm(total=plan.output_bytes, unit="B", unit_scale=True, desc="merging")

    def progress(p: engine.Progress) -> None:
        if bar is not None:
            bar.n = p.bytes_done
            bar.set_postfix_str(f"{p.tensors_done}/{p.tensors_total} tensors", refresh=False)
            bar.refresh()

    try:
        if args.push:
            return _push(args, plan, progress)
        result = engine.run(plan, Path(args.out), device=args.device, shard_bytes=args.shard_size, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    _write_card(plan, result)
    print(f"wrote {result.folder}: {result.tensors} tensors, {len(result.files)} weight files, "
          f"{result.bytes_written / 1e6:.1f} MB in {result.seconds:.1f} s on {result.device}{_fetched(plan)}")
    return 0


def _fetched(plan) -> str:
    """How much came over the network from Hub sources (zero when the cache was warm)."""
    hub = [s for s in plan.sources if hasattr(s, "bytes_fetched")]
    return f"; fetched {sum(s.bytes_fetched for s in hub) / 1e6:.1f} MB from the Hub" if hub else ""


def _write_card(plan, result) -> None:
    from .card import RunFacts, build_card

    card, extra = build_card(plan, repo_id=None,
                             run=RunFacts(result.seconds, result.device, result.bytes_written, result.tensors))
    (result.folder / "README.md").write_text(card)
    for name, data in extra.items():
        (result.folder / name).write_bytes(data)


def _push(args: argparse.Namespace, plan, progress) -> int:
    import tempfile

    from .hub import HubOptions
    from .publish import merge_and_push

    opts = HubOptions.from_env()
    with tempfile.TemporaryDirectory(prefix="hubbot-", dir=args.work_dir) as work:
        pub = merge_and_push(plan, Path(work), args.push, token=opts.token, private=args.private,
                             create_pr=args.pr, progress=progress, endpoint=opts.endpoint, device=args.device,
                             shard_bytes=args.shard_size)
    where = pub.pr_url or pub.url
    print(f"published {args.push} at {where} (commit {pub.commit[:12]}): {pub.run.tensors} tensors, "
          f"{pub.run.bytes_written / 1e6:.1f} MB in {pub.run.seconds:.1f} s on {pub.run.device}{_fetched(plan)}")
    return 0


def cmd_extract_lora(args: argparse.Namespace) -> int:
    from .engine import pick_device
    from .lora_extract import extract
    from .recipe import ModelRef
    from .sources import open_source

    base, model = open_source(ModelRef.parse(args.base)), open_source(ModelRef.parse(args.model))
    result = extract(base, model, args.rank, Path(args.out), device=pick_device(args.device))
    print(f"wrote {result.folder}: rank-{result.rank} LoRA for {result.modules} linear weights")
    if result.skipped:
        print(f"note: {len(result.skipped)} other tensors differ and are not in the adapter "
              f"(e.g. '{result.skipped[0]}'); LoRA carries linear weights only", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hubbot", description="Merge LLM weights, locally or on the Hugging Face Hub.")
    parser.add_argument("--version", action="version", version=f"hubbot {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check a recipe and print the merge plan (reads headers only)")
    p.add_argument("recipe", help="recipe YAML file, or - for standard input")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("merge", help="run a recipe and write the merged model")
    p.add_argument("recipe", help="recipe YAML file, or - for standard input")
    dest = p.add_mutually_exclusive_group(required=True)
    dest.add_argument("--out", help="output folder (must not exist or be empty)")
    dest.add_argument("--push", metavar="ORG/NAME", help="publish to this Hub repo (token from HF_TOKEN or hf auth login)")
    p.add_argument("--private", action="store_true", help="with --push: create the repo private")
    p.add_argument("--pr", action="store_true", help="with --push: open a pull request on an existing repo")
    p.add_argument("--work-dir", default=None, help="with --push: where shards wait for upload (default: temp)")
    p.add_argument("--shard-size", type=_size_arg, default="5GB", help="largest shard, e.g. 2GB (default 5GB)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: CUDA when available)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("extract-lora", help="save the low-rank difference of a fine-tune from its base as a PEFT LoRA")
    p.add_argument("--base", required=True, help="the base model (local folder or org/name[@revision])")
    p.add_argument("--model", required=True, help="the fine-tune of that base")
    p.add_argument("--rank", type=int, required=True, help="LoRA rank r")
    p.add_argument("--out", required=True, help="output folder for adapter_config.json and adapter_model.safetensors")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N for the SVDs (default: CUDA when available)")
    p.set_defaults(func=cmd_extract_lora)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.func(args)
    except HubbotError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; no output was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
