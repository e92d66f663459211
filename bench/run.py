"""hubbot against mergekit 0.1.5 on the same generated models and recipes, in one run.

Each merge is a whole process (`hubbot merge` / `mergekit-yaml`, each with its defaults,
model card included), measured from the outside by `measure.py`: wall time from spawn to
exit, peak resident memory from the child's rusage, bytes read from storage from its I/O
counters. Per method and tool, one cold run comes first when the page cache can be dropped
(root on Linux): it gives the bytes each tool really reads from disk. Then `--runs` warm
runs (models and libraries in the page cache, as when merging the same sources again) give
the wall time (the fastest run) and the peak RSS (the largest seen).

    python -m bench.run                        # the four headline methods, 250 M-parameter models
    python -m bench.run --methods all          # every method both tools know
    python -m bench.run --size tiny --methods linear --runs 1   # a check of the harness
    python -m bench.run --size 1b --methods linear,ties --runs 1 --no-cold   # 1.1 B parameters
    python -m bench.run --load 1               # with one other process keeping a core busy

Each method also gets a floor (`floor.py`: import torch, read the inputs, write the output's
bytes, merge nothing), and both tools' times are reported as ratios to it.

Writes a Markdown table to stdout and `bench/out/results.json`; tensors of both outputs are
compared, so a fast but wrong merge shows up in the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from tests.models import models_yaml

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"

HEADLINE = ["linear", "slerp", "ties", "passthrough"]


def recipes(base: Path, ft1: Path, ft2: Path, layers: int) -> dict[str, str]:
    """One recipe per method, on the same three models (base first)."""
    half = layers // 2

    def models(*params: dict) -> str:
        """The models list; one parameter set per model, the fine-tunes' only when two are given."""
        return models_yaml([base, ft1, ft2][-len(params):], list(params))

    two = f"models:\n  - model: {base}\n  - model: {ft1}"
    sparse = models({'weight': 0.6, 'density': 0.5}, {'weight': 0.4, 'density': 0.5})
    head = f"base_model: {base}\n"
    tail = "dtype: bfloat16\n"
    seeded = "random_seed: 1\n"
    return {
        "linear": f"merge_method: linear\n{models({'weight': 0.5}, {'weight': 0.3}, {'weight': 0.2})}\n{tail}",
        "slerp": f"merge_method: slerp\n{head}{two}\nparameters:\n  t: [0, 0.3, 0.7, 1]\n{tail}",
        "ties": f"merge_method: ties\n{head}{sparse}\n{tail}",
        "passthrough": (f"merge_method: passthrough\nslices:\n"
                        f"  - sources: [{{model: {base}, layer_range: [0, {layers - half // 2}]}}]\n"
                        f"  - sources: [{{model: {ft1}, layer_range: [{half // 2}, {layers}]}}]\n{tail}"),
        "task_arithmetic": f"merge_method: task_arithmetic\n{head}{models({'weight': 0.6}, {'weight': 0.4})}\n{tail}",
        "dare_linear": f"merge_method: dare_linear\n{head}{sparse}\n{seeded}{tail}",
        "dare_ties": f"merge_method: dare_ties\n{head}{sparse}\n{seeded}{tail}",
        "breadcrumbs": f"merge_method: breadcrumbs\n{head}{sparse}\n{tail}",
        "breadcrumbs_ties": f"merge_method: breadcrumbs_ties\n{head}{sparse}\n{tail}",
        "della": f"merge_method: della\n{head}{sparse}\nparameters: {{epsilon: 0.1}}\n{seeded}{tail}",
        "della_linear": f"merge_method: della_linear\n{head}{sparse}\nparameters: {{epsilon: 0.1}}\n{seeded}{tail}",
        "sce": f"merge_method: sce\n{head}{models({}, {}, {})}\nparameters: {{select_topk: 0.5}}\n{tail}",
        "model_stock": f"merge_method: model_stock\n{head}{models({}, {}, {})}\n{tail}",
        "nuslerp": f"merge_method: nuslerp\n{head}{models({'weight': 0.6}, {'weight': 0.4})}\n{tail}",
        "multislerp": f"merge_method: multislerp\n{models({'weight': 0.4}, {'weight': 0.3}, {'weight': 0.3})}\n{tail}",
        "karcher": f"merge_method: karcher\n{models({}, {}, {})}\n{tail}",
        "nearswap": f"merge_method: nearswap\n{head}{two}\nparameters: {{t: 0.001}}\n{tail}",
        "arcee_fusion": f"merge_method: arcee_fusion\n{head}{two}\n{tail}",
    }


