"""pixel_shuffle_act: every available backend against the reference, forward and all gradients."""

from __future__ import annotations

import pytest
import torch

import fastgan
from fastgan.ops import pixel_shuffle_act
from fastgan.ops.pixel_shuffle import DTYPES, pixel_shuffle_act_reference
from tests.utils import FUSED, assert_close, skip_unless_runnable

# (N, C_out, H, W, r): odd sizes, batch 1 and 0, r from 1 to 4.
SHAPES = [(2, 3, 5, 7, 2), (1, 2, 3, 4, 3), (2, 2, 3, 5, 4), (3, 4, 6, 5, 1), (0, 2, 3, 3, 2),
          (1, 1, 1, 1, 2)]
ACTIVATIONS = ["none", "relu", "leaky_relu", "prelu_1", "prelu_c", "tanh"]
LAYOUTS = ["contiguous", "channels_last", "strided"]


def make_inputs(shape, activation, layout, dtype, device="cpu", with_bias=True, slope=0.2):
    n, c, h, w, r = shape
    cin = c * r * r
    if layout == "strided":  # a non-contiguous view: every other column of a wider tensor
        x = torch.randn(n, cin, h, 2 * w, device=device, dtype=dtype)[..., ::2]
    else:
        x = torch.randn(n, cin, h, w, device=device, dtype=dtype)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
    kwargs = dict(bias=torch.randn(cin, device=device, dtype=dtype) if with_bias else None)
    if activation.startswith("prelu"):
        kwargs["activation"] = "prelu"
        kwargs["prelu_weight"] = torch.randn(1 if activation == "prelu_1" else c, device=device,
                                             dtype=dtype)
    else:
        kwargs["activation"] = activation
    kwargs["negative_slope"] = slope
    return x, r, kwargs


