"""Benchmark harness behind `fastgan bench` and benchmarks/: timing core (timing.py), device
ceilings (roofline.py), per-op cases (cases.py), providers (providers.py), CSV and table
(report.py), plots (plot.py), and the command itself (runner.py)."""
