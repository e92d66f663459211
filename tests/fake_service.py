"""An in-memory stand-in for jobs.Service with the same contract, for unit tests of the page's
callbacks and for looking at the page without a worker. Jobs advance one step per poll."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import datetime, timezone

from hubbot.errors import JobNotFound, RecipeError
from hubbot.recipe.merge import parse


@dataclass
class Job:
    id: str
    owner: str | None
    recipe: str
    recipe_hash: str
    target: str | None
    options: dict
    state: str
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: dict = field(default_factory=dict)
    result: dict | None = None
    error: str | None = None
    position: int | None = None
    attempts: int = 0


@dataclass
class Validation:
    ok: bool
    summary: str
    problems: list[str]
    warnings: list[str]
    models: list[dict]
    output_bytes: int = 0
    input_bytes: int = 0
    peak_bytes: int = 0
    est_seconds: float = 0.0
    curves: dict[str, list[float]] = field(default_factory=dict)


class FakeService:
    TENSORS = 10

    def __init__(self, steps_per_poll: int = 3):
        self.jobs: dict[str, Job] = {}
        self.logs: dict[str, list[str]] = {}
        self.steps = steps_per_poll
        self.submitted: list[dict] = []
        self.watches: list[dict] = []
        self._ids = itertools.count(1)

    def validate(self, recipe_text: str) -> Validation:
        try:
            recipe = parse(recipe_text)
        except RecipeError as exc:
            return Validation(False, "", exc.problems, [], [])
        models = [{"ref": str(r), "revision": None if r.local else "0123456789abcdef0123"} for r in recipe.model_refs()]
        curves = {"t": [0.0, 0.25, 0.5, 0.75, 1.0]} if recipe.uses_gradients else {}
        return Validation(True, f"method: {recipe.merge_method}", [], ["a friendly warning about self_attn"], models,
                          14_500_000_000, 43_000_000_000, 1_200_000_000, 750.0, curves)

    def submit(self, recipe_text, *, owner=None, target=None, private=False, pr=False, token=None, flavor=None) -> Job:
        recipe = parse(recipe_text)
        self.submitted.append(dict(owner=owner, target=target, private=private, pr=pr, token=token, flavor=flavor))
        job = Job(id=f"job{next(self._ids):04d}", owner=owner, recipe=recipe_text, recipe_hash=recipe.hash,
                  target=target, options={"private": private, "pr": pr}, state="queued",
                  created_at=datetime.now(timezone.utc), position=1,
                  progress={"tensors_done": 0, "tensors_total": self.TENSORS, "bytes_done": 0,
                            "bytes_total": self.TENSORS * 1_000_000})
        self.jobs[job.id] = job
        self.logs[job.id] = [f"queued {recipe.merge_method} merge"]
        return job

    def _advance(self, job: Job) -> None:
        if job.state in ("done", "failed", "cancelled"):
            return
        if job.state == "queued":
            job.state, job.started_at, job.position, job.attempts = "running", datetime.now(timezone.utc), None, 1
            self.logs[job.id].append("started")
            return
        done = min(self.TENSORS, job.progress["tensors_done"] + self.steps)
        job.progress.update(tensors_done=done, bytes_done=done * 1_000_000)
        self.logs[job.id].append(f"merged {done}/{self.TENSORS} tensors")
        if done == self.TENSORS:
            job.state, job.finished_at = "done", datetime.now(timezone.utc)
            job.result = ({"url": f"https://huggingface.co/{job.target}", "commit": "abcdef0123456789"} if job.target
                          else {"folder": f"/data/results/{job.id}"})
            self.logs[job.id].append("done")

    def get(self, job_id: str, owner=None) -> Job:
        if job_id not in self.jobs:
            raise JobNotFound(f"no job {job_id!r}")
        job = self.jobs[job_id]
        self._advance(job)
        return job

    def list(self, owner=None, limit=50) -> list[Job]:
        jobs = [j for j in self.jobs.values() if owner is None or j.owner == owner]
        return sorted(jobs, key=lambda j: j.created_at, reverse=True)[:limit]

    def cancel(self, job_id, owner=None) -> Job:
        job = self.jobs[job_id]
        if job.state not in ("done", "failed", "cancelled"):
            job.state, job.finished_at = "cancelled", datetime.now(timezone.utc)
            self.logs[job_id].append("cancelled")
        return job

    def log(self, job_id, since=0, owner=None) -> list[str]:
        return self.logs[job_id][since:]

    def watch(self, recipe_text, *, owner, target, pr=False, private=False, token=None) -> dict:
        self.watches.append(dict(owner=owner, target=target, pr=pr, token=token))
        first = self.submit(recipe_text, owner=owner, target=target, private=private, pr=pr, token=token)
        sources = {str(r): "0123456789abcdef0123456789abcdef01234567" for r in parse(recipe_text).model_refs()}
        return {"id": "w1", "owner": owner, "target": target, "pr": pr, "private": private, "sources": sources,
                "last_job_id": first.id}
