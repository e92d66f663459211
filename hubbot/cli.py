"""The `hubbot` command line: validate and merge recipes (merges and mixtures of experts),
evaluate models, cook greedy soups, search recipes, and run the service."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import __version__
from .errors import HubbotError, PlanError, RecipeError
from .sizes import human_bytes, parse_size

log = logging.getLogger("hubbot")


def _size_arg(text: str) -> int:
    """Bytes from '2000000000', '2GB', '500MB' or '1.5GiB'."""
    size = parse_size(text)
    if size is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; write bytes such as 2000000000 or 2GB")
    return size


def _threads_arg(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of threads, at least 1, got {text!r}")
    return n


def _recipe_text(path: str, what: str = "recipe") -> str:
    from .recipe.text import decode_text

    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise RecipeError(f"cannot read the {what} {path}: {exc.strerror}") from None
    return decode_text(data, what)


def _plan_any(path: str, kinds: tuple[str, ...] | None = None, device: str | None = None):
    """The plan of whatever the file holds (a merge or MoE recipe, or a soup or search request,
    planned from its starting recipe); `kinds` refuses the others. `device` computes an MoE's routers."""
    return _plan_text(_recipe_text(path), path, kinds, device)


def _plan_text(text: str, path: str, kinds: tuple[str, ...] | None = None, device: str | None = None):
    from .merge.run import plan_any
    from .recipe.kinds import parse_any
    from .recipe.text import KIND_HINTS, kind_of

    kind = kind_of(text)
    if kinds and kind not in kinds:
        raise RecipeError(f"{path}: " + KIND_HINTS.get(kind, "this is a merge recipe, not a mixture of experts "
                                                               "(it has no 'experts:'); run it with 'hubbot merge'"))
    return plan_any(parse_any(text), device=device)


def cmd_validate(args: argparse.Namespace) -> int:
    text = _recipe_text(args.recipe)
    try:
        plan = _plan_text(text, args.recipe)
    except RecipeError as exc:  # every problem at once: the recipe's, and the models it names
        from .merge.run import source_problems
        from .sources import open_source

        return _invalid(args.recipe, [*(exc.problems or [str(exc)]), *source_problems(text, open_source)])
    except PlanError as exc:
        return _invalid(args.recipe, exc.problems)
    from .merge.plan import check_weights

    print(check_weights(plan).summary())
    return 1 if plan.problems else 0


def _invalid(path: str, problems: list[str]) -> int:
    print(f"recipe {path}: invalid", file=sys.stderr)
    for p in problems:
        print(f"problem: {p}", file=sys.stderr)
    return 1


