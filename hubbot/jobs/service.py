"""The job service: the one interface through which the UI, webhooks and the CLI ask for merges.

It checks and plans a recipe before anything is queued, deduplicates, enforces limits and
keeps users' tokens in memory only (never in the store or a log). Merges themselves run in
worker processes (hubbot.jobs.worker); nothing here imports the engine.

Every read and action names the caller as `owner`: a user name sees and acts on that owner's
records only (another owner's id answers JobNotFound, so ids reveal nothing); `None` is an
anonymous caller, who in service mode sees published public merges only and locally is the
machine's user; the default, `ANYONE`, is the service's own view (scheduler, webhooks, CLI).
"""

from __future__ import annotations

import logging
import re
import shutil
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.engine import RowMapping

from ..errors import (
    Conflict,
    Forbidden,
    HubbotError,
    HubUnavailable,
    JobNotFound,
    PlanError,
    RecipeError,
    RequestError,
    Unauthorized,
)
from ..hub import describe, is_repo_id
from ..recipe.refs import ModelRef
from ..redact import install_log_redaction, redact, redact_value, remember
from .hubapi import HubClient
from .planning import (
    dedup_key,
    estimate_seconds,
    folder_fingerprint,
    hub_options,
    parse_recipe,
    plan_problems,
    plan_recipe,
    source_problems,
    source_revisions,
    validate_plan,
)
from .remote import REMOTE_KEY, WAITING, cancel_unfollowed, placement, waits_for_owner
from .settings import Settings
from .states import WAITING_KEY
from .store import FINAL, QUEUED, Store, new_id, now

log = logging.getLogger("hubbot.jobs")

SHA = re.compile(r"^[0-9a-f]{40}$")
LOST_TOKEN = ("this job needed your sign-in token, which is kept only in memory and was lost when the "
              "service restarted; sign in and submit the recipe again")
SIGNED_IN_EVERY_S = 5.0  # how often one user's requests look for their jobs waiting since a restart
NO_PROGRESS = {"tensors_done": 0, "tensors_total": 0, "bytes_done": 0, "bytes_total": 0}


class _Anyone:
    """The `owner` of the service's own calls: every record, no ownership check."""

    def __repr__(self) -> str:
        return "ANYONE"


ANYONE: Any = _Anyone()
Owner = Any  # str (a user), None (anonymous) or ANYONE


@dataclass
class Job:
    id: str
    owner: str | None
    recipe: str
    recipe_hash: str
    target: str | None  # Hub repo id, or None = local folder
    options: dict  # private, pr, device, shard_bytes
    state: str  # queued|validating|running|publishing|done|failed|cancelled
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    progress: dict  # tensors_done, tensors_total, bytes_done, bytes_total
    result: dict | None  # url, commit, folder, pr_url (what applies)
    error: str | None
    position: int | None  # place in the queue while queued (1 = next)
    attempts: int


@dataclass
class Validation:
    ok: bool
    summary: str
    problems: list[str]
    warnings: list[str]
    models: list[dict]  # {"ref": str, "revision": str | None}
    output_bytes: int
    input_bytes: int
    peak_bytes: int
    est_seconds: float
    curves: dict[str, list[float]]  # plan.param_curves()


