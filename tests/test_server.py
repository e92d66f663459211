"""The server: Hub webhooks (secret check, watched-source re-runs, the discussion bot) and the
JSON API's answers to bad input. Runs the FastAPI app in-process with a stand-in for the Hub's
discussion and whoami calls."""

from __future__ import annotations

from fastapi.testclient import TestClient

from hubbot.app import server
from hubbot.app.server import create_app
from hubbot.errors import Unauthorized
from hubbot.jobs import worker
from hubbot.jobs.service import Service
from hubbot.jobs.settings import Limits
from hubbot.jobs.store import new_id
from hubbot.jobs.webhooks import post_reports
from tests.jobkit import change_weights, copy_family, linear, make_settings

SECRET = "s3cret-webhook"


class FakeHub:
    """Records the discussion replies the bot posts; knows one user token."""

    def __init__(self):
        self.comments: list[tuple[str, str, int, str]] = []

    def comment(self, repo_id: str, repo_type: str, num: int, text: str) -> None:
        self.comments.append((repo_id, repo_type, num, text))

    def whoami(self, token: str) -> str:
        return self.namespaces(token)[0]

    def namespaces(self, token: str) -> tuple[str, frozenset[str]]:
        if token != "hf_ann":
            raise Unauthorized("the Hub did not accept this token")
        return "ann", frozenset({"ann"})

    def head(self, repo_id: str, revision: str | None) -> str:
        raise AssertionError("no Hub sources in these tests")


def app_for(tmp_path, **overrides):
    overrides.setdefault("webhook_secret", SECRET)
    overrides.setdefault("ui", False)
    settings = make_settings(tmp_path, **overrides)
    hub = FakeHub()
    service = Service(settings, hub=hub)
    return TestClient(create_app(settings, service=service, background=False)), service, hub


def repo_payload(repo: str, new_sha: str = "1" * 40, scope: str = "repo.content") -> dict:
    """A `repo.content` update as the Hub sends it (note: the sha is in updatedRefs)."""
    return {
        "event": {"action": "update", "scope": scope},
        "repo": {"type": "model", "name": repo, "id": "6543", "private": False, "headSha": new_sha,
                 "owner": {"id": "abc"}, "url": {"web": f"https://huggingface.co/{repo}", "api": None}},
        "updatedRefs": [{"ref": "refs/heads/main", "oldSha": "0" * 40, "newSha": new_sha}],
        "webhook": {"id": "w1", "version": 3},
    }


def comment_payload(repo: str, content: str, num: int = 7) -> dict:
    url = {"web": f"https://huggingface.co/spaces/{repo}/discussions/{num}", "api": None}
    return {
        "event": {"action": "create", "scope": "discussion.comment"},
        "repo": {"type": "space", "name": repo, "id": "1", "private": False, "owner": {"id": "o"}, "url": url},
        "discussion": {"id": "d1", "num": num, "author": {"id": "u1"}, "url": url, "title": "merge please",
                       "isPullRequest": False, "status": "open"},
        "comment": {"id": "c1", "author": {"id": "u1"}, "hidden": False, "content": content, "url": url},
        "webhook": {"id": "w1", "version": 3},
    }


def test_bad_or_missing_secret_is_refused_and_does_nothing(families, tmp_path):
    base, ft1, ft2 = copy_family(families("llama"), tmp_path / "models")
    client, service, hub = app_for(tmp_path)
    service.watch(linear(ft1, ft2), owner=None, target=None)
    change_weights(ft2, seed=2)
    before = len(service.list())
    payload = repo_payload(str(ft2))
    r = client.post("/webhooks/hub", json=payload)
    assert r.status_code == 401 and "X-Webhook-Secret" in r.json()["error"]
    r = client.post("/webhooks/hub", json=payload, headers={"X-Webhook-Secret": "guess"})
    assert r.status_code == 403 and r.json()["error"] == "wrong webhook secret"
    off, off_service, _ = app_for(tmp_path / "off", webhook_secret=None)
    r = off.post("/webhooks/hub", json=payload, headers={"X-Webhook-Secret": SECRET})
    assert r.status_code == 403 and "webhooks are off" in r.json()["error"]
    assert len(service.list()) == before and hub.comments == []


