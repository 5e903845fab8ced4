"""The cpu backend's two training ops, fastgan::cond_bn_train_fwd / _bwd, against the four passes.

cond_bn_train_fwd is stats + invstd + the running-stat update + fwd in one op, cond_bn_train_bwd
bwd_reduce + the [C] dx terms + bwd_dx. Inside, the CPU kernel either sweeps x a block of channels
at a time or runs the separate passes (csrc/cpu/cond_batch_norm.cpp, use_sweep); the shapes below
take both ways. Each channel's arithmetic is the passes', so in float32 and float64 the statistics
and y equal theirs bit for bit.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from fastgan.ops import batch_norm as cbn_package
from fastgan.ops import cond_batch_norm
from fastgan.ops.batch_norm import DTYPES
from tests.utils import skip_unless_runnable

ops = torch.ops.fastgan
ACTIVATIONS = ["none", "relu", "leaky_relu"]
# (B, C, H, W, layout, which way the kernel takes with 2 threads): small NCHW maps (x <= 1 MiB)
# sweep, a long row (pieces and spans of kSpan = 2048) too; a 2 MiB map, channels_last, a strided
# view (rows walk through copies) with 2 channels (fewer than 2 per thread) and [B, C] inputs run
# the passes.
CASES = [
    (8, 16, 4, 4, "nchw", "sweep"),
    (3, 6, 5, 7, "nchw", "sweep"),
    (2, 8, 50, 100, "nchw", "sweep"),
    (4, 8, 6, 5, "strided", "sweep"),
    (8, 64, 32, 32, "nchw", "passes"),
    (4, 8, 6, 5, "channels_last", "passes"),
    (4, 2, 6, 5, "strided", "passes"),
    (6, 8, 1, 1, "nchw", "passes"),
]
# bfloat16 rounds to 8 bits: its y differs from the passes' by the rounding of one multiply-add.
DTYPES_CPU = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@pytest.fixture(autouse=True)
def _cpu_backend():
    skip_unless_runnable("cpu", "cpu", torch.float32, DTYPES)


@contextlib.contextmanager
def threads(n):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def make_x(b, c, h, w, layout, dtype):
    """A [B, C, S] view of a 4-D activation in the given layout, mean 3 and std 2."""
    if layout == "strided":  # every other column of a wider tensor: stride 2 along S
        x4 = (3 + 2 * torch.randn(b, c, h, 2 * w, dtype=torch.float64)).to(dtype)[..., ::2]
    else:
        x4 = (3 + 2 * torch.randn(b, c, h, w, dtype=torch.float64)).to(dtype)
        if layout == "channels_last":
            x4 = x4.contiguous(memory_format=torch.channels_last)
    return cbn_package._as_bcs(x4)


def passes_fwd(x, gain, bias, rm, rv, momentum, eps, activation, slope):
    mean, var = ops.cond_bn_stats(x)
    invstd = (var + eps).rsqrt()
    y = ops.cond_bn_fwd(x, mean, invstd, gain, bias, activation, slope)
    if rm is not None:
        n = x.shape[0] * x.shape[2]
        rm.mul_(1 - momentum).add_(mean.to(rm.dtype), alpha=momentum)
        rv.mul_(1 - momentum).add_((var * (n / (n - 1))).to(rv.dtype), alpha=momentum)
    return y, mean, invstd


def passes_bwd(dy, x, mean, invstd, gain, bias, activation, slope):
    sum_dz, sum_dz_xhat = ops.cond_bn_bwd_reduce(dy, x, mean, invstd, gain, bias, activation, slope)
    sums = torch.stack((sum_dz, sum_dz_xhat))
    if gain is not None:
        sums = sums * gain.to(sums.dtype)
    mean_dxhat, mean_dxhat_xhat = sums.sum(1) / (x.shape[0] * x.shape[2])
    dx = ops.cond_bn_bwd_dx(dy, x, mean, invstd, gain, bias, activation, slope, mean_dxhat,
                            mean_dxhat_xhat)
    return dx, sum_dz, sum_dz_xhat


def make_inputs(case, dtype, affine, seed=0):
    torch.manual_seed(seed)
    b, c, h, w, layout, _ = case
    x = make_x(b, c, h, w, layout, dtype)
    if affine == "per_sample":
        gain, bias = (1 + 0.3 * torch.randn(b, c)).to(dtype), torch.randn(b, c).to(dtype)
    elif affine == "per_channel":
        gain, bias = (1 + 0.3 * torch.randn(c)).to(dtype).expand(b, c), \
            torch.randn(c).to(dtype).expand(b, c)
    else:
        gain = bias = None
    return x, gain, bias, torch.randn_like(x)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}x{c[1]}x{c[2]}x{c[3]}-{c[4]}")
@pytest.mark.parametrize("dtype", DTYPES_CPU, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_train_ops_match_the_passes(case, dtype, activation):
    affine = ["per_sample", "per_channel", "none"][ACTIVATIONS.index(activation)]
    x, gain, bias, dy = make_inputs(case, dtype, affine)
    c = x.shape[1]
    stats = [torch.randn(c), torch.rand(c) + 0.5]
    rm, rv = (t.clone() for t in stats)
    with threads(2):
        y, mean, invstd = ops.cond_bn_train_fwd(x, gain, bias, rm, rv, 0.1, 1e-5, activation,
                                                0.2)
        grads = ops.cond_bn_train_bwd(dy, x, mean, invstd, gain, bias, activation, 0.2)
    rm_p, rv_p = (t.clone() for t in stats)
    y_p, mean_p, invstd_p = passes_fwd(x, gain, bias, rm_p, rv_p, 0.1, 1e-5, activation, 0.2)
    grads_p = passes_bwd(dy, x, mean_p, invstd_p, gain, bias, activation, 0.2)

    assert y.stride() == y_p.stride() and grads[0].stride() == grads_p[0].stride()
    assert torch.equal(mean, mean_p) and torch.equal(invstd, invstd_p)
    if dtype in (torch.float32, torch.float64):
        assert torch.equal(y, y_p)
    else:
        torch.testing.assert_close(y, y_p)
    torch.testing.assert_close(rm, rm_p)
    torch.testing.assert_close(rv, rv_p)
    # The row sums are bwd_reduce's own; grad_x's [C] terms are summed in another order.
    assert torch.equal(grads[1], grads_p[1]) and torch.equal(grads[2], grads_p[2])
    torch.testing.assert_close(grads[0], grads_p[0])


def test_train_ops_without_running_stats_leave_nothing_behind():
    x, gain, bias, _ = make_inputs(CASES[0], torch.float32, "per_sample")
    y, mean, invstd = ops.cond_bn_train_fwd(x, gain, bias, None, None, 0.1, 1e-5, "relu", 0.2)
    y_p, mean_p, invstd_p = passes_fwd(x, gain, bias, None, None, 0.1, 1e-5, "relu", 0.2)
    assert torch.equal(y, y_p) and torch.equal(mean, mean_p) and torch.equal(invstd, invstd_p)


def test_large_map_sweeps_like_the_passes():
    """x of 32 MiB: above kSweepLarge, the sweep whose point is to read x from memory once."""
    x = 1 + torch.randn(2, 8, 1 << 19)
    gain, bias = torch.randn(2, 8), torch.randn(8).expand(2, 8)
    dy = torch.randn_like(x)
    with threads(2):
        y, mean, invstd = ops.cond_bn_train_fwd(x, gain, bias, None, None, 0.1, 1e-5, "relu",
                                                0.2)
        dx, s1, s2 = ops.cond_bn_train_bwd(dy, x, mean, invstd, gain, bias, "relu", 0.2)
    y_p, mean_p, invstd_p = passes_fwd(x, gain, bias, None, None, 0.1, 1e-5, "relu", 0.2)
    dx_p, s1_p, s2_p = passes_bwd(dy, x, mean_p, invstd_p, gain, bias, "relu", 0.2)
    assert torch.equal(mean, mean_p) and torch.equal(y, y_p)
    assert torch.equal(s1, s1_p) and torch.equal(s2, s2_p)
    torch.testing.assert_close(dx, dx_p)


@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[5]],
                         ids=["sweep", "sweep-long-rows", "passes"])
def test_results_do_not_depend_on_the_thread_count(case):
    x, gain, bias, dy = make_inputs(case, torch.float32, "per_sample")
    out = []
    for n in (1, 2, 3):
        with threads(n):
            y, mean, invstd = ops.cond_bn_train_fwd(x, gain, bias, None, None, 0.1, 1e-5,
                                                    "leaky_relu", 0.2)
            out.append((y, mean, invstd,
                        *ops.cond_bn_train_bwd(dy, x, mean, invstd, gain, bias, "leaky_relu",
                                               0.2)))
    for other in out[1:]:
        assert all(torch.equal(a, b) for a, b in zip(out[0], other))


@pytest.mark.parametrize("shape", [(8, 10, 16), (3, 7, 35), (2, 6, 1), (1, 5, 2048), (2, 5, 2048)],
                         ids=["S16", "S35", "S1", "one-span", "two-pieces"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_channel_statistics_do_not_depend_on_their_neighbours(shape, dtype):
    """The rows walk takes single-piece channels four at a time (rows_group_stats in
    csrc/cpu/cond_batch_norm_stats.h). A channel's mean and variance are the same bits whether it
    is taken in a group, in the group's remainder, or alone, by cond_bn_stats and by the sweep,
    whatever the thread count."""
    torch.manual_seed(0)
    x = (3 + 2 * torch.randn(shape, dtype=torch.float64)).to(dtype)
    alone = [ops.cond_bn_stats(x[:, c:c + 1]) for c in range(x.shape[1])]
    mean_alone = torch.cat([m for m, _ in alone])
    var_alone = torch.cat([v for _, v in alone])
    for n in (1, 2, 3):
        with threads(n):
            mean, var = ops.cond_bn_stats(x)
            mean_t, invstd_t = ops.cond_bn_train_fwd(x, None, None, None, None, 0.1, 1e-5, "none",
                                                     0.2)[1:]
        assert torch.equal(mean, mean_alone) and torch.equal(var, var_alone)
        assert torch.equal(mean_t, mean_alone)
        assert torch.equal(invstd_t, (var_alone + 1e-5).rsqrt())


def test_public_op_trains_through_them(monkeypatch):
    """cond_batch_norm on the cpu backend in training calls the two ops, and no pass op."""
    calls = []

    def counted(name, op):
        def call(*args):
            calls.append(name)
            return op(*args)
        return call

    native = cbn_package.native
    monkeypatch.setattr(native, "TRAIN_FWD", counted("fwd", native.TRAIN_FWD))
    monkeypatch.setattr(native, "TRAIN_BWD", counted("bwd", native.TRAIN_BWD))
    x = torch.randn(4, 8, 3, 3, requires_grad=True)
    rm, rv = torch.zeros(8), torch.ones(8)
    y = cond_batch_norm(x, None, None, rm, rv, activation="relu", backend="cpu")
    y.sum().backward()
    assert calls == ["fwd", "bwd"]
    assert rm.abs().sum() > 0 and x.grad is not None


def test_opcheck():
    x, gain, bias, dy = make_inputs(CASES[0], torch.float32, "per_sample")
    c = x.shape[1]
    torch.library.opcheck(ops.cond_bn_train_fwd,
                          (x, gain, bias, torch.zeros(c), torch.ones(c), 0.1, 1e-5, "relu", 0.2))
    torch.library.opcheck(ops.cond_bn_train_fwd,
                          (x, None, None, None, None, 0.1, 1e-5, "none", 0.2))
    mean, invstd = torch.randn(c), torch.rand(c) + 0.5
    torch.library.opcheck(ops.cond_bn_train_bwd,
                          (dy, x, mean, invstd, gain, bias, "leaky_relu", 0.1))


def test_train_ops_check_their_arguments():
    x = torch.randn(2, 3, 4)
    c3 = torch.zeros(3)
    with pytest.raises(RuntimeError, match="more than 1 value per channel"):
        ops.cond_bn_train_fwd(torch.randn(1, 3, 1), None, None, None, None, 0.1, 1e-5, "none",
                              0.2)
    with pytest.raises(RuntimeError, match="running_mean and running_var must both"):
        ops.cond_bn_train_fwd(x, None, None, c3, None, 0.1, 1e-5, "none", 0.2)
    with pytest.raises(RuntimeError, match=r"running_var must have shape \[3\]"):
        ops.cond_bn_train_fwd(x, None, None, c3, torch.ones(4), 0.1, 1e-5, "none", 0.2)
    with pytest.raises(RuntimeError, match="running_mean must be floating point"):
        ops.cond_bn_train_fwd(x, None, None, torch.zeros(3, dtype=torch.long), torch.ones(3),
                              0.1, 1e-5, "none", 0.2)
    with pytest.raises(RuntimeError, match="eps must be > 0"):
        ops.cond_bn_train_fwd(x, None, None, None, None, 0.1, 0.0, "none", 0.2)
    with pytest.raises(RuntimeError, match=r"gain must have shape \[2, 3\]"):
        ops.cond_bn_train_fwd(x, torch.ones(3), None, None, None, 0.1, 1e-5, "none", 0.2)
    with pytest.raises(RuntimeError, match="activation must be one of"):
        ops.cond_bn_train_fwd(x, None, None, None, None, 0.1, 1e-5, "tanh", 0.2)
    with pytest.raises(RuntimeError, match="grad_out must have x's shape"):
        ops.cond_bn_train_bwd(torch.randn(2, 3, 5), x, c3, c3 + 1, None, None, "none", 0.2)
    with pytest.raises(RuntimeError, match=r"invstd must have shape \[3\]"):
        ops.cond_bn_train_bwd(x, x, c3, torch.ones(4), None, None, "none", 0.2)