class Service:
    """Submit, inspect and cancel merge jobs; watch sources; schedule recipes."""

    def __init__(self, settings: Settings, *, hub: HubClient | None = None):
        self.settings = settings
        remember(settings.hub_token, settings.webhook_secret)
        install_log_redaction()
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(settings.store_url)
        self.hub = hub or HubClient(settings)
        self._tokens: dict[str, str] = {}
        self._tokens_lock = threading.Lock()
        self._signed_in_at: dict[str, float] = {}  # owner -> when `signed_in` last looked at their jobs

    # --- checking -------------------------------------------------------------------------

    def validate(self, recipe_text: str, *, token: str | None = None) -> Validation:
        """Parse and plan from headers; bad recipes come back as problems, never as exceptions.
        `token` lets a signed-in user's private sources be read."""
        remember(token)
        v = self._validate(recipe_text, token)
        return replace(v, summary=redact(v.summary), problems=redact_value(v.problems), warnings=redact_value(v.warnings))

    def _validate(self, recipe_text: str, token: str | None) -> Validation:
        try:
            recipe = parse_recipe(self.settings, recipe_text)
        except RecipeError as exc:
            return _invalid(str(exc), [*exc.problems, *source_problems(self.settings, recipe_text, token)], [])
        models = [{"ref": str(r), "revision": r.revision} for r in recipe.model_refs()]
        try:
            plan = validate_plan(self.settings, recipe, token)
        except PlanError as exc:
            return _invalid(str(exc), exc.problems, models)
        except HubbotError as exc:
            return _invalid(str(exc), [str(exc)], models)
        return Validation(
            ok=not plan.problems, summary=plan.summary(), problems=plan_problems(plan), warnings=list(plan.warnings),
            models=[{"ref": s.label, "revision": s.revision} for s in plan.models],
            output_bytes=plan.output_bytes, input_bytes=plan.input_bytes,
            peak_bytes=plan.peak_bytes(), est_seconds=estimate_seconds(plan), curves=plan.param_curves(),
        )

    def _check_target(self, target: str | None, token: str | None) -> str | None:
        """The target's form, and that some token could publish it (no Hub call)."""
        if target is None or not target.strip():
            if not self.settings.local:
                raise RequestError("this service publishes results to the Hub: give a target repo such as "
                                   "'your-name/merged-model'")
            return None
        target = target.strip()
        if not is_repo_id(target, namespaced=True):
            raise RequestError(f"target {target!r} is not a Hub model repo id; write it as 'namespace/name'")
        if hub_options(self.settings, token, write=True).token is None:
            if not self.settings.local:
                raise RequestError(f"sign in with your Hugging Face account to publish to {target}")
            raise RequestError(f"publishing to {target} needs a Hub token and this machine has none: set HF_TOKEN "
                               "or run 'hf auth login', or leave the target empty to keep the merge in a local folder")
        return target

    def _check_writable(self, target: str | None, token: str | None, pr: bool = False) -> None:
        """Refuse at submission a target the publishing token cannot write (asks the Hub who the
        token is; cached briefly). A pull request needs no write access to the namespace."""
        if target is None or pr:
            return
        publisher = hub_options(self.settings, token, write=True).token
        user, allowed = self.hub.namespaces(publisher)
        namespace = target.split("/")[0]
        if namespace not in allowed:
            whose = f"your account ({user})" if token else f"this service's account ({user})"
            raise Forbidden(f"target {target}: {whose} cannot write to '{namespace}'; publish to one of: "
                            + ", ".join(sorted(allowed)))

    # --- jobs -----------------------------------------------------------------------------

    def submit(self, recipe_text: str, *, owner: str | None = None, target: str | None = None,
               private: bool = False, pr: bool = False, token: str | None = None,
               notify: dict | None = None, flavor: str | None = None) -> Job:
        """Check, plan and queue a recipe; an identical live request returns the existing job.

        `flavor` runs it on Hugging Face Jobs on that hardware (one of `Settings.jobs_flavors`); without it,
        `Settings.backend` decides where it runs (hubbot.jobs.remote.placement).

        Raises RecipeError or PlanError for a recipe that cannot run (nothing is queued),
        RequestError for a bad target and LimitError when a queue limit is reached. `notify`
        names a discussion {"repo", "repo_type", "num"} to report the outcome to. Identical
        requests of different owners are different jobs.
        """
        self.signed_in(owner, token)
        target = self._check_target(target, token)
        recipe = parse_recipe(self.settings, recipe_text)
        self._check_writable(target, token, pr)
        plan = plan_recipe(self.settings, recipe, token)
        plan.raise_for_problems()
        sources = source_revisions(plan)
        values = {
            "id": new_id(), "owner": owner, "recipe": recipe_text, "recipe_hash": recipe.hash,
            "dedup_key": dedup_key(recipe.hash, sources, target), "target": target,
            "options": {"private": bool(private), "pr": bool(pr), "device": self.settings.device,
                        "shard_bytes": self.settings.shard_bytes,
                        **placement(self.settings, recipe, plan, target, flavor)},
            "sources": sources, "token_source": "user" if token else ("service" if target else None),
            "notify": notify,
        }
        row, duplicate = self.store.add_job(values, self.settings.limits, self._reusable)
        if duplicate:
            self.store.log(row["id"], "an identical request (same recipe, sources and target) got this job")
        else:
            if token:
                with self._tokens_lock:
                    self._tokens[row["id"]] = token
            self.store.log(row["id"], f"queued: {len(plan.tasks)} tensors from {len(plan.models)} models"
                           + (f", to publish to {target}" if target else ""))
        return self._job(row, self.store.queue())

    def _reusable(self, row: RowMapping) -> bool:
        """A finished local result counts only while its folder is still there."""
        if row["state"] == "done" and row["target"] is None:
            return Path((row["result"] or {}).get("folder", "")).is_dir()
        return True

    def get(self, job_id: str, owner: Owner = ANYONE) -> Job:
        """One job, if `owner` may see it (else JobNotFound, as for an id that does not exist)."""
        return self._job(self._row(job_id, owner, public_ok=True), self.store.queue())

    def _row(self, job_id: str, owner: Owner = ANYONE, *, public_ok: bool = False) -> RowMapping:
        row = self.store.get(job_id)
        if row is None or not self._sees(row, owner, public_ok):
            raise JobNotFound(f"there is no job {job_id!r}; check the id (it is shown when the job is "
                              "submitted and in your jobs list)")
        return row

    def _everything(self, owner: Owner) -> bool:
        """The service's own view, or the single user of a local machine."""
        return owner is ANYONE or (owner is None and self.settings.local)

    def _sees(self, row: RowMapping, owner: Owner, public_ok: bool) -> bool:
        if self._everything(owner) or (owner is not None and row["owner"] == owner):
            return True
        return public_ok and owner is None and _public(row)

    def list(self, owner: Owner = ANYONE, limit: int = 50) -> list[Job]:
        """Jobs `owner` may see, newest first: their own; for an anonymous caller in service
        mode, finished merges published to public repos."""
        queue = self.store.queue()
        if self._everything(owner):
            rows = self.store.list(None, limit)
        elif owner is None:
            rows = [r for r in self.store.list(None, limit * 10, states=("done",)) if _public(r)][:limit]
        else:
            rows = self.store.list(owner, limit)
        return [self._job(r, queue) for r in rows]

    def cancel(self, job_id: str, owner: Owner = ANYONE, token: str | None = None) -> Job:
        """Cancel a queued job at once, or stop a running one (its worker is told to stop).
        Only the owner's own jobs; a finished job raises Conflict.

        A job on Hugging Face Jobs that no follower follows (queued again, or waiting for its owner
        after a restart) has its remote job cancelled here, with the caller's `token` or the one the
        job runs with; without either it is refused (Unauthorized) rather than left running."""
        if owner is None and not self.settings.local:
            raise Unauthorized("sign in to cancel your jobs")
        row = self._row(job_id, owner)
        if row["state"] in FINAL:
            raise Conflict(f"job {job_id} has already ended ({row['state']}); there is nothing to cancel")
        remote_token = None
        if waits_for_owner(row) or (row["progress"] or {}).get(REMOTE_KEY):
            remote_token = token or self._run_token(row)
            if remote_token is None:
                raise Unauthorized(f"job {job_id} runs on Hugging Face Jobs with your token, which this service "
                                   "no longer holds; sign in again to cancel it")
        if self.store.cancel(job_id):
            with self._tokens_lock:
                self._tokens.pop(job_id, None)
            if remote_token is not None:
                self._cancel_remote(row, remote_token)
        return self.get(job_id)

    def _run_token(self, row: RowMapping) -> str | None:
        """The token a job runs with: its user's (if held here), or the one it publishes with."""
        if row["token_source"] == "user":
            return self.token_for(row["id"])
        return hub_options(self.settings, None, write=True).token

    def _cancel_remote(self, row: RowMapping, token: str) -> None:
        """A cancelled job's remote job, which no follower follows, is cancelled too."""
        try:
            remote = cancel_unfollowed(self.settings, row["id"], row["progress"] or {}, token)
        except Exception as exc:
            where = (row["progress"] or {}).get(REMOTE_KEY, {}).get("url", "its Hugging Face Jobs page")
            why = redact(describe(exc, "Hugging Face Jobs") if hasattr(exc, "response") else str(exc))
            self.store.log(row["id"], f"could not cancel its Hugging Face job ({why}); cancel it at {where}")
            raise HubUnavailable(f"job {row['id']} is cancelled, but its Hugging Face job could not be ({why}); "
                                 f"cancel it at {where}") from None
        if remote is not None:
            self.store.log(row["id"], f"cancelled its Hugging Face job {remote.id}")

    def log(self, job_id: str, since: int = 0, owner: Owner = ANYONE) -> list[str]:
        """Log lines from line `since` on, each "HH:MM:SS text" (UTC); only the owner's jobs."""
        self._row(job_id, owner)
        return [f"{at:%H:%M:%S} {text}" for at, text in self.store.log_lines(job_id, since)]

    def job_url(self, job_id: str) -> str:
        return f"{self.settings.public_url}/api/jobs/{job_id}"

    def _job(self, row: RowMapping, queue: list[str]) -> Job:
        return Job(
            id=row["id"], owner=row["owner"], recipe=row["recipe"], recipe_hash=row["recipe_hash"],
            target=row["target"], options=dict(row["options"]), state=row["state"],
            created_at=row["created_at"], started_at=row["started_at"], finished_at=row["finished_at"],
            progress={**NO_PROGRESS, **(row["progress"] or {})}, result=row["result"], error=row["error"],
            position=(queue.index(row["id"]) + 1 if row["state"] == QUEUED and row["id"] in queue
                      and not (row["progress"] or {}).get(WAITING_KEY) else None),
            attempts=row["attempts"],
        )

    # --- watches and schedules ------------------------------------------------------------

    def watch(self, recipe_text: str, *, owner: str | None, target: str | None, pr: bool = False,
              private: bool = False, token: str | None = None) -> dict:
        """Run a recipe now and again whenever one of its sources gets a new commit.

        The first run may use `token`; later runs happen without the user, so they publish with
        the service's token (a new commit where it may write, else ask for `pr=True`). The same
        watch asked for twice is the one watch (returned with `"existing": True`); a recipe whose
        sources are all pinned to commits has nothing to follow and is refused.
        """
        if target is not None and not self.settings.local and self.settings.hub_token is None:
            raise RequestError("this service has no Hub token of its own, so it cannot publish re-runs; "
                               "set HF_TOKEN for the service to enable watches")
        target = self._check_target(target, token)
        same = (owner, recipe_text, target, bool(pr), bool(private))
        for w in self.store.watches(owner):
            if (w["owner"], w["recipe"], w["target"], w["pr"], w["private"]) == same:
                return {**_watch_dict(w), "existing": True}
        refs = parse_recipe(self.settings, recipe_text).model_refs()
        if all(not r.local and r.revision and SHA.match(r.revision) for r in refs):
            raise RequestError("every source of this recipe is pinned to a commit, so a watch would never run "
                               "again; name a branch (org/name or org/name@branch) to follow")
        self._check_writable(target, None, pr)  # re-runs publish with the service's token
        first = self.submit(recipe_text, owner=owner, target=target, private=private, pr=pr, token=token)
        sources = {s["ref"]: s["revision"] for s in self.store.get(first.id)["sources"]}
        row = self.store.add_watch({"owner": owner, "recipe": recipe_text, "target": first.target, "pr": bool(pr),
                                    "private": bool(private), "sources": sources, "last_job_id": first.id})
        return _watch_dict(row)

    def watches(self, owner: Owner = ANYONE) -> list[dict]:
        return [_watch_dict(w) for w in self._records(self.store.watches(), owner)]

    def unwatch(self, watch_id: str, owner: Owner = ANYONE) -> dict:
        """Stop a watch of `owner`'s (another owner's id answers JobNotFound)."""
        w = self._record(self.store.watches(), watch_id, owner, "watch")
        self.store.update_watch(watch_id, active=False)
        return {**_watch_dict(w), "active": False}

    def _records(self, rows: list[RowMapping], owner: Owner) -> list[RowMapping]:
        """Watches or schedules `owner` may see: their own (anonymous callers in service mode: none)."""
        if self._everything(owner):
            return rows
        return [r for r in rows if owner is not None and r["owner"] == owner]

    def _record(self, rows: list[RowMapping], record_id: str, owner: Owner, kind: str) -> RowMapping:
        found = next((r for r in self._records(rows, owner) if r["id"] == record_id), None)
        if found is None:
            raise JobNotFound(f"there is no {kind} {record_id!r}; check the id in your list of {kind}es")
        return found

    def schedule(self, recipe_text: str, cron: str, *, owner: str | None, target: str | None, pr: bool = False,
                 private: bool = False) -> dict:
        """Run a recipe on a cron schedule ("minute hour day month weekday", UTC) with the
        service's token. The recipe and the target are checked now."""
        trigger = cron_trigger(cron)
        target = self._check_target(target, None)
        recipe = parse_recipe(self.settings, recipe_text)
        self._check_writable(target, None, pr)
        plan_recipe(self.settings, recipe).raise_for_problems()
        row = self.store.add_schedule({"owner": owner, "recipe": recipe_text, "cron": cron.strip(), "target": target,
                                       "pr": bool(pr), "private": bool(private)})
        return {**_schedule_dict(row), "next_run": trigger.get_next_fire_time(None, now())}

    def schedules(self, owner: Owner = ANYONE) -> list[dict]:
        return [_schedule_dict(s) for s in self._records(self.store.schedules(), owner)]

    def unschedule(self, schedule_id: str, owner: Owner = ANYONE) -> dict:
        """Stop a schedule of `owner`'s (another owner's id answers JobNotFound)."""
        row = self._record(self.store.schedules(), schedule_id, owner, "schedule")
        self.store.update_schedule(schedule_id, active=False)  # its next firing finds it inactive and does nothing
        return {**_schedule_dict(row), "active": False}

    def run_schedule(self, schedule_id: str) -> Job | None:
        """One firing of a cron schedule (called by the scheduler)."""
        row = self.store.get_schedule(schedule_id)
        if row is None or not row["active"]:
            return None
        job = self._submit_quietly(f"schedule {schedule_id} ({row['cron']})", row["recipe"], owner=row["owner"],
                                   target=row["target"], private=row["private"], pr=row["pr"])
        if job is not None:
            self.store.update_schedule(schedule_id, last_job_id=job.id)
        return job

    def watches_for(self, repo_id: str, updated: list[tuple[str, str | None]]) -> list[str]:
        """Watches to re-run after a push to `repo_id`; `updated` holds (ref, new sha) pairs
        from the webhook. A watch follows its source's branch (main unless the recipe names
        one); sources pinned to a commit never change."""
        hits = []
        for w in self.store.watches():
            for label, merged in w["sources"].items():
                ref = ModelRef.parse(label)
                branch = ref.revision or "main"
                if ref.path != repo_id or SHA.match(branch):
                    continue
                news = [sha for name, sha in updated if name in (f"refs/heads/{branch}", branch)]
                if updated and not news:
                    continue
                if news and all(sha == merged for sha in news):
                    continue
                hits.append(w["id"])
                break
        return hits

    def rerun_watch(self, watch_id: str, reason: str) -> Job | None:
        """Submit a watch's recipe again; dedup makes this a no-op when nothing changed."""
        w = next((w for w in self.store.watches() if w["id"] == watch_id), None)
        if w is None:
            return None
        job = self._submit_quietly(f"watch {watch_id}: {reason}", w["recipe"], owner=w["owner"], target=w["target"],
                                   private=w["private"], pr=w["pr"])
        if job is not None:
            sources = {s["ref"]: s["revision"] for s in self.store.get(job.id)["sources"]}
            self.store.update_watch(watch_id, sources=sources, last_job_id=job.id)
        return job

    def poll_watches(self) -> list[Job]:
        """The fallback to webhooks: compare each watched source's head with the merged one."""
        jobs = []
        for w in self.store.watches():
            try:
                changed = [label for label, merged in w["sources"].items() if self._head(label) not in (None, merged)]
            except Exception as exc:  # a source that cannot be reached now is checked again next time
                log.warning("watch %s: could not check its sources: %s", w["id"], exc)
                continue
            if changed:
                job = self.rerun_watch(w["id"], "new commits on " + ", ".join(changed))
                if job is not None:
                    jobs.append(job)
        return jobs

    def _head(self, label: str) -> str | None:
        ref = ModelRef.parse(label)
        if ref.local:
            return folder_fingerprint(Path(ref.path).expanduser().resolve()) if self.settings.local else None
        if ref.revision and SHA.match(ref.revision):
            return None
        return self.hub.head(ref.path, ref.revision)

    def _submit_quietly(self, trigger: str, recipe_text: str, **kw: Any) -> Job | None:
        """Submit on behalf of a trigger: problems are logged, not raised."""
        try:
            job = self.submit(recipe_text, **kw)
        except HubbotError as exc:
            log.warning("%s: not run: %s", trigger, exc)
            return None
        self.store.log(job.id, f"requested by {trigger}")
        return job

    # --- for the scheduler and the webhooks -------------------------------------------------

    def signed_in(self, owner: str | None, token: str | None) -> list[str]:
        """A request of `owner` that carries their token (an API call, the UI's OAuth session, a
        submission). Their jobs that wait for them since a restart (on Hugging Face Jobs, whose
        token this process lost) get it, in memory only, so a follower attaches to their remote
        jobs again. Returns those jobs' ids."""
        remember(token)
        if not token or (owner is None and not self.settings.local):
            return []
        now = time.monotonic()
        with self._tokens_lock:  # a page or a client makes many requests: look at each user's jobs once a while
            if now - self._signed_in_at.get(owner or "", -SIGNED_IN_EVERY_S) < SIGNED_IN_EVERY_S:
                return []
            self._signed_in_at[owner or ""] = now
        held = self.held_tokens()
        waiting = [r["id"] for r in self.store.list(owner, limit=1000, states=(QUEUED,))
                   if r["token_source"] == "user" and (r["progress"] or {}).get(WAITING_KEY) and r["id"] not in held]
        with self._tokens_lock:
            for job_id in waiting:
                self._tokens[job_id] = token
        for job_id in waiting:
            self.store.log(job_id, "its owner signed in again; following its Hugging Face job again")
        return waiting

    def token_for(self, job_id: str) -> str | None:
        with self._tokens_lock:
            return self._tokens.get(job_id)

    def held_tokens(self) -> set[str]:
        with self._tokens_lock:
            return set(self._tokens)

    def forget_finished_tokens(self) -> None:
        for job_id in self.held_tokens():
            row = self.store.get(job_id)
            if row is None or row["state"] in FINAL:
                with self._tokens_lock:
                    self._tokens.pop(job_id, None)

    def fail_lost_tokens(self) -> list[str]:
        """At start-up: jobs needing a user token that a previous process held cannot run, except jobs on
        Hugging Face Jobs, which wait for their owner to sign in again. Returns the failed jobs' ids."""
        return settle_lost_tokens(self.store, self.held_tokens())

    def pending_reports(self) -> list[tuple[Job, dict]]:
        """Finished jobs whose outcome is still to be posted, with where to post it."""
        return [(self._job(r, []), r["notify"]) for r in self.store.unnotified()]

    def mark_reported(self, job_id: str) -> None:
        self.store.mark_notified(job_id)

    def housekeeping(self) -> dict[str, int]:
        """Drop old logs, work folders of published or failed jobs, and stale temporary and
        cache files. Local results (no target) are the user's output and are kept."""
        s = self.settings
        t = now()
        old = self.store.finished_before(t - timedelta(days=s.keep_logs_days))
        pruned = self.store.prune_logs(r["id"] for r in old)
        removed = 0
        for r in self.store.finished_before(t - timedelta(days=s.keep_outputs_days)):
            folder = s.jobs_dir / r["id"]
            if (r["target"] is not None or r["state"] != "done") and folder.exists():
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
        files = _prune_tree(s.tmp_dir, s.keep_tmp_hours * 3600) + _prune_tree(s.data_dir / "cache",
                                                                               s.keep_outputs_days * 86400)
        return {"log_lines": pruned, "job_folders": removed, "files": files}

    def close(self) -> None:
        self.store.close()