RANDOM = {"dare_linear", "dare_ties", "della", "della_linear"}  # same definition, different random draws


@dataclass
class Run:
    tool: str
    method: str
    seconds: float
    peak_rss: int
    read_bytes: int
    ok: bool
    error: str = ""


def _drop_caches() -> bool:
    """Write back and drop the page cache, so the next run reads from disk; False when not allowed."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def measure(tool: str, method: str, argv: list[str], log: Path) -> Run:
    """Run `argv` to completion under `measure.py`: wall time, peak RSS and storage reads."""
    probe = subprocess.run([sys.executable, str(Path(__file__).with_name("measure.py")), str(log), "--", *argv],
                           capture_output=True, text=True, check=True)
    facts = json.loads(probe.stdout)
    ok = facts["returncode"] == 0
    error = "" if ok else log.read_text()[-400:]
    return Run(tool, method, facts["seconds"], facts["peak_rss"], facts["read_bytes"], ok, error)


def floor(recipe: Path, out: Path, log: Path) -> dict:
    """One run of `floor.py` for this recipe: its phases (import, read, write) in seconds and their sum."""
    run = measure("floor", recipe.stem, [sys.executable, str(Path(__file__).with_name("floor.py")), str(recipe), str(out)], log)
    out.unlink(missing_ok=True)
    if not run.ok:
        raise RuntimeError(f"the floor run failed: {run.error}")
    phases = json.loads(log.read_text().strip().splitlines()[-1])
    return {**phases, "seconds": phases["import"] + phases["read"] + phases["write"]}


BUSY = "while True: pass"


@contextmanager
def busy(n: int) -> Iterator[list[subprocess.Popen]]:
    """`n` other processes, each keeping a core busy, for the duration (the --load option)."""
    procs = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(n)]
    try:
        yield procs
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def agreement(ours: Path, theirs: Path) -> tuple[float, str]:
    """The share of output entries within one step of their dtype of the reference's (1.0 when
    every entry is), over every tensor, and a note of where the reference's dtypes differ from
    ours (it is then rounded to ours first); names and shapes must match."""
    from tests.models import load_state
    from tests.oracle import ulp_distance

    a, b = load_state(ours), load_state(theirs)
    if set(a) != set(b):
        raise AssertionError(f"tensor names differ: {sorted(set(a) ^ set(b))[:5]}")
    close = total = 0
    other_dtypes: set[str] = set()
    for name, ref in b.items():
        got = a[name]
        if got.shape != ref.shape:
            raise AssertionError(f"{name}: shape {tuple(got.shape)} vs {tuple(ref.shape)}")
        if ref.dtype != got.dtype:
            other_dtypes.add(str(ref.dtype).removeprefix("torch."))
            ref = ref.to(got.dtype)
        close += int((ulp_distance(got, ref) <= 1).sum())
        total += ref.numel()
    note = f"mergekit wrote some tensors as {', '.join(sorted(other_dtypes))}" if other_dtypes else ""
    return close / total, note


def _fmt_bytes(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"


def table(rows: list[dict]) -> str:
    cold = any(r["cold"] for r in rows)
    head = ["method", "hubbot s", "mergekit s", "speed-up", "floor s", "hubbot / floor", "mergekit / floor",
            "hubbot RSS", "mergekit RSS", "RSS ratio"]
    if cold:
        head += ["hubbot read", "mergekit read", "cold s (hubbot / mergekit)"]
    head += ["entries within 1 bf16 step"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        h, m = r["hubbot"], r["mergekit"]
        if not (h["ok"] and m["ok"]):
            failed = "hubbot" if not h["ok"] else "mergekit"
            lines.append(f"| {r['method']} | {failed} failed: {(h['error'] or m['error']).splitlines()[-1:]} |")
            continue
        f = r["floor"]["seconds"]
        cells = [r["method"], f"{h['seconds']:.1f}", f"{m['seconds']:.1f}", f"{m['seconds'] / h['seconds']:.1f}x",
                 f"{f:.1f}", f"{h['seconds'] / f:.2f}", f"{m['seconds'] / f:.2f}",
                 _fmt_bytes(h["peak_rss"]), _fmt_bytes(m["peak_rss"]), f"{h['peak_rss'] / m['peak_rss']:.2f}"]
        if cold:
            hc, mc = r["cold"]["hubbot"], r["cold"]["mergekit"]
            cells += [_fmt_bytes(hc["read_bytes"]), _fmt_bytes(mc["read_bytes"]),
                      f"{hc['seconds']:.1f} / {mc['seconds']:.1f}"]
        same = "random masks" if r["method"] in RANDOM else f"{r['agreement']:.2%}"
        cells.append(same + (f" ({r['agreement_note']})" if r.get("agreement_note") else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summarize(runs: list[Run]) -> Run:
    """The fastest successful run, with the largest peak RSS of them all."""
    good = [r for r in runs if r.ok] or runs
    fastest = min(good, key=lambda r: r.seconds)
    return Run(**{**asdict(fastest), "peak_rss": max(r.peak_rss for r in good)})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="250m", choices=["250m", "1b", "tiny"])
    ap.add_argument("--methods", default=",".join(HEADLINE), help="comma-separated, or 'all'")
    ap.add_argument("--runs", type=int, default=3, help="warm runs per tool and method (the fastest is reported)")
    ap.add_argument("--work", type=Path, default=OUT, help="where models and outputs go")
    ap.add_argument("--no-cold", action="store_true", help="skip the cold run (and the bytes-read columns)")
    ap.add_argument("--load", type=int, default=0, metavar="N",
                    help="keep N other processes busy (one core each) during every run")
    args = ap.parse_args(argv)
    with busy(args.load):
        return _bench(ap, args)


def _bench(ap: argparse.ArgumentParser, args: argparse.Namespace) -> int:

    from bench.models import SHAPES, make_models

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    base, ft1, ft2 = make_models(work / f"models-{args.size}", args.size)
    all_recipes = recipes(base, ft1, ft2, SHAPES[args.size].layers)
    names = list(all_recipes) if args.methods == "all" else args.methods.split(",")
    unknown = [n for n in names if n not in all_recipes]
    if unknown:
        ap.error(f"unknown methods {unknown}; choose from {', '.join(all_recipes)}")
    cold = not args.no_cold and _drop_caches()
    bindir = Path(sys.executable).parent
    facts = {"size": args.size, "load": args.load, "cold_run": cold, "warm_runs": args.runs, "cpus": os.cpu_count(),
             "machine": platform.processor() or platform.machine(), "python": platform.python_version()}
    rows: list[dict] = []
    for method in names:
        recipe = work / f"{method}.yml"
        recipe.write_text(all_recipes[method])
        outs = {"hubbot": work / f"out-{method}-hubbot", "mergekit": work / f"out-{method}-mergekit"}
        argvs = {
            "hubbot": [str(bindir / "hubbot"), "merge", str(recipe), "--out", str(outs["hubbot"]), "--device", "cpu",
                       "--quiet"],
            "mergekit": [str(bindir / "mergekit-yaml"), str(recipe), str(outs["mergekit"]), "--quiet"],
        }

        def once(tool: str, flush: bool) -> Run:
            shutil.rmtree(outs[tool], ignore_errors=True)
            if flush:
                _drop_caches()
            else:
                os.sync()  # no earlier run's write-back in this one's time
            return measure(tool, method, argvs[tool], work / f"{method}-{tool}.log")

        first = {tool: once(tool, True) for tool in ("mergekit", "hubbot")} if cold else None
        runs: dict[str, list[Run]] = {"hubbot": [], "mergekit": []}
        for _ in range(args.runs):
            for tool in ("mergekit", "hubbot"):
                runs[tool].append(once(tool, False))
        result = {tool: asdict(summarize(r)) for tool, r in runs.items()}
        floors = []
        for _ in range(args.runs):
            os.sync()
            floors.append(floor(recipe, work / f"out-{method}-floor.bin", work / f"{method}-floor.log"))
        result["floor"] = min(floors, key=lambda f: f["seconds"])
        same, note = None, ""
        if result["hubbot"]["ok"] and result["mergekit"]["ok"]:
            same, note = agreement(outs["hubbot"], outs["mergekit"])
        rows.append({"method": method, "agreement": same, "agreement_note": note,
                     "cold": first and {t: asdict(r) for t, r in first.items()}, **result})
        (work / "results.json").write_text(json.dumps({"facts": facts, "rows": rows}, indent=2))  # so far
        print(table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
        for o in outs.values():
            shutil.rmtree(o, ignore_errors=True)
    print(table(rows))
    return 0 if all(r["hubbot"]["ok"] and r["mergekit"]["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
