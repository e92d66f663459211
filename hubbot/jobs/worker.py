"""One job's run, inside its own worker process: parse, plan, (search,) merge (and publish).

The supervisor starts `python -m hubbot.jobs.worker --job ID` and writes one JSON line to its
stdin: the settings, the claim under which the job is held and the user's token if the job
has one (never argv or the environment). It keeps stdin open for the life of the run: when
the supervisor dies the pipe closes and the worker exits, so no orphan keeps merging. SIGTERM
asks the merge to stop (cancel). A crash, an out-of-memory kill or a CUDA error ends this
process only; the supervisor sees it and re-queues or fails the job.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import threading
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from ..errors import Cancelled, HubbotError, TransientError
from ..hub import RETRY_STATUSES, HubOptions, transport_errors
from ..merge.card import write_card
from ..merge.engine import settle_imports
from ..merge.run import MergeOptions, merge_to_folder
from ..merge.threads import use_threads
from ..recipe.request import SearchRequest
from ..redact import remember
from ..search.history import FILE_NAME as HISTORY_FILE
from ..search.history import SearchProgress
from ..search.requests import run_request
from ..sizes import human_bytes
from ..sources import caching_opener
from .planning import hub_options, parse_recipe, plan_with, run_key, source_revisions
from .settings import Settings
from .store import Store

TEST_DELAY_ENV = "HUBBOT_TEST_TENSOR_DELAY"  # seconds to sleep per tensor: lets tests stop a merge midway
KEY_FILE = "run-key"
WINNER_KEY_FILE = "winner-key"  # a soup's or search's winner: its merge resumes only if it is the same
REPORT_EVERY_S = 0.5
EXIT_ORPHANED = 75


def run_job(settings: Settings, store: Store, job_id: str, claim: str, *, token: str | None = None,
            cancel: threading.Event | None = None) -> str:
    """Run a job held under `claim` to its end and return its state ("lost" if the job was
    taken from this run meanwhile, e.g. after its lease lapsed)."""
    row = store.get(job_id)
    if row is None or row["claim"] != claim:
        return "lost"
    cancel = cancel or threading.Event()
    say = _Log(store, job_id, token)
    work = settings.jobs_dir / job_id
    work.mkdir(parents=True, exist_ok=True)
    try:
        parsed = parse_recipe(settings, row["recipe"])
        options = _merge_options(row["options"])
        hub = hub_options(settings, token)
        plan = plan_with(settings, parsed, hub, options.device)
        plan.raise_for_problems()
        sources = source_revisions(plan)
        moved = [f"{now['ref']} ({then['revision']} -> {now['revision']})"
                 for then, now in zip(row["sources"], sources) if then != now]
        if moved:
            say("sources changed since submission, merging their current revisions: " + ", ".join(moved))
        _start_or_resume(work, run_key(plan, sources, options.shard_bytes), say)
        if not store.advance(job_id, claim, "running"):
            return "lost"
        annotate = None
        if isinstance(parsed, SearchRequest):
            plan, annotate = _search(settings, store, job_id, claim, parsed, work, hub, options, cancel, say)
        report = _Reporter(store, job_id, claim, settings.lease_seconds, cancel)
        if row["target"]:
            report.on_complete = lambda: store.advance(job_id, claim, "publishing")
            result = _publish(settings, plan, work, row, token, options, report, cancel, say, annotate)
        else:
            result = _merge_local(plan, work / "out", options, report, cancel, say, annotate)
        total = {"tensors_done": len(plan.tasks), "tensors_total": len(plan.tasks),
                 "bytes_done": plan.output_bytes, "bytes_total": plan.output_bytes}
        if not store.advance(job_id, claim, "done", result=result, progress=total):
            return "lost"
        say("done")
        return "done"
    except Cancelled:
        if store.advance(job_id, claim, "cancelled", error="cancelled on request"):
            say("cancelled")
            return "cancelled"
        return "lost"
    except Exception as exc:
        if is_transient(exc):
            wait = settings.retry_seconds * 2 ** max(0, row["attempts"] - 1)
            state = store.release(job_id, claim, max_attempts=settings.max_attempts, retry_after=wait,
                                  why=say.redact(f"temporary error ({exc}); retrying in {wait:.0f} s"))
            return state or "lost"
        if isinstance(exc, HubbotError):
            message = say.redact(str(exc))
        else:
            traceback.print_exc()  # into the job's worker.log
            message = say.redact(f"internal error ({type(exc).__name__}: {exc}); please report it with the recipe")
        if store.advance(job_id, claim, "failed", error=message):
            say(f"failed: {message}")
            return "failed"
        return "lost"


def _start_or_resume(work: Path, key: str, say: Callable[[str], None], key_name: str = KEY_FILE,
                     outputs: tuple[str, ...] = ("out", "out.partial", "hub", "search")) -> None:
    """Keep an interrupted run's files (`outputs`) only if they come from the very same plan."""
    key_file = work / key_name
    if key_file.exists() and key_file.read_text() != key:
        say("the sources or settings changed since the interrupted run; starting over")
        for name in outputs:
            shutil.rmtree(work / name, ignore_errors=True)
    key_file.write_text(key)


