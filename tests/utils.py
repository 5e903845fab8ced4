"""Shared test helpers: tolerances and comparisons against the reference."""

from __future__ import annotations

import torch

import fastgan
from fastgan import backend as _backend

FUSED = ("triton", "cuda", "cpu")


def skip_unless_runnable(name: str, device: str | torch.device, dtype: torch.dtype,
                         dtypes=None) -> None:
    import pytest

    ok, reason = _backend.runnable(name, torch.device(device), dtype,
                                   dtypes.get(name) if dtypes else None)
    if not ok:
        pytest.skip(f"backend {name} unavailable: {reason}")


def assert_close(actual: torch.Tensor, expected: torch.Tensor, ref64: torch.Tensor | None = None,
                 name: str = "") -> None:
    """fp32/fp64: tight allclose. fp16/bf16: the error-ratio rule against a float64 reference,
    |actual - ref64| <= 2 * |expected - ref64| + eps (expected = the reference in low precision)."""
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{name}: dtype {actual.dtype} != {expected.dtype}"
    if actual.dtype in (torch.float32, torch.float64):
        tol = 1e-5 if actual.dtype == torch.float32 else 1e-10
        torch.testing.assert_close(actual, expected, rtol=tol, atol=tol, msg=lambda m: f"{name}: {m}")
        return
    assert ref64 is not None, f"{name}: low-precision comparison needs a float64 reference"
    if actual.numel() == 0:
        return
    err = (actual.double() - ref64).abs().max().item()
    ref_err = (expected.double() - ref64).abs().max().item()
    eps = 1e-3 * max(ref64.abs().max().item(), 1.0) * (8 if actual.dtype == torch.bfloat16 else 1)
    assert err <= 2 * ref_err + eps, (
        f"{name}: max error {err:.3e} vs reference's {ref_err:.3e} (bound {2 * ref_err + eps:.3e})")
    assert not torch.isnan(actual).any(), f"{name}: NaN"
