"""Merges on Hugging Face Jobs, against the Hub stand-in's Jobs API with the real huggingface_hub client.

The stand-in runs a job's command as a local subprocess; a `uv` on its PATH stands in for the installer
(`uv tool run --from hubbot==VERSION hubbot ...` runs this checkout's hubbot), so the remote merge really
happens and pushes to the stand-in. A canary token checks that no token reaches a log, a command, the
job's environment or anything the service stores.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from safetensors.torch import load

from hubbot import __version__
from hubbot.errors import HubbotError, RequestError, Unauthorized
from hubbot.jobs import remote
from hubbot.jobs import service as service_module
from hubbot.jobs.service import Service
from hubbot.jobs.settings import Settings
from hubbot.jobs.states import FINAL
from hubbot.jobs.supervisor import Supervisor
from tests.hub_fixtures import ALICE_TOKEN
from tests.jobkit import linear, make_settings, wait_for

ROOT = Path(__file__).resolve().parents[1]
CAROL, CANARY = "carol", "hf_canary_0123456789abcdef"
DELAY_ENV = "HUBBOT_TEST_JOB_DELAY"  # seconds the stand-in's `uv` waits before merging


@pytest.fixture
def jobs_hub(hub, tmp_path, families):
    """The Hub stand-in with carol (the canary token), alice's two fine-tunes and a `uv` for job commands."""
    hub.add_user(CAROL, CANARY)
    from huggingface_hub import HfApi

    alice = HfApi(token=ALICE_TOKEN)
    base, ft1, ft2 = families("llama")
    for folder, name in ((ft1, "alice/ft1"), (ft2, "alice/ft2")):
        alice.create_repo(name)
        alice.upload_folder(folder_path=str(folder), repo_id=name)
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "uv").write_text(f"""#!/bin/sh
# stands in for `uv tool run --from SPEC hubbot ARGS`: notes SPEC, runs this checkout's hubbot
[ "$1 $2 $3 $5" = "tool run --from hubbot" ] || {{ echo "unexpected uv call: $*" >&2; exit 64; }}
echo "$4" >> {shim / "specs"}
echo "installing $4"
shift 5
sleep "${{{DELAY_ENV}:-0}}"
exec {sys.executable} -m hubbot.cli "$@"
""")
    (shim / "uv").chmod(0o755)
    hub.jobs_path = [shim]
    yield hub
    hub.jobs_path = []


def service_settings(tmp_path: Path, hub, **overrides) -> Settings:
    overrides.setdefault("shard_bytes", 120_000)
    return make_settings(tmp_path, service=True, hub_endpoint=hub.url, ui=False, **overrides)


def drive(service: Service, done, timeout: float = 120.0, what: str = "the job") -> Supervisor:
    """Tick a supervisor (its followers are subprocesses) until `done()`; returns it still running."""
    sup = Supervisor(service.settings, service.store, tokens=service.token_for, held=service.held_tokens)
    try:
        wait_for(lambda: (sup.tick(), done())[1], timeout, every=0.2, what=what)
    except BaseException:
        sup.stop()
        raise
    return sup


def local_merge(recipe: str, out: Path) -> dict:
    from hubbot.merge import engine
    from hubbot.merge.run import plan_any
    from hubbot.recipe.kinds import parse_any

    engine.run(plan_any(parse_any(recipe)), out, shard_bytes=120_000)
    return {f.name: f.read_bytes() for f in out.glob("*.safetensors")}


def canary_free(*texts: str) -> None:
    for text in texts:
        assert CANARY not in text


def canary_not_stored(tmp_path: Path) -> None:
    """Nothing the service wrote (its store, the job folders, worker.log) holds the canary."""
    for path in (tmp_path / "data").rglob("*"):
        if path.is_file():
            assert CANARY.encode() not in path.read_bytes(), f"the token is in {path}"


def api_client(service: Service):
    from fastapi.testclient import TestClient

    from hubbot.app.server import create_app

    return TestClient(create_app(service.settings, service=service, background=False))


