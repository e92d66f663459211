"""Merges on Hugging Face Jobs: where a job runs, the remote command, and the local process that follows it.

A job placed on Jobs (`Settings.backend`, or a flavour the user picked) runs `python -m hubbot.jobs.remote --job ID`
instead of the worker; the supervisor starts, reaps and stops it exactly like a worker (the same start message
on stdin, SIGTERM to cancel, exit when stdin closes). It starts the remote job, `hubbot merge - --push TARGET`
with hubbot installed at this version, billed to the namespace of the token it runs with (the user's when they
signed in). The token travels as the job's `HF_TOKEN` secret only: never in the command, the job's environment
or a log. The remote log is copied into the job's log (lines prefixed `LOG_PREFIX`), its progress lines become
the job's progress, a cancel cancels the remote job, and its "published" line gives the result.

The remote job's id is stored in the job's progress (`REMOTE_KEY`) as soon as it exists, so a follower started
after a restart attaches to it again (replaying its log to recover the progress) instead of merging twice. A
follower that died between starting the remote job and storing its id leaves it labelled `LABEL=<job id>`: the
next follower finds it by that label rather than start a second one. A job that runs with its user's token,
which the service keeps in memory only, waits after a restart (`WAITING`) until its owner's next signed-in
request hands the token back (`Service.signed_in`); then a follower attaches to it the same way.
"""

from __future__ import annotations

import os
import queue
import re
import shlex
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable

from .. import __version__
from ..errors import HubbotError, RequestError
from .states import WAITING_KEY

if TYPE_CHECKING:
    from ..merge.plan import Plan
    from ..recipe.kinds import Parsed
    from .settings import Settings
    from .store import Store

BACKEND = "hf-jobs"
REMOTE_KEY = "remote"  # in a job's progress: {"id", "namespace", "flavor", "url"} of its job on Hugging Face Jobs
WAITING = "running on Hugging Face Jobs; sign in again to follow it"
LABEL = "hubbot-job"  # the remote job's label naming the service's job: finds a remote job whose id was not stored
LOG_PREFIX = "remote| "
IMAGE = "ghcr.io/astral-sh/uv:python3.12-bookworm"  # Debian with Python and uv (huggingface_hub's uv image)
DEFAULT_ENDPOINT = "https://huggingface.co"
MAX_RECIPE_BYTES = 100_000  # the recipe travels in an environment variable; Linux caps one at 128 KiB
RUNTIME_BYTES = 3 * 1000**3  # memory for Python, torch and the Hub client, on top of the tensors in flight
INSTALL_BYTES = 10 * 1000**3  # disk for the installed packages (torch with CUDA is most of it)
GPU_AFTER_S = 1800.0  # merges estimated longer than this prefer a GPU flavour
TIMEOUT_MIN_S = 3600  # the remote job's time limit: at least this, else four times the estimate plus set-up
PROGRESS_EVERY_S = 5.0  # `hubbot merge` without a terminal prints a progress line this often
LOCAL_SHARE = 0.7  # `auto`: a merge whose peak memory exceeds this share of this machine's RAM goes remote
POLL_S = 1.0
TERMINAL = ("COMPLETED", "CANCELED", "ERROR", "DELETED")

