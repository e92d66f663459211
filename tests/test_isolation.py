"""Isolation between users of a service-mode server, against the Hub stand-in with its real
whoami: alice and bob, signed in with their tokens, and an anonymous caller each see and act on
their own records only; ids of others' records answer 404; identical requests of two owners
are two jobs; work that cannot finish is refused at submission."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from hubbot.app.server import create_app
from hubbot.errors import RecipeError, RequestError
from hubbot.jobs.ratelimit import Rate, RateLimiter
from hubbot.jobs.service import Service
from tests.hub_fixtures import ALICE, ALICE_TOKEN, BOB, BOB_TOKEN, ORG
from tests.jobkit import linear, make_settings, wait_for
from tests.test_jobs_hub import run_next

BOT, BOT_TOKEN = "merge-bot", "hf_merge_bot"
AS_ALICE = {"Authorization": f"Bearer {ALICE_TOKEN}"}
AS_BOB = {"Authorization": f"Bearer {BOB_TOKEN}"}
ANONYMOUS: dict[str, str] = {}


@pytest.fixture
def sources(hub, alice_api, families):
    """Two public fine-tunes on the stand-in, and a bot account for the service's own token (a
    member of alice's org, so watches there can re-run)."""
    base, ft1, ft2 = families("llama")
    for folder, name in ((ft1, "alice/ft1"), (ft2, "alice/ft2")):
        alice_api.create_repo(name)
        alice_api.upload_folder(folder_path=str(folder), repo_id=name)
    hub.add_user(BOT, BOT_TOKEN, orgs=[ORG])
    return "alice/ft1", "alice/ft2"


def service_app(hub, tmp_path, **overrides):
    overrides.setdefault("hub_token", BOT_TOKEN)
    overrides.setdefault("hub_endpoint", hub.url)
    settings = make_settings(tmp_path, service=True, ui=False, **overrides)
    service = Service(settings)
    limiter = RateLimiter({"validate": Rate(60, 3), "submit": Rate(60, 100)})
    return TestClient(create_app(settings, service=service, background=False, limiter=limiter)), service


def ids(r) -> list[str]:
    assert r.status_code == 200, r.text
    return [j["id"] for j in r.json()]


def test_each_caller_sees_only_their_own_jobs(hub, sources, tmp_path):
    client, service = service_app(hub, tmp_path)
    recipe = linear(*sources, 0.3)
    r = client.post("/api/jobs", json={"recipe": recipe, "target": "alice/merged"}, headers=AS_ALICE)
    assert r.status_code == 201, r.text
    alices = r.json()["id"]
    assert r.json()["owner"] == ALICE

    # bob may not publish to alice's namespace: refused now, not failed later in a worker
    r = client.post("/api/jobs", json={"recipe": recipe, "target": "alice/merged"}, headers=AS_BOB)
    assert r.status_code == 403 and "cannot write to 'alice'" in r.json()["error"], r.text
    # the same recipe to his own repo is his own job, never alice's
    r = client.post("/api/jobs", json={"recipe": recipe, "target": "bob/merged"}, headers=AS_BOB)
    assert r.status_code == 201 and r.json()["id"] != alices and r.json()["owner"] == BOB
    bobs = r.json()["id"]
    again = client.post("/api/jobs", json={"recipe": recipe, "target": "alice/merged"}, headers=AS_ALICE).json()
    assert again["id"] == alices, "an owner's own identical request is still deduplicated"

    assert ids(client.get("/api/jobs", headers=AS_ALICE)) == [alices]
    assert ids(client.get("/api/jobs", headers=AS_BOB)) == [bobs]
    assert ids(client.get("/api/jobs", headers=ANONYMOUS)) == [], "nothing is public before it is published"
    assert ids(client.get("/api/jobs?owner=alice", headers=AS_BOB)) == [bobs], "no owner filter to borrow"

    for who in (AS_BOB, ANONYMOUS):
        for path in (f"/api/jobs/{alices}", f"/api/jobs/{alices}/log"):
            r = client.get(path, headers=who)
            assert r.status_code == 404 and r.json()["error"] == client.get("/api/jobs/000000000000").json()["error"] \
                .replace("000000000000", alices), "the same answer as for an id that does not exist"
    assert client.post(f"/api/jobs/{alices}/cancel", headers=AS_BOB).status_code == 404
    assert client.post(f"/api/jobs/{alices}/cancel", headers=ANONYMOUS).status_code == 401
    assert client.get(f"/api/jobs/{alices}", headers=AS_ALICE).json()["state"] == "queued"
    assert "queued" in client.get(f"/api/jobs/{alices}/log", headers=AS_ALICE).json()["lines"][0]

    # a published public merge is what anonymous callers may see (not its log)
    assert client.post(f"/api/jobs/{bobs}/cancel", headers=AS_BOB).json()["state"] == "cancelled"
    run_next(service)
    assert ids(client.get("/api/jobs", headers=ANONYMOUS)) == [alices]
    public = client.get(f"/api/jobs/{alices}", headers=ANONYMOUS).json()
    assert public["state"] == "done" and public["result"]["url"].endswith("alice/merged")
    assert client.get(f"/api/jobs/{alices}/log", headers=ANONYMOUS).status_code == 404
    assert client.get(f"/api/jobs/{bobs}", headers=ANONYMOUS).status_code == 404, "cancelled jobs are not public"
    r = client.post(f"/api/jobs/{alices}/cancel", headers=AS_ALICE)
    assert r.status_code == 409 and "already ended (done)" in r.json()["error"]