def crash(sup: Supervisor) -> None:
    """The service dies at once: its followers are killed and nothing is put back in the queue."""
    for run in sup.runs.values():
        os.killpg(run.proc.pid, signal.SIGKILL)
        run.proc.wait()


def remote_started(service: Service, job_id: str):
    return lambda: any(remote.LOG_PREFIX + "installing" in line for line in service.log(job_id))


def test_a_service_job_runs_on_hf_jobs_and_publishes_with_its_card(jobs_hub, families, tmp_path):
    hub = jobs_hub
    service = Service(service_settings(tmp_path, hub))
    recipe = linear("alice/ft1", "alice/ft2", 0.3)
    job = service.submit(recipe, owner=CAROL, target="carol/merged", token=CANARY, flavor="cpu-upgrade")
    assert job.options["backend"] == "hf-jobs" and job.options["flavor"] == "cpu-upgrade"
    sup = drive(service, lambda: service.get(job.id).state in ("done", "failed", "cancelled"))
    sup.stop()
    job = service.get(job.id)
    log = "\n".join(service.log(job.id))
    assert job.state == "done", (job.error, log)

    (run,) = hub.jobs()
    assert run.owner == CAROL and run.spec["flavor"] == "cpu-upgrade" and run.stage == "COMPLETED"
    assert (tmp_path / "bin" / "specs").read_text().split() == [f"hubbot[moe]=={__version__}"]
    assert "hubbot merge - --push carol/merged" in run.command[-1]
    assert job.progress["remote"]["id"] == run.id and run.id in log
    assert job.result["commit"] == hub.head_sha("carol/merged") and job.result["url"].endswith("/carol/merged")
    assert job.progress["tensors_done"] == job.progress["tensors_total"] > 0
    assert any(line.split(" ", 1)[1].startswith(remote.LOG_PREFIX + "published carol/merged")
               for line in service.log(job.id)), "the remote log is copied into the job's log"

    files = hub.repo_files("carol/merged")
    card = files["README.md"].decode()
    for name in ("alice/ft1", "alice/ft2"):
        assert f"{name}@{hub.head_sha(name)}" in card, "the card names each source at its pinned revision"
    assert "merge_method: linear" in card
    _, ft1, ft2 = families("llama")
    expected = local_merge(linear(ft1, ft2, 0.3), tmp_path / "local")
    assert expected.keys() == {n for n in files if n.endswith(".safetensors")}
    for name, data in expected.items():
        mine, theirs = load(files[name]), load(data)
        assert mine.keys() == theirs.keys() and all((mine[k] == theirs[k]).all() for k in mine)

    # the canary: nowhere in the job's command, environment or output, the service's store or its files
    info = hub.jobs()[0].json(hub.url)
    assert info["secrets"] == {"HF_TOKEN": None}
    canary_free(repr(run.spec["command"]), repr(run.spec.get("environment")), repr(run.spec.get("labels")),
                "\n".join(text for _, text in run.lines), log, repr(service.get(job.id)))
    service.close()
    canary_not_stored(tmp_path)


def test_a_merge_submitted_from_the_space_runs_on_hf_jobs_with_the_picked_hardware(jobs_hub, tmp_path):
    """The Space's Merge button with a Hardware pick: the signed-in user's job runs on Jobs with
    that flavour, billed to them, and its card reaches the stand-in Hub."""
    from hubbot.app.ui import build_app

    hub = jobs_hub
    settings = service_settings(tmp_path, hub, backend="hf-jobs")
    service = Service(settings)
    _, h = build_app(service, settings)
    assert ("cpu-upgrade", "cpu-upgrade") in h.flavor_choices(), "the Hardware picker offers the allowed flavours"
    profile, oauth = types.SimpleNamespace(username=CAROL, name=CAROL), types.SimpleNamespace(token=CANARY)
    updates = list(h.submit(linear("alice/ft1", "alice/ft2", 0.3), "carol/from-space", False, False, "cpu-upgrade",
                            profile, oauth))
    [job] = service.list(owner=CAROL)
    assert job.options["backend"] == "hf-jobs" and job.options["flavor"] == "cpu-upgrade", updates[-1]
    drive(service, lambda: service.get(job.id).state in FINAL).stop()
    assert service.get(job.id).state == "done", service.log(job.id)
    (run,) = hub.jobs()
    assert run.owner == CAROL and run.spec["flavor"] == "cpu-upgrade"
    card = hub.repo_files("carol/from-space")["README.md"].decode()
    assert "merge_method: linear" in card and f"alice/ft1@{hub.head_sha('alice/ft1')}" in card
    canary_free(repr(updates), "\n".join(service.log(job.id)))
    service.close()
    canary_not_stored(tmp_path)


