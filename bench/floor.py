"""The floor of a merge on this machine: import torch, read every input the recipe's plan reads,
write as many bytes as the output has, and merge nothing.

No tool can merge faster than this, so each method's time is also reported as a ratio to it.
Prints the phases as JSON (seconds); the planning in between (headers only) is not counted.

    python -m bench.floor RECIPE OUT_FILE
"""

from __future__ import annotations

import json
import sys
import time

WRITE_CHUNK = 64 << 20


def read_inputs(plan) -> int:
    """Read every input tensor the plan merges, once, whole; returns the bytes read."""
    read = 0
    for task in plan.tasks:
        for i in task.reads:
            x = plan.sources[i.source].read(i.name)
            read += x.numel() * x.element_size()
    return read


def write_bytes(path, n: int) -> None:
    """Write `n` bytes to a new file at `path`, in large chunks."""
    import torch

    chunk = torch.empty(WRITE_CHUNK, dtype=torch.uint8).numpy()
    with open(path, "wb") as f:
        while n:
            n -= f.write(memoryview(chunk)[:min(n, WRITE_CHUNK)])


def main(argv: list[str]) -> int:
    recipe, out_file = argv
    started = time.monotonic()
    import torch  # noqa: F401  (its import is part of every merge)

    imported = time.monotonic()
    from pathlib import Path

    from hubbot.merge.plan import build
    from hubbot.recipe.merge import parse

    plan = build(parse(Path(recipe).read_text()))
    plan.raise_for_problems()
    begin_read = time.monotonic()
    read = read_inputs(plan)
    begin_write = time.monotonic()
    write_bytes(out_file, plan.output_bytes)
    done = time.monotonic()
    print(json.dumps({"import": imported - started, "read": begin_write - begin_read, "write": done - begin_write,
                      "read_bytes": read, "written_bytes": plan.output_bytes}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
