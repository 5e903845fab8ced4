"""cond_batch_norm: every available backend against the reference, end to end.

Output, running statistics and the gradients of x, gain and bias, in training and eval. The pass
-by-pass kernel tests are in test_cond_batch_norm_passes.py, the two-process synchronized test in
test_cond_batch_norm_sync.py.
"""

from __future__ import annotations

import itertools

import pytest
import torch

import fastgan
from fastgan.ops import batch_norm as cbn_package
from fastgan.ops import cond_batch_norm
from fastgan.ops._common import output_memory_format
from fastgan.ops.batch_norm import DTYPES, cond_batch_norm_reference
from tests.utils import FUSED, assert_close, skip_unless_runnable

# "passes": the fused orchestration (the one every fused backend and the synchronized reference
# run) over the reference's plain-torch passes.
BACKENDS = FUSED + ("passes",)
SHAPES = [(2, 3, 5, 7), (1, 4, 3, 3), (5, 6), (3, 4, 7), (2, 5, 1, 1), (4, 8, 4, 4)]
AFFINES = ["per_sample", "per_channel", "none"]
ACTIVATIONS = ["none", "relu", "leaky_relu"]
LAYOUTS = ["contiguous", "channels_last", "strided"]


def make_x(shape, layout, dtype):
    if layout == "strided":  # every other element of the last dim of a wider tensor
        x = torch.randn(*shape[:-1], 2 * shape[-1], dtype=dtype)[..., ::2]
    else:
        x = torch.randn(shape, dtype=dtype)
        if layout == "channels_last" and len(shape) == 4:
            x = x.contiguous(memory_format=torch.channels_last)
    return x


def make_affine(kind, b, c, dtype):
    if kind == "none":
        return None, None
    shape = (c,) if kind == "per_channel" else (b, c)
    return 1 + 0.5 * torch.randn(shape, dtype=dtype), torch.randn(shape, dtype=dtype)


def run(backend, x, gain, bias, stats, grad_out=None, **kwargs):
    """(y, running stats after, grads of x / gain / bias) of one call on fresh leaf copies."""
    x = x.detach().clone().requires_grad_(True)
    gain, bias = (t.detach().clone().requires_grad_(True) if t is not None else None
                  for t in (gain, bias))
    rm, rv = (t.clone() for t in stats) if stats is not None else (None, None)
    if backend == "reference64":
        y = cond_batch_norm_reference(x.double(), *(t.double() if t is not None else None
                                                    for t in (gain, bias)),
                                      rm.double() if rm is not None else None,
                                      rv.double() if rv is not None else None, **kwargs)
    elif backend == "passes":
        y = cbn_package._fused("reference", x, gain, bias, rm, rv, kwargs["training"],
                               kwargs["momentum"], kwargs["eps"], kwargs["activation"],
                               kwargs["negative_slope"], None)
    else:
        y = cond_batch_norm(x, gain, bias, rm, rv, **kwargs, backend=backend)
    if grad_out is None:
        grad_out = torch.randn_like(y)
    leaves = [t for t in (x, gain, bias) if t is not None]
    grads = torch.autograd.grad(y, leaves, grad_out.to(y.dtype))
    return y.detach(), (rm, rv), list(grads), grad_out


def compare(backend, x, gain, bias, stats, **kwargs):
    exp_y, exp_stats, exp_grads, dy = run("reference", x, gain, bias, stats, **kwargs)
    y, got_stats, grads, _ = run(backend, x, gain, bias, stats, dy, **kwargs)
    if backend != "passes":
        assert y.is_contiguous(memory_format=output_memory_format(x)), "output format"
    if x.dtype == torch.float64:
        torch.testing.assert_close(y, exp_y)
        for g, e in zip(grads, exp_grads):
            torch.testing.assert_close(g, e)
    else:
        y64, _, grads64, _ = run("reference64", x, gain, bias, stats, dy.double(), **kwargs)
        assert_close(y, exp_y, y64, "y")
        for name, g, e, e64 in zip(("grad_x", "grad_gain", "grad_bias"), grads, exp_grads, grads64):
            assert_close(g, e, e64, name)
    for got, exp in zip(got_stats, exp_stats):
        if exp is not None:
            torch.testing.assert_close(got, exp, rtol=1e-5, atol=1e-6)


