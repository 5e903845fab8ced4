"""cond_batch_norm's four passes, each backend against reference.py pass by pass.

The public op is tested end to end in test_cond_batch_norm.py; these tests pin down each kernel
on its own, over the stride patterns the public API hands them ([B, C, S] views of NCHW,
channels_last and strided activations, stride-0 per-channel affines).
"""

from __future__ import annotations

import pytest
import torch

from fastgan.ops.batch_norm import DTYPES, backend_passes
from fastgan.ops.batch_norm.reference import REFERENCE_PASSES, acc_dtype
from tests.utils import FUSED, assert_close, skip_unless_runnable

ACTIVATIONS = ["none", "relu", "leaky_relu"]
LAYOUTS = ["nchw", "channels_last", "strided"]
AFFINES = ["per_sample", "per_channel", "none"]
# (B, C, H, W): odd sizes, batch 1, spatial 1 ([B, C] inputs), a BigGAN-like 4x4 stage.
SHAPES = [(2, 3, 5, 7), (1, 4, 3, 3), (5, 6, 1, 1), (3, 16, 4, 4), (2, 5, 9, 1)]


def make_x(shape, layout, dtype, device):
    """A [B, C, S] view of a 4-D activation in the given layout (as the public API makes it)."""
    b, c, h, w = shape
    if layout == "strided":  # every other column of a wider tensor: stride 2 along S
        x4 = torch.randn(b, c, h, 2 * w, device=device, dtype=dtype)[..., ::2]
    else:
        x4 = torch.randn(b, c, h, w, device=device, dtype=dtype)
        if layout == "channels_last":
            x4 = x4.contiguous(memory_format=torch.channels_last)
    return x4.view(b, c, h * w)


def _dense(t):
    """Non-overlapping and dense: some permutation of t's dims is contiguous."""
    expected = 1
    for size, stride in sorted(zip(t.shape, t.stride()), key=lambda p: p[1]):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


def make_affine(kind, b, c, dtype, device):
    if kind == "none":
        return None, None
    if kind == "per_channel":  # what the public API passes: a stride-0 expand over B
        return (1 + 0.5 * torch.randn(c, device=device, dtype=dtype)).expand(b, c), \
            torch.randn(c, device=device, dtype=dtype).expand(b, c)
    return 1 + 0.5 * torch.randn(b, c, device=device, dtype=dtype), \
        torch.randn(b, c, device=device, dtype=dtype)


def stats64(x):
    mean, var = REFERENCE_PASSES.stats(x.double())
    return mean, var


def _to64(t):
    return None if t is None else t.double()


