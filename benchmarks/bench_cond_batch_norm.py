"""cond_batch_norm: eager reference vs torch.compile vs each fastgan backend, fwd / bwd / full.

    pytest benchmarks/bench_cond_batch_norm.py --benchmark-only \
        [--fastgan-quick] [--fastgan-device cuda]
"""

from __future__ import annotations

import torch

from conftest import run_point

OP = "cond_batch_norm"


def bench_cond_batch_norm(benchmark, point, device: torch.device) -> None:
    run_point(benchmark, point, device)