def test_the_api_takes_a_flavor(jobs_hub, tmp_path):
    from fastapi.testclient import TestClient

    from hubbot.app.server import create_app

    service = Service(service_settings(tmp_path, jobs_hub))
    client = TestClient(create_app(service.settings, service=service, background=False))
    auth = {"Authorization": f"Bearer {CANARY}"}
    body = {"recipe": linear("alice/ft1", "alice/ft2"), "target": "carol/api"}
    refused = client.post("/api/jobs", json={**body, "flavor": "h200x8"}, headers=auth)
    assert refused.status_code == 400 and "is not offered by this service" in refused.json()["error"]
    made = client.post("/api/jobs", json={**body, "flavor": "a10g-small"}, headers=auth)
    assert made.status_code == 201 and made.json()["options"]["flavor"] == "a10g-small"
    assert made.json()["options"]["backend"] == "hf-jobs" and CANARY not in made.text
    service.close()


def test_a_remote_failure_fails_the_job_with_hubbots_message(jobs_hub, tmp_path, monkeypatch):
    # Submission refuses a target the token cannot write; let this one through so that the remote
    # merge meets the refusal itself (as when the token's rights change after submission).
    monkeypatch.setattr(Service, "_check_writable", lambda *args, **kwargs: None)
    service = Service(service_settings(tmp_path, jobs_hub))
    job = service.submit(linear("alice/ft1", "alice/ft2"), owner=CAROL, target="bob/not-carols", token=CANARY,
                         flavor="cpu-basic")
    sup = drive(service, lambda: service.get(job.id).state in ("done", "failed", "cancelled"))
    sup.stop()
    job = service.get(job.id)
    assert job.state == "failed" and "cannot write to 'bob'" in job.error and jobs_hub.jobs()[0].stage == "ERROR"
    assert "Traceback" not in "\n".join(service.log(job.id))


def test_cancel_cancels_the_remote_job(jobs_hub, tmp_path, monkeypatch):
    monkeypatch.setenv(DELAY_ENV, "60")
    service = Service(service_settings(tmp_path, jobs_hub))
    job = service.submit(linear("alice/ft1", "alice/ft2"), owner=CAROL, target="carol/cancelled", token=CANARY,
                         flavor="cpu-basic")
    sup = drive(service, lambda: service.get(job.id).state == "running" and jobs_hub.jobs(), what="the remote job")
    try:
        service.cancel(job.id, owner=CAROL)
        wait_for(lambda: (sup.tick(), service.get(job.id).state == "cancelled")[1], 30, what="the cancel")
    finally:
        sup.stop()
    assert service.get(job.id).error == "cancelled on request"
    wait_for(lambda: jobs_hub.jobs()[0].stage == "CANCELED", 10, what="the remote job to be cancelled")
    assert not jobs_hub.repo_exists("carol/cancelled")


