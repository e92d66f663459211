"""The HTTP server: a small JSON API, the Hub webhook endpoint and the Gradio UI on one port,
with the scheduler and the worker supervision running alongside (`hubbot serve`).

Every error of the API has one shape, `{"error": sentence, "problems": [sentences]}`, with the
status that fits (docs/api.md); every answer is redacted of the secrets the process knows.
In service mode a caller is the Hub user behind `Authorization: Bearer <token>`; without one,
a caller is anonymous and sees only finished merges published to public repos.
"""

from __future__ import annotations

import faulthandler
import hmac
import json
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any

from fastapi import BackgroundTasks, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException

from .. import __version__
from ..errors import (
    Conflict,
    Forbidden,
    HubbotError,
    HubUnavailable,
    JobNotFound,
    LimitError,
    PlanError,
    RateLimited,
    RecipeError,
    RequestError,
    SourceError,
    Unauthorized,
)
from ..jobs.ratelimit import RateLimiter
from ..jobs.scheduler import Runtime
from ..jobs.service import Service
from ..jobs.settings import Settings
from ..jobs.webhooks import parse_payload, plan_delivery
from ..redact import install_log_redaction, redact, remember

log = logging.getLogger("hubbot")

STATUS = {JobNotFound: 404, RateLimited: 429, LimitError: 429, Unauthorized: 401, Forbidden: 403, Conflict: 409,
          HubUnavailable: 503, RecipeError: 422, PlanError: 422, SourceError: 422, RequestError: 400}
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
EXIT_GRACE_S = 20.0  # how long a stopped `hubbot serve` may take to exit


class RedactedJSON(JSONResponse):
    """Every JSON answer, with known secrets and token-shaped strings blanked."""

    def render(self, content: Any) -> bytes:
        return redact(json.dumps(content, ensure_ascii=False, allow_nan=False, default=str)).encode()


def error_response(status: int, error: str, problems: list[str] | None = None,
                   headers: dict[str, str] | None = None) -> RedactedJSON:
    """The one error shape of the API."""
    return RedactedJSON({"error": error, "problems": list(problems or [error])}, status_code=status, headers=headers)


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SubmitBody(Body):
    recipe: str
    target: str | None = None
    private: bool = False
    pr: bool = False
    flavor: str | None = None  # run on Hugging Face Jobs on this hardware (one the service allows)


class ValidateBody(Body):
    recipe: str


class WatchBody(Body):
    recipe: str
    target: str | None = None
    private: bool = False
    pr: bool = False


class ScheduleBody(WatchBody):
    cron: str