def cmd_merge(args: argparse.Namespace) -> int:
    """Runs either recipe kind: a merge, or a mixture of experts (`hubbot moe` is the same)."""
    from .merge import engine
    from .merge.run import MergeOptions, merge_to_folder
    from .merge.threads import use_threads

    if args.on == "hf-jobs" and not args.push:
        raise HubbotError("--on hf-jobs publishes the merge to the Hub: add --push ORG/NAME")
    if args.flavor and args.on != "hf-jobs":
        raise HubbotError("--flavor picks the hardware of a job on Hugging Face Jobs: add --on hf-jobs")
    if args.on != "hf-jobs":
        engine.pick_device(args.device)  # device and target are checked before planning or merging
    use_threads(args.threads)
    engine.settle_imports()
    hub = None
    if args.push:
        from .hub import HubOptions, check_push_target

        hub = HubOptions.from_env()
        check_push_target(args.push, hub)
    else:
        engine.check_output_folder(Path(args.out))
    plan = _plan_any(args.recipe, kinds=args.kinds, device=args.device)
    plan.raise_for_problems()
    if args.on == "hf-jobs":
        from .jobs.remote import run_from_cli

        return run_from_cli(plan, target=args.push, private=args.private, pr=args.pr, shard_bytes=args.shard_size,
                            flavor=args.flavor, echo=lambda line: print(line, flush=True))
    options = MergeOptions(device=args.device, shard_bytes=args.shard_size)
    bar = lines = None
    if sys.stderr.isatty() and not args.quiet:
        from tqdm import tqdm

        bar = tqdm(total=plan.output_bytes, unit="B", unit_scale=True, desc="merging")
    elif not args.quiet:  # a log (a batch job, Hugging Face Jobs): a plain line now and then
        from .jobs.remote import ProgressLines

        lines = ProgressLines()

    def progress(p: engine.Progress) -> None:
        if lines is not None:
            lines(p)
        if bar is not None:
            bar.n = p.bytes_done
            bar.set_postfix_str(f"{p.tensors_done}/{p.tensors_total} tensors", refresh=False)
            bar.refresh()

    try:
        if args.push:
            return _push(args, plan, hub, options, progress)
        result = merge_to_folder(plan, Path(args.out), options, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    print(f"wrote {result.folder}: {result.tensors} tensors, {len(result.files)} weight files, "
          f"{human_bytes(result.bytes_written)} in {result.seconds:.1f} s on {result.device}{_fetched(plan)}")
    return 0


def _fetched(plan) -> str:
    """How much came over the network from Hub sources (zero when the cache was warm)."""
    hub = [s for s in plan.sources if hasattr(s, "bytes_fetched")]
    return f"; fetched {human_bytes(sum(s.bytes_fetched for s in hub))} from the Hub" if hub else ""


def _push(args: argparse.Namespace, plan, hub, options, progress) -> int:
    import tempfile

    from .merge.publish import merge_and_push

    with tempfile.TemporaryDirectory(prefix="hubbot-", dir=args.work_dir) as work:
        pub = merge_and_push(plan, Path(work), args.push, hub, options=options,
                             private=args.private, create_pr=args.pr, progress=progress)
    where = pub.pr_url or pub.url
    print(f"published {args.push} at {where} (commit {pub.commit[:12]}): {pub.run.tensors} tensors, "
          f"{human_bytes(pub.run.bytes_written)} in {pub.run.seconds:.1f} s on {pub.run.device}{_fetched(plan)}")
    return 0


def _add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--eval", required=True, metavar="TEXTS",
                   help="held-out texts: a .txt (one document per line), .jsonl, .json or .parquet file, "
                        "or hf://datasets/org/name[@revision]/path/file")
    p.add_argument("--text-field", default="text", help="the text field of .jsonl/.json/.parquet records (default text)")
    p.add_argument("--max-documents", type=int, default=None, help="score only the first N documents")
    p.add_argument("--max-length", type=int, default=512, help="longest window of tokens scored at once (default 512)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: CUDA when available)")


def _fanout(args: argparse.Namespace, score):
    """Candidates on a Ray cluster when `--ray` (or HUBBOT_RAY_ADDRESS) names one."""
    import os

    address = args.ray or os.environ.get("HUBBOT_RAY_ADDRESS")
    if not address:
        return None
    from .hub import HubOptions
    from .search.fanout import RayFanout

    return RayFanout(address, score, hub=HubOptions.from_env())


def _evaluator(args: argparse.Namespace):
    from .merge.engine import pick_device
    from .recipe.request import EvalSpec
    from .search.evaluate import evaluator_for

    pick_device(args.device)  # before any candidate runs: a wrong device is not a score
    spec = EvalSpec(args.eval, text_field=args.text_field, max_documents=args.max_documents, max_length=args.max_length)
    return evaluator_for(spec, device=args.device)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .search.evaluate import card_eval_results, smoke_test, write_card_results

    evaluator = _evaluator(args)
    result = evaluator.evaluate(args.model)
    print(f"perplexity {result.perplexity:.4f} on {evaluator.texts.name} "
          f"({result.documents} documents, {result.tokens} tokens scored)")
    smoke = smoke_test(args.model, args.prompt, device=args.device)
    print(f"generation{' (chat template)' if smoke.chat_template else ''}: {smoke.prompt!r} -> {smoke.output!r}")
    for problem in smoke.problems:
        print(f"problem: {problem}", file=sys.stderr)
    if args.card:
        readme = Path(args.model) / "README.md"
        write_card_results(readme, Path(args.model).name,
                           card_eval_results(result.perplexity, evaluator.texts.describe()))
        print(f"wrote eval_results into {readme}")
    return 0 if smoke.ok else 1


