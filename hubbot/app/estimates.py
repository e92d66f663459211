"""How long a merge will take on this machine: measured from its own finished jobs with the
same method (output bytes per second, start to finish), before falling back to the service's
rough figure from typical disk and network speeds. Pure functions of the job records."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .views import method_of

if TYPE_CHECKING:
    from ..jobs.service import Job

RECENT_JOBS = 5  # the last few runs follow today's load and disks better than a long history


@dataclass(frozen=True)
class Estimate:
    seconds: float
    basis: str  # what the figure rests on, shown next to it


def estimate(method: str, output_bytes: int, rough_seconds: float, jobs: list["Job"]) -> Estimate:
    """The time a merge of `output_bytes` with `method` should take, and why we think so."""
    rates = [rate for j in jobs if method_of(j.recipe) == method and (rate := _rate(j)) is not None][:RECENT_JOBS]
    if not rates:
        return Estimate(rough_seconds, f"a rough figure from typical disk and network speeds (no {method} merge "
                                       "has finished on this machine yet)")
    runs = f"{len(rates)} recent {method} merge{'s' if len(rates) != 1 else ''}"
    return Estimate(output_bytes / statistics.median(rates), f"measured from {runs} on this machine")


def _rate(job: "Job") -> float | None:
    """Output bytes per second of a finished job, start to finish (reading, merging, writing)."""
    total = (job.progress or {}).get("bytes_total")
    if job.state != "done" or not total or job.started_at is None or job.finished_at is None:
        return None
    seconds = (job.finished_at - job.started_at).total_seconds()
    return total / seconds if seconds > 0 else None