def run(x, r, kwargs, backend, grad_out=None):
    """Output and the gradients of every tensor input (None when the input is absent)."""
    x = x.detach().clone().requires_grad_(True)
    kw = {k: v.detach().clone().requires_grad_(True) if isinstance(v, torch.Tensor) else v
          for k, v in kwargs.items()}
    if backend == "reference64":
        x64 = x.double()
        kw64 = {k: v.double() if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
        y = pixel_shuffle_act_reference(x64, r, **kw64)
    else:
        y = pixel_shuffle_act(x, r, **kw, backend=backend)
    if grad_out is None:
        grad_out = torch.randn_like(y)
    inputs = [x] + [kw[k] for k in ("bias", "prelu_weight") if kw.get(k) is not None]
    grads = torch.autograd.grad(y, inputs, grad_out.to(y.dtype)) if y.numel() else [
        torch.zeros_like(t) for t in inputs]
    return y.detach(), list(grads), grad_out


def compare(backend, x, r, kwargs):
    expected, expected_grads, grad_out = run(x, r, kwargs, "reference")
    got, got_grads, _ = run(x, r, kwargs, backend, grad_out)
    ref64 = ref64_grads = [None] * 4
    if x.dtype != torch.float64:
        y64, g64, _ = run(x, r, kwargs, "reference64", grad_out.double())
        ref64, ref64_grads = [y64], g64
    assert_close(got, expected, ref64[0], "output")
    for name, g, e, e64 in zip(("grad_x", "grad_bias/prelu", "grad_prelu"), got_grads, expected_grads,
                               ref64_grads):
        assert_close(g, e, e64, name)
    return got, got_grads


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_matches_reference(backend, activation, layout, dtype):
    skip_unless_runnable(backend, "cpu", dtype, DTYPES)
    x, r, kwargs = make_inputs((2, 3, 5, 7, 2), activation, layout, dtype)
    got, grads = compare(backend, x, r, kwargs)
    # The fused output and grad_x keep x's memory format.
    if layout == "channels_last":
        assert got.is_contiguous(memory_format=torch.channels_last)
        assert grads[0].is_contiguous(memory_format=torch.channels_last)
    else:
        assert got.is_contiguous() and grads[0].is_contiguous()


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
def test_shapes(backend, shape, with_bias):
    skip_unless_runnable(backend, "cpu", torch.float32, DTYPES)
    for activation in ("prelu_c", "leaky_relu"):
        x, r, kwargs = make_inputs(shape, activation, "contiguous", torch.float32, with_bias=with_bias)
        compare(backend, x, r, kwargs)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("slope", [0.0, -0.5, 1.7])
def test_leaky_relu_slopes(backend, slope):
    skip_unless_runnable(backend, "cpu", torch.float32, DTYPES)
    x, r, kwargs = make_inputs((2, 2, 4, 3, 2), "leaky_relu", "contiguous", torch.float32, slope=slope)
    compare(backend, x, r, kwargs)


@pytest.mark.parametrize("backend", ["cpu"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64], ids=["bf16", "fp64"])
def test_cpu_dtypes(backend, dtype):
    skip_unless_runnable(backend, "cpu", dtype, DTYPES)
    for activation in ACTIVATIONS:
        x, r, kwargs = make_inputs((2, 3, 5, 7, 2), activation, "channels_last", dtype)
        compare(backend, x, r, kwargs)


def test_zero_at_activation_kink():
    """z == 0 exactly: relu/leaky/prelu grads follow torch (z > 0 is the positive branch)."""
    x = torch.zeros(1, 4, 2, 2)
    x[0, 0, 0, 0] = 1.0
    for backend in ("reference", *FUSED):
        if not fastgan.backend.runnable(backend, torch.device("cpu"))[0]:
            continue
        for act in ("relu", "leaky_relu", "prelu"):
            kw = dict(activation=act, prelu_weight=torch.tensor([0.3]) if act == "prelu" else None)
            ref = run(x, 2, kw, "reference")
            got = run(x, 2, kw, backend, ref[2])
            torch.testing.assert_close(got[0], ref[0])
            for g, e in zip(got[1], ref[1]):
                torch.testing.assert_close(g, e)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_gradcheck_float64(backend):
    skip_unless_runnable(backend, "cpu", torch.float64, DTYPES)
    for activation in ("prelu", "tanh", "leaky_relu"):
        x = torch.randn(2, 8, 3, 5, dtype=torch.float64, requires_grad=True)
        b = torch.randn(8, dtype=torch.float64, requires_grad=True)
        a = torch.randn(2 if activation == "prelu" else 1, dtype=torch.float64, requires_grad=True)
        if activation == "prelu":
            def fn(x, b, a):
                return pixel_shuffle_act(x, 2, b, "prelu", prelu_weight=a, backend=backend)
            inputs = (x, b, a)
        else:
            def fn(x, b):
                return pixel_shuffle_act(x, 2, b, activation, 0.3, backend=backend)
            inputs = (x, b)
        assert torch.autograd.gradcheck(fn, inputs)
        assert torch.autograd.gradgradcheck(fn, inputs)


@pytest.mark.parametrize("backend", FUSED)
def test_double_backward(backend):
    """A gradient penalty through the op: second derivatives match the reference's."""
    skip_unless_runnable(backend, "cpu", torch.float32, DTYPES)
    for activation in ("tanh", "prelu"):
        x = torch.randn(2, 8, 3, 4)
        b = torch.randn(8)
        a = torch.randn(2)
        results = []
        for name in ("reference", backend):
            xi, bi, ai = (t.clone().requires_grad_(True) for t in (x, b, a))
            y = pixel_shuffle_act(xi, 2, bi, activation, prelu_weight=ai if activation == "prelu" else None,
                                  backend=name)
            (gx,) = torch.autograd.grad(y.square().sum(), xi, create_graph=True)
            penalty = gx.square().sum()
            results.append(torch.autograd.grad(penalty, (xi, bi, ai), allow_unused=True,
                                               materialize_grads=True))
        for got, expected in zip(results[1], results[0]):
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_opcheck_native():
    skip_unless_runnable("cpu", "cpu", torch.float32)
    x = torch.randn(2, 8, 3, 5)
    x_cl = torch.randn(1, 18, 4, 3).contiguous(memory_format=torch.channels_last)
    samples = [
        (x, torch.randn(8), 2, "relu", 0.2, None),
        (x, None, 2, "prelu", 0.2, torch.randn(2)),
        (x_cl, torch.randn(18), 3, "tanh", 0.2, None),
    ]
    for args in samples:
        for t in (args[0], args[1], args[5]):
            if t is not None:
                t.requires_grad_(True)
        torch.library.opcheck(torch.ops.fastgan.pixel_shuffle_act_fwd, args)
        x_, b_, r, act, slope, w_ = args
        n, cin, h, w = x_.shape
        dy = torch.randn(n, cin // (r * r), h * r, w * r)
        torch.library.opcheck(torch.ops.fastgan.pixel_shuffle_act_bwd,
                              (dy, x_.detach(), None if b_ is None else b_.detach(), r, act, slope,
                               None if w_ is None else w_.detach()))


def test_opcheck_triton():
    skip_unless_runnable("triton", "cpu", torch.float32, DTYPES)
    x = torch.randn(2, 8, 3, 5, requires_grad=True)
    b = torch.randn(8, requires_grad=True)
    # On CPU the kernels run in the Triton interpreter, which cannot be recorded into an AOT graph
    # (it needs the JIT's kernel metadata), so the aot_dispatch checks run on GPU only.
    on_gpu = x.device.type == "cuda"
    utils = ("test_schema", "test_autograd_registration", "test_faketensor") + (
        ("test_aot_dispatch_dynamic",) if on_gpu else ())
    torch.library.opcheck(torch.ops.fastgan.pixel_shuffle_act_fwd_triton, (x, b, 2, "relu", 0.2, None),
                          test_utils=utils)
    n, cin, h, w = x.shape
    torch.library.opcheck(torch.ops.fastgan.pixel_shuffle_act_bwd_triton,
                          (torch.randn(n, cin // 4, 2 * h, 2 * w), x.detach(), b.detach(), 2, "relu",
                           0.2, None), test_utils=utils)


def test_torch_compile_fullgraph():
    """A module using the cpu backend compiles with no graph break; outputs and grads match eager."""
    skip_unless_runnable("cpu", "cpu", torch.float32)
    module = fastgan.nn.PixelShuffleUpsample(8, 4, 2, activation="prelu", backend="cpu")
    x = torch.randn(2, 8, 5, 6)

    def step(fn):
        module.zero_grad()
        xi = x.clone().requires_grad_(True)
        y = fn(xi)
        y.square().sum().backward()
        return [y.detach(), xi.grad] + [p.grad.clone() for p in module.parameters()]

    expected = step(module)
    got = step(torch.compile(module, fullgraph=True))
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


# --- bad input: a clear error naming the argument, nothing computed ---------------------------

BAD_INPUTS = [
    (dict(x=torch.randn(4, 2, 2)), ValueError, "x must be 4-D"),
    (dict(x=torch.randint(0, 3, (1, 4, 2, 2))), TypeError, "x must be float"),
    (dict(x=torch.randn(1, 6, 2, 2)), ValueError, "divisible by upscale_factor"),
    (dict(upscale_factor=0), ValueError, "upscale_factor must be >= 1"),
    (dict(upscale_factor=2.0), TypeError, "upscale_factor must be an int"),
    (dict(bias=torch.randn(3)), ValueError, "bias must have shape"),
    (dict(bias=torch.randn(4, dtype=torch.float64)), ValueError, "bias has dtype"),
    (dict(bias=torch.randn(4, device="meta")), ValueError, "bias is on meta"),
    (dict(activation="gelu"), ValueError, "activation must be"),
    (dict(activation="prelu"), ValueError, "needs prelu_weight"),
    (dict(activation="prelu", prelu_weight=torch.randn(3)), ValueError, "prelu_weight must have shape"),
    (dict(activation="prelu", prelu_weight=torch.randn(1, 1)), ValueError, "prelu_weight must have shape"),
    (dict(activation="relu", prelu_weight=torch.randn(1)), ValueError, "only used with activation 'prelu'"),
    (dict(negative_slope="0.1", activation="leaky_relu"), TypeError, "negative_slope must be a float"),
    (dict(backend="cudnn"), ValueError, "backend must be one of"),
]


@pytest.mark.parametrize("overrides,error,message", BAD_INPUTS, ids=[m for _, _, m in BAD_INPUTS])
def test_bad_input(overrides, error, message):
    args = dict(x=torch.randn(1, 4, 2, 2), upscale_factor=2, bias=None, activation=None)
    args.update(overrides)
    with pytest.raises(error, match=message):
        pixel_shuffle_act(**args)


def test_native_op_checks_its_arguments():
    """The C++ op validates on its own too (it can be called directly)."""
    skip_unless_runnable("cpu", "cpu", torch.float32)
    with pytest.raises(RuntimeError, match="divisible by upscale_factor"):
        torch.ops.fastgan.pixel_shuffle_act_fwd(torch.randn(1, 6, 2, 2), None, 2, "relu", 0.2, None)
    with pytest.raises(RuntimeError, match="activation must be one of"):
        torch.ops.fastgan.pixel_shuffle_act_fwd(torch.randn(1, 4, 2, 2), None, 2, "gelu", 0.2, None)
    with pytest.raises(RuntimeError, match="grad_out must have shape"):
        torch.ops.fastgan.pixel_shuffle_act_bwd(torch.randn(1, 1, 3, 3), torch.randn(1, 4, 2, 2), None,
                                                2, "relu", 0.2, None)


def test_explicit_unavailable_backend_raises():
    with pytest.raises(fastgan.BackendUnavailableError, match="backend 'cuda' cannot run"):
        pixel_shuffle_act(torch.randn(1, 4, 2, 2), 2, backend="cuda")


# --- GPU -----------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16],
                         ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_gpu_matches_reference(backend, dtype, layout):
    skip_unless_runnable(backend, "cuda", dtype, DTYPES)
    for activation in ACTIVATIONS:
        x, r, kwargs = make_inputs((2, 5, 9, 11, 2), activation, layout, dtype, device="cuda")
        compare(backend, x, r, kwargs)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_gpu_model_shapes(backend, dtype):
    """MSRResNet x4 upsampler and ESRGAN-size inputs, and an r=3, odd-size case."""
    skip_unless_runnable(backend, "cuda", dtype, DTYPES)
    for shape, activation in [((16, 64, 64, 64, 2), "prelu_1"), ((4, 64, 128, 128, 2), "leaky_relu"),
                              ((3, 7, 33, 17, 3), "tanh")]:
        for layout in ("contiguous", "channels_last"):
            x, r, kwargs = make_inputs(shape, activation, layout, dtype, device="cuda")
            compare(backend, x, r, kwargs)


@pytest.mark.gpu
@pytest.mark.parametrize("op", ["pixel_shuffle_act_fwd", "pixel_shuffle_act_fwd_triton"])
def test_gpu_opcheck(op):
    skip_unless_runnable("triton" if op.endswith("triton") else "cuda", "cuda", torch.float32, DTYPES)
    x = torch.randn(2, 8, 3, 5, device="cuda", requires_grad=True)
    w = torch.randn(2, device="cuda", requires_grad=True)
    torch.library.opcheck(getattr(torch.ops.fastgan, op), (x, None, 2, "prelu", 0.2, w))


@pytest.mark.gpu
def test_gpu_cuda_equals_triton():
    for backend in ("cuda", "triton"):
        skip_unless_runnable(backend, "cuda", torch.float32, DTYPES)
    x, r, kwargs = make_inputs((4, 16, 20, 24, 2), "prelu_c", "contiguous", torch.float32, device="cuda")
    a = run(x, r, kwargs, "cuda")
    b = run(x, r, kwargs, "triton", a[2])
    torch.testing.assert_close(a[0], b[0])
    for g, e in zip(a[1], b[1]):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-4)


def _assert_reproducible(backend, device, shape):
    """The bias and PReLU gradients are reductions over N*H*W: the same inputs must give bitwise
    the same gradients on every call (no atomics, a fixed reduction order)."""
    x, r, kwargs = make_inputs(shape, "prelu_c", "contiguous", torch.float32, device=device)
    first = run(x, r, kwargs, backend)
    for _ in range(3):
        again = run(x, r, kwargs, backend, first[2])
        assert torch.equal(first[0], again[0])
        for a, b in zip(first[1], again[1]):
            assert torch.equal(a, b), "gradient changed between identical calls"


def test_reductions_are_deterministic_cpu():
    skip_unless_runnable("cpu", "cpu", torch.float32, DTYPES)
    _assert_reproducible("cpu", "cpu", (8, 16, 24, 40, 2))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_reductions_are_deterministic(backend):
    skip_unless_runnable(backend, "cuda", torch.float32, DTYPES)
    _assert_reproducible(backend, "cuda", (16, 64, 64, 64, 2))
