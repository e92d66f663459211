"""Typed errors. Every message names the field, model or tensor at fault and what to do."""

from __future__ import annotations


class HubbotError(Exception):
    """Base of every error hubbot raises on purpose; the CLI prints these without a traceback.

    `problems` lists each issue on its own, so every front end (CLI, JSON API, UI) shows them
    the same way; most errors have one, the message itself.
    """

    def __init__(self, message: str = "", problems: list[str] | None = None):
        self.problems = list(problems) if problems else [message]
        super().__init__(message)


class RecipeError(HubbotError):
    """The recipe text is malformed or asks for something hubbot cannot do.

    `problems` holds every issue found, so a user fixes them all in one round.
    """

    def __init__(self, problems: list[str] | str):
        problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__(
            problems[0] if len(problems) == 1 else "the recipe has problems:\n" + "\n".join(f"- {p}" for p in problems),
            problems,
        )


class PlanError(HubbotError):
    """The models named by a valid recipe cannot be merged as asked (shapes, layers, tensors)."""

    def __init__(self, problems: list[str]):
        super().__init__("the merge cannot be planned:\n" + "\n".join(f"- {p}" for p in problems), problems)


class SourceError(HubbotError):
    """A model could not be opened or read: missing path or repo, bad token, unsupported weights."""


class HubError(HubbotError):
    """A Hub write (create, upload, commit) failed or is not allowed, or the Hub cannot be reached."""


class TransientError(HubbotError):
    """The Hub kept failing in ways that pass (timeouts, 429, 5xx) until the retries ran out.

    Nothing is wrong with the request: the job service runs the job again later.
    """


class EvalError(HubbotError):
    """The text set or the model to evaluate could not be read or run."""


class MergeError(HubbotError):
    """A merge failed while running (non-finite output, disk full, cancelled)."""


class Cancelled(MergeError):
    """The merge was cancelled on request; nothing partial is published."""


class JobNotFound(HubbotError):
    """No job (or watch, or schedule) has the id asked for."""


class LimitError(HubbotError):
    """A submission was refused by a queue limit; the message says which and what to do."""


class Forbidden(HubbotError):
    """The caller may not act on this job (it belongs to someone else)."""


class RequestError(HubbotError):
    """A request to the job service is malformed apart from its recipe (target, cron, options)."""


class Unauthorized(HubbotError):
    """The caller is not signed in, or the Hub rejected the token it sent."""


class Conflict(HubbotError):
    """The request contradicts the record's state (cancelling a job that has already finished)."""


class RateLimited(LimitError):
    """Too many requests from one caller; `retry_after` says in how many seconds to try again."""

    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.retry_after = retry_after


class HubUnavailable(HubbotError):
    """The Hub could not be reached (network, timeout, 5xx): not the caller's fault; retry later."""

    def __init__(self, message: str, retry_after: float = 30.0):
        super().__init__(message)
        self.retry_after = retry_after
