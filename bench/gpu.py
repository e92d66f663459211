"""Every method on a GPU: the 1.1 B-parameter models and a 7 B-shaped one (4 of Llama-2-7B's
layers at full width), merged by the engine in this process, reported as GB/s of input merged
and as a ratio to the floor (reading the same inputs and writing the output, no merge).

    python -m bench.gpu                                 # CUDA, every method, sizes 1b and 7b
    python -m bench.gpu --methods linear,ties --compare-cpu   # and the same merges on the CPU
    python -m bench.gpu --device cpu --sizes tiny --runs 1    # the CPU path (a check of the script)

Everything runs in one process after a warm-up merge, so import and start-up costs are not
counted; inputs are in the page cache (the floor is measured the same way). Writes a Markdown
table to stdout and `gpu-results.json` under --work.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

from bench.floor import read_inputs, write_bytes
from bench.run import OUT, recipes


def _plan(recipe: str):
    from hubbot.merge.plan import build
    from hubbot.recipe.merge import parse

    plan = build(parse(recipe))
    plan.raise_for_problems()
    return plan


def merge_seconds(recipe: str, out: Path, device: str, runs: int) -> tuple[float, int, int]:
    """The fastest of `runs` merges of `recipe` on `device`, the bytes each read, and the most
    device memory it held (0 on the CPU)."""
    import torch

    from hubbot.merge import engine

    cuda = device.startswith("cuda")
    best, read, peak = float("inf"), 0, 0
    for _ in range(runs):
        shutil.rmtree(out, ignore_errors=True)
        plan = _plan(recipe)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        started = time.monotonic()
        result = engine.run(plan, out, device=device)
        best, read = min(best, time.monotonic() - started), result.bytes_read
        if cuda:
            peak = max(peak, torch.cuda.max_memory_allocated())
    shutil.rmtree(out, ignore_errors=True)
    return best, read, peak


def floor_seconds(recipe: str, out: Path, runs: int, known: dict) -> float:
    """The fastest of `runs` reads of every input and writes of the output's bytes; recipes that
    read the same tensors and write as many bytes share one measurement (`known`)."""
    plan = _plan(recipe)
    reads = [(plan.sources[i.source].label, i.name) for t in plan.tasks for i in t.reads]
    key = (tuple(sorted(reads)), plan.output_bytes)
    if key in known:
        return known[key]
    best = float("inf")
    for _ in range(runs):
        started = time.monotonic()
        read_inputs(plan)
        write_bytes(out, plan.output_bytes)
        best = min(best, time.monotonic() - started)
        out.unlink()
    known[key] = best
    return best


def table(rows: list[dict]) -> str:
    compare = any("cpu_s" in r for r in rows)
    head = ["size", "method", "device", "s", "input GB/s", "floor s", "ratio to floor", "device memory GB"]
    head += ["CPU s", "speed-up over CPU"] if compare else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['size']} | {r['method']} | {r['device']} | failed: {r['error']} |")
            continue
        cells = [r["size"], r["method"], r["device"], f"{r['seconds']:.2f}", f"{r['read_bytes'] / r['seconds'] / 1e9:.2f}",
                 f"{r['floor_s']:.2f}", f"{r['seconds'] / r['floor_s']:.2f}", f"{r['device_peak'] / 1e9:.2f}"]
        if compare:
            cells += [f"{r['cpu_s']:.1f}", f"{r['cpu_s'] / r['seconds']:.1f}x"] if "cpu_s" in r else ["", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (default cuda)")
    ap.add_argument("--sizes", default="1b,7b", help="comma-separated model sizes of bench/models.py")
    ap.add_argument("--methods", default="all", help="comma-separated, or 'all'")
    ap.add_argument("--runs", type=int, default=2, help="timed runs per merge (the fastest is reported)")
    ap.add_argument("--compare-cpu", action="store_true", help="also merge each on the CPU (one run) for the speed-up")
    ap.add_argument("--work", type=Path, default=OUT, help="where models and outputs go")
    args = ap.parse_args(argv)

    from bench.models import SHAPES, make_models
    from hubbot.merge.engine import pick_device

    device = str(pick_device(args.device))  # a clear error when CUDA is asked for and absent
    args.work.mkdir(parents=True, exist_ok=True)
    out = args.work / "out-gpu"
    rows: list[dict] = []
    for size in args.sizes.split(","):
        base, ft1, ft2 = make_models(args.work / f"models-{size}", size)
        os.sync()  # models just written: their write-back would otherwise run during the first timings
        all_recipes = recipes(base, ft1, ft2, SHAPES[size].layers)
        names = list(all_recipes) if args.methods == "all" else args.methods.split(",")
        unknown = [n for n in names if n not in all_recipes]
        if unknown:
            ap.error(f"unknown methods {unknown}; choose from {', '.join(all_recipes)}")
        merge_seconds(all_recipes["linear"], out, device, 1)  # warm-up: page cache, kernels, allocator
        floors: dict = {}
        for method in names:
            recipe = all_recipes[method]
            try:  # one method's failure is reported in its row; the others still run
                seconds, read, peak = merge_seconds(recipe, out, device, args.runs)
                row = {"size": size, "method": method, "device": device, "seconds": seconds, "read_bytes": read,
                       "device_peak": peak, "floor_s": floor_seconds(recipe, args.work / "out-gpu-floor.bin",
                                                                     args.runs, floors)}
                if args.compare_cpu and device != "cpu":
                    row["cpu_s"] = merge_seconds(recipe, out, "cpu", 1)[0]
            except Exception as exc:
                traceback.print_exc()
                row = {"size": size, "method": method, "device": device, "error": f"{type(exc).__name__}: {exc}"}
            rows.append(row)
            print(table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
            (args.work / "gpu-results.json").write_text(json.dumps(rows, indent=2))
    print(table(rows))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