def test_private_merges_stay_private(hub, sources, tmp_path):
    client, service = service_app(hub, tmp_path)
    r = client.post("/api/jobs", json={"recipe": linear(*sources), "target": "alice/secret", "private": True},
                    headers=AS_ALICE)
    run_next(service)
    assert ids(client.get("/api/jobs", headers=ANONYMOUS)) == []
    assert client.get(f"/api/jobs/{r.json()['id']}", headers=ANONYMOUS).status_code == 404
    assert client.get(f"/api/jobs/{r.json()['id']}", headers=AS_ALICE).json()["state"] == "done"


def test_watches_and_schedules_belong_to_their_owner(hub, sources, tmp_path):
    client, service = service_app(hub, tmp_path)
    recipe = linear(*sources, 0.6)
    r = client.post("/api/watches", json={"recipe": recipe, "target": "alice/watched"}, headers=AS_ALICE)
    assert r.status_code == 403 and "this service's account (merge-bot) cannot write" in r.json()["error"], \
        "its re-runs could never publish there"
    r = client.post("/api/watches", json={"recipe": recipe, "target": f"{ORG}/watched"}, headers=AS_ALICE)
    assert r.status_code == 201, r.text
    watch = r.json()
    twice = client.post("/api/watches", json={"recipe": recipe, "target": f"{ORG}/watched"}, headers=AS_ALICE).json()
    assert twice["id"] == watch["id"] and twice["existing"] is True, "a second click is the same watch"
    assert len(service.watches()) == 1 and len(service.list()) == 1
    r = client.post("/api/schedules", json={"recipe": recipe, "cron": "0 3 * * *", "target": f"{BOT}/nightly"},
                    headers=AS_ALICE)
    assert r.status_code == 201, r.text
    schedule = r.json()
    r = client.post("/api/schedules", json={"recipe": recipe, "cron": "0 3 * * *", "target": "bob/nightly"},
                    headers=AS_BOB)
    assert r.status_code == 403 and "this service's account (merge-bot) cannot write to 'bob'" in r.json()["error"]

    assert [w["id"] for w in client.get("/api/watches", headers=AS_ALICE).json()] == [watch["id"]]
    assert client.get("/api/watches", headers=AS_BOB).json() == []
    assert client.get("/api/schedules", headers=AS_BOB).json() == []
    assert client.get("/api/watches", headers=ANONYMOUS).status_code == 401
    assert client.delete(f"/api/watches/{watch['id']}", headers=AS_BOB).status_code == 404
    assert client.delete(f"/api/schedules/{schedule['id']}", headers=AS_BOB).status_code == 404
    assert len(service.watches()) == 1 and len(service.schedules()) == 1

    assert client.delete(f"/api/watches/{watch['id']}", headers=AS_ALICE).json()["active"] is False
    assert client.delete(f"/api/schedules/{schedule['id']}", headers=AS_ALICE).json()["active"] is False
    assert service.watches() == [] and service.schedules() == []
    assert service.run_schedule(schedule["id"]) is None, "a stopped schedule does not fire"