_PROGRESS = re.compile(r"progress (\d+)/(\d+) tensors (\d+)/(\d+) bytes")
_PUBLISHED = re.compile(r"published (\S+) at (\S+) \(commit ([0-9a-f]+)\)")
_SIZE = re.compile(r"([\d.]+)\s*([KMGT]i?B)", re.IGNORECASE)
_UNITS = {"kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "kib": 2.0**10, "mib": 2.0**20, "gib": 2.0**30, "tib": 2.0**40}


# --- progress lines: what `hubbot merge` prints and the follower reads ------------------------------------------

def progress_line(p: Any) -> str:
    """One engine progress report as a line of text (the remote log carries it back)."""
    return f"progress {p.tensors_done}/{p.tensors_total} tensors {p.bytes_done}/{p.bytes_total} bytes"


def parse_progress(line: str) -> dict | None:
    m = _PROGRESS.fullmatch(line.strip())
    if m is None:
        return None
    keys = ("tensors_done", "tensors_total", "bytes_done", "bytes_total")
    return dict(zip(keys, map(int, m.groups())))


class ProgressLines:
    """The engine's progress callback for a merge without a terminal: a line now and then, and at the end."""

    def __init__(self, out=None, every: float = PROGRESS_EVERY_S):
        self.out, self.every, self.sent = out, every, -every

    def __call__(self, p: Any) -> None:
        t = time.monotonic()
        if t - self.sent >= self.every or p.tensors_done >= p.tensors_total:
            self.sent = t
            print(progress_line(p), file=self.out or sys.stderr, flush=True)


# --- placement: which backend, which flavour ----------------------------------------------------------------------

@dataclass(frozen=True)
class Need:
    """What a merge needs of a machine: memory, disk and (roughly) time."""

    memory: int
    disk: int
    seconds: float


def need_of(plan: Plan, shard_bytes: int) -> Need:
    """Memory for the tensors in flight plus the runtime. Disk for the install, two shards (one being uploaded
    while the next is written: publishing deletes each shard once it is uploaded) and the Hub range cache (which
    keeps up to `HubOptions.cache_bytes` of what is read)."""
    from ..hub import HubOptions
    from .planning import estimate_seconds

    cache = min(HubOptions().cache_bytes, plan.input_bytes)
    return Need(memory=plan.peak_bytes() + RUNTIME_BYTES,
                disk=INSTALL_BYTES + 2 * min(shard_bytes, max(plan.output_bytes, 1)) + cache,
                seconds=estimate_seconds(plan))


def local_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def exceeds_local(plan: Plan) -> bool:
    """`auto`: whether this machine is too small for the merge."""
    return plan.peak_bytes() + RUNTIME_BYTES > LOCAL_SHARE * local_memory_bytes()


def remote_obstacle(parsed: Parsed, plan: Plan, target: str | None) -> str | None:
    """Why a job cannot run on Hugging Face Jobs, or None."""
    from ..recipe.request import SearchRequest
    from ..sources import LocalSource

    if target is None:
        return "a job on Hugging Face Jobs publishes its result to the Hub; give a target repo"
    if isinstance(parsed, SearchRequest):
        return "soups and merge searches run on this service's own workers"
    local = [s.label for s in plan.models if isinstance(s, LocalSource)]
    if local:
        return (f"the recipe reads local folders ({', '.join(local)}), which a job on Hugging Face Jobs cannot see; "
                "upload them to the Hub and name the repos instead")
    if len(parsed.text.encode()) > MAX_RECIPE_BYTES:
        return f"the recipe is longer than {MAX_RECIPE_BYTES} bytes, the most a job on Hugging Face Jobs is given"
    return None


def placement(settings: Settings, parsed: Parsed, plan: Plan, target: str | None, flavor: str | None = None) -> dict:
    """The job options that send a job to Hugging Face Jobs ({"backend", "flavor"}), or {} for a local worker.

    A flavour the user picked must be one the service allows, and the job must be able to run remotely
    (RequestError otherwise); without one, `Settings.backend` decides and jobs that cannot run remotely stay here.
    """
    if flavor is not None and flavor.strip():
        flavor = flavor.strip()
        if flavor not in settings.jobs_flavors:
            raise RequestError(f"flavor {flavor!r} is not offered by this service; choose one of "
                               f"{', '.join(settings.jobs_flavors)}")
        if (why := remote_obstacle(parsed, plan, target)) is not None:
            raise RequestError(f"cannot run on Hugging Face Jobs ({flavor}): {why}")
        return {"backend": BACKEND, "flavor": flavor}
    wanted = settings.backend == BACKEND or (settings.backend == "auto" and exceeds_local(plan))
    if wanted and remote_obstacle(parsed, plan, target) is None:
        return {"backend": BACKEND, "flavor": None}
    return {}


def worker_module(row: Any) -> str:
    """The module the supervisor runs for a claimed job: this one for jobs on Hugging Face Jobs."""
    return "hubbot.jobs.remote" if (row["options"] or {}).get("backend") == BACKEND else "hubbot.jobs.worker"


def waits_for_owner(row: Any) -> bool:
    """Whether a job whose user's token was lost (a restart) waits for them to sign in again instead of failing:
    it runs on Hugging Face Jobs and was claimed before, so its remote job may be running."""
    return (row["token_source"] == "user" and (row["options"] or {}).get("backend") == BACKEND
            and (bool((row["progress"] or {}).get(REMOTE_KEY)) or row["started_at"] is not None))


def cancel_unfollowed(settings: Settings, job_id: str, progress: dict, token: str) -> RemoteJob | None:
    """Cancel the remote job of a job that no follower follows (stored in `progress`, or found by its label);
    returns it, or None if the job has none."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=settings.hub_endpoint, token=token)
    stored = progress.get(REMOTE_KEY)
    remote = RemoteJob.from_dict(api, stored) if stored else RemoteJob.find(api, job_id)
    if remote is not None and remote.info().status.stage not in TERMINAL:
        remote.cancel()
    return remote


def _bytes(text: str | None) -> float | None:
    m = _SIZE.search(text or "")
    return float(m.group(1)) * _UNITS[m.group(2).lower()] if m else None


def choose_flavor(hardware: Iterable[Any], allowed: Iterable[str], need: Need) -> str:
    """The cheapest allowed flavour with the memory and disk `need` asks for; a GPU one for long merges.
    `hardware` is `HfApi.list_jobs_hardware()`."""
    offered = {hw.name: hw for hw in hardware}
    allowed = [name for name in allowed if name in offered]
    fits = [offered[name] for name in allowed
            if (_bytes(offered[name].ram) or 0) >= need.memory
            and (_bytes(offered[name].ephemeral_storage) or float("inf")) >= need.disk]
    if not fits:
        raise RequestError(f"no Hugging Face Jobs flavour allowed here has {need.memory / 1e9:.0f} GB of memory and "
                           f"{need.disk / 1e9:.0f} GB of disk for this merge "
                           f"(allowed: {', '.join(allowed) or 'none'}); allow a larger flavour (HUBBOT_JOBS_FLAVORS)")
    gpus = [hw for hw in fits if hw.accelerator is not None]
    pool = gpus if need.seconds > GPU_AFTER_S and gpus else fits
    return min(pool, key=lambda hw: hw.unit_cost_micro_usd).name


# --- the remote job -------------------------------------------------------------------------------------------

def job_spec(*, recipe: str, target: str, private: bool, pr: bool, shard_bytes: int, endpoint: str,
             package: str | None, need: Need, label: str) -> dict:
    """`HfApi.run_job` arguments (but flavour and secrets): install hubbot at this version, pipe the recipe
    (from the environment) into `hubbot merge - --push TARGET`."""
    package = package or f"hubbot[moe]=={__version__}"
    args = ["hubbot", "merge", "-", "--push", target, "--shard-size", str(shard_bytes)]
    args += ["--private"] if private else []
    args += ["--pr"] if pr else []
    script = f'printf "%s" "$HUBBOT_RECIPE" | uv tool run --from {shlex.quote(package)} {shlex.join(args)}'
    env = {"HUBBOT_RECIPE": recipe}
    if endpoint.rstrip("/") != DEFAULT_ENDPOINT:
        env["HF_ENDPOINT"] = endpoint
    return {"image": IMAGE, "command": ["sh", "-c", script], "env": env, "labels": {LABEL: label},
            "timeout": int(max(TIMEOUT_MIN_S, 4 * need.seconds + 1800))}


class RemoteJob:
    """One job on Hugging Face Jobs, seen through the Hub client."""

    def __init__(self, api: Any, id: str, namespace: str, url: str, flavor: str):
        self.api, self.id, self.namespace, self.url, self.flavor = api, id, namespace, url, flavor

    @classmethod
    def start(cls, api: Any, spec: dict, flavor: str, token: str) -> "RemoteJob":
        info = api.run_job(**spec, flavor=flavor, secrets={"HF_TOKEN": token}, name="hubbot-merge")
        return cls(api, info.id, info.owner.name, info.url, flavor)

    @classmethod
    def find(cls, api: Any, label: str) -> "RemoteJob | None":
        """The newest job of the token's namespace labelled `LABEL=label`, whatever its stage."""
        namespace = api.whoami()["name"]  # list_jobs would ask with the machine's login, not `api`'s token
        found = [info for info in api.list_jobs(labels={LABEL: label}, namespace=namespace)
                 if (info.labels or {}).get(LABEL) == label]
        if not found:
            return None
        info = max(found, key=lambda i: i.created_at.timestamp() if i.created_at else 0.0)
        return cls(api, info.id, info.owner.name, info.url, info.flavor)

    @classmethod
    def from_dict(cls, api: Any, data: dict) -> "RemoteJob":
        return cls(api, data["id"], data["namespace"], data["url"], data["flavor"])

    def as_dict(self) -> dict:
        return {"id": self.id, "namespace": self.namespace, "url": self.url, "flavor": self.flavor}

    def info(self) -> Any:
        return self.api.inspect_job(job_id=self.id, namespace=self.namespace)

    def cancel(self) -> None:
        self.api.cancel_job(job_id=self.id, namespace=self.namespace)

    def wait(self) -> Any:
        """The final `JobInfo`, once the job has ended."""
        while (info := self.info()).status.stage not in TERMINAL:
            time.sleep(POLL_S)
        return info

    def watch(self, on_line: Callable[[str], None], cancel: threading.Event) -> Any:
        """Pass each log line (from the first) to `on_line` until the job ends, cancelling it once `cancel` is
        set; returns its final `JobInfo`. The log streams on a thread so that a cancel is seen at once."""
        lines: queue.Queue = queue.Queue()
        end = object()

        def stream() -> None:
            try:
                for line in self.api.fetch_job_logs(job_id=self.id, namespace=self.namespace, follow=True):
                    lines.put(line)
            except Exception as exc:  # the stage decides the outcome; the log is best effort
                lines.put(exc)
            lines.put(end)

        threading.Thread(target=stream, name=f"hubbot-remote-{self.id}", daemon=True).start()
        cancelled = False
        while True:
            if cancel.is_set() and not cancelled:
                cancelled = True
                self.cancel()
            try:
                item = lines.get(timeout=POLL_S)
            except queue.Empty:
                continue
            if item is end:
                return self.wait()
            if isinstance(item, Exception):
                on_line(f"(the log stream broke: {type(item).__name__}: {item}; following the job's state)")
            else:
                on_line(item)


def published(lines: Iterable[str]) -> tuple[str, str, str] | None:
    """(repo, url, short commit) from the remote `hubbot merge --push`'s last line, if it got there."""
    found = None
    for line in lines:
        if (m := _PUBLISHED.search(line)) is not None:
            found = m.groups()
    return found


def result_of(api: Any, target: str, where: str, short: str) -> dict:
    """The job's result as a local publishing job gives it: repo url, full commit sha, pull request url."""
    num = re.search(r"/discussions/(\d+)$", where)
    revision = f"refs/pr/{num.group(1)}" if num else "main"
    commit = next((c.commit_id for c in api.list_repo_commits(target, revision=revision)
                   if c.commit_id.startswith(short)), short)
    result = {"url": f"{api.endpoint}/{target}", "commit": commit}
    if num:
        result["pr_url"] = where
    return result


def failure_of(info: Any, lines: list[str]) -> str:
    """Why a remote job failed: hubbot's own error line when it printed one, else the job's status."""
    errors = [line[len("error: "):] for line in lines if line.startswith("error: ")]
    why = errors[-1] if errors else (info.status.message or f"it ended in stage {info.status.stage}")
    return f"the Hugging Face job {info.id} failed: {why}"


# --- the service's follower process ---------------------------------------------------------------------------

def follow(settings: Settings, store: Store, job_id: str, claim: str, *, token: str | None = None,
           cancel: threading.Event | None = None) -> str:
    """Run a claimed job on Hugging Face Jobs (or attach to the one it already has: stored, or found by its
    label) and follow it to its end; returns the job's state ("lost" if it was taken from this run)."""
    from huggingface_hub import HfApi

    from ..hub import describe
    from .planning import hub_options, parse_recipe, plan_recipe
    from .worker import REPORT_EVERY_S, _Log, is_transient

    row = store.get(job_id)
    if row is None or row["claim"] != claim:
        return "lost"
    cancel = cancel or threading.Event()
    say = _Log(store, job_id, token)
    opts = row["options"]
    progress = dict(row["progress"] or {})
    progress.pop(WAITING_KEY, None)  # this run has the token it waited for
    hub = hub_options(settings, token, write=True)
    api = HfApi(endpoint=settings.hub_endpoint, token=hub.token or False)
    remote: RemoteJob | None = None
    try:
        if not hub.token:
            raise RequestError("running on Hugging Face Jobs needs a Hub token: sign in, or set HF_TOKEN")
        if progress.get(REMOTE_KEY):
            remote = RemoteJob.from_dict(api, progress[REMOTE_KEY])
            say(f"attaching again to Hugging Face job {remote.id} ({remote.info().status.stage}): {remote.url}")
        elif (remote := RemoteJob.find(api, job_id)) is not None:  # its follower died before storing the id
            progress[REMOTE_KEY] = remote.as_dict()
            if not store.report(job_id, claim, progress, settings.lease_seconds):
                return _lost(store, job_id, remote)
            say(f"found Hugging Face job {remote.id} ({remote.info().status.stage}), started for this job before an "
                f"interruption; following it instead of starting another: {remote.url}")
        else:
            plan = plan_recipe(settings, parse_recipe(settings, row["recipe"]), token)
            plan.raise_for_problems()
            need = need_of(plan, opts["shard_bytes"])
            flavor = opts.get("flavor") or choose_flavor(api.list_jobs_hardware(), settings.jobs_flavors, need)
            spec = job_spec(recipe=row["recipe"], target=row["target"], private=opts["private"], pr=opts["pr"],
                            shard_bytes=opts["shard_bytes"], endpoint=settings.hub_endpoint,
                            package=settings.jobs_package, need=need, label=job_id)
            remote = RemoteJob.start(api, spec, flavor, hub.token)
            progress[REMOTE_KEY] = remote.as_dict()
            if not store.report(job_id, claim, progress, settings.lease_seconds):
                return _lost(store, job_id, remote)
            say(f"started Hugging Face job {remote.id} on {flavor} (estimated {need.seconds:.0f} s of merging): "
                f"{remote.url}")
        if not store.advance(job_id, claim, "running", progress=progress):
            return _lost(store, job_id, remote)
        seen = sum(1 for _, text in store.log_lines(job_id) if text.startswith(LOG_PREFIX))
        lines: list[str] = []
        sent = [0.0]

        def on_line(line: str) -> None:
            lines.append(line)
            if len(lines) > seen:  # lines replayed after attaching again are in the log already
                say(LOG_PREFIX + line)
            p = parse_progress(line)
            if p is None:
                return
            progress.update(p)
            done = p["tensors_done"] >= p["tensors_total"]
            if time.monotonic() - sent[0] >= REPORT_EVERY_S or done:
                sent[0] = time.monotonic()
                if not store.report(job_id, claim, progress, settings.lease_seconds):
                    raise _Lost  # taken by another run (which attaches to the remote job), or cancelled
                if done:
                    store.advance(job_id, claim, "publishing")

        try:
            info = remote.watch(on_line, cancel)
        except _Lost:
            return _lost(store, job_id, remote)
        stage = info.status.stage
        if stage == "COMPLETED" and (pub := published(lines)) is not None:
            result = result_of(api, row["target"], pub[1], pub[2])
            progress.update(tensors_done=progress.get("tensors_total", 0), bytes_done=progress.get("bytes_total", 0))
            if not store.advance(job_id, claim, "done", result=result, progress=progress):
                return _lost(store, job_id, remote)
            say(f"done: {result.get('pr_url') or result['url']} (commit {result['commit'][:12]})")
            return "done"
        if stage == "CANCELED":
            why = "cancelled on request" if cancel.is_set() else "its Hugging Face job was cancelled on the Hub"
            if store.advance(job_id, claim, "cancelled", error=why):
                say("cancelled" if cancel.is_set() else f"cancelled: {why}")
                return "cancelled"
            return "lost"
        message = say.redact(failure_of(info, lines) if stage != "COMPLETED"
                             else f"the Hugging Face job {info.id} ended without publishing; see its log above")
        if store.advance(job_id, claim, "failed", error=message):
            say(f"failed: {message}")
            return "failed"
        return "lost"
    except Exception as exc:
        if is_transient(exc):  # the remote job (if any) goes on; the next attempt attaches to it again
            wait = settings.retry_seconds * 2 ** max(0, row["attempts"] - 1)
            state = store.release(job_id, claim, max_attempts=settings.max_attempts, retry_after=wait,
                                  why=say.redact(f"temporary error ({exc}); retrying in {wait:.0f} s"))
            return state or "lost"
        if isinstance(exc, HubbotError):
            message = str(exc)
        elif hasattr(exc, "response"):
            message = describe(exc, "Hugging Face Jobs")
        else:
            traceback.print_exc()  # into the job's worker.log
            message = f"internal error ({type(exc).__name__}: {exc}); please report it with the recipe"
        message = say.redact(message)
        if remote is not None:
            _cancel_quietly(remote)
        if store.advance(job_id, claim, "failed", error=message):
            say(f"failed: {message}")
            return "failed"
        return "lost"


class _Lost(Exception):
    """The job was taken from this run while it followed the remote job."""


def _lost(store: Store, job_id: str, remote: RemoteJob) -> str:
    """The job is no longer this run's: if it was cancelled meanwhile, so is its remote job."""
    row = store.get(job_id)
    if row is not None and row["state"] == "cancelled":
        _cancel_quietly(remote)
    return "lost"


def _cancel_quietly(remote: RemoteJob) -> None:
    try:
        if remote.info().status.stage not in TERMINAL:
            remote.cancel()
    except Exception:
        pass  # best effort: the remote job ends at its time limit anyway


def main(argv: list[str] | None = None) -> None:
    """`python -m hubbot.jobs.remote --job ID`: the worker's protocol, following a job on Hugging
    Face Jobs instead of merging here."""
    from .worker import serve_claim

    serve_claim(argv, "python -m hubbot.jobs.remote", "Follow one claimed job on Hugging Face Jobs.",
                lambda settings, store, job_id, claim, token, cancel:
                follow(settings, store, job_id, claim, token=token, cancel=cancel))


# --- the command line: `hubbot merge --on hf-jobs` -------------------------------------------------------------

def run_from_cli(plan: Plan, *, target: str, private: bool, pr: bool, shard_bytes: int, flavor: str | None,
                 echo: Callable[[str], None] = print) -> int:
    """Start the merge on Hugging Face Jobs with this machine's token, print its log as it comes, and return
    0 once it has published; Ctrl-C cancels the remote job."""
    from ..hub import HubError, HubOptions
    from .settings import Settings

    opts = HubOptions.from_env()
    if not opts.token:
        raise HubError("running on Hugging Face Jobs needs a Hub token: set HF_TOKEN or run 'hf auth login'")
    if (why := remote_obstacle(plan.recipe, plan, target)) is not None:
        raise RequestError(f"cannot run on Hugging Face Jobs: {why}")
    settings = Settings.from_env()
    api = opts.api()
    need = need_of(plan, shard_bytes)
    flavor = flavor or choose_flavor(api.list_jobs_hardware(), settings.jobs_flavors, need)
    spec = job_spec(recipe=plan.recipe.text, target=target, private=private, pr=pr, shard_bytes=shard_bytes,
                    endpoint=api.endpoint, package=settings.jobs_package, need=need, label="cli")
    remote = RemoteJob.start(api, spec, flavor, opts.token)
    echo(f"started Hugging Face job {remote.id} on {flavor}: {remote.url}")
    lines: list[str] = []

    def on_line(line: str) -> None:
        lines.append(line)
        echo(line)

    try:
        info = remote.watch(on_line, threading.Event())
    except KeyboardInterrupt:
        echo(f"cancelling Hugging Face job {remote.id}")
        remote.cancel()
        info = remote.wait()
    stage = info.status.stage
    if stage == "COMPLETED" and published(lines):
        return 0
    echo(failure_of(info, lines) if stage != "CANCELED" else f"Hugging Face job {remote.id} was cancelled")
    return 1 if stage != "CANCELED" else 130


if __name__ == "__main__":
    main()
