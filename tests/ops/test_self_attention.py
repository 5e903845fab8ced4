"""self_attention2d: every backend against the reference (the upstream block), output and every
gradient; the attention core alone; memory; opcheck; compile; bad input."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import fastgan
from fastgan.ops import self_attention2d
from fastgan.ops.self_attention import (
    DTYPES,
    attention_core_reference,
    backend_core,
    self_attention2d_reference,
)
from tests.utils import FUSED, assert_close, skip_unless_runnable


def make_inputs(b, c, h, w, layout="biggan", dtype=torch.float32, device="cpu",
                memory_format="contiguous", biases=None):
    """x and the block's parameters; biggan: C/8, C/8, C/2 value + output conv; sagan: C value,
    biases, no output conv."""
    def t(*shape, s=1.0):
        return s * torch.randn(*shape, device=device, dtype=dtype)

    x = t(b, c, h, w)
    if memory_format == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    c_qk = max(c // 8, 1)
    c_v = c // 2 if layout == "biggan" else c
    biases = (layout == "sagan") if biases is None else biases
    kw = dict(w_query=t(c_qk, c, s=c ** -0.5), w_key=t(c_qk, c, s=c ** -0.5),
              w_value=t(c_v, c, s=c ** -0.5), gamma=t(1, s=0.5).reshape(()))
    if layout == "biggan":
        kw["w_out"] = t(c, c_v, s=c_v ** -0.5)
    if biases:
        kw.update(b_query=t(c_qk), b_key=t(c_qk), b_value=t(c_v))
        if layout == "biggan":
            kw["b_out"] = t(c)
    kw["pool"] = 2 if layout == "biggan" else 1
    return x, kw


def run(x, kw, backend, grad_out=None, dtype=None):
    """Output and the gradients of x and every tensor argument."""
    cast = (lambda t: t.to(dtype)) if dtype is not None else (lambda t: t)
    x = cast(x.detach()).clone().requires_grad_(True)
    kw = {k: cast(v.detach()).clone().requires_grad_(True) if isinstance(v, torch.Tensor) else v
          for k, v in kw.items()}
    fn = self_attention2d_reference if backend == "reference64" else self_attention2d
    extra = {} if backend == "reference64" else dict(backend=backend)
    y = fn(x, **kw, **extra)
    if grad_out is None:
        grad_out = torch.randn_like(y)
    inputs = [x] + [v for v in kw.values() if isinstance(v, torch.Tensor)]
    grads = torch.autograd.grad(y, inputs, grad_out.to(y.dtype)) if y.numel() else \
        [torch.zeros_like(i) for i in inputs]
    return y.detach(), list(grads), grad_out


def compare(backend, x, kw):
    expected, expected_grads, grad_out = run(x, kw, "reference")
    got, got_grads, _ = run(x, kw, backend, grad_out)
    ref64, ref64_grads = [None], [None] * len(got_grads)
    if x.dtype != torch.float64:
        y64, g64, _ = run(x, kw, "reference64", grad_out.double(), dtype=torch.float64)
        ref64, ref64_grads = [y64], g64
    assert_close(got, expected, ref64[0], "output")
    names = ["x"] + [k for k, v in kw.items() if isinstance(v, torch.Tensor)]
    grads = dict(zip(names, zip(got_grads, expected_grads, ref64_grads)))
    for name, (g, e, e64) in grads.items():
        if name == "b_key":
            # A bias on every key adds q . b to all of a query's scores, which the softmax
            # cancels: its true gradient is 0, and what is computed is rounding noise summed over
            # N * M terms. It must be small on the scale of the key weights' gradient.
            scale = grads["w_key"][2 if e64 is not None else 1].abs().max().item()
            rel = {torch.float64: 1e-10, torch.float32: 1e-4}.get(g.dtype, 1e-2)
            assert g.abs().max().item() <= rel * max(scale, 1.0), f"grad b_key: {g}"
            continue
        assert_close(g, e, e64, f"grad {name}")
    return got


# (B, C, H, W): the C of the issue (16, 32, 96, 192), odd sizes, batch 1, 4x4 .. 32x32.
SHAPES = [(2, 16, 8, 8), (1, 32, 7, 9), (2, 96, 5, 6), (1, 192, 4, 4), (2, 16, 32, 32),
          (3, 32, 9, 5)]


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("layout", ["biggan", "sagan"])
@pytest.mark.parametrize("shape", SHAPES, ids=["x".join(map(str, s)) for s in SHAPES])
def test_matches_reference(backend, layout, shape):
    skip_unless_runnable(backend, "cpu", torch.float32, DTYPES)
    x, kw = make_inputs(*shape, layout=layout)
    compare(backend, x, kw)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("variant", ["channels_last", "no_biases", "sagan_biggan_biases"])
def test_layouts_dtypes_biases(backend, dtype, variant):
    skip_unless_runnable(backend, "cpu", dtype, DTYPES)
    memory_format = "channels_last" if variant == "channels_last" else "contiguous"
    layout = "sagan" if variant == "no_biases" else "biggan"
    x, kw = make_inputs(2, 32, 6, 7, layout=layout, dtype=dtype, memory_format=memory_format,
                        biases=variant == "sagan_biggan_biases")
    y = compare(backend, x, kw)
    if memory_format == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last)
    else:
        assert y.is_contiguous()


@pytest.mark.parametrize("backend", ["cpu"])
def test_float64_and_bfloat16(backend):
    for dtype in (torch.float64, torch.bfloat16):
        skip_unless_runnable(backend, "cpu", dtype, DTYPES)
        x, kw = make_inputs(2, 16, 6, 6, dtype=dtype)
        compare(backend, x, kw)


@pytest.mark.parametrize("backend", FUSED)
def test_pool_and_scale(backend):
    """pool 3 on sizes it does not divide (floored like F.max_pool2d), and a non-unit scale."""
    skip_unless_runnable(backend, "cpu", torch.float32, DTYPES)
    x, kw = make_inputs(1, 16, 8, 7)
    kw.update(pool=3, scale=0.3)
    compare(backend, x, kw)


@pytest.mark.parametrize("backend", FUSED)
def test_empty_batch(backend):
    skip_unless_runnable(backend, "cpu", torch.float32, DTYPES)
    x, kw = make_inputs(0, 16, 4, 4)
    y, grads, _ = run(x, kw, backend)
    assert y.shape == x.shape
    assert all(not g.any() for g in grads)  # the parameters get zero gradients, as in eager


# --- the attention core -------------------------------------------------------------------------

CORE_SHAPES = [  # (B, N, M, D, E): odd sizes, a single key, q/k dims 2-24 and value dims 8-96
    (2, 33, 5, 4, 8), (1, 7, 1, 12, 48), (2, 64, 16, 24, 96), (1, 1, 3, 2, 8), (3, 100, 25, 12, 12)]


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("shape", CORE_SHAPES, ids=["x".join(map(str, s)) for s in CORE_SHAPES])
@pytest.mark.parametrize("scale", [1.0, 10.0])
def test_core_matches_reference(backend, shape, scale):
    """o, lse and the core's gradients on strided (transposed-view) inputs; scale 10 makes large
    scores that overflow exp without the running max."""
    skip_unless_runnable(backend, "cpu", torch.float32, DTYPES)
    b, n, m, d, e = shape
    q = torch.randn(b, d, n).transpose(1, 2)
    k = torch.randn(b, m, d)
    v = torch.randn(b, e, m).transpose(1, 2)
    fwd, bwd = backend_core(backend)
    o, lse = fwd(q, k, v, scale)
    grad_o = torch.randn_like(o)

    def reference(dtype):
        qr, kr, vr = (t.detach().to(dtype).requires_grad_(True) for t in (q, k, v))
        o_ref, lse_ref = attention_core_reference(qr, kr, vr, scale)
        return (o_ref.detach(), lse_ref, *torch.autograd.grad(o_ref, (qr, kr, vr), grad_o.to(dtype)))

    # The error-ratio rule against float64: grad_q and grad_k carry scale * (dP - delta), which
    # cancels when large scores make the softmax near one-hot; the fp32 reference loses as much.
    got = (o, lse, *bwd(grad_o, q, k, v, o, lse, scale))
    for name, g, e32, e64 in zip(("o", "lse", "grad_q", "grad_k", "grad_v"), got,
                                 reference(torch.float32), reference(torch.float64)):
        if m == 1 and name in ("grad_q", "grad_k"):
            # One key: P = 1 and the exact gradients are 0; what remains is the rounding of
            # dP - delta = grad_o . (v - o), times scale and the other operand.
            bound = 1e-5 * scale * grad_o.abs().max() * v.abs().max() * max(q.abs().max(),
                                                                            k.abs().max())
            assert g.abs().max() <= bound, name
            continue
        assert_close(g, e32, e64, name)


# The cpu core's partition (csrc/cpu/self_attention.cpp): forward blocks of 64 queries x 512
# keys; backward key chunks (more of them at small batches) cut into blocks of 128 keys, against
# blocks of 128 queries. These shapes end every block and chunk with a tail, and have several
# chunks of several blocks each.
CPU_PARTITION_SHAPES = [(1, 300, 700, 12, 20), (2, 130, 1100, 4, 8), (5, 129, 257, 24, 96)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16],
                         ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("shape", CPU_PARTITION_SHAPES,
                         ids=["x".join(map(str, s)) for s in CPU_PARTITION_SHAPES])
def test_cpu_core_partition_edges(shape, dtype):
    """Every block and chunk boundary of the cpu core, in each input dtype, against the float64
    reference on the same (rounded) inputs; and bitwise the same on 1 and 2 threads."""
    skip_unless_runnable("cpu", "cpu", dtype, DTYPES)
    b, n, m, d, e = shape
    q = torch.randn(b, d, n).transpose(1, 2).to(dtype)
    k = torch.randn(b, m, d).to(dtype)
    v = torch.randn(b, e, m).transpose(1, 2).to(dtype)
    grad_o = torch.randn(b, n, e).to(dtype)
    fwd, bwd = backend_core("cpu")
    o, lse = fwd(q, k, v, 0.5)
    got = (o, lse, *bwd(grad_o, q, k, v, o, lse, 0.5))

    qr, kr, vr = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    o_ref, lse_ref = attention_core_reference(qr, kr, vr, 0.5)
    expected = (o_ref, lse_ref, *torch.autograd.grad(o_ref, (qr, kr, vr), grad_o.double()))
    # Products and sums in fp32; only the outputs are rounded to the input dtype.
    tol = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    for name, g, ex in zip(("o", "lse", "grad_q", "grad_k", "grad_v"), got, expected):
        assert g.dtype == (torch.float32 if name == "lse" else dtype), name
        err = (g.double() - ex).abs().max() / ex.abs().max()
        assert err <= tol, (name, err.item())

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if threads > 1 else 2)
        o1, lse1 = fwd(q, k, v, 0.5)
        again = (o1, lse1, *bwd(grad_o, q, k, v, o1, lse1, 0.5))
    finally:
        torch.set_num_threads(threads)
    for name, a, b_ in zip(("o", "lse", "grad_q", "grad_k", "grad_v"), got, again):
        assert torch.equal(a, b_), name


@pytest.mark.parametrize("backend", FUSED)
def test_core_bitwise_reproducible(backend):
    skip_unless_runnable(backend, "cpu", torch.float32, DTYPES)
    q, k, v = torch.randn(2, 70, 12), torch.randn(2, 20, 12), torch.randn(2, 20, 48)
    fwd, bwd = backend_core(backend)
    first = fwd(q, k, v, 1.0)
    grad_o = torch.randn_like(first[0])
    g1 = bwd(grad_o, q, k, v, *first, 1.0)
    again = fwd(q, k, v, 1.0)
    g2 = bwd(grad_o, q, k, v, *again, 1.0)
    for a, b in zip((*first, *g1), (*again, *g2)):
        assert torch.equal(a, b)


# The peak is the process's VmHWM (high-water RSS of its own address space). Not ru_maxrss:
# Linux carries that across fork + exec, so a child of a big pytest process starts at the
# parent's RSS and a real growth can read as 0.
_PEAK_SCRIPT = """
import sys, torch
import fastgan
from fastgan.ops.self_attention import attention_core_reference, backend_core


