"""One error contract for the whole JSON API: every failure, on every route, answers
`{"error": sentence, "problems": [sentences]}` with the status that fits it."""

from __future__ import annotations

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from hubbot.app.server import create_app
from hubbot.jobs.ratelimit import Rate, RateLimiter
from hubbot.jobs.service import Service
from tests.jobkit import linear, make_settings
from tests.test_server import FakeHub

ANN = {"Authorization": "Bearer hf_ann"}


def make_client(tmp_path, **overrides) -> tuple[TestClient, Service]:
    overrides.setdefault("ui", False)
    settings = make_settings(tmp_path, **overrides)
    service = Service(settings, hub=FakeHub())
    limiter = RateLimiter({"validate": Rate(60, 3), "submit": Rate(60, 50)})
    app = create_app(settings, service=service, background=False, limiter=limiter)
    return TestClient(app, raise_server_exceptions=False), service


def routes() -> list[tuple[str, str]]:
    """(method, path) of every documented route of the app."""
    settings = make_settings(__import__("pathlib").Path("/nonexistent-routes"), ui=False)
    app = create_app(settings, service=_NoService(settings), background=False)
    return sorted((m, r.path) for r in app.routes if isinstance(r, APIRoute) and r.include_in_schema
                  for m in r.methods)


class _NoService:
    """Enough of a Service to build the app without a data folder."""

    def __init__(self, settings):
        self.settings, self.hub, self.store = settings, FakeHub(), None


def assert_contract(r, status: int | tuple[int, ...]) -> dict:
    statuses = (status,) if isinstance(status, int) else status
    assert r.status_code in statuses, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"error", "problems"}, body
    assert isinstance(body["error"], str) and body["error"]
    assert isinstance(body["problems"], list) and body["problems"] and all(isinstance(p, str) for p in body["problems"])
    return body


def concrete(path: str) -> str:
    return path.replace("{job_id}", "0123456789ab").replace("{watch_id}", "0123456789ab").replace(
        "{schedule_id}", "0123456789ab")


ROUTES = routes()
METHODS = ("GET", "POST", "DELETE", "PUT", "PATCH")


BAD = {"Authorization": "Bearer hf_wrong"}
NOT_JSON = {"content": b"{not json", "headers": {"Content-Type": "application/json"}}
# For each route, a request that must fail (service mode, caller ann), and its status.
FAILING = {
    ("GET", "/api/jobs"): ({"params": {"limit": "abc"}}, 422),
    ("POST", "/api/jobs"): ({"json": {"recipe": "merge_method: linear", "target": "ann/x"}}, 401),
    ("POST", "/api/validate"): (NOT_JSON, 422),
    ("GET", "/api/jobs/{job_id}"): ({}, 404),
    ("GET", "/api/jobs/{job_id}/log"): ({"headers": ANN}, 404),
    ("POST", "/api/jobs/{job_id}/cancel"): ({"headers": ANN}, 404),
    ("GET", "/api/watches"): ({}, 401),
    ("POST", "/api/watches"): ({"json": {"target": "ann/x"}, "headers": ANN}, 422),
    ("DELETE", "/api/watches/{watch_id}"): ({"headers": ANN}, 404),
    ("GET", "/api/schedules"): ({"headers": BAD}, 401),
    ("POST", "/api/schedules"): ({"json": {"recipe": "x", "cron": "every day"}, "headers": ANN}, 400),
    ("DELETE", "/api/schedules/{schedule_id}"): ({"headers": ANN}, 404),
    ("POST", "/webhooks/hub"): ({"json": {}}, 401),
}


def test_every_route_has_a_failing_case():
    assert set(ROUTES) - {("GET", "/api/health")} == set(FAILING), "add the new route to FAILING"


@pytest.mark.parametrize("method,path", sorted(FAILING), ids=[f"{m} {p}" for m, p in sorted(FAILING)])
def test_every_route_fails_in_the_one_shape(method, path, tmp_path):
    """Each route, asked badly, answers an error of the contract's shape with its status."""
    client, _ = make_client(tmp_path, service=True, webhook_secret="s3cret-webhook", hub_token="hf_service_token")
    request, status = FAILING[(method, path)]
    assert_contract(client.request(method, concrete(path), **request), status)


@pytest.mark.parametrize("path", sorted({p for _, p in ROUTES}))
def test_wrong_method_is_405_with_allow(path, tmp_path):
    client, _ = make_client(tmp_path)
    allowed = {m for m, p in ROUTES if p == path}
    for method in METHODS:
        if method in allowed:
            continue
        r = client.request(method, concrete(path))
        body = assert_contract(r, 405)
        assert set(r.headers["allow"].split(", ")) == allowed and method in body["error"]


