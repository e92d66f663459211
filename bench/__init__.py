"""Benchmarks against mergekit on generated models: `python -m bench.run` (docs/benchmarks.md)."""
