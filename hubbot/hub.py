"""How hubbot talks to the Hub: client settings, error translation, namespace checks, retries.

Every Hub failure becomes a SourceError or HubError that names the repo and says what to do, or
a TransientError when the Hub kept failing in ways that pass.
The token travels in memory only; nothing here logs or stores it.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TypeVar

from .errors import HubbotError, HubError, SourceError, TransientError

log = logging.getLogger(__name__)
T = TypeVar("T")
RETRY_STATUSES = {408, 429, 500, 502, 503, 504}


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
    """Call `fn`, retrying with jittered exponential backoff only what passes: timeouts, answers
    cut short, 408/429/5xx (TransientError when the retries run out). A Hub that cannot be
    reached at all (offline mode, a name that does not resolve, a refused connection) raises
    `error` at once with advice; other HTTP errors raise as they are, for the caller to describe."""
    from huggingface_hub.errors import HfHubHTTPError

    network = transport_errors()
    for attempt in range(opts.retries + 1):
        try:
            return fn()
        except (*network, HfHubHTTPError, _Transient) as exc:
            unreachable = unreachable_reason(exc, opts)
            if unreachable:
                raise error(f"{what}: {unreachable}") from None
            status = getattr(getattr(exc, "response", None), "status_code", None)
            if not (isinstance(exc, (*network, _Transient)) or status in RETRY_STATUSES):
                raise
            if attempt == opts.retries:
                raise TransientError(f"{what}: the Hub did not answer after {opts.retries + 1} tries "
                                     f"({_short(exc)}); try again later") from None
            delay = _retry_after(exc) or opts.backoff * (2**attempt) * (0.5 + random.random())
            log.info("retrying %s in %.1fs after %s", what, delay, _short(exc))
            time.sleep(delay)
    raise AssertionError("unreachable")


def unreachable_reason(exc: BaseException, opts: HubOptions) -> str | None:
    """Why the Hub cannot be reached at all, with what to do; None for failures that may pass.

    Retrying these only makes the user wait: the network, the host name or the offline switch
    will not change within a few seconds."""
    from huggingface_hub.errors import OfflineModeIsEnabled

    endpoint = opts.endpoint or _default_endpoint()
    for e in _chain(exc):
        if isinstance(e, OfflineModeIsEnabled):
            return ("HF_HUB_OFFLINE is set, so the Hub is not contacted; unset HF_HUB_OFFLINE to read Hub models "
                    "or publish, or name local folders in the recipe")
        if isinstance(e, socket.gaierror):
            return (f"cannot reach the Hub at {endpoint}: its host name does not resolve (no network, or a wrong "
                    "HF_ENDPOINT); check the connection and HF_ENDPOINT")
        if isinstance(e, ConnectionRefusedError):
            return (f"cannot reach the Hub at {endpoint}: the connection was refused; check HF_ENDPOINT and any "
                    "proxy settings")
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and everything it was raised from or while handling."""
    out: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and all(e is not seen for seen in out):
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


def _default_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _retry_after(exc: BaseException) -> float | None:
    """The wait a 429 or 503 asks for in its Retry-After header (seconds), capped at a minute."""
    headers = getattr(getattr(exc, "response", None), "headers", None) or {}
    try:
        return min(60.0, max(0.0, float(headers.get("retry-after", ""))))
    except ValueError:
        return None


def _short(exc: BaseException) -> str:
    """The first line of an exception's message: Hub errors append request ids and bodies."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def quiet_duplicate_logs() -> None:
    """huggingface_hub prints its warnings with a handler of its own and also passes them to the
    root logger; once a program configures logging, each would be printed twice."""
    logging.getLogger("huggingface_hub").propagate = False


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
        me = with_retries(lambda: opts.api().whoami(), "checking the token", opts, HubError)
    except HfHubHTTPError as exc:
        raise HubError(describe(exc, "checking the token")) from None
    orgs = {o["name"] for o in me.get("orgs", []) if o.get("roleInOrg", "write") in ("admin", "write", "contributor")}
    return me["name"], {me["name"], *orgs}


def is_repo_id(text: str, *, namespaced: bool = False) -> bool:
    """Whether `text` is a Hub repo id (`name` or `namespace/name`; with `namespaced` only the
    latter) by the Hub client's own rules, so hubbot accepts exactly the names the Hub does."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if namespaced and text.count("/") != 1:
        return False
    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def check_push_target(repo_id: str, opts: HubOptions) -> str:
    """Refuse, before any work, a target the token does not own. Returns the user name."""
    if not is_repo_id(repo_id, namespaced=True):
        raise HubError(f"push target {repo_id!r}: write it as namespace/name, e.g. your-name/my-merge")
    user, allowed = owned_namespaces(opts)
    namespace = repo_id.split("/")[0]
    if namespace not in allowed:
        raise HubError(f"push target {repo_id}: this token (user {user}) cannot write to '{namespace}'; "
                       f"use one of: {', '.join(sorted(allowed))}")
    return user
