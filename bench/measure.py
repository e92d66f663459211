"""Run one command and print what it cost as JSON: wall seconds, peak RSS, bytes read from storage.

A process of its own, importing nothing heavy, so the measured child starts from a small
parent: a forked child's peak RSS counts the pages it shared with its parent before `exec`.
A reaped child's I/O counters are added to its parent's, so this process's own
`/proc/self/io` before and after gives the child's reads.

    python bench/measure.py LOG -- COMMAND [ARG ...]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time


def _read_bytes() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("read_bytes:"))


def main(argv: list[str]) -> int:
    log, sep, *command = argv
    assert sep == "--", "usage: measure.py LOG -- COMMAND [ARG ...]"
    before = _read_bytes()
    start = time.monotonic()
    with open(log, "w") as out:
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(child.pid, 0)
    seconds = time.monotonic() - start
    print(json.dumps({"seconds": seconds, "peak_rss": usage.ru_maxrss * 1024, "read_bytes": _read_bytes() - before,
                      "returncode": os.waitstatus_to_exitcode(status)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