def test_a_restarted_service_attaches_to_the_running_remote_job(jobs_hub, tmp_path, monkeypatch):
    monkeypatch.setenv(DELAY_ENV, "4")
    settings = service_settings(tmp_path, jobs_hub, hub_token=ALICE_TOKEN, backend="hf-jobs")
    first = Service(settings)
    job = first.submit(linear("alice/ft1", "alice/ft2", 0.7), owner="alice", target="alice/reattached")
    assert (job.options["backend"], job.options["flavor"]) == ("hf-jobs", None)
    sup = drive(first, remote_started(first, job.id), what="the remote job to start")
    sup.stop()  # the service stops; its job goes back to the queue, the remote job runs on
    first.close()
    (run,) = jobs_hub.jobs()
    assert run.stage == "RUNNING" and run.spec["flavor"] == "cpu-basic", "the cheapest flavour that fits"

    second = Service(settings)
    sup = drive(second, lambda: second.get(job.id).state in ("done", "failed"))
    sup.stop()
    done = second.get(job.id)
    log = "\n".join(second.log(job.id))
    assert done.state == "done", (done.error, log)
    assert len(jobs_hub.jobs()) == 1, "the remote job was not started twice"
    assert f"attaching again to Hugging Face job {run.id}" in log
    copied = [line.split(" ", 1)[1] for line in second.log(job.id) if remote.LOG_PREFIX in line]
    assert copied == [remote.LOG_PREFIX + text for _, text in run.lines[1:]], \
        "each remote line is copied once, those from before the restart too"
    assert done.result["commit"] == jobs_hub.head_sha("alice/reattached")
    second.close()


def test_a_user_job_waits_after_a_restart_until_its_owner_signs_in_again(jobs_hub, tmp_path, monkeypatch):
    monkeypatch.setenv(DELAY_ENV, "2")
    settings = service_settings(tmp_path, jobs_hub)
    first = Service(settings)
    job = first.submit(linear("alice/ft1", "alice/ft2", 0.4), owner=CAROL, target="carol/rejoined", token=CANARY,
                       flavor="cpu-basic")
    sup = drive(first, remote_started(first, job.id), what="the remote job to start")
    sup.stop()  # the service stops; the user's token, held in memory only, goes with it
    first.close()

    second = Service(settings)
    assert second.fail_lost_tokens() == [], "as `hubbot serve` does at start-up: it is not failed"
    waiting = second.get(job.id)
    assert (waiting.state, waiting.position, waiting.progress["waiting"]) == ("queued", None, remote.WAITING)
    assert remote.WAITING in "\n".join(second.log(job.id))
    drive(second, lambda: True).stop()  # a supervisor without the token leaves it alone
    assert second.get(job.id).state == "queued"
    (run,) = jobs_hub.jobs()
    wait_for(lambda: run.stage == "COMPLETED", 120, what="the remote merge to finish meanwhile")

    seen = api_client(second).get(f"/api/jobs/{job.id}", headers={"Authorization": f"Bearer {CANARY}"})
    assert seen.status_code == 200 and CANARY not in seen.text
    assert second.token_for(job.id) == CANARY, "the owner's signed-in request handed the token over"
    sup = drive(second, lambda: second.get(job.id).state in FINAL)
    sup.stop()
    done = second.get(job.id)
    log = "\n".join(second.log(job.id))
    assert done.state == "done", (done.error, log)
    assert len(jobs_hub.jobs()) == 1, "no second remote job"
    assert f"attaching again to Hugging Face job {run.id} (COMPLETED)" in log and "waiting" not in done.progress
    assert done.result["commit"] == jobs_hub.head_sha("carol/rejoined")
    card = jobs_hub.repo_files("carol/rejoined")["README.md"].decode()
    assert f"alice/ft1@{jobs_hub.head_sha('alice/ft1')}" in card and "merge_method: linear" in card
    copied = [line.split(" ", 1)[1] for line in second.log(job.id) if remote.LOG_PREFIX in line]
    assert copied == [remote.LOG_PREFIX + text for _, text in run.lines[1:]], "each remote line copied once"
    canary_free(log, repr(done), repr(run.spec["command"]), repr(run.spec.get("environment")))
    second.close()
    canary_not_stored(tmp_path)