def cmd_soup(args: argparse.Namespace) -> int:
    from .search.soup import greedy_soup

    score = _evaluator(args)
    result = greedy_soup(args.candidates, score, Path(args.out), work_dir=args.work_dir, device=args.device,
                         report=print, fanout=_fanout(args, score))
    print(f"soup of {len(result.ingredients)}: {', '.join(result.ingredients)}; perplexity {result.score:.4f}")
    return 0


def cmd_evolve(args: argparse.Namespace) -> int:
    from .search import evolve

    out = Path(args.out)
    work = Path(args.work_dir) if args.work_dir else out.with_name(out.name + ".search")
    score = _evaluator(args)
    result = evolve.search(_recipe_text(args.template, "recipe template"), score, out, budget=args.budget,
                           work_dir=work, device=args.device, sigma=args.sigma, popsize=args.popsize,
                           seed=args.seed, report=print, fanout=_fanout(args, score))
    print(f"best perplexity {result.score:.4f}; wrote {result.folder} (search state kept in {work})")
    return 0


def cmd_extract_lora(args: argparse.Namespace) -> int:
    from .merge.engine import pick_device
    from .merge.lora_extract import extract
    from .recipe.refs import ModelRef
    from .sources import open_source

    base, model = open_source(ModelRef.parse(args.base)), open_source(ModelRef.parse(args.model))
    result = extract(base, model, args.rank, Path(args.out), device=pick_device(args.device))
    print(f"wrote {result.folder}: rank-{result.rank} LoRA for {result.modules} linear weights")
    if result.skipped:
        print(f"note: {len(result.skipped)} other tensors differ and are not in the adapter "
              f"(e.g. '{result.skipped[0]}'); LoRA carries linear weights only", file=sys.stderr)
    return 0


def _settings(args: argparse.Namespace, **overrides):
    """Settings from the environment, with the command's flags (those given) on top."""
    from .jobs.settings import Settings

    if getattr(args, "data", None):
        overrides["data_dir"] = args.data
    if getattr(args, "service", False):
        overrides["service"] = True
    return Settings.from_env(**{k: v for k, v in overrides.items() if v is not None})


def cmd_serve(args: argparse.Namespace) -> int:
    from .app.server import serve

    serve(_settings(args, host=args.host, port=args.port, worker_slots=args.workers, threads=args.threads,
                    ui=False if args.no_ui else None))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    import signal
    import threading

    from .jobs.store import Store, display_url
    from .jobs.supervisor import Supervisor

    settings = _settings(args, worker_slots=args.workers, threads=args.threads)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f"hubbot worker: {settings.worker_slots} slot(s), jobs from {display_url(settings.store_url)}", flush=True)
    Supervisor(settings, Store(settings.store_url)).run_forever(stop)
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from .jobs.service import Service

    service = Service(_settings(args))
    job = service.submit(_recipe_text(args.recipe), target=args.target, private=args.private, pr=args.pr)
    print(f"job {job.id}: {job.state}" + (f" (number {job.position} in the queue)" if job.position else ""))
    return _follow(service, job) if args.wait else 0


NO_WORKER_AFTER_S = 10.0  # a job still queued this long while nothing runs: no worker is serving the store


def _follow(service, job) -> int:
    """Print a job's log until it ends; say so if no worker seems to be running."""
    import time

    from .jobs.store import ACTIVE, FINAL, QUEUED

    since, started, warned = 0, time.monotonic(), False
    while True:
        lines = service.log(job.id, since)
        since += len(lines)
        for line in lines:
            print(line, flush=True)
        if job.state in FINAL:
            break
        if (not warned and job.state == QUEUED and time.monotonic() - started > NO_WORKER_AFTER_S
                and not any(service.store.counts().get(state) for state in ACTIVE)):
            warned = True
            print(f"no worker is running for {service.settings.data_dir}: start 'hubbot serve' or 'hubbot worker' "
                  "with the same --data (the job stays queued; Ctrl-C stops waiting, "
                  f"'hubbot jobs cancel {job.id}' drops it)", flush=True)
        time.sleep(1.0)
        job = service.get(job.id)
    result = job.result or {}
    print(f"job {job.id}: {job.state}" + (f": {job.error}" if job.error else "")
          + (f" -> {result.get('pr_url') or result.get('url') or result.get('folder')}" if result else ""))
    return 0 if job.state == "done" else 1


