"""Timing core shared by `fastgan bench` and benchmarks/: p50 with p20/p80, after warm-up.

GPU: one pair of CUDA events around every iteration (as triton.testing.do_bench does), the
iterations rotating over enough input sets that their traffic exceeds L2, so no iteration finds its
inputs already cached, and a GPU spin before each so the host's launch overhead is not what gets
timed. CPU: time.perf_counter around every call.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

MODES: tuple[str, ...] = ("fwd", "bwd", "full")

# H100's L2, assumed whenever torch cannot tell (CPU, or an old torch without L2_cache_size).
DEFAULT_CACHE_BYTES = 50 * 2**20
# Rotation sets beyond this add memory but no realism: 64 distinct sets already defeat any cache.
MAX_SETS = 64


@dataclass(frozen=True)
class Timing:
    """Per-iteration wall time in milliseconds: median and the 20th / 80th percentiles."""

    p50: float
    p20: float
    p80: float
    reps: int


@dataclass(frozen=True)
class Budget:
    """How long to warm up and to measure; the rep count is derived from a first estimate."""

    warmup_ms: float
    rep_ms: float
    min_reps: int
    max_reps: int


# do_bench's defaults on GPU; on CPU the calls are ~100x slower, so fewer but longer reps.
GPU_BUDGET = Budget(warmup_ms=25.0, rep_ms=100.0, min_reps=10, max_reps=1000)
CPU_BUDGET = Budget(warmup_ms=50.0, rep_ms=400.0, min_reps=5, max_reps=200)
QUICK_GPU_BUDGET = Budget(warmup_ms=10.0, rep_ms=30.0, min_reps=5, max_reps=200)
QUICK_CPU_BUDGET = Budget(warmup_ms=10.0, rep_ms=60.0, min_reps=3, max_reps=20)


def default_budget(device: torch.device, quick: bool = False) -> Budget:
    """The budget `fastgan bench` uses on this device type."""
    if device.type == "cuda":
        return QUICK_GPU_BUDGET if quick else GPU_BUDGET
    return QUICK_CPU_BUDGET if quick else CPU_BUDGET


def cache_bytes(device: torch.device) -> int:
    """Last-level cache that rotation must defeat: the GPU's L2 if torch reports it, else 50 MB."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return int(getattr(props, "L2_cache_size", 0)) or DEFAULT_CACHE_BYTES
    return DEFAULT_CACHE_BYTES


