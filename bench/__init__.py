"""Benchmarks against the real peers: `python -m bench` (or `make bench`) prints the table.

Every `bench/bench_*.py` module provides `run() -> list[dict]`; each row holds `name`, `ours`,
`reference`, `unit`, `ratio` (ours / reference, measured in the same run) and `note`.
Benchmarks are not tests: they print numbers and never fail the suite.
"""
