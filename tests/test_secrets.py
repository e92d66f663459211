"""No secret leaves the process: canary tokens (the server's HF_TOKEN, the webhook secret, a
user's token) are searched for in the store, every file under the data folder, the log records
and every API answer, after Hub calls that fail with an error quoting the Authorization header."""

from __future__ import annotations

import json
import logging
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from hubbot import redact
from hubbot.app.server import create_app
from hubbot.jobs import worker
from hubbot.jobs.planning import hub_options
from hubbot.jobs.service import Service
from hubbot.jobs.supervisor import _pump, worker_env, worker_settings
from tests.jobkit import linear, make_settings

# Not shaped like Hub tokens, so only the registry of known secrets can catch them.
SERVICE = "canary-service-4b1d9e77c2"
WEBHOOK = "canary-webhook-81f0aa3e5d"
USER = "canary-user-c0ffee1234"
CANARIES = (SERVICE, WEBHOOK, USER)


class EchoHub(BaseHTTPRequestHandler):
    """A Hub that knows one user and fails every other call with an error quoting the request's
    Authorization header (as some proxies and misconfigured gateways do)."""

    def _answer(self) -> None:
        auth = self.headers.get("Authorization", "")
        if self.path.startswith("/api/whoami") and auth == f"Bearer {USER}":
            status, body = 200, {"type": "user", "name": "carol", "orgs": []}
        else:
            status, body = 400, {"error": f"bad request {self.path}; request headers: Authorization: {auth}; "
                                          f"token={auth.partition(' ')[2]}"}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_HEAD = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def echo_hub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), EchoHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def failing_hub_call(settings, parsed, hub, device=None):
    """Planning as the worker does it, with a Hub call (made with the token that would publish)
    that fails quoting the token it sent."""
    from huggingface_hub import HfApi

    opts = hub_options(settings, hub.token, write=True)
    HfApi(endpoint=opts.endpoint, token=opts.token).model_info("org/secret-model")


def leaks(text: str) -> list[str]:
    return [c for c in CANARIES if c in text]


