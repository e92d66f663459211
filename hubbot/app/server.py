"""The HTTP server: a small JSON API, the Hub webhook endpoint and the Gradio UI on one port,
with the scheduler and the worker supervision running alongside (`hubbot serve`)."""

from __future__ import annotations

import hmac
import logging
from contextlib import asynccontextmanager
from dataclasses import asdict

from fastapi import BackgroundTasks, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from .. import __version__
from ..errors import Forbidden, HubbotError, JobNotFound, LimitError, PlanError, RecipeError, RequestError, SourceError
from ..jobs.scheduler import Runtime
from ..jobs.service import Service
from ..jobs.settings import Settings
from ..jobs.webhooks import parse_payload, plan_delivery

log = logging.getLogger("hubbot")

STATUS = {JobNotFound: 404, LimitError: 429, Forbidden: 403, RecipeError: 422, PlanError: 422, SourceError: 422,
          RequestError: 400}


class SubmitBody(BaseModel):
    recipe: str
    target: str | None = None
    private: bool = False
    pr: bool = False
    flavor: str | None = None  # run on Hugging Face Jobs on this hardware (one the service allows)


class ValidateBody(BaseModel):
    recipe: str


def create_app(settings: Settings, *, service: Service | None = None, background: bool = True) -> FastAPI:
    """The app; with `background` its lifespan starts the scheduler and the worker supervisor."""
    service = service or Service(settings)
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

    app = FastAPI(title="hubbot", version=__version__, lifespan=lifespan)
    app.state.service = service

    @app.exception_handler(HubbotError)
    async def _hubbot_error(_request: Request, exc: HubbotError) -> JSONResponse:
        status = next((code for kind, code in STATUS.items() if isinstance(exc, kind)), 400)
        return JSONResponse({"error": str(exc), "problems": getattr(exc, "problems", [str(exc)])}, status_code=status)

    @app.exception_handler(HTTPException)
    async def _http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

    def caller(request: Request) -> tuple[str | None, str | None]:
        """(owner, token) of an API request. Service mode needs a Hub token naming the user."""
        token = bearer(request)
        if settings.local:
            return None, token
        if not token:
            raise HTTPException(401, "sign in: send 'Authorization: Bearer <your Hugging Face token>'")
        try:
            return service.hub.whoami(token), token
        except Exception:
            raise HTTPException(401, "the Hub did not accept this token; create one at "
                                     "https://huggingface.co/settings/tokens") from None

    @app.get("/api/health")
    def health() -> dict:
        return {"status": "ok", "version": __version__, "mode": settings.mode, "jobs": service.store.counts()}

    @app.get("/api/jobs")
    def list_jobs(owner: str | None = None, limit: int = 50) -> list[dict]:
        return [asdict(j) for j in service.list(owner, max(1, min(limit, 500)))]

    @app.post("/api/jobs", status_code=201)
    def submit(body: SubmitBody, request: Request) -> dict:
        owner, token = caller(request)
        return asdict(service.submit(body.recipe, owner=owner, target=body.target, private=body.private,
                                     pr=body.pr, token=token, flavor=body.flavor))

    @app.post("/api/validate")
    def validate(body: ValidateBody, request: Request) -> dict:
        return asdict(service.validate(body.recipe, token=bearer(request)))

    @app.get("/api/jobs/{job_id}")
    def get_job(job_id: str) -> dict:
        return asdict(service.get(job_id))

    @app.get("/api/jobs/{job_id}/log")
    def job_log(job_id: str, since: int = 0) -> dict:
        lines = service.log(job_id, since)
        return {"lines": lines, "next": since + len(lines)}

    @app.post("/api/jobs/{job_id}/cancel")
    def cancel(job_id: str, request: Request) -> dict:
        owner, _ = caller(request)
        return asdict(service.cancel(job_id, owner))

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
        return JSONResponse(summary, status_code=202 if work is not None else 200)

    return _with_ui(app, service, settings) if settings.ui else app


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

    return gr.mount_gradio_app(app, build_ui(service, settings), path="/", **launch_options())


def serve(settings: Settings) -> None:
    """`hubbot serve`: the app, the scheduler and the workers in one process tree."""
    import uvicorn

    app = create_app(settings)
    print(f"hubbot {settings.mode} mode on http://{settings.host}:{settings.port} (data in {settings.data_dir})",
          flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info")
