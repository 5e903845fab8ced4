"""pixel_shuffle_act: eager reference vs torch.compile vs each fastgan backend, fwd / bwd / full.

    pytest benchmarks/bench_pixel_shuffle.py --benchmark-only \
        [--fastgan-quick] [--fastgan-device cuda]
"""

from __future__ import annotations

import torch

from conftest import run_point

OP = "pixel_shuffle"


def bench_pixel_shuffle(benchmark, point, device: torch.device) -> None:
    run_point(benchmark, point, device)
