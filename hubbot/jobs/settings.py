"""Service settings: one typed, frozen object read from the environment and passed down.

Nothing reads the environment after start-up: the server builds `Settings.from_env()` once and
hands it to the store, the scheduler and (as JSON over a pipe) to each worker process.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Mapping

from ..errors import HubbotError
from ..merge.writer import DEFAULT_SHARD_BYTES
from ..recipe.text import MAX_RECIPE_BYTES

Mode = Literal["local", "service"]
Backend = Literal["local", "hf-jobs", "auto"]
BACKENDS: tuple[str, ...] = ("local", "hf-jobs", "auto")
# Hugging Face Jobs flavours a job may run on unless HUBBOT_JOBS_FLAVORS says otherwise: CPU for small merges,
# single GPUs for large ones (prices: `hf jobs hardware`, or HfApi.list_jobs_hardware()).
JOBS_FLAVORS: tuple[str, ...] = ("cpu-basic", "cpu-upgrade", "a10g-small", "a10g-large", "a100-large")


@dataclass(frozen=True)
class Limits:
    """Queue limits. Per-owner caps apply to signed-in owners; the queue cap to everyone."""

    queued_per_owner: int = 5
    running_per_owner: int = 1
    queue: int = 100
    recipe_bytes: int = MAX_RECIPE_BYTES


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    store_url: str = field(repr=False)  # may hold a database password
    mode: Mode = "local"
    worker_slots: int = 1
    hub_endpoint: str = "https://huggingface.co"
    hub_token: str | None = field(default=None, repr=False)
    webhook_secret: str | None = field(default=None, repr=False)
    limits: Limits = field(default_factory=Limits)
    device: str | None = None
    threads: int | None = None  # kernel threads per merge; None: the available CPUs shared among the slots
    shard_bytes: int = DEFAULT_SHARD_BYTES
    dispatch_seconds: float = 1.0
    poll_seconds: float = 600.0
    lease_seconds: float = 60.0
    max_attempts: int = 3
    retry_seconds: float = 30.0
    keep_logs_days: float = 30.0
    keep_outputs_days: float = 7.0
    keep_tmp_hours: float = 24.0
    host: str = "127.0.0.1"
    port: int = 7860
    public_url: str = "http://127.0.0.1:7860"
    bot_repo: str | None = None
    bot_namespace: str | None = None
    ui: bool = True
    recipes_dir: Path | None = None  # the gallery folder; None: recipes/ next to the hubbot package
    recipes_dataset: str | None = None  # the Hub dataset that sharing a recipe opens pull requests on
    space_id: str | None = None  # owner/name of the Space this runs on, where recipes can also be proposed
    ray_address: str | None = None  # soups' and searches' candidates fan out over this Ray cluster ("auto" or an address)
    backend: Backend = "local"  # where jobs merge: this machine's workers, Hugging Face Jobs, or Jobs when too big
    jobs_flavors: tuple[str, ...] = JOBS_FLAVORS  # the Jobs hardware flavours jobs may use, cheapest picked first
    jobs_package: str | None = None  # what a remote job installs (pip requirement); None: hubbot==<this version>

    @property
    def local(self) -> bool:
        """Local mode: recipes may read local folders and results may stay in a folder."""
        return self.mode == "local"

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    @property
    def tmp_dir(self) -> Path:
        return self.data_dir / "tmp"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        """Read HUBBOT_* (and the Hub's HF_ENDPOINT, HF_TOKEN, SPACE_ID, SPACE_HOST) variables.

        `overrides` win over the environment (command-line flags); `service=True` forces service
        mode. Paths are made absolute so worker processes agree with the server.
        """
        env = os.environ if env is None else env
        r = _Reader(env)
        service = overrides.pop("service", False)
        data_dir = Path(overrides.pop("data_dir", None) or env.get("HUBBOT_DATA_DIR", "./data")).expanduser().resolve()
        mode: Mode = "service" if service or env.get("SPACE_ID") else "local"
        mode = r.choice("HUBBOT_MODE", ("local", "service"), mode)
        host = r.text("HUBBOT_HOST", "0.0.0.0" if mode == "service" else "127.0.0.1")
        port = r.number("HUBBOT_PORT", int, 7860)
        host, port = overrides.pop("host", None) or host, overrides.pop("port", None) or port
        space_host = env.get("SPACE_HOST")
        public_url = r.text("HUBBOT_PUBLIC_URL", f"https://{space_host}" if space_host else
                            f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}")
        bot_repo = env.get("HUBBOT_BOT_REPO") or env.get("SPACE_ID") or None
        bot_namespace = env.get("HUBBOT_BOT_NAMESPACE") or (bot_repo.split("/")[0] if bot_repo and "/" in bot_repo
                                                           else None)
        settings = cls(
            data_dir=data_dir,
            store_url=r.text("HUBBOT_STORE_URL", f"sqlite:///{data_dir / 'hubbot.db'}"),
            mode=mode,
            worker_slots=r.number("HUBBOT_WORKERS", int, 1, minimum=1),
            hub_endpoint=r.text("HF_ENDPOINT", "https://huggingface.co").rstrip("/"),
            hub_token=env.get("HF_TOKEN") or None,
            webhook_secret=env.get("HUBBOT_WEBHOOK_SECRET") or env.get("WEBHOOK_SECRET") or None,
            limits=Limits(
                queued_per_owner=r.number("HUBBOT_MAX_QUEUED_PER_OWNER", int, Limits.queued_per_owner, minimum=1),
                running_per_owner=r.number("HUBBOT_MAX_RUNNING_PER_OWNER", int, Limits.running_per_owner, minimum=1),
                queue=r.number("HUBBOT_MAX_QUEUE", int, Limits.queue, minimum=1),
                recipe_bytes=r.number("HUBBOT_MAX_RECIPE_BYTES", int, Limits.recipe_bytes, minimum=1,
                                      maximum=MAX_RECIPE_BYTES),
            ),
            device=env.get("HUBBOT_DEVICE") or None,
            threads=r.number("HUBBOT_THREADS", int, None, minimum=1),
            shard_bytes=r.number("HUBBOT_SHARD_BYTES", int, DEFAULT_SHARD_BYTES, minimum=1),
            dispatch_seconds=r.number("HUBBOT_DISPATCH_SECONDS", float, 1.0, minimum=0.05),
            poll_seconds=r.number("HUBBOT_POLL_SECONDS", float, 600.0, minimum=1),
            lease_seconds=r.number("HUBBOT_LEASE_SECONDS", float, 60.0, minimum=1),
            max_attempts=r.number("HUBBOT_MAX_ATTEMPTS", int, 3, minimum=1),
            retry_seconds=r.number("HUBBOT_RETRY_SECONDS", float, 30.0, minimum=0),
            keep_logs_days=r.number("HUBBOT_KEEP_LOGS_DAYS", float, 30.0, minimum=0),
            keep_outputs_days=r.number("HUBBOT_KEEP_OUTPUTS_DAYS", float, 7.0, minimum=0),
            keep_tmp_hours=r.number("HUBBOT_KEEP_TMP_HOURS", float, 24.0, minimum=0),
            host=host,
            port=port,
            public_url=public_url.rstrip("/"),
            bot_repo=bot_repo,
            bot_namespace=bot_namespace,
            ui=r.choice("HUBBOT_UI", ("1", "0"), "1") == "1",
            recipes_dir=Path(env["HUBBOT_RECIPES_DIR"]).expanduser().resolve() if env.get("HUBBOT_RECIPES_DIR") else None,
            recipes_dataset=env.get("HUBBOT_RECIPES_DATASET") or None,
            space_id=env.get("SPACE_ID") or None,
            ray_address=env.get("HUBBOT_RAY_ADDRESS") or None,
            backend=r.choice("HUBBOT_BACKEND", BACKENDS, "local"),
            jobs_flavors=r.names("HUBBOT_JOBS_FLAVORS", JOBS_FLAVORS),
            jobs_package=env.get("HUBBOT_JOBS_PACKAGE") or None,
        )
        return replace(settings, **overrides) if overrides else settings

    def to_dict(self) -> dict:
        """Plain data for a worker process (sent over its stdin, never argv or env)."""
        data = asdict(self)
        data["data_dir"] = str(self.data_dir)
        data["recipes_dir"] = str(self.recipes_dir) if self.recipes_dir else None
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Settings":
        data = dict(data)
        data["data_dir"] = Path(data["data_dir"])
        data["recipes_dir"] = Path(data["recipes_dir"]) if data.get("recipes_dir") else None
        data["limits"] = Limits(**data["limits"])
        data["jobs_flavors"] = tuple(data["jobs_flavors"])
        return cls(**data)


class _Reader:
    """Typed reads of environment variables with errors that name the variable."""

    def __init__(self, env: Mapping[str, str]):
        self.env = env

    def text(self, name: str, default: str) -> str:
        return self.env.get(name) or default

    def number(self, name: str, kind: type, default: Any, minimum: float | None = None,
               maximum: float | None = None) -> Any:
        raw = self.env.get(name)
        if not raw:
            return default
        try:
            value = kind(raw)
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            raise HubbotError(f"{name}={raw!r} is not {what}") from None
        if minimum is not None and value < minimum:
            raise HubbotError(f"{name}={raw!r} must be at least {minimum}")
        if maximum is not None and value > maximum:
            raise HubbotError(f"{name}={raw!r} must be at most {maximum}, hubbot's own limit")
        return value

    def names(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        """A comma-separated list of lower-case names such as hardware flavours."""
        raw = self.env.get(name)
        if not raw:
            return default
        names = tuple(n.strip() for n in raw.split(",") if n.strip())
        bad = [n for n in names if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", n)]
        if bad or not names:
            raise HubbotError(f"{name}={raw!r} must be a comma-separated list of names such as cpu-basic,a10g-small")
        return names

    def choice(self, name: str, allowed: tuple[str, ...], default: str) -> Any:
        raw = self.env.get(name)
        if not raw:
            return default
        if raw not in allowed:
            raise HubbotError(f"{name}={raw!r} must be one of {', '.join(allowed)}")
        return raw
