"""Candidate merges and their scores: one after another on this machine, or fanned out as tasks
over a Ray cluster.

Soups and the merge search decide what to try and keep the search state on the driver; a fanout
only turns candidate recipes into scores. On Ray each candidate is one task that opens its
sources, merges into a work folder of its own, scores it and deletes it, with a GPU requested
when the cluster has one. Nothing but recipes and scores crosses the cluster, so an interrupted
distributed search resumes from its state file like a local one.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..errors import Cancelled, HubbotError, MergeError, PlanError, RecipeError
from ..merge import engine
from ..merge.plan import Opener, build
from ..recipe.merge import parse
from .evaluate import Scorer

Outcome = tuple["float | None", "str | None"]  # (score, None) or (None, why the candidate failed)


def merge_and_score(recipe: str, score: Scorer, folder: Path, *, allow_local: bool, opener: Opener | None,
                    device: str | None, cancel: threading.Event | None = None) -> Outcome:
    """Merge one candidate recipe into `folder`, score it and delete it. A candidate that cannot
    be planned, merged or scored finitely is an outcome with its reason, not an error."""
    shutil.rmtree(folder, ignore_errors=True)
    try:
        plan = build(parse(recipe, allow_local=allow_local), opener=opener)
        engine.run(plan, folder, device=device, cancel=cancel)
        value = score(folder)
    except Cancelled:
        raise
    except (RecipeError, PlanError, MergeError) as exc:
        return None, str(exc).splitlines()[0]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return (value, None) if math.isfinite(value) else (None, f"{score.metric} is {value}")


class Fanout(Protocol):
    """Scores a batch of candidate recipes; one outcome per recipe, in order."""

    def map(self, recipes: list[str]) -> list[Outcome]: ...


@dataclass
class RayFanout:
    """Each candidate a Ray task. `address` is `auto` (a running cluster, or a local instance
    started for this search), or a cluster address (`ray://host:10001`, `host:6379`)."""

    address: str
    score: Scorer
    allow_local: bool = True
    hub: Any = None  # HubOptions for Hub sources, passed to each task
    cpus_per_task: float = 1
    workers: set[str] = field(default_factory=set)  # where candidates ran: "node:pid", for reports

    def __post_init__(self) -> None:
        try:
            import ray
        except ImportError:
            raise HubbotError("fanning candidates out over Ray needs the 'ray' package: pip install 'hubbot[ray]'") \
                from None
        if not ray.is_initialized():
            options = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
            if self.address != "auto":
                _check_reachable(self.address)  # Ray itself waits minutes before giving up on an address
            try:
                ray.init(address=self.address, **options)
            except ConnectionError as exc:
                if self.address != "auto":
                    raise HubbotError(f"could not reach the Ray cluster at {self.address!r} ({exc}); check the "
                                      "address, or pass --ray auto for a local instance") from None
                ray.init(**options)  # no cluster running: a local instance on this machine's CPUs
        self._ray = ray
        gpus = ray.cluster_resources().get("GPU", 0)
        self.gpus_per_task = 1 if gpus >= 1 else 0
        self._task = ray.remote(_ray_candidate).options(num_cpus=self.cpus_per_task, num_gpus=self.gpus_per_task,
                                                        max_retries=1)
        self._score = ray.put(self.score)

    def map(self, recipes: list[str]) -> list[Outcome]:
        device = "cuda" if self.gpus_per_task else "cpu"
        refs = [self._task.remote(r, self._score, self.allow_local, self.hub, device, self.cpus_per_task)
                for r in recipes]
        outcomes = []
        for value, error, where in self._ray.get(refs):
            self.workers.add(where)
            outcomes.append((value, error))
        return outcomes


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds, with what to do, when nothing listens at a cluster address."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise HubbotError(f"Ray address {address!r}: write it as host:port or ray://host:port, or use auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise HubbotError(f"could not reach the Ray cluster at {address!r} ({exc.strerror or exc}); start it with "
                          "'ray start --head' there, check the address, or pass --ray auto for a local instance") \
            from None


def _ray_candidate(recipe: str, score: Scorer, allow_local: bool, hub: Any, device: str,
                   threads: float) -> tuple[float | None, str | None, str]:
    """One candidate on a Ray worker: its own sources, work folder and thread budget."""
    import torch

    from ..sources import caching_opener

    torch.set_num_threads(max(1, int(threads)))
    with tempfile.TemporaryDirectory(prefix="hubbot-candidate-") as tmp:
        value, error = merge_and_score(recipe, score, Path(tmp) / "candidate", allow_local=allow_local,
                                       opener=caching_opener(allow_local=allow_local, hub=hub), device=device)
    return value, error, f"{socket.gethostname()}:{os.getpid()}"