def test_no_canary_reaches_the_store_logs_files_or_answers(echo_hub, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    settings = make_settings(tmp_path, service=True, hub_endpoint=echo_hub, hub_token=SERVICE, webhook_secret=WEBHOOK,
                             ui=False)
    service = Service(settings)
    client = TestClient(create_app(settings, service=service, background=False), raise_server_exceptions=False)
    answers: list[str] = []

    def call(method: str, path: str, **kw) -> dict:
        r = client.request(method, path, headers={"Authorization": f"Bearer {USER}"}, **kw)
        answers.append(r.text + json.dumps(dict(r.headers)))
        return r.json()

    # Planning against the Hub fails at validation and submission; the Hub's error quotes the token.
    recipe = linear("org/secret-model", "org/other-model")
    v = call("POST", "/api/validate", json={"recipe": recipe})
    assert not v["ok"] and any("request headers: Authorization: Bearer ***" in p for p in v["problems"]), v
    call("POST", "/api/jobs", json={"recipe": recipe, "target": "carol/merged"})
    logging.getLogger("hubbot.test").warning("a message quoting %s and %s", USER, f"Bearer {SERVICE}")

    # Jobs that fail in the worker: one with the user's token, one publishing with the service's.
    monkeypatch.setattr(worker, "plan_with", failing_hub_call)
    for owner, token, source in (("carol", USER, "user"), ("hub-user:1", None, "service")):
        values = {"id": f"job-{source}", "owner": owner, "recipe": recipe, "recipe_hash": "h", "dedup_key": source,
                  "target": "carol/merged", "options": {"private": False, "pr": False, "device": None,
                                                        "shard_bytes": settings.shard_bytes},
                  "sources": [], "token_source": source, "notify": None}
        service.store.add_job(values, settings.limits, lambda row: True)
        row = service.store.claim(f"claim-{source}", 60, held_tokens={values["id"]}, running_per_owner=9)
        assert worker.run_job(settings, service.store, row["id"], row["claim"], token=token) == "failed"
        error = service.get(row["id"]).error
        assert "Authorization: Bearer ***" in error and "token=***" in error, error

    call("GET", "/api/jobs/job-user")
    call("GET", "/api/jobs/job-user/log")
    call("GET", "/api/jobs")
    answers.append(client.get("/api/health").text)

    found = {"answers": leaks("\n".join(answers)), "log records": leaks(caplog.text)}
    for path in Path(settings.data_dir).rglob("*"):
        if path.is_file():
            found[str(path.relative_to(settings.data_dir))] = [c for c in CANARIES if c.encode() in path.read_bytes()]
    assert not any(found.values()), found
    assert "Bearer ***" in caplog.text


def test_workers_get_only_the_secrets_their_job_needs(tmp_path):
    settings = make_settings(tmp_path, service=True, hub_token=SERVICE, webhook_secret=WEBHOOK)
    for source, token in (("user", None), (None, None), ("service", SERVICE)):
        sent = json.dumps(worker_settings(settings, source).to_dict())
        assert WEBHOOK not in sent and (SERVICE in sent) == (token is not None), source
    local = make_settings(tmp_path, hub_token=SERVICE)
    assert worker_settings(local, None).hub_token == SERVICE, "locally the token is the machine user's own login"

    env = worker_env({"HF_TOKEN": SERVICE, "HUGGING_FACE_HUB_TOKEN": SERVICE, "HUBBOT_WEBHOOK_SECRET": WEBHOOK,
                      "AWS_SECRET_ACCESS_KEY": "x", "HF_TOKEN_PATH": "/x", "PATH": "/bin",
                      "TOKENIZERS_PARALLELISM": "false", "HF_ENDPOINT": "http://hub"}, local=False)
    assert env == {"PATH": "/bin", "TOKENIZERS_PARALLELISM": "false", "HF_ENDPOINT": "http://hub",
                   "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1"}


def test_worker_output_is_redacted_into_worker_log(tmp_path):
    redact.remember(SERVICE, USER)
    read, write = os.pipe()
    with os.fdopen(write, "wb") as out:
        out.write(f"Traceback ...\nHTTPError: 401 for headers {{'authorization': 'Bearer {SERVICE}'}}\n{USER}\n"
                  "hf_abcdefghijklmnopqrstuvwxyz01234567 in a URL\n".encode())
    _pump(os.fdopen(read, "rb"), tmp_path / "worker.log")
    text = (tmp_path / "worker.log").read_text()
    assert not leaks(text) and "hf_abcdefghijklmnopqrstuvwxyz01234567" not in text and text.count("***") == 3, text


def test_redaction_keeps_ordinary_text():
    redact.remember("short", None, "")  # too short to be a secret, and nothing
    for text in ("send 'Authorization: Bearer <your Hugging Face token>'", "a short recipe", "tokenizer.json",
                 "model: org/hf_llama2chat7b"):
        assert redact.redact(text) == text


def test_log_records_keep_their_arguments_and_lose_their_secrets(capsys):
    """A record's arguments survive redaction, so formatters that unpack them (uvicorn's access
    log: every request line failed with a logging error) format it; a secret among them is blanked."""
    from uvicorn.logging import AccessFormatter

    redact.install_log_redaction()
    redact.remember(SERVICE)
    log = logging.getLogger("uvicorn.access")
    handler = logging.StreamHandler()
    handler.setFormatter(AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s', use_colors=False))
    log.addHandler(handler)
    level = log.level
    log.setLevel(logging.INFO)
    try:
        for path in ("/api/jobs", f"/api/jobs?token={SERVICE}"):
            log.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", path, "1.1", 200)
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    err = capsys.readouterr().err
    assert "Logging error" not in err and not leaks(err), err
    assert '127.0.0.1:5000 - "GET /api/jobs HTTP/1.1" 200' in err and '"GET /api/jobs?token=*** HTTP/1.1" 200' in err
    record = log.makeRecord("x", logging.INFO, __file__, 1, "status %d for %s", (401, f"Bearer {SERVICE}"), None)
    assert record.args == (401, "Bearer ***") and record.getMessage() == "status 401 for Bearer ***"
