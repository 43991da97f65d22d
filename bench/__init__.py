"""Corral's benchmarks: each one measures Corral beside its baselines in the same run.

Run one with ``./dev bench NAME`` (``python -m bench NAME``); see bench/README.md.
Results are written into docs/BENCHMARKS.md, one section per benchmark.
"""