def test_source_update_reruns_the_watched_recipe(families, tmp_path):
    """With local sources: the delivery names a watched source (a local folder standing in for a
    repo id) and the watch's recipe is queued again against its new weights. The round trip
    through the Hub stand-in is in test_jobs_hub.py."""
    base, ft1, ft2 = copy_family(families("llama"), tmp_path / "models")
    client, service, hub = app_for(tmp_path)
    watch = service.watch(linear(ft1, ft2), owner="ann", target=None)
    headers = {"X-Webhook-Secret": SECRET}

    r = client.post("/webhooks/hub", json=repo_payload("org/unwatched"), headers=headers)
    assert r.status_code == 200 and "no watch follows" in r.json()["ignored"]
    same = repo_payload(str(ft2), new_sha=watch["sources"][str(ft2)])
    assert client.post("/webhooks/hub", json=same, headers=headers).json().get("ignored"), "already merged"

    change_weights(ft2, seed=3)
    r = client.post("/webhooks/hub", json=repo_payload(str(ft2)), headers=headers)
    assert r.status_code == 202 and r.json() == {"rerun": [watch["id"]]}
    jobs = service.list()
    assert len(jobs) == 2 and jobs[0].id != watch["last_job_id"]
    rerun = jobs[0]
    assert rerun.state == "queued" and rerun.owner == "ann" and rerun.recipe == linear(ft1, ft2)
    assert any("webhook:" in line for line in service.log(rerun.id))
    assert service.watches()[0]["last_job_id"] == rerun.id
    # Re-delivery of the same push (the Hub retries) does not merge twice.
    client.post("/webhooks/hub", json=repo_payload(str(ft2)), headers=headers)
    assert len(service.list()) == 2

    r = client.post("/webhooks/hub", json={"event": {}}, headers=headers)
    assert r.status_code == 400 and "not a Hub webhook payload" in r.json()["error"]
    assert client.post("/webhooks/hub", content=b"{", headers=headers).status_code == 400


def test_discussion_comment_with_a_recipe_is_queued_and_answered(families, tmp_path):
    base, ft1, ft2 = families("llama")
    client, service, hub = app_for(tmp_path, bot_repo="org/hubbot")
    headers = {"X-Webhook-Secret": SECRET}
    text = f"Could you merge these?\n\n```yaml\n{linear(ft1, ft2, 0.4)}```\nthanks"

    r = client.post("/webhooks/hub", json=comment_payload("org/hubbot", text), headers=headers)
    assert r.status_code == 202
    (job,) = service.list()
    assert job.owner == "hub-user:u1" and job.state == "queued"
    repo, repo_type, num, reply = hub.comments[-1]
    assert (repo, repo_type, num) == ("org/hubbot", "space", 7)
    assert f"Queued as job [`{job.id}`]({service.job_url(job.id)})" in reply

    row = service.store.claim(new_id(), 60, held_tokens=set(), running_per_owner=9)
    assert worker.run_job(service.settings, service.store, job.id, row["claim"]) == "done"
    post_reports(service)
    assert hub.comments[-1][3].startswith(f"Job [`{job.id}`]") and "is done" in hub.comments[-1][3]
    post_reports(service)
    assert len(hub.comments) == 2, "each outcome is posted once"

    bad = "```yaml\nmerge_method: linear\nmodles: []\n```"
    client.post("/webhooks/hub", json=comment_payload("org/hubbot", bad, num=8), headers=headers)
    assert hub.comments[-1][2] == 8 and "I could not queue this recipe" in hub.comments[-1][3]
    assert "did you mean 'models'" in hub.comments[-1][3]
    for ignored in (comment_payload("org/other", text), comment_payload("org/hubbot", "no recipe here")):
        assert "ignored" in client.post("/webhooks/hub", json=ignored, headers=headers).json()
    assert len(service.list()) == 1 and len(hub.comments) == 3