def _merge_options(options: dict) -> MergeOptions:
    """How a job's merge runs (fixed at submission); a job always resumes what it can."""
    return MergeOptions(device=options.get("device"), shard_bytes=options["shard_bytes"], resume=True)


def _search(settings: Settings, store: Store, job_id: str, claim: str, request: SearchRequest, work: Path,
            hub: HubOptions, options: MergeOptions, cancel: threading.Event, say: Callable[[str], None]) -> tuple:
    """Cook a soup or run a search (each evaluation goes to the log, the best recipe so far to
    the job's progress); returns the winner's plan and what adds its history to the output."""
    what = (f"greedy soup of {len(request.candidates)} candidates" if request.kind == "soup"
            else f"merge search, {request.budget} evaluations")
    say(f"{what}, scored by {request.eval.data}; candidate merges stay in this job's folder")

    def report(p: SearchProgress) -> None:
        say(str(p))
        if not store.report(job_id, claim, p.as_progress(), settings.lease_seconds):
            cancel.set()

    text, history = run_request(request, work_dir=work / "search", opener=caching_opener(allow_local=settings.local, hub=hub),
                                device=options.device, hub=hub, report=report, cancel=cancel,
                                ray=settings.ray_address)
    say(f"winner ({history.metric} {history.best.score:.4g}):\n{text}")
    plan = plan_with(settings, parse_recipe(settings, text), hub, options.device)
    plan.raise_for_problems()
    _start_or_resume(work, run_key(plan, source_revisions(plan), options.shard_bytes), say,
                     WINNER_KEY_FILE, ("out", "out.partial", "hub"))
    return plan, history.annotate


def _merge_local(plan, out: Path, options: MergeOptions, report: "_Reporter", cancel: threading.Event,
                 say: Callable[[str], None], annotate: Callable[[Path], None] | None = None) -> dict:
    if out.is_dir() and any(out.iterdir()):  # the engine renames <out>.partial into place only when complete
        say("the merge had completed before the interruption; keeping its output")
        if not (out / "README.md").exists():
            write_card(plan, out, None)
        if annotate and not (out / HISTORY_FILE).exists():
            annotate(out)
        return {"folder": str(out)}
    say(f"merging {len(plan.tasks)} tensors")
    res = merge_to_folder(plan, out, options, annotate, progress=report, cancel=cancel)
    shards = sum(1 for f in res.files if f.suffix == ".safetensors")
    kept = f", {res.resumed_shards} kept from the interrupted run" if res.resumed_shards else ""
    say(f"merged: {res.tensors} tensors, {human_bytes(res.bytes_written)} in {shards} shards{kept}, "
        f"{res.seconds:.1f} s on {res.device}")
    return {"folder": str(out)}


def _publish(settings: Settings, plan, work: Path, row, token: str | None, options: MergeOptions,
             report: "_Reporter", cancel: threading.Event, say: Callable[[str], None],
             annotate: Callable[[Path], None] | None = None) -> dict:
    from ..merge.publish import merge_and_push

    say(f"merging and publishing to {row['target']}" + (" as a pull request" if row["options"]["pr"] else ""))
    pub = merge_and_push(plan, work / "hub", row["target"], hub_options(settings, token, write=True),
                         options=options, private=row["options"]["private"], create_pr=row["options"]["pr"],
                         progress=report, cancel=cancel, annotate=annotate)
    say(f"published {pub.run.tensors} tensors, {human_bytes(pub.run.bytes_written)}: {pub.pr_url or pub.url} "
        f"(commit {pub.commit[:12]})")
    return {k: v for k, v in pub.as_dict().items() if v is not None}


