"""The few Hub calls the service itself makes: head commits (watch polling), discussion
replies (the bot), whoami (API callers) and the namespaces a token may publish to. One small
class so tests can stand in for it."""

from __future__ import annotations

import hashlib
import threading
import time

from ..errors import HubUnavailable, Unauthorized
from ..hub import RETRY_STATUSES, HubOptions, transport_errors
from .settings import Settings

WHOAMI_TTL_S = 60.0  # a token's user is asked again after this long (revoked tokens stop working soon)
UNREACHABLE = ("the Hub could not be reached to check your token ({why}); this is not a problem with the "
               "token: try again in a minute")


class HubClient:
    """Hub calls made with the service's own token (or the caller's, for whoami)."""

    def __init__(self, settings: Settings):
        self.opts = HubOptions(token=settings.hub_token, endpoint=settings.hub_endpoint)
        self._who: dict[str, tuple[float, str, frozenset[str]]] = {}  # sha256(token) -> (at, user, namespaces)
        self._lock = threading.Lock()

    def _api(self, token: str | None = None):
        return HubOptions(token=token or self.opts.token, endpoint=self.opts.endpoint).api()

    def head(self, repo_id: str, revision: str | None) -> str:
        """The commit sha `revision` (default branch when None) of a model repo points at."""
        return self._api().model_info(repo_id, revision=revision).sha

    def comment(self, repo_id: str, repo_type: str, num: int, text: str) -> None:
        self._api().comment_discussion(repo_id, num, text, repo_type=repo_type)

    def whoami(self, token: str) -> str:
        """The user name a token belongs to. Raises Unauthorized when the Hub rejects the token
        and HubUnavailable when the Hub cannot be asked."""
        return self._identity(token)[0]

    def namespaces(self, token: str) -> tuple[str, frozenset[str]]:
        """The token's user and the namespaces it may write to (itself and its writable orgs)."""
        return self._identity(token)

    def _identity(self, token: str) -> tuple[str, frozenset[str]]:
        key = hashlib.sha256(token.encode()).hexdigest()
        t = time.monotonic()
        with self._lock:
            hit = self._who.get(key)
            if hit is not None and t - hit[0] < WHOAMI_TTL_S:
                return hit[1], hit[2]
        me = self._ask_whoami(token)
        orgs = {o["name"] for o in me.get("orgs", []) if o.get("roleInOrg", "write") in ("admin", "write", "contributor")}
        found = (me["name"], frozenset({me["name"], *orgs}))
        with self._lock:
            self._who = {k: v for k, v in self._who.items() if t - v[0] < WHOAMI_TTL_S}
            self._who[key] = (t, *found)
        return found

    def _ask_whoami(self, token: str) -> dict:
        from huggingface_hub.errors import HfHubHTTPError

        try:
            return self._api(token).whoami(token=token)
        except transport_errors() as exc:
            raise HubUnavailable(UNREACHABLE.format(why=type(exc).__name__)) from None
        except HfHubHTTPError as exc:
            status = getattr(exc.response, "status_code", None)
            if status in RETRY_STATUSES:
                raise HubUnavailable(UNREACHABLE.format(why=f"it answered {status}")) from None
            raise Unauthorized("the Hub did not accept this token; create one at "
                               "https://huggingface.co/settings/tokens") from None