def test_api_answers_bad_input_with_clear_errors(families, tmp_path):
    base, ft1, ft2 = families("llama")
    client, service, hub = app_for(tmp_path, limits=Limits(recipe_bytes=1000))

    r = client.post("/api/jobs", json={"recipe": "merge_method: [linear"})
    assert r.status_code == 422 and "not valid YAML at line 1" in r.json()["error"]
    r = client.post("/api/jobs", json={"recipe": linear(ft1, ft2) + "colour: blue\n"})
    assert r.status_code == 422 and "colour: unknown field" in r.json()["problems"][0]
    r = client.post("/api/jobs", json={"recipe": "#" * 2000})
    assert r.status_code == 422 and "up to 1000 bytes" in r.json()["error"]
    r = client.get("/api/jobs/0123456789ab")
    assert r.status_code == 404 and "there is no job '0123456789ab'" in r.json()["error"]
    assert client.post("/api/jobs/0123456789ab/cancel").status_code == 404
    assert client.get("/api/jobs").json() == []

    r = client.post("/api/jobs", json={"recipe": linear(ft1, ft2)})
    assert r.status_code == 201 and r.json()["state"] == "queued" and r.json()["position"] == 1
    job_id = r.json()["id"]
    assert client.get(f"/api/jobs/{job_id}").json()["recipe"] == linear(ft1, ft2)
    assert "queued" in client.get(f"/api/jobs/{job_id}/log").json()["lines"][0]
    assert client.post("/api/validate", json={"recipe": linear(ft1, ft2)}).json()["ok"] is True
    health = client.get("/api/health").json()
    assert health["status"] == "ok" and health["mode"] == "local" and health["jobs"] == {"queued": 1}
    assert client.post(f"/api/jobs/{job_id}/cancel").json()["state"] == "cancelled"


def test_api_in_service_mode_needs_a_signed_in_caller(families, tmp_path):
    client, service, hub = app_for(tmp_path, service=True)
    local = linear("./models/a", "./models/b")
    r = client.post("/api/jobs", json={"recipe": local, "target": "ann/merged"})
    assert r.status_code == 401 and "Authorization: Bearer" in r.json()["error"]
    r = client.post("/api/jobs", json={"recipe": local, "target": "ann/merged"},
                    headers={"Authorization": "Bearer hf_wrong"})
    assert r.status_code == 401 and "did not accept this token" in r.json()["error"]
    r = client.post("/api/jobs", json={"recipe": local, "target": "ann/merged"},
                    headers={"Authorization": "Bearer hf_ann"})
    assert r.status_code == 422 and "is a local path" in r.json()["error"]
    assert "hf_ann" not in r.text


def test_serve_mounts_the_ui_and_runs_the_scheduler(tmp_path, monkeypatch):
    """With hubbot.app.ui present, / is the Gradio app, the API still answers and the app's lifespan
    starts and stops the scheduler (a stand-in UI module keeps this independent of the real one)."""
    import sys
    import types

    import gradio as gr

    def build_ui(service, settings):
        with gr.Blocks() as demo:
            gr.Markdown(f"hubbot in {settings.mode} mode")
        return demo

    monkeypatch.setitem(sys.modules, "hubbot.app.ui", types.SimpleNamespace(build_ui=build_ui, launch_options=dict))
    runtimes = []

    class Recorded(server.Runtime):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            runtimes.append(self)

    monkeypatch.setattr(server, "Runtime", Recorded)
    settings = make_settings(tmp_path)
    service = Service(settings, hub=FakeHub())
    with TestClient(create_app(settings, service=service)) as client:
        assert client.get("/api/health").json()["status"] == "ok"
        page = client.get("/")
        assert page.status_code == 200 and "gradio" in page.text.lower()
        assert runtimes[0].scheduler.running, "the lifespan started the scheduler"
    assert not runtimes[0].scheduler.running, "and stopped it"