def settle_lost_tokens(store: Store, held: set[str], *, lapsed_only: bool = False) -> list[str]:
    """Jobs whose user token nobody holds (Store.settle_unheld): those on Hugging Face Jobs wait
    for their owner (`WAITING`), the others fail (`LOST_TOKEN`). Returns the failed jobs' ids."""
    return store.settle_unheld(held, lost=LOST_TOKEN, waits=lambda row: WAITING if waits_for_owner(row) else None,
                               lapsed_only=lapsed_only)


def cron_trigger(cron: str):
    from apscheduler.triggers.cron import CronTrigger

    try:
        return CronTrigger.from_crontab(cron.strip(), timezone="UTC")
    except ValueError as exc:
        raise RequestError(f"cron {cron!r} is not a schedule ({exc}); write five fields 'minute hour day month "
                           "weekday', e.g. '0 3 * * 1' for Mondays at 03:00 UTC") from None


def _public(row: RowMapping) -> bool:
    """What anyone may see: a finished merge published to a public repo (its card shows the same)."""
    return row["state"] == "done" and row["target"] is not None and not (row["options"] or {}).get("private")


def _invalid(summary: str, problems: list[str], models: list[dict]) -> Validation:
    return Validation(ok=False, summary=summary, problems=list(problems), warnings=[], models=models,
                      output_bytes=0, input_bytes=0, peak_bytes=0, est_seconds=0.0, curves={})


def _watch_dict(row: RowMapping) -> dict:
    return {k: row[k] for k in ("id", "owner", "target", "pr", "private", "sources", "created_at", "last_job_id")}


def _schedule_dict(row: RowMapping) -> dict:
    return {k: row[k] for k in ("id", "owner", "cron", "target", "pr", "private", "created_at", "last_job_id")}


def _prune_tree(folder: Path, max_age_s: float) -> int:
    """Remove files not modified for `max_age_s` seconds, then empty folders; returns files removed."""
    if not folder.is_dir():
        return 0
    cutoff = time.time() - max_age_s
    removed = 0
    for p in sorted(folder.rglob("*"), reverse=True):
        try:
            if p.is_file() and p.stat().st_mtime < cutoff:
                p.unlink()
                removed += 1
            elif p.is_dir() and not any(p.iterdir()):
                p.rmdir()
        except OSError:
            continue
    return removed