def rotation_sets(bytes_per_iter: int, device: torch.device, footprint: int | None = None) -> int:
    """How many input sets to rotate over so that their traffic together is at least 2x the cache.

    `footprint` (bytes one set keeps alive) caps the count at half the free GPU memory.
    """
    n = math.ceil(2 * cache_bytes(device) / max(bytes_per_iter, 1))
    n = min(max(n, 1), MAX_SETS)
    if device.type == "cuda" and footprint:
        free, _ = torch.cuda.mem_get_info(device)
        n = min(n, max(1, free // (2 * footprint)))
    return n


@dataclass
class InputSet:
    """One set of inputs: keyword arguments of the op, and the leaves that receive gradients."""

    kwargs: dict[str, Any]
    leaves: list[torch.Tensor] = field(default_factory=list)


def build_step(
    fn: Callable[..., torch.Tensor], sets: Sequence[InputSet], mode: str
) -> Callable[[int], Any]:
    """Return step(i), one iteration of `mode` on input set i % len(sets).

    fwd: the training forward (leaves require grad, so the graph is recorded as in a real step).
    bwd: backward only, through graphs built here, once per set, outside any timed region and
         kept with retain_graph; torch.autograd.grad, not .backward(), so no .grad accumulation
         kernel is timed. full: forward + backward.
    The forward calls made here also compile a torch.compile provider, so a compile failure
    surfaces from this function, before any timing.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    n = len(sets)
    if mode == "fwd":
        return lambda i: fn(**sets[i % n].kwargs)
    if mode == "full":  # builds its graph every iteration: these outputs (and graphs) die at once
        grads_out = [torch.randn_like(fn(**s.kwargs)) for s in sets]
        return lambda i: torch.autograd.grad(
            fn(**sets[i % n].kwargs), sets[i % n].leaves, grads_out[i % n]
        )
    outs = [fn(**s.kwargs) for s in sets]
    grads_out = [torch.randn_like(y) for y in outs]
    return lambda i: torch.autograd.grad(
        outs[i % n], sets[i % n].leaves, grads_out[i % n], retain_graph=True
    )


def _quantiles(times_ms: Sequence[float]) -> Timing:
    q = torch.tensor(times_ms, dtype=torch.float64).quantile(
        torch.tensor([0.5, 0.2, 0.8], dtype=torch.float64)
    )
    return Timing(p50=q[0].item(), p20=q[1].item(), p80=q[2].item(), reps=len(times_ms))


def _reps(estimate_ms: float, budget: Budget) -> tuple[int, int]:
    est = max(estimate_ms, 1e-4)
    warmup = max(1, int(budget.warmup_ms / est))
    reps = min(max(budget.min_reps, int(budget.rep_ms / est)), budget.max_reps)
    return warmup, reps


@functools.cache
def _sleep_cycles_per_ms(device_index: int) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(1_000_000)
    end.record()
    torch.cuda.synchronize()
    return 1_000_000 / max(start.elapsed_time(end), 1e-3)


def _time_cuda(step: Callable[[int], Any], budget: Budget) -> Timing:
    step(0)
    torch.cuda.synchronize()
    # First estimate from 5 back-to-back iterations decides the warm-up and rep counts.
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    t0 = time.perf_counter()
    for i in range(5):
        step(i)
    host_ms = (time.perf_counter() - t0) * 1e3 / 5
    end.record()
    torch.cuda.synchronize()
    warmup, reps = _reps(start.elapsed_time(end) / 5, budget)
    for i in range(warmup):
        step(i)
    # A GPU spin before each timed iteration, longer than the host needs to launch it, so the
    # events time the kernels and not Python's launch overhead: in training the host runs ahead
    # of the GPU. (do_bench gets the same effect from its L2-flush memset.)
    sleep = int(_sleep_cycles_per_ms(torch.cuda.current_device()) * (2 * host_ms + 0.02))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(reps):
        torch.cuda._sleep(sleep)
        starts[i].record()
        step(i)
        ends[i].record()
    torch.cuda.synchronize()
    return _quantiles([s.elapsed_time(e) for s, e in zip(starts, ends, strict=True)])


def _time_cpu(step: Callable[[int], Any], budget: Budget) -> Timing:
    step(0)  # untimed: a first call may compile or allocate
    t0 = time.perf_counter()
    step(1)
    warmup, reps = _reps((time.perf_counter() - t0) * 1e3, budget)
    for i in range(2, warmup):
        step(i)
    times = []
    for i in range(reps):
        t0 = time.perf_counter()
        step(i)
        times.append((time.perf_counter() - t0) * 1e3)
    return _quantiles(times)


def time_step(
    step: Callable[[int], Any], device: torch.device, budget: Budget | None = None
) -> Timing:
    """Warm up, then time step(i) for i = 0, 1, ... and return p50/p20/p80 in milliseconds."""
    budget = budget or default_budget(device)
    if device.type == "cuda":
        with torch.cuda.device(device):
            return _time_cuda(step, budget)
    return _time_cpu(step, budget)


def count_gpu_launches(step: Callable[[int], Any], device: torch.device) -> int | None:
    """The GPU work items (kernels, memcpys, memsets) one step(0) queues, from the profiler;
    None on CPU or when the profiler cannot see the GPU."""
    if device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize(device)
    try:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            step(0)
            torch.cuda.synchronize(device)
    except RuntimeError:  # e.g. CUPTI unavailable
        return None
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def peak_gpu_bytes(step: Callable[[int], Any], device: torch.device) -> int | None:
    """Peak CUDA memory one step(0) allocates beyond what was live before it; None on CPU."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    result = step(0)
    torch.cuda.synchronize(device)
    del result
    return torch.cuda.max_memory_allocated(device) - base


def benchmark(
    fn: Callable[..., torch.Tensor],
    sets: Sequence[InputSet],
    mode: str,
    device: torch.device,
    budget: Budget | None = None,
) -> Timing:
    """Time `mode` (fwd | bwd | full) of fn over the rotating input sets."""
    return time_step(build_step(fn, sets, mode), device, budget)
