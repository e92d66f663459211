"""The benchmark harness itself, on tiny models: both tools run, are measured, and agree.

No timing is asserted here; `python -m bench.run` reports them (docs/benchmarks.md)."""

from __future__ import annotations

import json


def test_bench_measures_both_tools_and_compares_outputs(tmp_path, capsys):
    from bench.run import main

    assert main(["--size", "tiny", "--methods", "linear,passthrough", "--runs", "1", "--no-cold", "--load", "1",
                 "--work", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["method"] for r in results["rows"]] == ["linear", "passthrough"]
    for row in results["rows"]:
        for tool in ("hubbot", "mergekit"):
            run = row[tool]
            assert run["ok"], run["error"]
            assert run["seconds"] > 0 and run["peak_rss"] > 10 << 20
        assert row["agreement"] == 1.0
        floor = row["floor"]
        assert floor["read_bytes"] > 0 and floor["written_bytes"] > 0
        assert floor["seconds"] == floor["import"] + floor["read"] + floor["write"] > 0
    assert results["facts"]["load"] == 1
    table = capsys.readouterr().out
    assert "| linear |" in table and "speed-up" in table and "hubbot / floor" in table


def test_busy_processes_run_only_while_the_benchmark_does():
    from bench.run import busy

    with busy(2) as procs:
        assert len(procs) == 2 and all(p.poll() is None for p in procs)
    assert all(p.poll() is not None for p in procs)



def test_gpu_script_cpu_path(tmp_path, capsys):
    """bench/gpu.py on the CPU with tiny models: every merge runs, with its rate and floor."""
    from bench.gpu import main

    assert main(["--device", "cpu", "--sizes", "tiny", "--runs", "1", "--methods", "linear,ties,dare_ties,della",
                 "--work", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "gpu-results.json").read_text())
    assert [r["method"] for r in rows] == ["linear", "ties", "dare_ties", "della"]
    for r in rows:
        assert r["device"] == "cpu" and r["seconds"] > 0 and r["floor_s"] > 0 and r["read_bytes"] > 0
    assert "input GB/s" in capsys.readouterr().out
    assert not (tmp_path / "out-gpu").exists()
