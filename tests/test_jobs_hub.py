"""The job service against the Hub stand-in, with the real huggingface_hub client and real
webhook deliveries to the server running on a local port: a push to a watched source re-runs
the recipe and commits again, and the discussion bot queues a recipe and answers in the thread."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from hubbot.app.server import create_app
from hubbot.jobs import worker
from hubbot.jobs.service import Job, Service
from hubbot.jobs.store import new_id
from hubbot.jobs.webhooks import post_reports
from tests.hub_fixtures import ALICE_TOKEN
from tests.jobkit import change_weights, copy_family, linear, make_settings, wait_for

SECRET = "hub-secret"
BOT, BOT_TOKEN = "merge-bot", "hf_merge_bot"


@pytest.fixture
def live() -> Iterator:
    """Serve an app on a free local port (no scheduler: the tests run jobs themselves)."""
    import uvicorn

    servers = []

    def start(service: Service) -> str:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        app = create_app(service.settings, service=service, background=False)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        servers.append((server, thread))
        wait_for(lambda: server.started, 20, what="the server to start")
        return f"http://127.0.0.1:{port}"

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(10)


def run_next(service: Service) -> Job:
    """Claim the next job and run it in this process (with its user token, if it has one)."""
    row = service.store.claim(new_id(), 60, held_tokens=service.held_tokens(), running_per_owner=9)
    assert row is not None, "a job should be waiting"
    state = worker.run_job(service.settings, service.store, row["id"], row["claim"], token=service.token_for(row["id"]))
    job = service.get(row["id"])
    assert state == "done", (job.error, service.log(job.id))
    return job


def test_source_push_reruns_the_watch_and_commits_again(hub, alice_api, families, tmp_path, live):
    base, ft1, ft2 = families("llama")
    for folder, name in ((ft1, "alice/ft1"), (ft2, "alice/ft2")):
        alice_api.create_repo(name)
        alice_api.upload_folder(folder_path=str(folder), repo_id=name)
    settings = make_settings(tmp_path, service=True, hub_endpoint=hub.url, hub_token=ALICE_TOKEN,
                             webhook_secret=SECRET, ui=False, shard_bytes=120_000)
    service = Service(settings)
    url = live(service)
    alice_api.create_webhook(url=f"{url}/webhooks/hub", watched=[{"type": "model", "name": "alice/ft2"}],
                             domains=["repo"], secret=SECRET)
    alice_api.create_webhook(url=f"{url}/webhooks/hub", watched=[{"type": "model", "name": "alice/ft2"}],
                             domains=["repo"], secret="not-the-secret")

    recipe = linear("alice/ft1", "alice/ft2", 0.4)
    watch = service.watch(recipe, owner="alice", target="alice/merged", token=ALICE_TOKEN)
    first = run_next(service)
    assert first.id == watch["last_job_id"] and first.result["commit"] == hub.head_sha("alice/merged")
    old_sha = hub.head_sha("alice/ft2")

    (changed,) = copy_family([ft2], tmp_path / "new")
    change_weights(changed, seed=5)
    alice_api.upload_file(path_or_fileobj=str(changed / "model.safetensors"), path_in_repo="model.safetensors",
                          repo_id="alice/ft2")
    new_sha = hub.head_sha("alice/ft2")
    deliveries = hub.wait_for_deliveries()
    assert sorted(d.status for d in deliveries) == [202, 403], "the hook with a wrong secret is refused"
    rerun = wait_for(lambda: next((j for j in service.list() if j.id != first.id), None), 30,
                     what="the re-run to be queued")
    assert any(f"alice/ft2 moved to {new_sha[:12]}" in line for line in service.log(rerun.id))

    done = run_next(service)  # no user token now: the service's own
    assert done.id == rerun.id and done.result["commit"] == hub.head_sha("alice/merged") != first.result["commit"]
    card = hub.repo_files("alice/merged")["README.md"].decode()
    assert f"alice/ft2@{new_sha}" in card and old_sha not in card, "the card names the new source revision"
    assert service.watches()[0]["sources"]["alice/ft2"] == new_sha
    assert len(service.list()) == 2, "one re-run for one push"


def test_discussion_bot_queues_and_answers(hub, alice_api, families, tmp_path, live):
    from huggingface_hub import HfApi

    base, ft1, ft2 = families("llama")
    hub.add_user(BOT, BOT_TOKEN)
    for folder, name in ((ft1, "alice/ft1"), (ft2, "alice/ft2")):
        alice_api.create_repo(name)
        alice_api.upload_folder(folder_path=str(folder), repo_id=name)
    bot_api = HfApi(token=BOT_TOKEN)
    bot_api.create_repo(f"{BOT}/hubbot")
    settings = make_settings(tmp_path, service=True, hub_endpoint=hub.url, hub_token=BOT_TOKEN,
                             webhook_secret=SECRET, ui=False, bot_repo=f"{BOT}/hubbot", bot_namespace=BOT)
    service = Service(settings)
    url = live(service)
    bot_api.create_webhook(url=f"{url}/webhooks/hub", watched=[{"type": "model", "name": f"{BOT}/hubbot"}],
                           domains=["discussion"], secret=SECRET)

    num = alice_api.create_discussion(f"{BOT}/hubbot", title="Please merge").num
    recipe = "name: soup\n" + linear("alice/ft1", "alice/ft2", 0.5)
    alice_api.comment_discussion(f"{BOT}/hubbot", num, f"Could you merge this?\n\n```yaml\n{recipe}```\n")

    def replies() -> list[str]:
        details = alice_api.get_discussion_details(f"{BOT}/hubbot", num)
        return [e.content for e in details.events if e.type == "comment" and e.author == BOT]

    first = wait_for(replies, 30, what="the bot's first reply")
    (job,) = service.list()
    assert f"Queued as job [`{job.id}`]" in first[0] and job.target == f"{BOT}/soup"
    run_next(service)
    post_reports(service)
    hub.wait_for_deliveries()
    answers = replies()
    assert len(answers) == 2 and "is done" in answers[1] and f"{BOT}/soup" in answers[1]
    assert hub.repo_exists(f"{BOT}/soup")
    assert len(service.list()) == 1, "the bot's own replies queue nothing"
