"""Hub webhooks: a push to a watched source re-runs the watch; a discussion comment on the
service's repo with a ```yaml recipe block queues it, and the bot answers in the thread.

Deliveries are `huggingface_hub.WebhookPayload` JSON. Handling is split in two: `plan_delivery`
decides at once what a delivery means (so the HTTP answer says it), and the returned work
(planning against the Hub, replying) runs after the answer is sent.
"""

from __future__ import annotations

import hashlib
import logging
import re
from typing import Any, Callable

import yaml

from ..errors import HubbotError, RequestError
from ..recipe.markdown import yaml_blocks
from .service import Job, Service
from .store import FINAL

log = logging.getLogger("hubbot.jobs")

Work = Callable[[], None]


def parse_payload(data: Any):
    """A WebhookPayload, or RequestError naming what is wrong with the delivery."""
    from huggingface_hub import WebhookPayload
    from pydantic import ValidationError

    try:
        return WebhookPayload.model_validate(data)
    except ValidationError as exc:
        where = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        raise RequestError(f"not a Hub webhook payload ({where})") from None


def plan_delivery(service: Service, payload) -> tuple[dict, Work | None]:
    """What a delivery asks for, as a short summary, and the work to do for it (or None)."""
    scope, action = payload.event.scope, payload.event.action
    if scope == "repo.content" and action in ("create", "update"):
        repo = payload.repo.name
        # The new commit comes from updatedRefs (the payload's head_sha does not read the wire's headSha).
        refs = [(r.ref, r.newSha) for r in payload.updatedRefs or () if r.newSha]
        ids = service.watches_for(repo, refs)
        if not ids:
            return {"ignored": f"no watch follows {repo}"}, None
        shas = ", ".join(sha[:12] for _, sha in refs) or "a new commit"

        def rerun() -> None:
            for watch_id in ids:
                service.rerun_watch(watch_id, f"webhook: {repo} moved to {shas}")

        return {"rerun": ids}, rerun
    if scope == "discussion.comment" and action == "create":
        return _plan_comment(service, payload)
    return {"ignored": f"'{scope}' '{action}' events are not handled"}, None


def _plan_comment(service: Service, payload) -> tuple[dict, Work | None]:
    settings = service.settings
    if settings.bot_repo is None or payload.repo.name != settings.bot_repo:
        return {"ignored": "the comment is not on this service's repo"}, None
    comment, discussion = payload.comment, payload.discussion
    if comment is None or discussion is None or comment.hidden or not comment.content:
        return {"ignored": "no comment text"}, None
    blocks = yaml_blocks(comment.content)
    if not blocks:
        return {"ignored": "the comment has no ```yaml recipe block"}, None
    recipe = blocks[0]
    where = {"repo": payload.repo.name, "repo_type": payload.repo.type, "num": discussion.num}
    owner = f"hub-user:{comment.author.id}"

    def queue() -> None:
        try:
            job = service.submit(recipe, owner=owner, target=_bot_target(service, recipe), notify=where)
        except HubbotError as exc:
            problems = getattr(exc, "problems", None) or [str(exc)]
            _reply(service, where, "I could not queue this recipe:\n\n" + "\n".join(f"- {p}" for p in problems))
            return
        if job.state in FINAL:
            _reply(service, where, "This recipe was merged before. " + outcome(service, job))
        else:
            place = f" (number {job.position} in the queue)" if job.position else ""
            _reply(service, where, f"Queued as job [`{job.id}`]({service.job_url(job.id)}){place}. "
                                   "I will answer here when it finishes.")

    return {"queued_from": f"{payload.repo.name}#{discussion.num}"}, queue


def _bot_target(service: Service, recipe: str) -> str | None:
    """Where a discussion's merge is published: the bot's namespace, named after the recipe's
    `name` (or its hash). None in local mode without a namespace: a local folder."""
    ns = service.settings.bot_namespace
    if ns is None:
        if service.settings.local:
            return None
        raise RequestError("this service has no namespace to publish discussion merges to; "
                           "its operator can set HUBBOT_BOT_NAMESPACE")
    try:
        data = yaml.safe_load(recipe)
    except yaml.YAMLError:
        data = None
    name = data.get("name") if isinstance(data, dict) else None
    slug = re.sub(r"[^\w.-]+", "-", name).strip("-.")[:80] if isinstance(name, str) else ""
    return f"{ns}/{slug or 'merge-' + hashlib.sha256(recipe.encode()).hexdigest()[:8]}"


def outcome(service: Service, job: Job) -> str:
    """One line on how a job ended, for a discussion reply."""
    link = f"[`{job.id}`]({service.job_url(job.id)})"
    if job.state == "done":
        result = job.result or {}
        where = result.get("pr_url") or result.get("url") or result.get("folder") or ""
        return f"Job {link} is done: {where}".rstrip(": ")
    if job.state == "cancelled":
        return f"Job {link} was cancelled."
    return f"Job {link} failed: {job.error}"


def post_reports(service: Service) -> None:
    """Answer in the thread of each finished job that came from a discussion. A reply that
    cannot be posted is logged and not retried, so a broken thread cannot loop."""
    for job, where in service.pending_reports():
        _reply(service, where, outcome(service, job))
        service.mark_reported(job.id)


def _reply(service: Service, where: dict, text: str) -> None:
    try:
        service.hub.comment(where["repo"], where["repo_type"], where["num"], text)
    except Exception as exc:
        log.warning("could not reply in %s discussion #%s: %s", where["repo"], where["num"], exc)