class _Reporter:
    """The engine's progress callback: stores progress (at most every REPORT_EVERY_S), which
    also extends the job's lease, and stops the merge if the job is no longer this run's."""

    def __init__(self, store: Store, job_id: str, claim: str, lease_s: float, cancel: threading.Event):
        self.store, self.job_id, self.claim, self.lease_s, self.cancel = store, job_id, claim, lease_s, cancel
        self.delay = float(os.environ.get(TEST_DELAY_ENV) or 0)
        self.sent = 0.0
        self.last: dict | None = None
        self.on_complete: Callable[[], object] | None = None

    def __call__(self, p) -> None:
        if self.delay:
            time.sleep(self.delay)
        self.last = asdict(p)
        complete = p.tensors_done >= p.tensors_total
        t = time.monotonic()
        if t - self.sent >= REPORT_EVERY_S or complete:
            self.sent = t
            if not self.store.report(self.job_id, self.claim, self.last, self.lease_s):
                self.cancel.set()
        if complete and self.on_complete is not None:
            self.on_complete()
            self.on_complete = None


class _Log:
    """Appends lines to the job's log, with the user's token blanked out if it ever appears."""

    def __init__(self, store: Store, job_id: str, token: str | None):
        self.store, self.job_id, self.token = store, job_id, token

    def redact(self, text: str) -> str:
        return text.replace(self.token, "***") if self.token else text

    def __call__(self, text: str) -> None:
        self.store.log(self.job_id, self.redact(text))


def is_transient(exc: BaseException) -> bool:
    """Network trouble or a Hub 408/429/5xx anywhere in the exception chain, or a TransientError
    (the Hub client's retries ran out): worth running the job again later."""
    network = transport_errors()
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (TransientError, *network)):
            return True
        if getattr(getattr(e, "response", None), "status_code", None) in RETRY_STATUSES:
            return True
        e = e.__cause__ or e.__context__
    return False


def _exit_when_orphaned() -> None:
    """Block on stdin; EOF means the supervisor is gone, so stop at once (its lease lapses and
    another supervisor resumes the job)."""
    sys.stdin.buffer.read()
    os._exit(EXIT_ORPHANED)


Run = Callable[[Settings, Store, str, str, "str | None", threading.Event], str]


def serve_claim(argv: list[str] | None, prog: str, description: str, run: Run) -> None:
    """The protocol every job process speaks (this worker, and the follower of a job on Hugging Face
    Jobs): read the start message from stdin, redact its tokens from everything stored, stop on
    SIGTERM, exit when the supervisor goes, then `run(settings, store, job, claim, token, cancel)`."""
    parser = argparse.ArgumentParser(prog=prog, description=f"{description} Started by the supervisor, which sends "
                                                            "the settings, the claim and any token as one JSON line "
                                                            "on stdin.")
    parser.add_argument("--job", required=True, help="the job id")
    args = parser.parse_args(argv)
    line = sys.stdin.readline()
    if not line.strip():
        sys.exit(f"no start message on stdin; {prog} is started by 'hubbot serve' or 'hubbot worker'")
    msg = json.loads(line)
    settings = Settings.from_dict(msg["settings"])
    remember(msg.get("token"), settings.hub_token)  # every text this process stores is redacted of them
    cancel = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: cancel.set())
    threading.Thread(target=_exit_when_orphaned, name="hubbot-lifeline", daemon=True).start()
    store = Store(settings.store_url)
    state = run(settings, store, args.job, msg["claim"], msg.get("token"), cancel)
    store.close()
    print(f"job {args.job}: {state}", flush=True)
    os._exit(0)  # everything is committed; skip the interpreter teardown (torch's takes over a second)


def _merge_here(settings: Settings, store: Store, job_id: str, claim: str, token: str | None,
                cancel: threading.Event) -> str:
    use_threads(settings.threads, settings.worker_slots)
    settle_imports()
    return run_job(settings, store, job_id, claim, token=token, cancel=cancel)


def main(argv: list[str] | None = None) -> None:
    serve_claim(argv, "python -m hubbot.jobs.worker", "Run one claimed job.", _merge_here)


if __name__ == "__main__":
    main()