def check_passes(backend, shape, layout, affine, activation, dtype, device):
    skip_unless_runnable(backend, device, dtype, DTYPES)
    fused = backend_passes(backend)
    ref = REFERENCE_PASSES
    x = make_x(shape, layout, dtype, device)
    b, c, s = x.shape
    gain, bias = make_affine(affine, b, c, dtype, device)
    acc = acc_dtype(dtype)

    # stats
    mean, var = fused.stats(x)
    assert mean.dtype == acc and var.dtype == acc and mean.shape == (c,) and var.shape == (c,)
    emean, evar = ref.stats(x)
    mean64, var64 = stats64(x)
    assert_close(mean, emean, mean64.to(acc), "mean") if acc != torch.float64 else \
        torch.testing.assert_close(mean, emean)
    assert_close(var, evar, var64.to(acc), "var") if acc != torch.float64 else \
        torch.testing.assert_close(var, evar)

    # The later passes take the reference statistics, so each is checked on its own.
    invstd = torch.rsqrt(evar + 1e-5)
    args = (emean, invstd, gain, bias, activation, 0.1)
    args64 = (emean.double(), invstd.double(), _to64(gain), _to64(bias), activation, 0.1)

    y = fused.fwd(x, *args)
    assert y.shape == x.shape and y.dtype == x.dtype
    if _dense(x) and backend != "reference":
        assert y.stride() == x.stride(), f"output strides {y.stride()} != x's {x.stride()}"
    assert_close(y, ref.fwd(x, *args), ref.fwd(x.double(), *args64), "y")

    dy = torch.randn(b, c, s, device=device, dtype=dtype)
    if layout == "channels_last":  # grad_out need not share x's layout
        dy = dy.transpose(1, 2).contiguous().transpose(1, 2)
    sum_dz, sum_dz_xhat = fused.bwd_reduce(dy, x, *args)
    e1, e2 = ref.bwd_reduce(dy, x, *args)
    r1, r2 = ref.bwd_reduce(dy.double(), x.double(), *args64)
    for got, exp, e64, name in ((sum_dz, e1, r1, "sum_dz"), (sum_dz_xhat, e2, r2, "sum_dz_xhat")):
        assert got.shape == (b, c) and got.dtype == acc
        if acc == torch.float64:
            torch.testing.assert_close(got, exp)
        else:
            assert_close(got, exp, e64, name)

    n = b * s
    g = gain.to(acc) if gain is not None else torch.ones(b, c, device=device, dtype=acc)
    mean_dxhat = (g * e1).sum(0) / n
    mean_dxhat_xhat = (g * e2).sum(0) / n
    for terms in ((mean_dxhat, mean_dxhat_xhat), (None, None)):
        dx = fused.bwd_dx(dy, x, *args, *terms)
        assert dx.shape == x.shape and dx.dtype == x.dtype
        if _dense(x) and backend != "reference":
            assert dx.stride() == x.stride()
        t64 = tuple(_to64(t) for t in terms)
        assert_close(dx, ref.bwd_dx(dy, x, *args, *terms),
                     ref.bwd_dx(dy.double(), x.double(), *args64, *t64), "grad_x")


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("affine", AFFINES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_passes_match_reference(backend, layout, affine, activation, dtype):
    shapes = SHAPES
    if backend == "triton":  # the interpreter is slow: one shape per case, rotating through all
        k = (LAYOUTS.index(layout) * 9 + AFFINES.index(affine) * 3 + ACTIVATIONS.index(activation)
             + (dtype == torch.float16))
        shapes = [SHAPES[k % len(SHAPES)]]
    for shape in shapes:
        check_passes(backend, shape, layout, affine, activation, dtype, "cpu")


def test_passes_float64_cpu():
    for shape in SHAPES:
        check_passes("cpu", shape, "nchw", "per_sample", "leaky_relu", torch.float64, "cpu")


@pytest.mark.parametrize("backend", FUSED)
def test_passes_large_reduction(backend):
    """Channels with many values each: the reductions must split over many blocks/threads.
    (2**16 per channel on the compiled backends; under the slow Triton interpreter 10240, which
    still spans several programs of each split reduction.)"""
    shape = (4, 3, 40, 64) if backend == "triton" else (8, 3, 96, 96)
    check_passes(backend, shape, "nchw", "per_sample", "relu", torch.float32, "cpu")
    check_passes(backend, shape, "channels_last", "per_channel", "none", torch.float32, "cpu")


@pytest.mark.parametrize("backend", FUSED)
def test_stats_large_mean_is_stable(backend):
    """A large common offset must not destroy the variance (no naive E[x^2] - E[x]^2)."""
    skip_unless_runnable(backend, "cpu", torch.float32, DTYPES)
    x = (1000.0 + torch.randn(4, 2, 4096)).float()
    mean, var = backend_passes(backend).stats(x)
    _, var64 = stats64(x)
    torch.testing.assert_close(var, var64.float(), rtol=1e-3, atol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16],
                         ids=["fp32", "fp16", "bf16"])
def test_gpu_passes_match_reference(backend, layout, dtype):
    for shape in SHAPES + [(64, 96, 32, 32), (16, 1536, 4, 4)]:
        for affine in AFFINES:
            check_passes(backend, shape, layout, affine, "relu", dtype, "cuda")
