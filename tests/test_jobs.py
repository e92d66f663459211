"""The job service: submission checks, dedup, limits, concurrency, cancel, retries, tokens,
watches, schedules and housekeeping. Merges run in real worker processes where it matters."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy import text, update

from hubbot.errors import HubbotError, JobNotFound, LimitError, RecipeError, RequestError
from hubbot.jobs import store as store_mod
from hubbot.jobs import worker
from hubbot.jobs.service import LOST_TOKEN, Service
from hubbot.jobs.settings import Limits, Settings
from hubbot.jobs.states import FINAL, STATES
from hubbot.jobs.store import new_id, now
from hubbot.jobs.supervisor import Supervisor
from tests.jobkit import change_weights, copy_family, linear, make_settings, ties, wait_for
from tests.models import load_state


@pytest.fixture
def svc(tmp_path):
    service = Service(make_settings(tmp_path))
    yield service
    service.close()


def run_all(service: Service, timeout: float = 90.0) -> None:
    """Run the queue to the end with a supervisor in this process (workers are subprocesses)."""
    sup = Supervisor(service.settings, service.store, tokens=service.token_for, held=service.held_tokens)
    try:
        def idle() -> bool:
            sup.tick()
            return not sup.runs and not service.store.queue()

        wait_for(idle, timeout, every=0.2, what="the queue to drain")
    finally:
        sup.stop()


# --- submission ------------------------------------------------------------------------------

def test_submit_plans_queues_dedups_and_runs(families, svc):
    base, ft1, ft2 = families("llama")
    recipe = linear(ft1, ft2, 0.3)
    v = svc.validate(recipe)
    assert v.ok and not v.problems and v.output_bytes > 0 and v.est_seconds >= 0
    assert [m["ref"] for m in v.models] == [str(ft1), str(ft2)]

    job = svc.submit(recipe)
    assert job.state == "queued" and job.position == 1 and job.attempts == 0 and job.target is None
    other = svc.submit(linear(ft1, ft2, 0.7))
    assert other.id != job.id and other.position == 2
    assert svc.submit(recipe).id == job.id, "the same recipe and sources are one job"
    assert [j.id for j in svc.list()] == [other.id, job.id], "newest first"

    run_all(svc)
    done = svc.get(job.id)
    assert done.state == "done" and done.attempts == 1 and done.error is None
    assert done.progress["tensors_done"] == done.progress["tensors_total"] > 0
    out = load_state(done.result["folder"])
    a, b = load_state(ft1), load_state(ft2)
    name = next(iter(a))
    expected = (0.3 * a[name].float() + 0.7 * b[name].float()).to(a[name].dtype)
    assert (out[name].float() - expected.float()).abs().max() < 1e-2
    assert any("merged:" in line for line in svc.log(job.id))
    assert svc.submit(recipe).id == job.id, "a finished local result is reused while its folder exists"


@pytest.mark.parametrize("case", ["yaml", "unknown_field", "oversized", "local_in_service", "no_method"])
def test_bad_recipes_are_refused_with_clear_errors(families, tmp_path, case):
    base, ft1, ft2 = families("llama")
    settings = make_settings(tmp_path, limits=Limits(recipe_bytes=2000))
    recipe, expect = {
        "yaml": ("merge_method: linear\nmodels: [\n  - model: a\n", "not valid YAML at line"),
        "unknown_field": (linear(ft1, ft2).replace("merge_method", "merge_metod"), "did you mean 'merge_method'"),
        "oversized": (linear(ft1, ft2) + "#" * 3000 + "\n", "accepts recipes up to 2000 bytes"),
        "local_in_service": (linear("./models/a", "org/b"), "is a local path"),
        "no_method": ("models:\n  - model: org/a\n", "merge_method: missing"),
    }[case]
    if case == "local_in_service":
        settings = make_settings(tmp_path, service=True)
    service = Service(settings)
    with pytest.raises(RecipeError) as err:
        service.submit(recipe, target="me/merged", token="hf_user")
    assert expect in str(err.value)
    v = service.validate(recipe)
    assert not v.ok and any(expect in p for p in v.problems)
    assert service.list() == [], "an invalid recipe is never queued"


def test_plan_problems_and_requests_are_refused(families, svc):
    base, ft1, ft2 = families("llama")
    gpt = families("gpt2")[1]
    from hubbot.errors import PlanError

    with pytest.raises(PlanError, match="architectures|layers|lacks tensors"):
        svc.submit(linear(ft1, gpt))
    with pytest.raises(PlanError, match="no such folder"):
        svc.submit(linear(ft1, ft1.parent / "missing"))
    with pytest.raises(RequestError, match="namespace/name"):
        svc.submit(linear(ft1, ft2), target="not a repo")
    with pytest.raises(RequestError, match="cron"):
        svc.schedule(linear(ft1, ft2), "every day", owner=None, target=None)
    with pytest.raises(JobNotFound, match="there is no job 'nope'"):
        svc.get("nope")
    for call in (svc.cancel, svc.log):
        with pytest.raises(JobNotFound):
            call("nope")
    assert svc.list() == []


def test_service_mode_needs_a_target_and_a_token(families, tmp_path):
    service = Service(make_settings(tmp_path, service=True))
    hub_recipe = linear("org/a", "org/b")
    with pytest.raises(RequestError, match="give a target repo"):
        service.submit(hub_recipe)
    with pytest.raises(RequestError, match="sign in"):
        service.submit(hub_recipe, target="me/merged")


def test_limits(families, tmp_path):
    base, ft1, ft2 = families("llama")
    service = Service(make_settings(tmp_path, limits=Limits(queued_per_owner=2, queue=3)))
    service.submit(linear(ft1, ft2, 0.1), owner="ann")
    service.submit(linear(ft1, ft2, 0.2), owner="ann")
    with pytest.raises(LimitError, match="you already have 2 jobs waiting"):
        service.submit(linear(ft1, ft2, 0.3), owner="ann")
    assert service.submit(linear(ft1, ft2, 0.1), owner="ann").state == "queued", "a duplicate is not a new job"
    bob = service.submit(linear(ft1, ft2, 0.3), owner="bob")
    with pytest.raises(LimitError, match="the queue is full"):
        service.submit(linear(ft1, ft2, 0.4), owner="cy")
    assert len(service.list()) == 3
    # One running job per owner: ann's second job waits while bob's goes ahead.
    first = service.store.claim(new_id(), 60, held_tokens=set(), running_per_owner=1)
    second = service.store.claim(new_id(), 60, held_tokens=set(), running_per_owner=1)
    assert first["owner"] == "ann" and second["id"] == bob.id
    assert service.store.claim(new_id(), 60, held_tokens=set(), running_per_owner=1) is None


def test_200_concurrent_submissions_all_accounted_and_claimed_once(families, tmp_path):
    """8 threads submit 200 requests (60 distinct recipes, with a queue cap of 50); then 6
    threads claim concurrently. Every request gets a job or a reason; each job runs once."""
    base, ft1, ft2 = families("llama")
    service = Service(make_settings(tmp_path, limits=Limits(queue=50)))
    requests = [linear(ft1, ft2, round(0.01 * (1 + i % 60), 2)) for i in range(200)]
    outcomes: list[tuple[str, str]] = []
    lock = threading.Lock()

    def submit(chunk: list[str]) -> None:
        for recipe in chunk:
            try:
                result = ("job", service.submit(recipe).id)
            except LimitError as exc:
                result = ("refused", str(exc))
            with lock:
                outcomes.append((recipe, *result))

    threads = [threading.Thread(target=submit, args=(requests[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert len(outcomes) == 200
    jobs = {j.id: j for j in service.list(limit=500)}
    assert len(jobs) == 50, "the queue cap holds under concurrency"
    by_recipe: dict[str, set[str]] = {}
    for recipe, kind, value in outcomes:
        if kind == "job":
            assert value in jobs
            by_recipe.setdefault(recipe, set()).add(value)
        else:
            assert "the queue is full" in value
    assert all(len(ids) == 1 for ids in by_recipe.values()), "one job per distinct recipe"
    assert {jobs[i].recipe for ids in by_recipe.values() for i in ids} == set(by_recipe)
    refused = {r for r, kind, _ in outcomes if kind == "refused"}
    assert not refused & set(by_recipe), "a recipe is either queued or refused, not both"

    claims: Counter[str] = Counter()

    def claim_loop() -> None:
        while True:
            row = service.store.claim(new_id(), 60, held_tokens=set(), running_per_owner=1)
            if row is None:
                return
            with lock:
                claims[row["id"]] += 1
            assert service.store.advance(row["id"], row["claim"], "done", result={"folder": "x"})

    threads = [threading.Thread(target=claim_loop) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(claims) == set(jobs) and set(claims.values()) == {1}, "every job claimed exactly once"
    assert all(j.state == "done" for j in service.list(limit=500))


# --- running -------------------------------------------------------------------------------

def test_cancel_queued_and_running(families, tmp_path, monkeypatch):
    base, ft1, ft2 = families("llama")
    monkeypatch.setenv(worker.TEST_DELAY_ENV, "0.2")
    service = Service(make_settings(tmp_path))
    running = service.submit(linear(ft1, ft2, 0.2), owner="ann")
    queued = service.submit(linear(ft1, ft2, 0.8), owner="bob")
    with pytest.raises(JobNotFound):  # another owner's job is not there for ann, not even as "forbidden"
        service.cancel(queued.id, owner="ann")
    assert service.cancel(queued.id, owner="bob").state == "cancelled"

    sup = Supervisor(service.settings, service.store)
    try:
        wait_for(lambda: (sup.tick(), service.get(running.id).progress["tensors_done"] > 2)[1], 60,
                 what="the merge to start")
        service.cancel(running.id)
        wait_for(lambda: (sup.tick(), service.get(running.id).state == "cancelled")[1], 30, what="the cancel")
    finally:
        sup.stop()
    job = service.get(running.id)
    assert job.error == "cancelled on request" and job.result is None
    assert service.get(queued.id).attempts == 0, "a job cancelled while queued never ran"


def claim(service: Service, job_id: str) -> str:
    row = service.store.claim(new_id(), 60, held_tokens=service.held_tokens(), running_per_owner=9)
    assert row is not None and row["id"] == job_id
    return row["claim"]


def test_transient_errors_retry_with_backoff_then_fail(families, tmp_path, monkeypatch):
    base, ft1, ft2 = families("llama")
    service = Service(make_settings(tmp_path, retry_seconds=30, max_attempts=2))
    job = service.submit(linear(ft1, ft2))

    def unreachable(*_a, **_k):
        raise ConnectionError("the Hub did not answer")

    monkeypatch.setattr(worker, "plan_with", unreachable)
    assert worker.run_job(service.settings, service.store, job.id, claim(service, job.id)) == "queued"
    row = service.store.get(job.id)
    assert row["not_before"] > now() + timedelta(seconds=20), "backoff before the retry"
    assert service.store.claim(new_id(), 60, held_tokens=set(), running_per_owner=9) is None
    with service.store.engine.begin() as c:
        c.execute(update(store_mod.jobs).values(not_before=None))
    assert worker.run_job(service.settings, service.store, job.id, claim(service, job.id)) == "failed"
    failed = service.get(job.id)
    assert "the Hub did not answer" in failed.error and "gave up after 2 attempts" in failed.error


def test_permanent_error_fails_with_an_actionable_message(families, tmp_path):
    base, ft1, ft2 = copy_family(families("llama"), tmp_path / "models")
    service = Service(make_settings(tmp_path))
    job = service.submit(linear(ft1, ft2))
    for f in ft2.iterdir():
        f.unlink()
    ft2.rmdir()
    assert worker.run_job(service.settings, service.store, job.id, claim(service, job.id)) == "failed"
    failed = service.get(job.id)
    assert "no such folder" in failed.error and "check the path" in failed.error
    assert failed.attempts == 1, "a permanent error is not retried"


def test_user_tokens_stay_in_memory_and_a_restart_fails_their_jobs(families, tmp_path):
    base, ft1, ft2 = families("llama")
    settings = make_settings(tmp_path)
    service = Service(settings)
    secret = "hf_" + "S3cr3t" * 6
    job = service.submit(linear(ft1, ft2), token=secret)
    assert service.token_for(job.id) == secret
    with service.store.engine.begin() as c:
        dump = repr([c.execute(text(f"SELECT * FROM {t}")).all() for t in store_mod.metadata.tables])
    assert secret not in dump and secret not in repr(settings)
    # Another process (no tokens) may not run it; after a restart nobody can.
    assert service.store.claim(new_id(), 60, held_tokens=set(), running_per_owner=9) is None
    restarted = Service(settings)
    assert restarted.fail_lost_tokens() == [job.id]
    assert restarted.get(job.id).error == LOST_TOKEN


# --- watches, schedules, housekeeping --------------------------------------------------------

def test_watch_polling_reruns_when_a_source_changes(families, tmp_path):
    base, ft1, ft2 = copy_family(families("llama"), tmp_path / "models")
    service = Service(make_settings(tmp_path))
    w = service.watch(linear(ft1, ft2), owner=None, target=None)
    assert set(w["sources"]) == {str(ft1), str(ft2)} and w["last_job_id"]
    assert service.poll_watches() == [], "nothing changed"
    change_weights(ft2, seed=1)
    rerun = service.poll_watches()
    assert len(rerun) == 1 and rerun[0].id != w["last_job_id"] and rerun[0].state == "queued"
    assert any("new commits on" in line for line in service.log(rerun[0].id))
    assert service.poll_watches() == [], "the watch now knows the new revision"
    assert service.watches()[0]["last_job_id"] == rerun[0].id


def test_schedules_run_their_recipe(families, svc):
    base, ft1, ft2 = families("llama")
    s = svc.schedule(ties(base, ft1, ft2), "*/5 * * * *", owner="ann", target=None)
    assert s["next_run"] > now() and svc.schedules()[0]["id"] == s["id"]
    job = svc.run_schedule(s["id"])
    assert job is not None and job.state == "queued" and job.owner == "ann"
    assert svc.run_schedule(s["id"]).id == job.id, "an unchanged recipe is not merged twice"
    assert svc.schedules()[0]["last_job_id"] == job.id


def test_runtime_registers_its_jobs(families, tmp_path):
    from hubbot.jobs.scheduler import Runtime

    base, ft1, ft2 = families("llama")
    service = Service(make_settings(tmp_path))
    s = service.schedule(linear(ft1, ft2), "0 3 * * *", owner=None, target=None)
    rt = Runtime(service, workers=False)
    rt.start()
    try:
        ids = {j.id for j in rt.scheduler.get_jobs()}
        assert {"dispatch", "poll-watches", "housekeeping", f"schedule-{s['id']}"} <= ids
        later = service.schedule(linear(ft1, ft2, 0.2), "0 4 * * *", owner=None, target=None)
        rt.dispatch()  # the next tick picks it up from the store
        assert rt.scheduler.get_job(f"schedule-{later['id']}") is not None
    finally:
        rt.stop()
    again = Runtime(Service(make_settings(tmp_path)), workers=False)
    again.sync_schedules()
    assert {f"schedule-{s['id']}", f"schedule-{later['id']}"} <= {j.id for j in again.scheduler.get_jobs()}, \
        "kept in the database"


def test_housekeeping_removes_old_logs_and_files_but_keeps_local_results(families, tmp_path):
    base, ft1, ft2 = families("llama")
    service = Service(make_settings(tmp_path))
    kept, dropped = service.submit(linear(ft1, ft2, 0.1)), service.submit(linear(ft1, ft2, 0.9))
    long_ago = now() - timedelta(days=60)
    for job_id, state in ((kept.id, "done"), (dropped.id, "failed")):
        (service.settings.jobs_dir / job_id / "out").mkdir(parents=True)
        with service.store.engine.begin() as c:
            c.execute(update(store_mod.jobs).where(store_mod.jobs.c.id == job_id)
                      .values(state=state, finished_at=long_ago))
    old_tmp = service.settings.tmp_dir / "upload.part"
    old_tmp.parent.mkdir(parents=True)
    old_tmp.write_text("x")
    os.utime(old_tmp, (time.time() - 3 * 86400,) * 2)
    new_tmp = service.settings.tmp_dir / "fresh.part"
    new_tmp.write_text("y")

    report = service.housekeeping()
    assert report["job_folders"] == 1 and report["files"] == 1 and report["log_lines"] >= 2
    assert (service.settings.jobs_dir / kept.id / "out").exists(), "a local result is the user's output"
    assert not (service.settings.jobs_dir / dropped.id).exists()
    assert not old_tmp.exists() and new_tmp.exists()
    assert service.log(kept.id) == []


# --- settings ----------------------------------------------------------------------------------

def test_settings_from_env(tmp_path):
    s = Settings.from_env({"SPACE_ID": "org/hubbot", "SPACE_HOST": "org-hubbot.hf.space", "HF_TOKEN": "hf_x",
                           "HUBBOT_DATA_DIR": str(tmp_path), "HUBBOT_WORKERS": "2", "HUBBOT_MAX_QUEUE": "7"})
    assert s.mode == "service" and not s.local and s.host == "0.0.0.0" and s.worker_slots == 2
    assert s.limits.queue == 7 and s.store_url == f"sqlite:///{tmp_path / 'hubbot.db'}"
    assert s.public_url == "https://org-hubbot.hf.space" and s.bot_repo == "org/hubbot" and s.bot_namespace == "org"
    assert "hf_x" not in repr(s)
    assert Settings.from_dict(s.to_dict()) == s
    local = Settings.from_env({}, data_dir=tmp_path)
    assert local.mode == "local" and local.hub_endpoint == "https://huggingface.co" and local.worker_slots == 1
    assert Settings.from_env({}, data_dir=tmp_path, service=True).mode == "service"
    with pytest.raises(HubbotError, match="HUBBOT_WORKERS='two' is not a whole number"):
        Settings.from_env({"HUBBOT_WORKERS": "two"})
    with pytest.raises(HubbotError, match="HUBBOT_MODE='cloud' must be one of local, service"):
        Settings.from_env({"HUBBOT_MODE": "cloud"})


def test_states_are_the_documented_ones():
    assert STATES == ("queued", "validating", "running", "publishing", "done", "failed", "cancelled")
    assert FINAL == ("done", "failed", "cancelled")