def skip_backend(backend, dtype, device="cpu"):
    if backend != "passes":
        skip_unless_runnable(backend, device, dtype, DTYPES)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_matches_reference(backend, layout, training, dtype):
    skip_backend(backend, dtype)
    for k, (affine, activation) in enumerate(itertools.product(AFFINES, ACTIVATIONS)):
        shape = SHAPES[k % len(SHAPES)]
        x = make_x(shape, layout, dtype)
        gain, bias = make_affine(affine, shape[0], shape[1], dtype)
        c = shape[1]
        stats = (torch.randn(c), 0.5 + torch.rand(c)) if (training and k % 2) or not training \
            else None
        compare(backend, x, gain, bias, stats, training=training, momentum=0.1 + 0.2 * (k % 3),
                eps=1e-5, activation=activation, negative_slope=0.1)


@pytest.mark.parametrize("backend", ["cpu", "passes"])
def test_float64(backend):
    skip_backend(backend, torch.float64)
    x = make_x((3, 5, 4, 6), "channels_last", torch.float64)
    gain, bias = make_affine("per_sample", 3, 5, torch.float64)
    stats = (torch.randn(5, dtype=torch.float64), 1 + torch.rand(5, dtype=torch.float64))
    for training in (True, False):
        compare(backend, x, gain, bias, stats, training=training, momentum=0.1, eps=1e-3,
                activation="leaky_relu", negative_slope=0.2)