def cmd_jobs(args: argparse.Namespace) -> int:
    """`hubbot jobs [list | show ID | cancel ID]` on this machine's job store."""
    from .jobs.service import Service

    service = Service(_settings(args))
    if args.action == "list":
        jobs = service.list(limit=args.limit)
        if not jobs:
            print(f"no jobs in {service.settings.data_dir}")
        for j in jobs:
            where = j.target or (j.result or {}).get("folder") or "local folder"
            print(f"{j.id}  {j.state:<10}  {j.created_at:%Y-%m-%d %H:%M}  {where}")
        return 0
    if not args.job_id:
        raise HubbotError(f"hubbot jobs {args.action}: give the job id (see 'hubbot jobs')")
    if args.action == "cancel":
        job = service.cancel(args.job_id)
        print(f"job {job.id}: {job.state}")
        return 0
    job = service.get(args.job_id)
    result = job.result or {}
    print(f"job {job.id}: {job.state}" + (f" (number {job.position} in the queue)" if job.position else ""))
    print(f"target: {job.target or 'a local folder'}")
    if result:
        print(f"result: {result.get('pr_url') or result.get('url') or result.get('folder')}")
    if job.error:
        print(f"error: {job.error}")
    print(f"recipe:\n{job.recipe.rstrip()}\nlog:")
    for line in service.log(job.id):
        print(f"  {line}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hubbot", description="Merge LLM weights, locally or on the Hugging Face Hub.")
    parser.add_argument("--version", action="version", version=f"hubbot {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check a recipe and print the merge plan (reads headers, and a few rows "
                                        "of weights to recognise ternary models stored as floats)")
    p.add_argument("recipe", help="recipe YAML file, or - for standard input")
    p.set_defaults(func=cmd_validate)

    for name, kinds, help_text in (
        ("merge", ("merge", "moe"), "run a recipe (a merge or a mixture of experts) and write the merged model"),
        ("moe", ("moe",), "run a mixture-of-experts recipe (experts: ...) into a Mixtral or Qwen2-MoE model"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("recipe", help="recipe YAML file, or - for standard input")
        dest = p.add_mutually_exclusive_group(required=True)
        dest.add_argument("--out", help="output folder (must not exist or be empty)")
        dest.add_argument("--push", metavar="ORG/NAME",
                          help="publish to this Hub repo (token from HF_TOKEN or hf auth login)")
        p.add_argument("--private", action="store_true", help="with --push: create the repo private")
        p.add_argument("--pr", action="store_true", help="with --push: open a pull request on an existing repo")
        p.add_argument("--work-dir", default=None, help="with --push: where shards wait for upload (default: temp)")
        p.add_argument("--shard-size", type=_size_arg, default="5GB", help="largest shard, e.g. 2GB (default 5GB)")
        p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: CUDA when available)")
        p.add_argument("--threads", type=_threads_arg, default=None,
                       help="CPU threads for the kernels (default: the CPUs this process may use)")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
        p.add_argument("--on", choices=("local", "hf-jobs"), default="local",
                       help="where to merge: this machine (default), or a job on Hugging Face Jobs billed to your "
                            "account (needs --push; prints the job's log)")
        p.add_argument("--flavor", default=None,
                       help="with --on hf-jobs: the hardware, e.g. cpu-upgrade or a10g-small (default: the cheapest "
                            "allowed one with enough memory and disk)")
        p.set_defaults(func=cmd_merge, kinds=kinds)

    p = sub.add_parser("evaluate", help="perplexity on held-out texts and a generation smoke test")
    p.add_argument("model", help="model folder (or Hub id)")
    _add_eval_args(p)
    p.add_argument("--prompt", default="Write one sentence about the sea.", help="prompt for the generation test")
    p.add_argument("--card", action="store_true", help="write the perplexity into MODEL/README.md as eval_results")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("soup", help="greedy soup: average the candidates that lower the perplexity")
    p.add_argument("--candidates", nargs="+", required=True, metavar="MODEL", help="model folders or Hub ids")
    p.add_argument("--out", required=True, help="output folder for the soup")
    p.add_argument("--work-dir", default=None, help="where candidate soups are merged (default: a temporary folder)")
    p.add_argument("--ray", default=None, metavar="auto|ADDRESS",
                   help="merge and score candidates as tasks on a Ray cluster (auto: a running one, else a local one)")
    _add_eval_args(p)
    p.set_defaults(func=cmd_soup)

    p = sub.add_parser("evolve", help="search a recipe template's marked values with CMA-ES")
    p.add_argument("template", help="recipe with values such as weight: {search: [0, 1]}, or - for standard input")
    p.add_argument("--budget", type=int, required=True, help="number of candidate merges to evaluate")
    p.add_argument("--out", required=True, help="output folder for the best merge")
    p.add_argument("--work-dir", default=None,
                   help="search state and candidate merges (default OUT.search); rerun to resume")
    p.add_argument("--sigma", type=float, default=0.25, help="initial step size, as a fraction of each range")
    p.add_argument("--popsize", type=int, default=None, help="candidates per generation (default: CMA-ES's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the search (default 0)")
    p.add_argument("--ray", default=None, metavar="auto|ADDRESS",
                   help="merge and score candidates as tasks on a Ray cluster (auto: a running one, else a local one)")
    _add_eval_args(p)
    p.set_defaults(func=cmd_evolve)

    p = sub.add_parser("extract-lora", help="save the low-rank difference of a fine-tune from its base as a PEFT LoRA")
    p.add_argument("--base", required=True, help="the base model (local folder or org/name[@revision])")
    p.add_argument("--model", required=True, help="the fine-tune of that base")
    p.add_argument("--rank", type=int, required=True, help="LoRA rank r")
    p.add_argument("--out", required=True, help="output folder for adapter_config.json and adapter_model.safetensors")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N for the SVDs (default: CUDA when available)")
    p.set_defaults(func=cmd_extract_lora)

    def service_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data", default=None, help="data folder (default ./data, or $HUBBOT_DATA_DIR)")
        p.add_argument("--service", action="store_true", help="service mode: Hub sources only, results to the Hub")

    p = sub.add_parser("serve", help="run the web UI, the job API, webhooks, the scheduler and the workers")
    service_flags(p)
    p.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1; 0.0.0.0 in service mode)")
    p.add_argument("--port", type=int, default=None, help="port (default 7860)")
    p.add_argument("--workers", type=int, default=None, help="merges run at once (default 1)")
    p.add_argument("--threads", type=_threads_arg, default=None,
                   help="CPU threads per merge (default: the available CPUs shared among the workers)")
    p.add_argument("--no-ui", action="store_true", help="serve the API and webhooks without the web UI")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("worker", help="run queued jobs from the store (for running workers apart from the server)")
    service_flags(p)
    p.add_argument("--workers", type=int, default=None, help="merges run at once (default 1)")
    p.add_argument("--threads", type=_threads_arg, default=None,
                   help="CPU threads per merge (default: the available CPUs shared among the workers)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("submit", help="queue a recipe for 'hubbot serve' or 'hubbot worker' to run")
    service_flags(p)
    p.add_argument("recipe", help="recipe YAML file, or - for standard input")
    p.add_argument("--target", default=None, help="publish to this Hub repo (namespace/name); default: a local folder")
    p.add_argument("--private", action="store_true", help="create the target repo private")
    p.add_argument("--pr", action="store_true", help="open a pull request on the target instead of committing")
    p.add_argument("--wait", action="store_true", help="follow the job's log until it ends")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("jobs", help="list the queued and finished jobs, show one, or cancel one")
    service_flags(p)
    p.add_argument("action", nargs="?", choices=("list", "show", "cancel"), default="list",
                   help="list (default), show ID (details and log) or cancel ID")
    p.add_argument("job_id", nargs="?", help="the job id, for show and cancel")
    p.add_argument("--limit", type=int, default=50, help="with list: how many of the newest jobs (default 50)")
    p.set_defaults(func=cmd_jobs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    from .hub import quiet_duplicate_logs

    quiet_duplicate_logs()
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
