"""How hubbot talks to the Hub: client settings, error translation, namespace checks, retries.

Every Hub failure becomes a SourceError or HubError that names the repo and says what to do.
The token travels in memory only; nothing here logs or stores it.
"""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TypeVar

from .errors import HubbotError, SourceError

log = logging.getLogger(__name__)
T = TypeVar("T")
RETRY_STATUSES = {408, 429, 500, 502, 503, 504}


class HubError(HubbotError):
    """A Hub write (create, upload, commit) failed or is not allowed."""


@dataclass(frozen=True)
class HubOptions:
    """Client settings for reading and writing the Hub. `repr` hides the token."""

    token: str | None = field(default=None, repr=False)
    endpoint: str | None = None
    cache_dir: Path | None = None
    cache_bytes: int = 20 * 1000**3
    retries: int = 5
    backoff: float = 0.5
    parallel: int = 4

    @classmethod
    def from_env(cls, token: str | None = None) -> "HubOptions":
        from huggingface_hub import get_token

        cache = os.environ.get("HUBBOT_CACHE_DIR")
        return cls(token=token or get_token() or None,
                   endpoint=os.environ.get("HF_ENDPOINT") or None,
                   cache_dir=Path(cache) if cache else None)

    def api(self):
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.endpoint, token=self.token or False)


def describe(exc: Exception, what: str) -> str:
    """A sentence for a Hub client exception about `what` (a repo, revision or file)."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, GatedRepoError):
        return (f"{what} is gated: accept its conditions on the Hub with your account, then sign in "
                "or pass a token that has access")
    if isinstance(exc, RepositoryNotFoundError):
        return (f"{what} was not found on the Hub (or it is private and this token cannot see it); "
                "check the name, or sign in with an account that has access")
    if isinstance(exc, RevisionNotFoundError):
        return f"{what}: that revision does not exist; use a branch, a tag or a commit sha of the repo"
    if isinstance(exc, EntryNotFoundError):
        return f"{what}: file not found in the repo"
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, HfHubHTTPError) and status == 401:
        return f"{what}: the Hub refused the token (401); sign in again or pass a valid token"
    if isinstance(exc, HfHubHTTPError) and status == 403:
        return f"{what}: this token may not do that (403); use a token with write access to the namespace"
    return f"{what}: the Hub request failed ({type(exc).__name__}: {exc})"


def with_retries(fn: Callable[[], T], what: str, opts: HubOptions, error: type[HubbotError] = SourceError) -> T:
    """Call `fn`, retrying transient failures (connection errors, 408/429/5xx) with jittered
    exponential backoff; other failures raise at once. When retries run out, raise `error`."""
    from huggingface_hub.errors import HfHubHTTPError

    network = transport_errors()
    for attempt in range(opts.retries + 1):
        try:
            return fn()
        except (*network, HfHubHTTPError, _Transient) as exc:
            status = getattr(getattr(exc, "response", None), "status_code", None)
            transient = isinstance(exc, (*network, _Transient)) or status in RETRY_STATUSES
            if not transient or attempt == opts.retries:
                if transient:
                    failure = error(f"{what}: the Hub did not answer after {opts.retries + 1} tries "
                                    f"({exc}); try again later")
                    failure.transient = True  # the job service queues the job again later
                    raise failure from None
                raise
            delay = opts.backoff * (2**attempt) * (0.5 + random.random())
            log.info("retrying %s in %.1fs after %s", what, delay, exc)
            time.sleep(delay)
    raise AssertionError("unreachable")


def transport_errors() -> tuple[type[BaseException], ...]:
    """Connection-level errors of the HTTP library the Hub client uses (httpx2, or httpx before it)."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for name in ("httpx2", "httpx"):
        try:
            errors.append(__import__(name).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


class _Transient(Exception):
    """A response that is worth retrying (a short or malformed range answer)."""


def owned_namespaces(opts: HubOptions) -> tuple[str, set[str]]:
    """The token's user name and the namespaces it may write to (itself and its orgs)."""
    from huggingface_hub.errors import HfHubHTTPError

    if not opts.token:
        raise HubError("publishing needs a Hub token: sign in, or set HF_TOKEN")
    try:
        me = opts.api().whoami()
    except HfHubHTTPError as exc:
        raise HubError(describe(exc, "checking the token")) from None
    orgs = {o["name"] for o in me.get("orgs", []) if o.get("roleInOrg", "write") in ("admin", "write", "contributor")}
    return me["name"], {me["name"], *orgs}


def check_push_target(repo_id: str, opts: HubOptions) -> str:
    """Refuse, before any work, a target the token does not own. Returns the user name."""
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise HubError(f"push target {repo_id!r}: write it as namespace/name, e.g. your-name/my-merge")
    user, allowed = owned_namespaces(opts)
    namespace = repo_id.split("/")[0]
    if namespace not in allowed:
        raise HubError(f"push target {repo_id}: this token (user {user}) cannot write to '{namespace}'; "
                       f"use one of: {', '.join(sorted(allowed))}")
    return user