def test_a_watch_with_nothing_to_follow_is_refused(hub, sources, tmp_path):
    _, service = service_app(hub, tmp_path)
    sha = hub.head_sha("alice/ft1")
    with pytest.raises(RequestError, match="pinned to a commit"):
        service.watch(linear(f"alice/ft1@{sha}", f"alice/ft2@{hub.head_sha('alice/ft2')}"), owner=ALICE,
                      target="alice/w", token=ALICE_TOKEN)
    with pytest.raises(RecipeError, match="is a local path"):
        service.watch(linear("./models/a", "alice/ft2"), owner=ALICE, target="alice/w", token=ALICE_TOKEN)
    assert service.watches() == [] and service.list() == []


def test_validate_and_submit_are_rate_limited_per_caller(hub, sources, tmp_path):
    client, _ = service_app(hub, tmp_path)
    body = {"recipe": "merge_method: linear"}
    for _ in range(3):
        assert client.post("/api/validate", json=body, headers=AS_ALICE).status_code == 200
    r = client.post("/api/validate", json=body, headers=AS_ALICE)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1 and "user alice" in r.json()["error"]
    assert client.post("/api/validate", json=body, headers=AS_BOB).status_code == 200, "bob has his own allowance"
    for _ in range(3):
        client.post("/api/validate", json=body)
    r = client.post("/api/validate", json=body)
    assert r.status_code == 429 and "address" in r.json()["error"], "anonymous callers are counted by address"


def test_rejected_token_is_401_and_unreachable_hub_is_503(hub, sources, tmp_path):
    client, _ = service_app(hub, tmp_path)
    r = client.get("/api/watches", headers={"Authorization": "Bearer hf_not_a_token"})
    assert r.status_code == 401 and "did not accept this token" in r.json()["error"]

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    offline, _ = service_app(hub, tmp_path / "offline", hub_endpoint=dead)
    r = offline.get("/api/watches", headers=AS_ALICE)
    assert r.status_code == 503 and int(r.headers["Retry-After"]) > 0, r.text
    assert "could not be reached" in r.json()["error"] and "not a problem with the token" in r.json()["error"]


def test_service_mode_never_probes_the_servers_disk(hub, sources, tmp_path, monkeypatch):
    """A folder on the server named like a repo neither shadows the repo nor reveals itself."""
    (tmp_path / "alice" / "ft1").mkdir(parents=True)
    (tmp_path / "secret" / "folder").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    client, _ = service_app(hub, tmp_path / "svc")
    v = client.post("/api/validate", json={"recipe": linear(*sources)}, headers=AS_ALICE).json()
    assert v["ok"] and [m["ref"] for m in v["models"]] == list(sources), "the Hub repos, not the folders"
    v = client.post("/api/validate", json={"recipe": linear("secret/folder", "alice/ft2")}, headers=AS_ALICE).json()
    assert not v["ok"] and "local path" not in str(v) and "was not found on the Hub" in str(v["problems"])


def test_local_eval_data_is_refused_at_submission(hub, sources, tmp_path):
    client, service = service_app(hub, tmp_path)
    (tmp_path / "texts.txt").write_text("hello\n")
    for data in (str(tmp_path / "texts.txt"), "texts.txt"):
        soup = f"soup: [{sources[0]}, {sources[1]}]\neval: {{data: {data}}}\n"
        r = client.post("/api/jobs", json={"recipe": soup, "target": "alice/soup"}, headers=AS_ALICE)
        assert r.status_code == 422 and "eval.data" in r.json()["problems"][0] and "hf://datasets/" in r.text
    assert service.list() == []


def test_push_target_without_any_token_is_refused_locally(families, tmp_path):
    base, ft1, ft2 = families("llama")
    service = Service(make_settings(tmp_path))
    with pytest.raises(RequestError, match="needs a Hub token and this machine has none"):
        service.submit(linear(ft1, ft2), target="me/merged")
    assert service.list() == []