@pytest.mark.parametrize("backend", ["reference", "cpu", "passes"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_gradcheck_float64(backend, training):
    skip_backend(backend, torch.float64)
    x = torch.randn(3, 4, 3, 2, dtype=torch.float64, requires_grad=True)
    gain = (1 + torch.randn(3, 4, dtype=torch.float64)).requires_grad_()
    bias = torch.randn(4, dtype=torch.float64, requires_grad=True)
    rm, rv = torch.randn(4, dtype=torch.float64), 1 + torch.rand(4, dtype=torch.float64)

    def fn(x, gain, bias):
        if backend == "passes":
            return cbn_package._fused("reference", x, gain, bias, rm.clone(), rv.clone(),
                                      training, 0.1, 1e-3, "leaky_relu", 0.2, None)
        return cond_batch_norm(x, gain, bias, rm.clone(), rv.clone(), training, eps=1e-3,
                               activation="leaky_relu", backend=backend)

    assert torch.autograd.gradcheck(fn, (x, gain, bias))
    assert torch.autograd.gradgradcheck(fn, (x, gain, bias))


@pytest.mark.parametrize("backend", FUSED)
def test_double_backward_matches_reference(backend):
    """An R1-style penalty: the gradient of |dy/dx|^2 w.r.t. x and gain (bias moves dy/dx only
    through the activation's piecewise-constant slope, so it gets none)."""
    skip_backend(backend, torch.float32)

    def penalty_grads(name):
        torch.manual_seed(0)
        x = torch.randn(4, 6, 5, 5, requires_grad=True)
        gain = (1 + 0.3 * torch.randn(4, 6)).requires_grad_()
        bias = torch.randn(6, requires_grad=True)
        y = cond_batch_norm(x, gain, bias, activation="leaky_relu", backend=name)
        (gx,) = torch.autograd.grad((y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum(), x,
                                    create_graph=True)
        return torch.autograd.grad(gx.pow(2).sum(), (x, gain))

    for got, exp in zip(penalty_grads(backend), penalty_grads("reference")):
        torch.testing.assert_close(got, exp, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_one_spatial_one_raises_like_pytorch(backend):
    skip_backend(backend, torch.float32)
    for shape in ((1, 3, 1, 1), (1, 3)):
        x = torch.randn(shape)
        with pytest.raises(ValueError, match="Expected more than 1 value per channel when "
                                             "training"):
            if backend == "passes":
                cbn_package._fused("reference", x, None, None, None, None, True, 0.1, 1e-5,
                                   "none", 0.2, None)
            else:
                cond_batch_norm(x, backend=backend)
        cond_batch_norm(x, running_mean=torch.zeros(3), running_var=torch.ones(3), training=False,
                        backend=None if backend == "passes" else backend)


@pytest.mark.parametrize("backend", FUSED)
def test_empty_batch(backend):
    skip_backend(backend, torch.float32)
    x = torch.randn(0, 3, 4, 4, requires_grad=True)
    gain = torch.ones(3, requires_grad=True)
    rm, rv = torch.zeros(3), torch.ones(3)
    y = cond_batch_norm(x, gain, None, rm, rv, activation="relu", backend=backend)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad.shape == x.shape
    assert torch.equal(rm, torch.zeros(3)) and torch.equal(rv, torch.ones(3))


@pytest.mark.parametrize("backend", FUSED)
def test_reproducible(backend):
    """Statistics and gradients are reductions: identical calls give bitwise identical results."""
    skip_backend(backend, torch.float32)
    b = 2 if backend == "triton" else 8  # the interpreter is slow; GPUs run the gpu variant
    x = torch.randn(b, 16, 12, 12)
    gain, bias = make_affine("per_sample", b, 16, torch.float32)
    kwargs = dict(training=True, momentum=0.1, eps=1e-5, activation="relu", negative_slope=0.2)
    first = run(backend, x, gain, bias, (torch.zeros(16), torch.ones(16)), **kwargs)
    again = run(backend, x, gain, bias, (torch.zeros(16), torch.ones(16)), first[3], **kwargs)
    assert torch.equal(first[0], again[0])
    assert all(torch.equal(a, b) for a, b in zip(first[1], again[1]))
    assert all(torch.equal(a, b) for a, b in zip(first[2], again[2]))


def test_channels_last_output_keeps_format():
    skip_backend("cpu", torch.float32)
    x = make_x((2, 8, 5, 3), "channels_last", torch.float32)
    y = cond_batch_norm(x, activation="relu", backend="cpu")
    assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()


def test_opcheck_native():
    skip_backend("cpu", torch.float32)
    x = torch.randn(3, 4, 10)
    gain, bias = torch.randn(3, 4), torch.randn(4).expand(3, 4)
    mean, invstd = torch.randn(4), torch.rand(4) + 0.5
    dy = torch.randn(3, 4, 10)
    ops = torch.ops.fastgan
    torch.library.opcheck(ops.cond_bn_stats, (x,))
    args = (mean, invstd, gain, bias, "leaky_relu", 0.1)
    torch.library.opcheck(ops.cond_bn_fwd, (x, *args))
    torch.library.opcheck(ops.cond_bn_bwd_reduce, (dy, x, *args))
    torch.library.opcheck(ops.cond_bn_bwd_dx, (dy, x, *args, torch.randn(4), torch.randn(4)))
    torch.library.opcheck(ops.cond_bn_bwd_dx, (dy, x, mean, invstd, None, None, "none", 0.2,
                                                None, None))


def test_opcheck_triton():
    """The Triton ops on CPU tensors under the interpreter (which aot_dispatch cannot trace)."""
    skip_backend("triton", torch.float32)
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    ops = torch.ops.fastgan
    for x in (torch.randn(2, 6, 5),
              torch.randn(3, 8, 2, 3).contiguous(memory_format=torch.channels_last).view(3, 8, 6)):
        b, c, s = x.shape
        mean, invstd = torch.randn(c), torch.rand(c) + 0.5
        gain, bias = torch.randn(b, c), torch.randn(c).expand(b, c)
        dy = torch.randn(b, c, s)
        args = (mean, invstd, gain, bias, "leaky_relu", 0.2)
        torch.library.opcheck(ops.cond_bn_stats_triton, (x,), test_utils=utils)
        torch.library.opcheck(ops.cond_bn_fwd_triton, (x, *args), test_utils=utils)
        torch.library.opcheck(ops.cond_bn_bwd_reduce_triton, (dy, x, *args), test_utils=utils)
        torch.library.opcheck(ops.cond_bn_bwd_dx_triton,
                              (dy, x, *args, torch.randn(c), torch.randn(c)), test_utils=utils)
        torch.library.opcheck(ops.cond_bn_bwd_dx_triton,
                              (dy, x, mean, invstd, None, bias, "none", 0.2, None, None),
                              test_utils=utils)


def test_torch_compile_fullgraph():
    skip_backend("cpu", torch.float32)
    x = torch.randn(4, 6, 5, 5, requires_grad=True)
    gain = (1 + torch.randn(4, 6)).requires_grad_()
    bias = torch.randn(6, requires_grad=True)

    def step(x, gain, bias, rm, rv):
        return cond_batch_norm(x, gain, bias, rm, rv, activation="relu", backend="cpu")

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    stats_e, stats_c = (torch.zeros(6), torch.ones(6)), (torch.zeros(6), torch.ones(6))
    y_e = step(x, gain, bias, *stats_e)
    y_c = compiled(x, gain, bias, *stats_c)
    torch.testing.assert_close(y_c, y_e)
    for a, b in zip(stats_c, stats_e):
        torch.testing.assert_close(a, b)
    dy = torch.randn_like(y_e)
    g_e = torch.autograd.grad(y_e, (x, gain, bias), dy)
    g_c = torch.autograd.grad(y_c, (x, gain, bias), dy)
    for a, b in zip(g_c, g_e):
        torch.testing.assert_close(a, b)


BAD = [
    (dict(x=torch.randn(4)), ValueError, "x must be"),
    (dict(x=torch.randn(2, 3, 4, 4, 4)), ValueError, "x must be"),
    (dict(x=torch.randint(0, 3, (2, 3, 4))), TypeError, "x must be float"),
    (dict(gain=torch.randn(4)), ValueError, r"gain must be per channel \[3\] or per sample"),
    (dict(bias=torch.randn(3, 3)), ValueError, "bias must be per channel"),
    (dict(gain=torch.randn(3, dtype=torch.float64)), ValueError, "gain must be torch.float32"),
    (dict(running_mean=torch.zeros(3)), ValueError, "both be given"),
    (dict(running_mean=torch.zeros(4), running_var=torch.ones(4)), ValueError,
     r"running_mean must have shape \[3\]"),
    (dict(training=False), ValueError, "must be given in eval mode"),
    (dict(momentum=None), TypeError, "momentum must be a float"),
    (dict(eps=0.0), ValueError, "eps must be > 0"),
    (dict(activation="tanh"), ValueError, "activation must be None or one of"),
    (dict(negative_slope="0.2"), TypeError, "negative_slope must be a float"),
    (dict(process_group=object()), RuntimeError, "torch.distributed is not initialised"),
    (dict(backend="nope"), ValueError, "backend"),
]


@pytest.mark.parametrize("overrides,error,message", BAD,
                         ids=[f"{i}-{m[:20]}" for i, (_, _, m) in enumerate(BAD)])
def test_bad_input(overrides, error, message):
    kwargs = dict(x=torch.randn(2, 3, 4, 4))
    kwargs.update(overrides)
    with pytest.raises(error, match=message):
        cond_batch_norm(**kwargs)


def test_native_ops_check_their_arguments():
    skip_backend("cpu", torch.float32)
    ops = torch.ops.fastgan
    x = torch.randn(2, 3, 4)
    with pytest.raises(RuntimeError, match=r"x must be 3-D"):
        ops.cond_bn_stats(torch.randn(2, 3))
    with pytest.raises(RuntimeError, match=r"mean must have shape \[3\]"):
        ops.cond_bn_fwd(x, torch.zeros(4), torch.ones(3), None, None, "none", 0.2)
    with pytest.raises(RuntimeError, match="gain must have shape"):
        ops.cond_bn_fwd(x, torch.zeros(3), torch.ones(3), torch.ones(3), None, "none", 0.2)
    with pytest.raises(RuntimeError, match="activation must be one of"):
        ops.cond_bn_fwd(x, torch.zeros(3), torch.ones(3), None, None, "prelu", 0.2)
    with pytest.raises(RuntimeError, match="both be given"):
        ops.cond_bn_bwd_dx(x, x, torch.zeros(3), torch.ones(3), None, None, "none", 0.2,
                           torch.zeros(3), None)


def test_explicit_unavailable_backend_raises():
    with pytest.raises(fastgan.BackendUnavailableError, match="backend 'cuda' cannot run"):
        cond_batch_norm(torch.randn(2, 3, 4), backend="cuda")


# --- GPU -----------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16],
                         ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_gpu_matches_reference(backend, dtype, layout):
    skip_unless_runnable(backend, "cuda", dtype, DTYPES)
    with torch.device("cuda"):
        for k, (affine, activation) in enumerate(itertools.product(AFFINES, ACTIVATIONS)):
            shape = [(64, 96, 32, 32), (16, 1536, 4, 4), (3, 5, 7, 9)][k % 3]
            x = make_x(shape, layout, dtype)
            gain, bias = make_affine(affine, shape[0], shape[1], dtype)
            stats = (torch.randn(shape[1]), 0.5 + torch.rand(shape[1]))
            for training in (True, False):
                compare(backend, x, gain, bias, stats, training=training, momentum=0.1,
                        eps=1e-5, activation=activation, negative_slope=0.2)


@pytest.mark.gpu
@pytest.mark.parametrize("suffix", ["", "_triton"], ids=["cuda", "triton"])
def test_gpu_opcheck(suffix):
    skip_unless_runnable("triton" if suffix else "cuda", "cuda", torch.float32, DTYPES)
    ops = torch.ops.fastgan
    with torch.device("cuda"):
        x, dy = torch.randn(3, 4, 10), torch.randn(3, 4, 10)
        args = (torch.randn(4), torch.rand(4) + 0.5, torch.randn(3, 4), torch.randn(3, 4),
                "relu", 0.2)
        torch.library.opcheck(getattr(ops, "cond_bn_stats" + suffix), (x,))
        torch.library.opcheck(getattr(ops, "cond_bn_fwd" + suffix), (x, *args))
        torch.library.opcheck(getattr(ops, "cond_bn_bwd_reduce" + suffix), (dy, x, *args))
        torch.library.opcheck(getattr(ops, "cond_bn_bwd_dx" + suffix),
                              (dy, x, *args, torch.randn(4), torch.randn(4)))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_torch_compile_fullgraph(backend):
    skip_unless_runnable(backend, "cuda", torch.float32, DTYPES)
    with torch.device("cuda"):
        x = torch.randn(8, 16, 8, 8, requires_grad=True)
        gain = (1 + torch.randn(8, 16)).requires_grad_()
        stats = torch.zeros(16), torch.ones(16)

        def step(x, gain):
            return cond_batch_norm(x, gain, None, *stats, activation="relu", backend=backend)

        y = torch.compile(step, fullgraph=True)(x, gain)
        expected = cond_batch_norm_reference(x, gain, None, activation="relu")
        torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(torch.autograd.grad(y.sum(), x)[0],
                                   torch.autograd.grad(expected.sum(), x)[0], rtol=1e-4, atol=1e-4)
