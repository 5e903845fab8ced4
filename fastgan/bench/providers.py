"""The implementations an op is timed with: the eager reference, torch.compile of it, and each
fastgan backend that can run on the device."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..backend import runnable
from .cases import Case, OpBench, _resolve
from .timing import (
    Budget,
    InputSet,
    Timing,
    build_step,
    count_gpu_launches,
    peak_gpu_bytes,
    rotation_sets,
    time_step,
)

EAGER = "eager"
COMPILE = "compile"


@dataclass(frozen=True)
class Provider:
    """A named implementation; make() returns a fresh callable taking the op's keyword arguments."""

    name: str
    make: Callable[[], Callable[..., torch.Tensor]]


@dataclass(frozen=True)
class Skip:
    """A provider that was not timed, and why; `failed` when that is a defect of fastgan (a
    backend that claims to run here but raises, or differs from eager), not of the environment."""

    provider: str
    reason: str
    failed: bool = False


def _compiled(op: OpBench) -> Callable[..., torch.Tensor]:
    # A clean dynamo state per case: a real model compiles once per static shape, and dynamo's
    # per-function cache limit would otherwise fall back to eager, silently, after a few cases.
    torch._dynamo.reset()
    # The bwd mode times the backward alone, over a graph kept with retain_graph=True, which
    # AOTAutograd refuses for a graph that donates its saved buffers; donation saves memory, not
    # time, so the compiled reference goes without it.
    torch._functorch.config.donated_buffer = False
    return torch.compile(op.reference_fn(), dynamic=False)


def providers_for(op: OpBench, device: torch.device) -> tuple[list[Provider], list[Skip]]:
    """Providers that can run on `device`: eager, compile, then each runnable fastgan backend."""
    provs = [
        Provider(EAGER, op.reference_fn),
        Provider(COMPILE, functools.partial(_compiled, op)),
        *(Provider(name, functools.partial(_resolve, path)) for name, path in op.extra_providers),
    ]
    skips: list[Skip] = []
    for name in op.backends:
        if name == "triton" and device.type != "cuda":
            # Triton on CPU is only the interpreter: a correctness tool, meaningless to time.
            skips.append(Skip(f"fastgan-{name}", "triton on CPU is the interpreter; not timed"))
            continue
        ok, why = runnable(name, device)
        if not ok:
            skips.append(Skip(f"fastgan-{name}", why or "not runnable"))
            continue
        provs.append(Provider(f"fastgan-{name}", _fused_maker(op, name)))
    return provs, skips


def _fused_maker(op: OpBench, backend: str) -> Callable[[], Callable[..., torch.Tensor]]:
    return lambda: functools.partial(op.fused_fn(), backend=backend)


def make_sets(
    case: Case, mode: str, device: torch.device, dtype: torch.dtype, seed: int = 0
) -> list[InputSet]:
    """Rotating input sets for one case and mode: seeded, so every provider sees the same data."""
    elem = torch.empty((), dtype=dtype).element_size()
    per_iter = case.bytes_moved(mode, elem)
    n = rotation_sets(per_iter, device, footprint=case.bytes_moved("full", elem))
    torch.manual_seed(seed)
    return [case.make(device, dtype) for _ in range(n)]


def check_against_eager(
    fn: Callable[..., torch.Tensor], eager: Callable[..., torch.Tensor], inputs: InputSet
) -> None:
    """Raise AssertionError if fn's forward differs from eager's: a fast wrong kernel is not timed.

    Also the first call of fn, so a torch.compile failure surfaces here. Grad mode stays on,
    as in the timed calls, so torch.compile does not build a second (no-grad) graph.
    """
    got, expected = fn(**inputs.kwargs).detach(), eager(**inputs.kwargs).detach()
    # fp32 sums over thousands of terms (attention over 4096 keys) differ from eager's by more
    # than assert_close's fp32 default in their last bits; the tests hold the exact bounds.
    tol = dict(rtol=1e-4, atol=1e-4) if got.dtype == torch.float32 else {}
    torch.testing.assert_close(got, expected, **tol)


def prepare(
    fn: Callable[..., torch.Tensor],
    eager: Callable[..., torch.Tensor],
    case: Case,
    mode: str,
    device: torch.device,
    dtype: torch.dtype,
) -> Callable[[int], object]:
    """Check fn against eager, build the rotating sets, and return the untimed-so-far step(i)."""
    sets = make_sets(case, mode, device, dtype)
    if fn is not eager:
        check_against_eager(fn, eager, sets[0])
    return build_step(fn, sets, mode)


def measure(
    fn: Callable[..., torch.Tensor],
    eager: Callable[..., torch.Tensor],
    case: Case,
    mode: str,
    device: torch.device,
    dtype: torch.dtype,
    budget: Budget,
) -> tuple[Timing, int | None, int | None]:
    """prepare() then time_step(), and on CUDA the GPU launches and the peak extra memory of one
    step; the input sets and graphs are freed when this returns."""
    step = prepare(fn, eager, case, mode, device, dtype)
    timing = time_step(step, device, budget)
    return timing, count_gpu_launches(step, device), peak_gpu_bytes(step, device)


def first_line(exc: BaseException) -> str:
    """A one-line reason for a skipped provider (compile errors run to pages)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:200]