def test_cli_jobs_and_submit_wait_without_a_worker(families, tmp_path, monkeypatch, capsys):
    from hubbot import cli

    base, ft1, ft2 = families("llama")
    monkeypatch.delenv("HUBBOT_MODE", raising=False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.setattr(cli, "NO_WORKER_AFTER_S", 0.5)
    recipe = tmp_path / "r.yml"
    recipe.write_text(linear(ft1, ft2))
    data = str(tmp_path / "data")
    result: list[int] = []
    waiting = threading.Thread(target=lambda: result.append(cli.main(["submit", "--data", data, str(recipe), "--wait"])),
                               daemon=True)
    waiting.start()
    seen: list[str] = []
    out = wait_for(lambda: (seen.append(capsys.readouterr().out), "no worker is running" in "".join(seen))[1]
                   and "".join(seen), 60, what="the no-worker notice")
    job_id = out.split()[1].rstrip(":")
    assert out.startswith(f"job {job_id}: queued") and f"'hubbot jobs cancel {job_id}' drops it" in out

    assert cli.main(["jobs", "--data", data]) == 0
    assert job_id in capsys.readouterr().out
    assert cli.main(["jobs", "show", job_id, "--data", data]) == 0
    shown = capsys.readouterr().out
    assert f"job {job_id}: queued" in shown and "merge_method: linear" in shown
    assert cli.main(["jobs", "cancel", job_id, "--data", data]) == 0
    waiting.join(30)
    assert result == [1] and "cancelled" in capsys.readouterr().out
    assert cli.main(["jobs", "cancel", job_id, "--data", data]) == 2, "a finished job cannot be cancelled"
    assert "already ended" in capsys.readouterr().err
    assert cli.main(["jobs", "show", "nope", "--data", data]) == 2


def test_a_tokenizer_naming_custom_code_never_prompts_or_runs_it(families, tmp_path, monkeypatch):
    """transformers would ask on stdin whether to run a repo's own tokenizer code; hubbot says no
    without asking, and the code never runs."""
    import builtins
    import json
    import shutil

    from hubbot.errors import SourceError
    from hubbot.merge.gates import _tokenize
    from hubbot.recipe.refs import ModelRef
    from hubbot.sources import LocalSource

    base = Path(shutil.copytree(families("llama")[0], tmp_path / "custom"))
    marker = tmp_path / "the-custom-code-ran"
    (base / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\nfrom transformers import "
                                  "PreTrainedTokenizerFast as EvilTokenizer\n")
    config = json.loads((base / "tokenizer_config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", "evil.EvilTokenizer"]}
    (base / "tokenizer_config.json").write_text(json.dumps(config))
    monkeypatch.setattr(builtins, "input", lambda *a: pytest.fail("transformers asked on stdin"))
    try:
        ids = _tokenize(LocalSource(ModelRef.parse(str(base))), ["hello there"])
        assert ids and ids[0], "the plain tokenizer files serve"
    except SourceError as exc:
        assert "could not be loaded" in str(exc)
    assert not marker.exists()


def test_share_opens_the_pull_request_in_the_callers_name(hub, tmp_path):
    """Sharing acts as the signed-in caller (their token opens the pull request), never as the
    service's account; an anonymous caller is asked to sign in and nothing is opened."""
    from types import SimpleNamespace

    from huggingface_hub import HfApi

    from hubbot.app.ui import build_app
    from hubbot.jobs.settings import Settings

    hub.add_user(BOT, BOT_TOKEN, orgs=[ORG])
    dataset = f"{ORG}/community-recipes"
    hub.create_repo_direct(dataset, {"README.md": b"# recipes\n"}, repo_type="dataset")
    settings = Settings.from_env({"HUBBOT_MODE": "service", "HF_TOKEN": BOT_TOKEN, "HF_ENDPOINT": hub.url,
                                  "HUBBOT_RECIPES_DATASET": dataset}, data_dir=tmp_path)
    _, h = build_app(Service(settings), settings)
    recipe = linear("alice/ft1", "alice/ft2", 0.5)

    def share(token):
        oauth = SimpleNamespace(token=token) if token else None
        return h.share_recipe(recipe, "Tiny soup", "Two tunes averaged.", "linear", "dataset", oauth)[h.p.share_status]

    api = HfApi(endpoint=hub.url, token=ALICE_TOKEN)
    assert "Sign in to share" in share(None)
    assert list(api.get_repo_discussions(dataset, repo_type="dataset")) == []
    assert "Pull request opened" in share(ALICE_TOKEN)
    [pr] = list(api.get_repo_discussions(dataset, repo_type="dataset"))
    assert pr.is_pull_request and pr.author == ALICE
