"""pixel_shuffle_act: eager reference vs torch.compile vs each fastgan backend, fwd / bwd / full.

    pytest benchmarks/bench_pixel_shuffle.py --benchmark-only \
        [--fastgan-quick] [--fastgan-device cuda]
"""

from __future__ import annotations

import torch

OP = "pixel_shuffle"


def bench_pixel_shuffle(benchmark, point, device: torch.device) -> None:
    call = point.step(device)
    benchmark.group = point.group
    benchmark.extra_info.update(
        op=point.op.name, provider=point.provider.name, mode=point.mode, shape=point.case.shape,
        model=point.case.model, bytes=point.bytes_moved(),
    )
    benchmark(call)
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["gbps"] = point.bytes_moved() / benchmark.stats.stats.median / 1e9