def test_cancelling_a_waiting_job_cancels_its_remote_job_with_the_owners_token(jobs_hub, tmp_path, monkeypatch):
    monkeypatch.setenv(DELAY_ENV, "60")
    settings = service_settings(tmp_path, jobs_hub, lease_seconds=2.0)
    first = Service(settings)
    job = first.submit(linear("alice/ft1", "alice/ft2"), owner=CAROL, target="carol/dropped", token=CANARY,
                       flavor="cpu-basic")
    crash(drive(first, lambda: first.get(job.id).state == "running", what="the remote job to start"))
    first.close()

    second = Service(settings)  # the crashed run's lease lapses; the supervisor sees it
    drive(second, lambda: second.get(job.id).progress.get("waiting"), what="the job to wait for its owner").stop()
    assert second.get(job.id).state == "queued"
    with pytest.raises(Unauthorized, match="sign in again to cancel it"):
        second.cancel(job.id, owner=CAROL)
    assert second.get(job.id).state == "queued" and jobs_hub.jobs()[0].stage == "RUNNING"

    answer = api_client(second).post(f"/api/jobs/{job.id}/cancel", headers={"Authorization": f"Bearer {CANARY}"})
    assert answer.status_code == 200 and answer.json()["state"] == "cancelled", answer.text
    wait_for(lambda: jobs_hub.jobs()[0].stage == "CANCELED", 20, what="the remote job to be cancelled")
    assert f"cancelled its Hugging Face job {jobs_hub.jobs()[0].id}" in "\n".join(second.log(job.id))
    assert not jobs_hub.repo_exists("carol/dropped") and len(jobs_hub.jobs()) == 1
    second.close()
    canary_not_stored(tmp_path)


def test_a_remote_job_whose_id_was_never_stored_is_found_by_its_label(jobs_hub, tmp_path):
    from huggingface_hub import HfApi

    settings = service_settings(tmp_path, jobs_hub, hub_token=ALICE_TOKEN, backend="hf-jobs")
    service = Service(settings)
    recipe = linear("alice/ft1", "alice/ft2", 0.2)
    job = service.submit(recipe, owner="alice", target="alice/once")
    # The crash window: a follower started the remote job, then died before storing its id.
    api = HfApi(endpoint=jobs_hub.url, token=ALICE_TOKEN)
    api.run_job(image=remote.IMAGE, command=["sh", "-c", "echo another"], labels={remote.LABEL: "another-job"})
    spec = remote.job_spec(recipe=recipe, target="alice/once", private=False, pr=False,
                           shard_bytes=job.options["shard_bytes"], endpoint=jobs_hub.url, package=None,
                           need=remote.Need(10**9, 10**10, 10.0), label=job.id)
    started = remote.RemoteJob.start(api, spec, "cpu-basic", ALICE_TOKEN)
    assert [i.id for i in api.list_jobs(labels={remote.LABEL: job.id}, namespace="alice")] == [started.id]
    assert remote.REMOTE_KEY not in service.get(job.id).progress

    sup = drive(service, lambda: service.get(job.id).state in FINAL)
    sup.stop()
    done = service.get(job.id)
    log = "\n".join(service.log(job.id))
    assert done.state == "done", (done.error, log)
    ours = [j.id for j in jobs_hub.jobs() if (j.spec.get("labels") or {}).get(remote.LABEL) == job.id]
    assert ours == [started.id] and len(jobs_hub.jobs()) == 2, "the found job was followed, none started"
    assert done.progress["remote"]["id"] == started.id and f"found Hugging Face job {started.id}" in log
    assert done.result["commit"] == jobs_hub.head_sha("alice/once")
    service.close()


def test_a_users_many_requests_look_at_their_jobs_once_a_while(tmp_path, monkeypatch):
    service = Service(make_settings(tmp_path))
    looked = []
    real = service.store.list
    monkeypatch.setattr(service.store, "list", lambda *a, **k: looked.append(a[0]) or real(*a, **k))
    for _ in range(3):
        service.signed_in(CAROL, CANARY)
    service.signed_in("dave", CANARY)
    assert looked == [CAROL, "dave"], "a page's or a client's many requests: one query per user"
    monkeypatch.setattr(service_module, "SIGNED_IN_EVERY_S", 0.0)
    service.signed_in(CAROL, CANARY)
    assert looked == [CAROL, "dave", CAROL], "and again once the interval has passed"
    service.close()


