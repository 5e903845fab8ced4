"""``fastgan check``: every runnable backend of every op against the reference, on this device.

Each op contributes sample inputs here (one entry in ``CHECKS``); the check runs forward and
backward on fresh random inputs and compares outputs and input gradients with the reference.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from . import backend as _backend
from .ops import (
    cond_batch_norm,
    pixel_shuffle_act,
    self_attention2d,
    spectral_norm_power_iteration,
    spectral_norm_power_iteration_grouped,
)
from .ops.batch_norm import DTYPES as _COND_BATCH_NORM_DTYPES
from .ops.pixel_shuffle import DTYPES as _PIXEL_SHUFFLE_DTYPES
from .ops.self_attention import DTYPES as _SELF_ATTENTION_DTYPES
from .ops.spectral_norm import DTYPES as _SPECTRAL_NORM_DTYPES


@dataclass
class Sample:
    label: str
    args: tuple
    kwargs: dict
    constants: tuple[str, ...] = ()  # tensor kwargs that get no gradient (running statistics)


@dataclass
class OpCheck:
    fn: Callable[..., torch.Tensor]  # takes backend=
    samples: Callable[[torch.device, torch.dtype], Iterator[Sample]]
    dtypes: dict
    tolerance: dict | None = None  # per dtype, overriding _TOLERANCE


@dataclass
class CheckResult:
    op: str
    backend: str
    dtype: torch.dtype
    sample: str
    max_error: float
    tolerance: float
    passed: bool
    error: str = ""


def _pixel_shuffle_samples(device: torch.device, dtype: torch.dtype) -> Iterator[Sample]:
    def t(*shape):
        return torch.randn(*shape, device=device, dtype=dtype)

    yield Sample("r=2 prelu[C] bias", (t(2, 16, 7, 9), 2), dict(bias=t(16), activation="prelu",
                                                                 prelu_weight=t(4)))
    yield Sample("r=3 leaky_relu channels_last", (t(1, 18, 5, 4).to(memory_format=torch.channels_last), 3),
                 dict(bias=t(18), activation="leaky_relu", negative_slope=0.1))
    yield Sample("r=4 tanh", (t(2, 32, 3, 3), 4), dict(activation="tanh"))
    yield Sample("r=2 relu", (t(3, 8, 6, 5), 2), dict(bias=t(8), activation="relu"))


def _cond_batch_norm_samples(device: torch.device, dtype: torch.dtype) -> Iterator[Sample]:
    def t(*shape):
        return torch.randn(*shape, device=device, dtype=dtype)

    def stats(c):  # float32 buffers under reduced precision, as nn.BatchNorm's under autocast
        sdtype = torch.float64 if dtype == torch.float64 else torch.float32
        return dict(running_mean=torch.randn(c, device=device, dtype=sdtype),
                    running_var=torch.rand(c, device=device, dtype=sdtype) + 0.5)

    constants = ("running_mean", "running_var")
    yield Sample("train per-sample gain relu", (t(4, 12, 5, 7),),
                 dict(gain=1 + t(4, 12), bias=t(4, 12), activation="relu", **stats(12)), constants)
    yield Sample("train per-channel leaky_relu channels_last",
                 (t(3, 8, 6, 5).to(memory_format=torch.channels_last),),
                 dict(gain=t(8), bias=t(8), activation="leaky_relu", negative_slope=0.1))
    yield Sample("eval [B, C, L]", (t(5, 6, 9),),
                 dict(gain=t(5, 6), bias=t(5, 6), training=False, **stats(6)), constants)


def _spectral_norm_samples(device: torch.device, dtype: torch.dtype) -> Iterator[Sample]:
    acc = torch.float64 if dtype == torch.float64 else torch.float32

    def vec(n):
        return torch.nn.functional.normalize(torch.randn(n, device=device, dtype=acc), dim=0)

    w = torch.randn(48, 3 * 5 * 5, device=device, dtype=dtype)
    constants = ("u", "v")
    yield Sample("48x75 n=1", (w,), dict(u=vec(48), v=vec(75)), constants)
    yield Sample("1000x7 n=2", (torch.randn(1000, 7, device=device, dtype=dtype),),
                 dict(u=vec(1000), v=vec(7), n_power_iterations=2), constants)
    yield Sample("transposed 9x40 n=0", (torch.randn(40, 9, device=device, dtype=dtype).t(),),
                 dict(u=vec(9), v=vec(40), n_power_iterations=0), constants)
    shapes = [(16, 27), (1, 1), (64, 9)]
    yield Sample("grouped 3 layers", tuple(torch.randn(s, device=device, dtype=dtype) for s in shapes),
                 dict(u0=vec(16), u1=vec(1), u2=vec(64), v0=vec(27), v1=vec(1), v2=vec(9)),
                 ("u0", "u1", "u2", "v0", "v1", "v2"))


def _self_attention_samples(device: torch.device, dtype: torch.dtype) -> Iterator[Sample]:
    def t(*shape, s=1.0):
        return s * torch.randn(*shape, device=device, dtype=dtype)

    c = 32
    yield Sample("biggan 32ch 9x7 pool 2", (t(2, c, 9, 7),),
                 dict(w_query=t(4, c, s=0.2), w_key=t(4, c, s=0.2), w_value=t(16, c, s=0.2),
                      gamma=t(1).reshape(()), w_out=t(c, 16, s=0.25)))
    yield Sample("sagan 16ch 6x6 channels_last", (t(1, 16, 6, 6).contiguous(
        memory_format=torch.channels_last),),
                 dict(w_query=t(2, 16, s=0.25), w_key=t(2, 16, s=0.25), w_value=t(16, 16, s=0.25),
                      gamma=t(1), b_query=t(2), b_key=t(2), b_value=t(16), pool=1))


def _spectral_norm(weight_mat, *more, backend=None, **kwargs):
    """One weight, or (weights, u0.., v0..) as the grouped op."""
    if not more:
        return spectral_norm_power_iteration(weight_mat, backend=backend, **kwargs)
    weights = [weight_mat, *more]
    us = [kwargs[f"u{i}"] for i in range(len(weights))]
    vs = [kwargs[f"v{i}"] for i in range(len(weights))]
    return spectral_norm_power_iteration_grouped(weights, us, vs, backend=backend)


CHECKS: dict[str, OpCheck] = {
    "pixel_shuffle_act": OpCheck(pixel_shuffle_act, _pixel_shuffle_samples, _PIXEL_SHUFFLE_DTYPES),
    "cond_batch_norm": OpCheck(cond_batch_norm, _cond_batch_norm_samples,
                               _COND_BATCH_NORM_DTYPES),
    "spectral_norm_power_iteration": OpCheck(_spectral_norm, _spectral_norm_samples,
                                             _SPECTRAL_NORM_DTYPES),
    # The softmax backward's dP - delta cancels: fp32 attention gradients (the reference's own
    # included) are a few 1e-5 from float64.
    "self_attention2d": OpCheck(self_attention2d, _self_attention_samples,
                                _SELF_ATTENTION_DTYPES, tolerance={torch.float32: 1e-4}),
}

# Absolute tolerance relative to the output's scale; low precision is compared with a float64
# reference by the error-ratio rule in the tests, here a looser bound suffices for a smoke check.
_TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-2, torch.bfloat16: 1e-1}


def _run(check: OpCheck, sample: Sample, backend: str) -> list[torch.Tensor]:
    args = [a.detach().clone().requires_grad_(True) if isinstance(a, torch.Tensor) else a
            for a in sample.args]
    kwargs = {k: v.detach().clone().requires_grad_(k not in sample.constants)
              if isinstance(v, torch.Tensor) else v for k, v in sample.kwargs.items()}
    out = check.fn(*args, **kwargs, backend=backend)
    # The same upstream gradient for every backend: a fixed seed per sample.
    gen = torch.Generator(device=out.device).manual_seed(1234)
    grad_out = torch.randn(out.shape, generator=gen, device=out.device, dtype=out.dtype)
    inputs = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor) and a.requires_grad]
    grads = torch.autograd.grad(out, inputs, grad_out)
    return [out.detach(), *grads]


def _scaled_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    """max |got - expected|, relative to expected's largest magnitude when that exceeds 1."""
    if expected.numel() == 0:
        return 0.0
    diff = (got.double() - expected.double()).abs().max()
    return (diff / expected.double().abs().max().clamp_min(1)).item()


def run_checks(device: torch.device, dtypes: list[torch.dtype] | None = None,
               ops: list[str] | None = None) -> list[CheckResult]:
    """Compares each runnable fused backend with the reference on ``device``."""
    results = []
    for op, check in CHECKS.items():
        if ops and op not in ops:
            continue
        for dtype in dtypes or [torch.float32]:
            for sample in check.samples(device, dtype):
                expected = _run(check, sample, "reference")
                for name in _backend.BACKENDS[1:]:
                    ok, _ = _backend.runnable(name, device, dtype, check.dtypes.get(name))
                    if not ok:
                        continue
                    tol = (check.tolerance or _TOLERANCE).get(dtype, _TOLERANCE[dtype])
                    try:
                        got = _run(check, sample, name)
                        err = max(_scaled_error(g, e) for g, e in zip(got, expected))
                        results.append(CheckResult(op, name, dtype, sample.label, err, tol, err <= tol))
                    except Exception as exc:  # a check reports failures, it does not stop at them
                        results.append(CheckResult(op, name, dtype, sample.label, float("nan"), tol,
                                                   False, f"{type(exc).__name__}: {exc}"))
    return results