def create_app(settings: Settings, *, service: Service | None = None, background: bool = True,
               limiter: RateLimiter | None = None) -> FastAPI:
    """The app; with `background` its lifespan starts the scheduler and the worker supervisor.
    `limiter` sets the request rates (default: ratelimit.DEFAULT_RATES)."""
    install_log_redaction()
    service = service or Service(settings)
    limiter = limiter or RateLimiter()
    runtime = Runtime(service) if background else None

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        if runtime is not None:
            runtime.start()
        try:
            yield
        finally:
            if runtime is not None:
                runtime.stop()

    app = FastAPI(title="hubbot", version=__version__, lifespan=lifespan, default_response_class=RedactedJSON,
                  description="The hubbot job API: validate recipes, submit and follow merge jobs, watch sources "
                              "and schedule recipes. Errors are {\"error\", \"problems\"} (see docs/api.md).")
    app.state.service = service

    @app.exception_handler(HubbotError)
    async def _hubbot_error(_request: Request, exc: HubbotError) -> JSONResponse:
        status = next((code for kind, code in STATUS.items() if isinstance(exc, kind)), 400)
        retry = getattr(exc, "retry_after", None)
        if getattr(exc, "transient", False):  # the Hub did not answer while planning: not the recipe's fault
            status, retry = 503, retry or 30
        return error_response(status, str(exc), getattr(exc, "problems", None),
                              {"Retry-After": str(int(retry))} if retry is not None else None)

    @app.exception_handler(HTTPException)
    async def _http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [_describe_validation(e) for e in exc.errors()]
        return error_response(422, "the request is not what this endpoint takes: " + problems[0]
                              if len(problems) == 1 else "the request has problems", problems)

    @app.exception_handler(Exception)
    async def _internal(_request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error answering a request", exc_info=exc)
        return error_response(500, f"internal error ({type(exc).__name__}); it has been logged, please report it")

    def caller(request: Request, *, required: bool = True) -> tuple[str | None, str | None]:
        """(owner, token) of an API request. Service mode knows callers by their Hub token
        (checked with whoami, cached briefly). Without a token, a `required` caller gets 401;
        otherwise the caller is anonymous (owner None) and reads public results only."""
        token = bearer(request)
        remember(token)
        if settings.local:
            return None, token
        if not token:
            if not required:
                return None, None
            raise Unauthorized("sign in: send 'Authorization: Bearer <your Hugging Face token>'")
        owner = service.hub.whoami(token)
        service.signed_in(owner, token)
        return owner, token

    def throttle(action: str, request: Request, owner: str | None) -> None:
        limiter.check(action, f"user {owner}" if owner else f"address {client_address(request, settings)}")

    @app.get("/api/health")
    def health() -> dict:
        return {"status": "ok", "version": __version__, "mode": settings.mode, "jobs": service.store.counts()}

    @app.get("/api/jobs")
    def list_jobs(request: Request, limit: int = Query(50, ge=1, le=500)) -> list[dict]:
        owner, _ = caller(request, required=False)
        return [asdict(j) for j in service.list(owner, limit)]

    @app.post("/api/jobs", status_code=201)
    def submit(body: SubmitBody, request: Request) -> dict:
        owner, token = caller(request)
        throttle("submit", request, owner)
        return asdict(service.submit(body.recipe, owner=owner, target=body.target, private=body.private,
                                     pr=body.pr, token=token, flavor=body.flavor))

    @app.post("/api/validate")
    def validate(body: ValidateBody, request: Request) -> dict:
        owner, token = caller(request, required=False)
        throttle("validate", request, owner)
        return asdict(service.validate(body.recipe, token=token))

    @app.get("/api/jobs/{job_id}")
    def get_job(job_id: str, request: Request) -> dict:
        owner, _ = caller(request, required=False)
        return asdict(service.get(job_id, owner))

    @app.get("/api/jobs/{job_id}/log")
    def job_log(job_id: str, request: Request, since: int = Query(0, ge=0)) -> dict:
        owner, _ = caller(request, required=False)
        lines = service.log(job_id, since, owner)
        return {"lines": lines, "next": since + len(lines)}

    @app.post("/api/jobs/{job_id}/cancel")
    def cancel(job_id: str, request: Request) -> dict:
        owner, token = caller(request)
        return asdict(service.cancel(job_id, owner, token))

    @app.get("/api/watches")
    def list_watches(request: Request) -> list[dict]:
        owner, _ = caller(request)
        return service.watches(owner)

    @app.post("/api/watches", status_code=201)
    def watch(body: WatchBody, request: Request) -> dict:
        owner, token = caller(request)
        throttle("submit", request, owner)
        return service.watch(body.recipe, owner=owner, target=body.target, pr=body.pr, private=body.private,
                             token=token)

    @app.delete("/api/watches/{watch_id}")
    def unwatch(watch_id: str, request: Request) -> dict:
        owner, _ = caller(request)
        return service.unwatch(watch_id, owner)

    @app.get("/api/schedules")
    def list_schedules(request: Request) -> list[dict]:
        owner, _ = caller(request)
        return service.schedules(owner)

    @app.post("/api/schedules", status_code=201)
    def schedule(body: ScheduleBody, request: Request) -> dict:
        owner, _ = caller(request)
        throttle("submit", request, owner)
        return service.schedule(body.recipe, body.cron, owner=owner, target=body.target, pr=body.pr,
                                private=body.private)

    @app.delete("/api/schedules/{schedule_id}")
    def unschedule(schedule_id: str, request: Request) -> dict:
        owner, _ = caller(request)
        return service.unschedule(schedule_id, owner)

    @app.post("/webhooks/hub")
    async def hub_webhook(request: Request, tasks: BackgroundTasks) -> JSONResponse:
        check_secret(settings.webhook_secret, request.headers.get("x-webhook-secret"))
        try:
            data = await request.json()
        except ValueError:
            raise HTTPException(400, "the delivery is not JSON") from None
        summary, work = await run_in_threadpool(plan_delivery, service, parse_payload(data))
        if work is not None:
            tasks.add_task(work)
        return RedactedJSON(summary, status_code=202 if work is not None else 200)

    @app.api_route("/api/{rest:path}", methods=list(METHODS), include_in_schema=False)
    @app.api_route("/webhooks/{rest:path}", methods=list(METHODS), include_in_schema=False)
    def unknown_route(request: Request, rest: str) -> JSONResponse:
        """Unknown API paths answer 404 and known paths asked with another method 405 (with
        Allow), in the API's error shape, even where the UI is mounted at /."""
        path = request.url.path
        allowed = sorted({m for r in app.routes if isinstance(r, APIRoute) and r.endpoint is not unknown_route
                          and r.path_regex.match(path) for m in r.methods})
        if allowed:
            return error_response(405, f"{request.method} is not allowed on {path}; use {', '.join(allowed)}",
                                  headers={"Allow": ", ".join(allowed)})
        return error_response(404, f"there is no API route {path}; see docs/api.md or /docs")

    return _with_ui(app, service, settings) if settings.ui else app


def _describe_validation(error: dict) -> str:
    """One sentence for a FastAPI/pydantic request problem, naming the field."""
    where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
    kind = error.get("type", "")
    if kind == "json_invalid":
        return ("the body is not valid JSON; send JSON such as {\"recipe\": \"<the recipe YAML as a string>\"} "
                "with Content-Type: application/json")
    if kind == "missing":
        return f"{where}: missing"
    if kind == "extra_forbidden":
        return f"{where}: unknown field"
    if kind == "model_attributes_type" or (kind == "dict_type" and where == "body"):
        return "the body must be a JSON object such as {\"recipe\": \"<the recipe YAML as a string>\"}"
    return f"{where}: {error.get('msg', 'invalid')}"


def client_address(request: Request, settings: Settings) -> str:
    """The caller's address. On a Space every request comes through the Hub's proxy, which puts
    the client first in X-Forwarded-For; elsewhere that header is anyone's to forge."""
    forwarded = request.headers.get("x-forwarded-for", "").split(",")[0].strip()
    if settings.space_id and forwarded:
        return forwarded
    return request.client.host if request.client else "unknown"


def bearer(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    return auth[7:].strip() or None if auth.lower().startswith("bearer ") else None


def check_secret(expected: str | None, given: str | None) -> None:
    """401 without the X-Webhook-Secret header, 403 with a wrong one or when webhooks are off."""
    if expected is None:
        raise HTTPException(403, "webhooks are off: this service has no webhook secret (set HUBBOT_WEBHOOK_SECRET)")
    if not given:
        raise HTTPException(401, "missing X-Webhook-Secret header")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(403, "wrong webhook secret")


def _with_ui(app: FastAPI, service: Service, settings: Settings) -> FastAPI:
    """Mount the Gradio UI at / when hubbot.ui is present; otherwise serve the API alone."""
    try:
        from .ui import build_ui, launch_options
    except ModuleNotFoundError as exc:
        if exc.name != "hubbot.app.ui":
            raise
        log.warning("hubbot.ui is not available; serving the API and webhooks only")
        return app
    import gradio as gr
    from starlette.middleware import Middleware
    from starlette.routing import Mount

    app = gr.mount_gradio_app(app, build_ui(service, settings), path="/", **launch_options())
    ui = next(r.app for r in reversed(app.routes) if isinstance(r, Mount))
    ui.user_middleware.append(Middleware(OAuthSignIn, service=service))  # innermost: after Gradio's sessions
    return app


class OAuthSignIn:
    """Middleware of the Gradio app: a request from a signed-in OAuth session hands its user's token to
    `Service.signed_in` (memory only), so their jobs waiting since a restart are followed again. It sits
    inside Gradio's session middleware, which has decoded the session by then (`signed_in` looks at a user's
    jobs once a while however many requests a page makes)."""

    def __init__(self, app: Any, service: Service):
        self.app, self.service = app, service

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and (session := scope.get("session")):
            info = session.get("oauth_info") or {}
            user = (info.get("userinfo") or {}).get("preferred_username")
            fresh = info.get("expires_at") is None or info["expires_at"] > time.time()
            if user and info.get("access_token") and fresh:
                await run_in_threadpool(self.service.signed_in, user, info["access_token"])
        await self.app(scope, receive, send)


def serve(settings: Settings) -> None:
    """`hubbot serve`: the app, the scheduler and the workers in one process tree."""
    import uvicorn

    app = create_app(settings)
    print(f"hubbot {settings.mode} mode on http://{settings.host}:{settings.port} (data in {settings.data_dir})",
          flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info")
    # Stopped: a thread that keeps the interpreter from exiting (a tick stuck in a call) must not keep a
    # stopped server alive; after a grace period its stack is printed and the process exits.
    faulthandler.dump_traceback_later(EXIT_GRACE_S, exit=True)