def peak():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM:"))


b, n, m = 1, 16384, 4096  # SAGAN at 128x128 with 2x2-pooled keys: N x M = 64M scores
q, k, v = torch.randn(b, n, 8), torch.randn(b, m, 8), torch.randn(b, m, 32)
grad_o = torch.randn(b, n, 32)
before = peak()
if sys.argv[1] == "cpu":
    fwd, bwd = backend_core("cpu")
    o, lse = fwd(q, k, v, 1.0)
    bwd(grad_o, q, k, v, o, lse, 1.0)
else:
    o, _ = attention_core_reference(q, k, v, 1.0)
print(peak() - before)
"""


def _peak_growth(which: str) -> int:
    """Growth of the peak RSS while the core runs, in bytes (a fresh interpreter; Linux)."""
    out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, which], capture_output=True,
                         text=True, timeout=600, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def test_cpu_core_memory_does_not_grow_with_n_times_m():
    """The [B, N, M] fp32 score matrix at N = 16384, M = 4096 is 256 MiB; the cpu core's forward
    and backward together raise the peak memory by a small fraction of that (its outputs and
    per-thread blocks), while the reference (the check can fail) allocates it."""
    skip_unless_runnable("cpu", "cpu", torch.float32, DTYPES)
    matrix_bytes = 16384 * 4096 * 4
    assert _peak_growth("cpu") < matrix_bytes / 8
    assert _peak_growth("reference") > matrix_bytes


# --- autograd, torch.library, compile ------------------------------------------------------------

@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_gradcheck_float64(backend):
    skip_unless_runnable(backend, "cpu", torch.float64, DTYPES)
    x, kw = make_inputs(1, 8, 4, 4, dtype=torch.float64, biases=True)
    tensors = {k: v.requires_grad_(True) for k, v in kw.items() if isinstance(v, torch.Tensor)}
    names = list(tensors)

    def fn(x, *values):
        return self_attention2d(x, **dict(zip(names, values)), pool=2, backend=backend)

    args = (x.requires_grad_(True), *tensors.values())
    assert torch.autograd.gradcheck(fn, args)
    assert torch.autograd.gradgradcheck(fn, args)


@pytest.mark.parametrize("backend", FUSED)
def test_double_backward_gradient_penalty(backend):
    """R1 on a discriminator with self-attention: the gradient w.r.t. x with create_graph, then
    its squared norm backpropagated to every weight and gamma."""
    skip_unless_runnable(backend, "cpu", torch.float32, DTYPES)
    x, kw = make_inputs(2, 16, 6, 6)
    results = []
    for name in ("reference", backend):
        xi = x.clone().requires_grad_(True)
        kwi = {k: v.clone().requires_grad_(True) if isinstance(v, torch.Tensor) else v
               for k, v in kw.items()}
        y = self_attention2d(xi, **kwi, backend=name)
        (gx,) = torch.autograd.grad(y.square().sum(), xi, create_graph=True)
        params = [v for v in kwi.values() if isinstance(v, torch.Tensor)]
        results.append(torch.autograd.grad(gx.square().sum(), params))
    for got, expected in zip(results[1], results[0]):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def _core_samples():
    return [(torch.randn(2, 9, 4).requires_grad_(), torch.randn(2, 3, 4).requires_grad_(),
             torch.randn(2, 3, 8).requires_grad_(), 1.0),
            (torch.randn(1, 4, 12).transpose(1, 2), torch.randn(1, 5, 4), torch.randn(1, 5, 16),
             0.5)]


def test_opcheck_native():
    skip_unless_runnable("cpu", "cpu", torch.float32, DTYPES)
    for q, k, v, scale in _core_samples():
        torch.library.opcheck(torch.ops.fastgan.self_attention_core_fwd, (q, k, v, scale))
        o, lse = torch.ops.fastgan.self_attention_core_fwd(q, k, v, scale)
        torch.library.opcheck(torch.ops.fastgan.self_attention_core_bwd,
                              (torch.randn_like(o), q.detach(), k.detach(), v.detach(), o, lse,
                               scale))


def test_opcheck_triton():
    skip_unless_runnable("triton", "cpu", torch.float32, DTYPES)
    utils = ("test_schema", "test_faketensor")
    for q, k, v, scale in _core_samples():
        torch.library.opcheck(torch.ops.fastgan.self_attention_core_fwd_triton, (q, k, v, scale),
                              test_utils=utils)
        o, lse = torch.ops.fastgan.self_attention_core_fwd_triton(q, k, v, scale)
        torch.library.opcheck(torch.ops.fastgan.self_attention_core_bwd_triton,
                              (torch.randn_like(o), q.detach(), k.detach(), v.detach(), o, lse,
                               scale), test_utils=utils)


def test_torch_compile_fullgraph():
    skip_unless_runnable("cpu", "cpu", torch.float32, DTYPES)
    module = fastgan.nn.SelfAttention2d(32, backend="cpu")
    with torch.no_grad():
        module.gamma.fill_(0.5)
    module.eval()
    x = torch.randn(2, 32, 8, 8)

    def step(fn):
        module.zero_grad()
        xi = x.clone().requires_grad_(True)
        y = fn(xi)
        y.square().sum().backward()
        return [y.detach(), xi.grad] + [p.grad.clone() for p in module.parameters()]

    expected = step(module)
    got = step(torch.compile(module, fullgraph=True))
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


# --- bad input -----------------------------------------------------------------------------------

def _bad(**overrides):
    x, kw = make_inputs(1, 16, 4, 4)
    args = dict(x=x, **kw)
    args.update(overrides)
    return args


BAD_INPUTS = [
    (dict(x=torch.randn(16, 4, 4)), ValueError, "x must be 4-D"),
    (dict(x=torch.randint(0, 3, (1, 16, 4, 4))), TypeError, "x must be float"),
    (dict(w_query=torch.randn(2, 15)), ValueError, r"w_query must have shape \[C_out, 16\]"),
    (dict(w_key=torch.randn(3, 16)), ValueError, r"w_key must have shape \[2, 16\]"),
    (dict(w_value=torch.randn(8, 16, 3, 3)), ValueError, "w_value must have shape"),
    (dict(w_out=torch.randn(16, 7)), ValueError, r"w_out must have shape \[16, 8\]"),
    (dict(w_out=None), ValueError, "without w_out the value must have x's 16 channels"),
    (dict(w_query=torch.randn(2, 16, dtype=torch.float64)), ValueError, "w_query must be"),
    (dict(b_query=torch.randn(3)), ValueError, r"b_query must have shape \(2,\)"),
    (dict(gamma=torch.randn(2)), ValueError, "gamma must hold one value"),
    (dict(gamma="1"), TypeError, "gamma must be a tensor"),
    (dict(pool=0), ValueError, "pool must be >= 1"),
    (dict(pool=5), ValueError, "smaller than pool=5"),
    (dict(backend="flash"), ValueError, "backend must be one of"),
]


@pytest.mark.parametrize("overrides,error,message", BAD_INPUTS, ids=[m for _, _, m in BAD_INPUTS])
def test_bad_input(overrides, error, message):
    with pytest.raises(error, match=message):
        self_attention2d(**_bad(**overrides))


def test_native_op_checks_its_arguments():
    skip_unless_runnable("cpu", "cpu", torch.float32, DTYPES)
    fwd = torch.ops.fastgan.self_attention_core_fwd
    with pytest.raises(RuntimeError, match="k must have q's feature size"):
        fwd(torch.randn(1, 4, 3), torch.randn(1, 2, 5), torch.randn(1, 2, 6), 1.0)
    with pytest.raises(RuntimeError, match="v must have k's length"):
        fwd(torch.randn(1, 4, 3), torch.randn(1, 2, 3), torch.randn(1, 5, 6), 1.0)
    with pytest.raises(RuntimeError, match="v is Double but q is Float"):
        fwd(torch.randn(1, 4, 3), torch.randn(1, 2, 3), torch.randn(1, 2, 6).double(), 1.0)


def test_explicit_unavailable_backend_raises():
    x, kw = make_inputs(1, 16, 4, 4)
    with pytest.raises(fastgan.BackendUnavailableError, match="backend 'cuda' cannot run"):
        self_attention2d(x, **kw, backend="cuda")


# --- GPU -----------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16],
                         ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("case", [("biggan", (4, 192, 32, 32)), ("biggan", (2, 96, 33, 31)),
                                  ("sagan", (2, 64, 32, 32)), ("sagan", (1, 16, 7, 9))],
                         ids=["biggan-G", "biggan-D-odd", "sagan", "sagan-small"])
@pytest.mark.parametrize("memory_format", ["contiguous", "channels_last"])
def test_gpu_matches_reference(backend, dtype, case, memory_format):
    skip_unless_runnable(backend, "cuda", dtype, DTYPES)
    layout, shape = case
    x, kw = make_inputs(*shape, layout=layout, dtype=dtype, device="cuda",
                        memory_format=memory_format)
    compare(backend, x, kw)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_128x128_runs_where_the_matrix_would_not_fit(backend):
    """SAGAN at 128x128 without pooling: [B, N, N] for B = 8 would be 8 GiB in fp32; the fused
    core's peak stays O(B N C)."""
    skip_unless_runnable(backend, "cuda", torch.bfloat16, DTYPES)
    x, kw = make_inputs(8, 64, 128, 128, layout="sagan", dtype=torch.bfloat16, device="cuda")
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    y = self_attention2d(x.requires_grad_(True), **kw, backend=backend)
    y.sum().backward()
    assert torch.cuda.max_memory_allocated() - base < 2 * 2**30


@pytest.mark.gpu
@pytest.mark.parametrize("op", ["self_attention_core_fwd", "self_attention_core_fwd_triton"])
def test_gpu_opcheck(op):
    skip_unless_runnable("triton" if op.endswith("triton") else "cuda", "cuda", torch.float32,
                         DTYPES)
    q, k, v = (torch.randn(2, n, d, device="cuda", requires_grad=True)
               for n, d in ((64, 24), (16, 24), (16, 96)))
    torch.library.opcheck(getattr(torch.ops.fastgan, op), (q, k, v, 1.0))