def test_unknown_routes_are_404_even_under_the_ui(tmp_path):
    client, _ = make_client(tmp_path)
    for method, path in (("GET", "/api/nothing"), ("POST", "/api/jobs/x/y/z"), ("DELETE", "/webhooks/other")):
        body = assert_contract(client.request(method, path), 404)
        assert "no API route" in body["error"]


def test_request_validation_errors_name_the_field(tmp_path):
    client, _ = make_client(tmp_path)
    body = assert_contract(client.post("/api/jobs", json={"target": "ann/x"}), 422)
    assert body["problems"] == ["recipe: missing"]
    body = assert_contract(client.post("/api/jobs", content=b"{", headers={"Content-Type": "application/json"}), 422)
    assert "not valid JSON" in body["error"]
    yaml_body = linear("org/a", "org/b").encode()
    for content_type in ("application/x-yaml", "text/plain"):
        body = assert_contract(client.post("/api/validate", content=yaml_body, headers={"Content-Type": content_type}),
                               422)
        assert "recipe" in body["error"]
    body = assert_contract(client.get("/api/jobs?limit=abc"), 422)
    assert body["problems"][0].startswith("query.limit:")
    assert_contract(client.get("/api/jobs?limit=0"), 422)
    assert_contract(client.get("/api/jobs/x/log?since=-1"), 422)
    body = assert_contract(client.post("/api/jobs", json={"recipe": "x", "colour": "blue"}), 422)
    assert body["problems"] == ["colour: unknown field"]
    body = assert_contract(client.post("/api/jobs", json=["recipe"]), 422)
    assert "JSON object" in body["error"]


def test_conflicts_limits_and_auth_have_their_status(families, tmp_path):
    base, ft1, ft2 = families("llama")
    client, service = make_client(tmp_path)
    job = client.post("/api/jobs", json={"recipe": linear(ft1, ft2)}).json()
    assert client.post(f"/api/jobs/{job['id']}/cancel").json()["state"] == "cancelled"
    body = assert_contract(client.post(f"/api/jobs/{job['id']}/cancel"), 409)
    assert "already ended (cancelled)" in body["error"]

    for _ in range(3):
        assert client.post("/api/validate", json={"recipe": "merge_method: linear"}).status_code == 200
    r = client.post("/api/validate", json={"recipe": "merge_method: linear"})
    body = assert_contract(r, 429)
    assert int(r.headers["retry-after"]) >= 1 and "try again in" in body["error"]

    service_client, _ = make_client(tmp_path / "svc", service=True)
    body = assert_contract(service_client.post("/api/jobs", json={"recipe": "x", "target": "ann/x"}), 401)
    assert "Authorization: Bearer" in body["error"]
    r = service_client.post("/api/jobs", json={"recipe": "x", "target": "ann/x"},
                            headers={"Authorization": "Bearer hf_wrong"})
    assert_contract(r, 401)
    body = assert_contract(service_client.post("/api/jobs", json={"recipe": linear("org/a", "org/b"),
                                                                  "target": "someone-else/x"}, headers=ANN), 403)
    assert "cannot write to 'someone-else'" in body["error"]


def test_a_hub_that_does_not_answer_is_a_503_not_a_bad_recipe(tmp_path, monkeypatch):
    from hubbot.errors import SourceError

    client, service = make_client(tmp_path)

    def unreachable(*args, **kwargs):
        exc = SourceError("org/a: the Hub did not answer after 6 tries (ConnectError)")
        exc.transient = True
        raise exc

    monkeypatch.setattr(service, "submit", unreachable)
    r = client.post("/api/jobs", json={"recipe": "merge_method: linear"})
    assert_contract(r, 503)
    assert int(r.headers["retry-after"]) > 0


def test_an_internal_error_is_a_500_in_the_same_shape(tmp_path, monkeypatch):
    client, service = make_client(tmp_path)
    monkeypatch.setattr(service, "list", lambda *a, **k: 1 / 0)
    body = assert_contract(client.get("/api/jobs"), 500)
    assert "ZeroDivisionError" in body["error"] and "Traceback" not in body["error"]


def test_the_committed_openapi_document_is_current(tmp_path):
    """docs/openapi.json is generated from the app (scripts: `python -m tests.test_api_contract`)."""
    import json
    from pathlib import Path

    committed = json.loads((Path(__file__).resolve().parent.parent / "docs" / "openapi.json").read_text())
    assert committed == openapi_document(), "regenerate docs/openapi.json: python -m tests.test_api_contract"


def openapi_document() -> dict:
    settings = make_settings(__import__("pathlib").Path("/nonexistent-openapi"), ui=False)
    return create_app(settings, service=_NoService(settings), background=False).openapi()


if __name__ == "__main__":
    import json
    from pathlib import Path

    out = Path(__file__).resolve().parent.parent / "docs" / "openapi.json"
    out.write_text(json.dumps(openapi_document(), indent=2, sort_keys=True) + "\n")
    print(f"wrote {out}")
