"""The few Hub calls the service itself makes: head commits (watch polling), discussion
replies (the bot) and whoami (API callers). One small class so tests can stand in for it."""

from __future__ import annotations

from ..hub import HubOptions
from .settings import Settings


class HubClient:
    """Hub calls made with the service's own token (or the caller's, for whoami)."""

    def __init__(self, settings: Settings):
        self.opts = HubOptions(token=settings.hub_token, endpoint=settings.hub_endpoint)

    def _api(self, token: str | None = None):
        return HubOptions(token=token or self.opts.token, endpoint=self.opts.endpoint).api()

    def head(self, repo_id: str, revision: str | None) -> str:
        """The commit sha `revision` (default branch when None) of a model repo points at."""
        return self._api().model_info(repo_id, revision=revision).sha

    def comment(self, repo_id: str, repo_type: str, num: int, text: str) -> None:
        self._api().comment_discussion(repo_id, num, text, repo_type=repo_type)

    def whoami(self, token: str) -> str:
        """The user name a token belongs to; raises for a bad token."""
        return self._api(token).whoami(token=token)["name"]
