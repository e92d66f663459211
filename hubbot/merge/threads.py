"""How many threads a merge's kernels may use: the CPUs this process may really run on,
shared among the worker slots, or what the service says.

torch sizes its pool from the cores of the machine, which on a shared host or in a container
with a CPU quota are not free: a parallel kernel then waits at each barrier for a thread that
is not running. The pool's idle threads also wait passively (set in `hubbot/__init__.py`,
before torch is first imported), so they yield the cores they do not use.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def cgroup_quota(root: Path = CGROUP) -> float | None:
    """The CPU quota of this process's cgroup in cores (cgroup v2 `cpu.max`, or v1's CFS
    quota), or None when there is none."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None


def available_cpus(root: Path = CGROUP) -> int:
    """The CPUs this process may run on (its affinity mask), capped by its cgroup's quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_quota(root)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def merge_threads(requested: int | None = None, slots: int = 1, root: Path = CGROUP) -> int:
    """`requested` when given, else an equal share of the available CPUs per worker slot (at least one)."""
    if requested is not None:
        if requested < 1:
            raise ValueError(f"threads must be at least 1, got {requested}")
        return requested
    return max(1, available_cpus(root) // max(1, slots))


def use_threads(requested: int | None = None, slots: int = 1) -> int:
    """Size torch's intra-op pool for this process (see `merge_threads`) and return the count."""
    import torch

    n = merge_threads(requested, slots)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