def test_an_oauth_session_hands_its_token_to_the_service(tmp_path, monkeypatch):
    import gradio as gr
    from starlette.routing import Mount

    from hubbot.app import server

    calls = []
    fake = types.SimpleNamespace(signed_in=lambda owner, token: calls.append((owner, token)))

    async def inner(scope, receive, send):
        pass

    def request(info: dict | None) -> None:
        asyncio.run(server.OAuthSignIn(inner, fake)({"type": "http", "session": {"oauth_info": info} if info else {}},
                                                    None, None))

    info = {"access_token": CANARY, "userinfo": {"preferred_username": CAROL}, "expires_at": time.time() + 600}
    request(info)
    request(None)
    request({**info, "userinfo": {"preferred_username": "dave"}, "expires_at": time.time() - 1})
    assert calls == [(CAROL, CANARY)], "a live session only"

    def build_ui(service, settings):
        with gr.Blocks() as demo:
            gr.Markdown("hubbot")
        return demo

    monkeypatch.setitem(sys.modules, "hubbot.app.ui", types.SimpleNamespace(build_ui=build_ui, launch_options=dict))
    service = Service(make_settings(tmp_path))
    app = server.create_app(service.settings, service=service, background=False)
    ui = next(r.app for r in app.routes if isinstance(r, Mount))
    assert ui.user_middleware[-1].cls is server.OAuthSignIn, "innermost in the Gradio app, inside its sessions"
    service.close()


def test_the_cli_runs_a_merge_on_hf_jobs_and_prints_its_log(jobs_hub, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(linear("alice/ft1", "alice/ft2", 0.6))
    env = {**os.environ, "HF_TOKEN": ALICE_TOKEN, "PYTHONPATH": str(ROOT)}

    def hubbot(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "hubbot.cli", *args], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=240)

    out = hubbot("merge", str(recipe), "--push", "alice/from-cli", "--on", "hf-jobs", "--flavor", "a10g-small")
    assert out.returncode == 0, out.stdout + out.stderr
    (run,) = jobs_hub.jobs()
    assert run.spec["flavor"] == "a10g-small" and run.stage == "COMPLETED"
    assert f"started Hugging Face job {run.id} on a10g-small" in out.stdout
    assert "published alice/from-cli at" in out.stdout, "the remote log is printed"
    assert "alice/ft1@" in jobs_hub.repo_files("alice/from-cli")["README.md"].decode()
    assert ALICE_TOKEN not in repr(run.spec["command"]) + repr(run.spec.get("environment"))

    out = hubbot("merge", str(recipe), "--out", str(tmp_path / "x"), "--on", "hf-jobs")
    assert out.returncode == 2 and "add --push" in out.stderr and "Traceback" not in out.stderr


# --- placement, flavours, settings ----------------------------------------------------------------------------

class _Plan:
    """Just what placement and the flavour choice read of a plan."""

    def __init__(self, peak: int, models=()):
        self.peak, self.models = peak, list(models)

    def peak_bytes(self) -> int:
        return self.peak


def test_choose_flavor_takes_the_cheapest_that_fits(jobs_hub):
    from huggingface_hub import HfApi

    hardware = HfApi(token=ALICE_TOKEN).list_jobs_hardware()
    allowed = Settings.from_env({}, data_dir="/tmp").jobs_flavors
    small = remote.Need(memory=4 * 10**9, disk=12 * 10**9, seconds=60)
    assert remote.choose_flavor(hardware, allowed, small) == "cpu-basic"
    assert remote.choose_flavor(hardware, allowed, remote.Need(40 * 10**9, 12 * 10**9, 60)) == "a10g-large"
    assert remote.choose_flavor(hardware, allowed, remote.Need(4 * 10**9, 12 * 10**9, 7200)) == "a10g-small", \
        "a long merge takes the cheapest GPU"
    assert remote.choose_flavor(hardware, ("cpu-upgrade",), small) == "cpu-upgrade"
    with pytest.raises(RequestError, match="no Hugging Face Jobs flavour allowed here has 200 GB"):
        remote.choose_flavor(hardware, allowed, remote.Need(200 * 10**9, 12 * 10**9, 60))


