"""The benchmark harness itself, on tiny models: both tools run, are measured, and agree.

No timing is asserted here; `python -m bench.run` reports them (docs/benchmarks.md)."""

from __future__ import annotations

import json


def test_bench_measures_both_tools_and_compares_outputs(tmp_path, capsys):
    from bench.run import main

    assert main(["--size", "tiny", "--methods", "linear,passthrough", "--runs", "1", "--no-cold",
                 "--work", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["method"] for r in results["rows"]] == ["linear", "passthrough"]
    for row in results["rows"]:
        for tool in ("hubbot", "mergekit"):
            run = row[tool]
            assert run["ok"], run["error"]
            assert run["seconds"] > 0 and run["peak_rss"] > 10 << 20
        assert row["agreement"] == 1.0
    table = capsys.readouterr().out
    assert "| linear |" in table and "speed-up" in table
