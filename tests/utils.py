"""Shared test helpers: tolerances and comparisons against the reference."""

from __future__ import annotations

import torch

from fastgan import backend as _backend

FUSED = ("triton", "cuda", "cpu")


def skip_unless_runnable(name: str, device: str | torch.device, dtype: torch.dtype,
                         dtypes=None) -> None:
    import pytest

    ok, reason = _backend.runnable(name, torch.device(device), dtype,
                                   dtypes.get(name) if dtypes else None)
    if not ok:
        pytest.skip(f"backend {name} unavailable: {reason}")


# eps of the error-ratio rule, relative to the float64 reference's largest magnitude.
_EPS = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, ref64: torch.Tensor | None = None,
                 name: str = "") -> None:
    """float64: tight allclose. float32/16/bf16: the error-ratio rule against a float64 reference,
    |actual - ref64| <= 2 * |expected - ref64| + eps, with expected = the reference run in the
    same precision (as flash-attention's tests do): a fused kernel may be as wrong as PyTorch's
    own arithmetic in that precision, twice over, and no more."""
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{name}: dtype {actual.dtype} != {expected.dtype}"
    assert not torch.isnan(actual).any(), f"{name}: NaN"
    if actual.dtype == torch.float64 or ref64 is None:
        tol = 1e-10 if actual.dtype == torch.float64 else 1e-5
        torch.testing.assert_close(actual, expected, rtol=tol, atol=tol, msg=lambda m: f"{name}: {m}")
        return
    if actual.numel() == 0:
        return
    err = (actual.double() - ref64).abs().max().item()
    ref_err = (expected.double() - ref64).abs().max().item()
    eps = _EPS[actual.dtype] * max(ref64.abs().max().item(), 1.0)
    assert err <= 2 * ref_err + eps, (
        f"{name}: max error {err:.3e} vs the {actual.dtype} reference's {ref_err:.3e} "
        f"(bound {2 * ref_err + eps:.3e})")