def test_placement(families, tmp_path, monkeypatch):
    from hubbot.recipe.kinds import parse_any

    settings = make_settings(tmp_path)
    parsed = parse_any(linear("alice/ft1", "alice/ft2"))
    plan = _Plan(peak=10**6)
    assert remote.placement(settings, parsed, plan, "a/b") == {}
    assert remote.placement(settings, parsed, plan, "a/b", "cpu-basic") == {"backend": "hf-jobs", "flavor": "cpu-basic"}
    with pytest.raises(RequestError, match="flavor 'h200' is not offered by this service; choose one of cpu-basic"):
        remote.placement(settings, parsed, plan, "a/b", "h200")
    with pytest.raises(RequestError, match="give a target repo"):
        remote.placement(settings, parsed, plan, None, "cpu-basic")
    on_jobs = make_settings(tmp_path, backend="hf-jobs")
    assert remote.placement(on_jobs, parsed, plan, "a/b") == {"backend": "hf-jobs", "flavor": None}
    assert remote.placement(on_jobs, parsed, plan, None) == {}, "a local result stays on this machine"
    auto = make_settings(tmp_path, backend="auto")
    assert remote.placement(auto, parsed, plan, "a/b") == {}
    monkeypatch.setattr(remote, "local_memory_bytes", lambda: 2 * 10**9)
    assert remote.placement(auto, parsed, plan, "a/b") == {"backend": "hf-jobs", "flavor": None}

    base, ft1, ft2 = families("llama")
    service = Service(make_settings(tmp_path / "svc", hub_token="hf_local_login"))
    monkeypatch.setattr(Service, "_check_writable", lambda *args, **kwargs: None)  # no Hub in this test
    with pytest.raises(RequestError, match="reads local folders"):
        service.submit(linear(ft1, ft2), target="alice/x", flavor="cpu-basic")
    service.close()


def test_backend_settings():
    env = {"HUBBOT_BACKEND": "auto", "HUBBOT_JOBS_FLAVORS": "cpu-basic, a10g-small", "HUBBOT_JOBS_PACKAGE": "hubbot"}
    s = Settings.from_env(env, data_dir="/tmp/x")
    assert (s.backend, s.jobs_flavors, s.jobs_package) == ("auto", ("cpu-basic", "a10g-small"), "hubbot")
    assert Settings.from_dict(s.to_dict()) == s
    assert Settings.from_env({}, data_dir="/tmp/x").backend == "local"
    with pytest.raises(HubbotError, match="HUBBOT_BACKEND='ray' must be one of local, hf-jobs, auto"):
        Settings.from_env({"HUBBOT_BACKEND": "ray"}, data_dir="/tmp/x")
    with pytest.raises(HubbotError, match="HUBBOT_JOBS_FLAVORS"):
        Settings.from_env({"HUBBOT_JOBS_FLAVORS": "A10G!"}, data_dir="/tmp/x")


def test_the_job_command_keeps_the_recipe_and_token_out_of_argv():
    need = remote.Need(10**9, 10**10, 10.0)
    spec = remote.job_spec(recipe="merge_method: linear\n", target="me/out", private=True, pr=True, shard_bytes=5,
                           endpoint="https://huggingface.co", package=None, need=need, label="job1")
    assert spec["env"] == {"HUBBOT_RECIPE": "merge_method: linear\n"}, "the default endpoint is not passed"
    assert spec["command"][:2] == ["sh", "-c"] and "merge_method" not in spec["command"][2]
    assert spec["command"][2].endswith(
        f"uv tool run --from 'hubbot[moe]=={__version__}' hubbot merge - --push me/out --shard-size 5 --private --pr")
    assert spec["timeout"] >= remote.TIMEOUT_MIN_S and spec["labels"] == {"hubbot-job": "job1"}
    assert remote.parse_progress("progress 3/9 tensors 30/90 bytes") == {
        "tensors_done": 3, "tensors_total": 9, "bytes_done": 30, "bytes_total": 90}
    assert remote.parse_progress("merging") is None
