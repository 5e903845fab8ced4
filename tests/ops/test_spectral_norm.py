"""spectral_norm_power_iteration(_grouped): every backend against the reference and against
torch's own power iteration: u, v, sigma and the gradient of sigma."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fastgan
from fastgan.ops import spectral_norm_power_iteration, spectral_norm_power_iteration_grouped
from fastgan.ops.spectral_norm import DTYPES, sn_power_iteration_reference
from tests.utils import FUSED, skip_unless_runnable

# [H, W] matrices: conv weights flattened (3x5x3x3 -> 3x45), tall and wide, 1x1, odd sizes.
SHAPES = [(1, 1), (3, 45), (1000, 7), (7, 1000), (64, 576), (13, 1), (1, 29), (37, 53)]
LAYOUTS = ["contiguous", "transposed", "strided"]
TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 2e-5, torch.bfloat16: 2e-5}


def make_weight(shape, dtype, layout="contiguous", device="cpu"):
    h, w = shape
    if layout == "transposed":  # stride (1, H): a column-major view
        return torch.randn(w, h, device=device, dtype=dtype).t()
    if layout == "strided":  # every other column of a wider matrix
        return torch.randn(h, 2 * w, device=device, dtype=dtype)[:, ::2]
    return torch.randn(h, w, device=device, dtype=dtype)


def make_vectors(shape, dtype, device="cpu"):
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    h, w = shape
    u = F.normalize(torch.randn(h, device=device, dtype=acc), dim=0)
    v = F.normalize(torch.randn(w, device=device, dtype=acc), dim=0)
    return u, v


def torch_power_iteration(w, u, v, n, eps):
    """torch.nn.utils.spectral_norm's own loop, in float64: an oracle independent of ours."""
    w, u, v = w.double(), u.double().clone(), v.double().clone()
    for _ in range(n):
        v = F.normalize(torch.mv(w.t(), u), dim=0, eps=eps)
        u = F.normalize(torch.mv(w, v), dim=0, eps=eps)
    return u, v, torch.dot(u, torch.mv(w, v))


def check_group(backend, weights, us, vs, n, eps=1e-12):
    """Runs backend and the reference on clones; compares u, v, sigma with each other and with
    torch's loop in float64."""
    ref_us, ref_vs = [u.clone() for u in us], [v.clone() for v in vs]
    got_us, got_vs = [u.clone() for u in us], [v.clone() for v in vs]
    expected = spectral_norm_power_iteration_grouped(weights, ref_us, ref_vs, n, eps,
                                                     backend="reference")
    got = spectral_norm_power_iteration_grouped(weights, got_us, got_vs, n, eps, backend=backend)
    tol = TOL[weights[0].dtype]
    assert got.dtype == expected.dtype and got.shape == (len(weights),)
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol)
    for l, w in enumerate(weights):
        torch.testing.assert_close(got_us[l], ref_us[l], rtol=tol, atol=tol)
        torch.testing.assert_close(got_vs[l], ref_vs[l], rtol=tol, atol=tol)
        u64, v64, s64 = torch_power_iteration(w, us[l], vs[l], n, eps)
        torch.testing.assert_close(got[l].double(), s64, rtol=10 * tol, atol=10 * tol)
        torch.testing.assert_close(got_us[l].double(), u64, rtol=10 * tol, atol=10 * tol)
        if n:
            torch.testing.assert_close(got_vs[l].double(), v64, rtol=10 * tol, atol=10 * tol)
    return got, got_us, got_vs


BACKENDS = ("reference", *FUSED)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{h}x{w}" for h, w in SHAPES])
@pytest.mark.parametrize("n", [0, 1, 2])
def test_single_matches_torch(backend, shape, n):
    skip_unless_runnable(backend, "cpu", torch.float32, DTYPES)
    w = make_weight(shape, torch.float32)
    u, v = make_vectors(shape, torch.float32)
    check_group(backend, [w], [u], [v], n)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64],
                         ids=["fp32", "fp16", "bf16", "fp64"])
def test_dtypes_and_layouts(backend, layout, dtype):
    if backend == "triton" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter mishandles bf16; bf16 Triton runs in the gpu tests")
    skip_unless_runnable(backend, "cpu", dtype, DTYPES)
    shapes = [(37, 53), (5, 200), (64, 9)]
    weights = [make_weight(s, dtype, layout) for s in shapes]
    us, vs = zip(*(make_vectors(s, dtype) for s in shapes))
    check_group(backend, weights, list(us), list(vs), 2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_grouped_equals_per_layer(backend):
    skip_unless_runnable(backend, "cpu", torch.float32, DTYPES)
    shapes = [(8, 27), (1, 1), (300, 7), (16, 144), (5, 3), (64, 64), (2, 500)]
    weights = [make_weight(s, torch.float32) for s in shapes]
    us, vs = zip(*(make_vectors(s, torch.float32) for s in shapes))
    sigmas, got_us, got_vs = check_group(backend, weights, list(us), list(vs), 1)
    for l, w in enumerate(weights):
        u, v = us[l].clone(), vs[l].clone()
        sigma = spectral_norm_power_iteration(w, u, v, 1, backend=backend)
        torch.testing.assert_close(sigma, sigmas[l], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(u, got_us[l], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(v, got_vs[l], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_many_layers_one_group(backend):
    """A BigGAN-sized group (dozens of layers), small enough for the Triton interpreter."""
    skip_unless_runnable(backend, "cpu", torch.float32, DTYPES)
    gen = torch.Generator().manual_seed(0)
    shapes = [(int(torch.randint(1, 40, (1,), generator=gen)),
               int(torch.randint(1, 90, (1,), generator=gen))) for _ in range(40)]
    weights = [make_weight(s, torch.float32) for s in shapes]
    us, vs = zip(*(make_vectors(s, torch.float32) for s in shapes))
    check_group(backend, weights, list(us), list(vs), 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_weight_clamps_to_eps(backend):
    """||W^T u|| = 0: normalize divides by eps, as F.normalize does (zeros, not NaN)."""
    skip_unless_runnable(backend, "cpu", torch.float32, DTYPES)
    w = torch.zeros(6, 10)
    u, v = make_vectors((6, 10), torch.float32)
    sigma, got_us, got_vs = check_group(backend, [w, torch.randn(3, 4)],
                                        [u, F.normalize(torch.randn(3), dim=0)],
                                        [v, F.normalize(torch.randn(4), dim=0)], 1)
    assert sigma[0] == 0 and not got_us[0].isnan().any() and not got_vs[0].isnan().any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_unnormalised_start_and_large_n(backend):
    """u need not start normalised (BigGAN checkpoints); many iterations reach the top singular
    value."""
    skip_unless_runnable(backend, "cpu", torch.float32, DTYPES)
    w = make_weight((20, 30), torch.float32)
    u, v = 3 * torch.randn(20), torch.randn(30)
    sigma, _, _ = check_group(backend, [w], [u], [v], 5)
    u2, v2 = u.clone(), v.clone()
    sigma = spectral_norm_power_iteration(w, u2, v2, 200, backend=backend)
    torch.testing.assert_close(sigma, torch.linalg.matrix_norm(w, 2), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_vectors_of_another_dtype_update_in_place(backend):
    """u, v in the weight's low precision (a module after .half()) are updated in place, the
    iteration itself running in float32."""
    skip_unless_runnable(backend, "cpu", torch.float16, DTYPES)
    w = make_weight((12, 20), torch.float16)
    u, v = (t.half() for t in make_vectors((12, 20), torch.float16))
    u_ptr = u.data_ptr()
    u32, v32 = u.float(), v.float()
    sigma = spectral_norm_power_iteration(w, u, v, 1, backend=backend)
    expected = spectral_norm_power_iteration(w, u32, v32, 1, backend="reference")
    assert u.dtype == torch.float16 and u.data_ptr() == u_ptr and sigma.dtype == torch.float32
    torch.testing.assert_close(sigma, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(u, u32.half())
    torch.testing.assert_close(v, v32.half())


@pytest.mark.parametrize("backend", BACKENDS)
def test_bitwise_reproducible(backend):
    skip_unless_runnable(backend, "cpu", torch.float32, DTYPES)
    weights = [make_weight((300, 77), torch.float32), make_weight((9, 1000), torch.float32)]
    us, vs = zip(*(make_vectors(w.shape, torch.float32) for w in weights))
    results = []
    for _ in range(2):
        cu, cv = [u.clone() for u in us], [v.clone() for v in vs]
        results.append((spectral_norm_power_iteration_grouped(weights, cu, cv, 2, backend=backend),
                        cu, cv))
    assert torch.equal(results[0][0], results[1][0])
    for a, b in zip(results[0][1] + results[0][2], results[1][1] + results[1][2]):
        assert torch.equal(a, b)


def test_cpu_does_not_depend_on_thread_count():
    skip_unless_runnable("cpu", "cpu", torch.float32, DTYPES)
    weights = [make_weight((512, 300), torch.float32), make_weight((3, 45), torch.float32)]
    us, vs = zip(*(make_vectors(w.shape, torch.float32) for w in weights))
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, max(threads, 2)):
            torch.set_num_threads(n)
            cu, cv = [u.clone() for u in us], [v.clone() for v in vs]
            results.append(spectral_norm_power_iteration_grouped(weights, cu, cv, 1, backend="cpu"))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0], results[1])


# --- the gradient of sigma -----------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_sigma_gradient_is_u_vT_frozen(backend):
    """d sigma / dW = u v^T with the post-iteration u, v — kept even when a later call updates
    the buffers in place before the backward (a discriminator called on real, then fake)."""
    skip_unless_runnable(backend, "cpu", torch.float32, DTYPES)
    w = make_weight((6, 15), torch.float32).requires_grad_(True)
    u, v = make_vectors((6, 15), torch.float32)
    sigma = spectral_norm_power_iteration(w, u, v, 1, backend=backend)
    u1, v1 = u.clone(), v.clone()
    spectral_norm_power_iteration(w, u, v, 3, backend=backend)  # moves u, v on
    sigma.backward(torch.tensor(2.0))
    torch.testing.assert_close(w.grad, 2 * torch.outer(u1, v1))


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_gradcheck_float64(backend):
    """With n = 0 sigma = u^T W v is exactly bilinear, so its analytic gradient is the true one:
    gradcheck and gradgradcheck of sigma and of a function of W / sigma."""
    skip_unless_runnable(backend, "cpu", torch.float64, DTYPES)
    w = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    u, v = make_vectors((5, 7), torch.float64)

    def fn(w):
        sigma = spectral_norm_power_iteration(w, u.clone(), v.clone(), 0, backend=backend)
        return (w / sigma).sin().sum() + sigma

    assert torch.autograd.gradcheck(fn, (w,))
    assert torch.autograd.gradgradcheck(fn, (w,))


@pytest.mark.parametrize("backend", BACKENDS)
def test_grouped_gradients(backend):
    skip_unless_runnable(backend, "cpu", torch.float32, DTYPES)
    weights = [make_weight(s, torch.float32).requires_grad_(True) for s in [(4, 9), (3, 3), (8, 2)]]
    us, vs = zip(*(make_vectors(w.shape, torch.float32) for w in weights))
    us, vs = list(us), list(vs)
    sigmas = spectral_norm_power_iteration_grouped(weights, us, vs, 1, backend=backend)
    coef = torch.randn(3)
    (sigmas * coef).sum().backward()
    for l, w in enumerate(weights):
        torch.testing.assert_close(w.grad, coef[l] * torch.outer(us[l], vs[l]))


# --- torch.library: opcheck, compile ---------------------------------------------------------

def _op_samples(dtype=torch.float32):
    shapes = [(4, 9), (1, 1), (7, 3)]
    weights = [make_weight(s, dtype) for s in shapes]
    us, vs = zip(*(make_vectors(s, dtype) for s in shapes))
    return [(weights, list(us), list(vs), n, 1e-12) for n in (0, 1, 2)]


def test_opcheck_native():
    skip_unless_runnable("cpu", "cpu", torch.float32, DTYPES)
    for args in _op_samples():
        torch.library.opcheck(torch.ops.fastgan.sn_power_iteration, args)


def test_opcheck_triton():
    skip_unless_runnable("triton", "cpu", torch.float32, DTYPES)
    for args in _op_samples():
        torch.library.opcheck(torch.ops.fastgan.sn_power_iteration_triton, args,
                              test_utils=("test_schema", "test_faketensor"))


def test_torch_compile_fullgraph():
    """The power iteration and the sigma gradient compile with no graph break; u, v are updated
    in place as in eager."""
    skip_unless_runnable("cpu", "cpu", torch.float32, DTYPES)
    w = make_weight((16, 27), torch.float32).requires_grad_(True)
    u0, v0 = make_vectors((16, 27), torch.float32)

    def step(w, u, v):
        sigma = spectral_norm_power_iteration(w, u, v, 1, backend="cpu")
        return (w / sigma).square().sum()

    results = []
    for fn in (step, torch.compile(step, fullgraph=True)):
        u, v = u0.clone(), v0.clone()
        w.grad = None
        loss = fn(w, u, v)
        loss.backward()
        results.append((loss.detach(), w.grad.clone(), u, v))
    for got, expected in zip(results[1], results[0]):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


# --- bad input -----------------------------------------------------------------------------------

def _args(**overrides):
    args = dict(weight_mat=torch.randn(4, 6), u=torch.randn(4), v=torch.randn(6))
    args.update(overrides)
    return args


BAD_INPUTS = [
    (dict(weight_mat=torch.randn(4, 6, 1)), ValueError, "must be a 2-D matrix"),
    (dict(weight_mat=torch.randn(0, 6), u=torch.randn(0)), ValueError, "has no elements"),
    (dict(weight_mat=torch.randint(0, 3, (4, 6))), TypeError, "must be float"),
    (dict(u=torch.randn(5)), ValueError, r"us\[0\] must have shape \(4,\)"),
    (dict(v=torch.randn(6, 1)), ValueError, r"vs\[0\] must have shape \(6,\)"),
    (dict(u=torch.randint(0, 2, (4,))), TypeError, r"us\[0\] must be float"),
    (dict(v=torch.randn(6, device="meta")), ValueError, r"vs\[0\] is on meta"),
    (dict(n_power_iterations=-1), ValueError, "n_power_iterations must be >= 0"),
    (dict(n_power_iterations=1.0), TypeError, "n_power_iterations must be an int"),
    (dict(eps=0.0), ValueError, "eps must be > 0"),
    (dict(backend="cudnn"), ValueError, "backend must be one of"),
]


@pytest.mark.parametrize("overrides,error,message", BAD_INPUTS, ids=[m for _, _, m in BAD_INPUTS])
def test_bad_input(overrides, error, message):
    args = _args(**overrides)
    u_before = args["u"].clone() if args["u"].device.type != "meta" else None
    with pytest.raises(error, match=message):
        spectral_norm_power_iteration(**args)
    if u_before is not None and args["u"].shape == u_before.shape:
        assert torch.equal(args["u"], u_before), "u written before the error"


def test_grouped_bad_input():
    w, u, v = torch.randn(4, 6), torch.randn(4), torch.randn(6)
    with pytest.raises(TypeError, match="non-empty list"):
        spectral_norm_power_iteration_grouped([], [], [])
    with pytest.raises(TypeError, match="us must be a list of 2"):
        spectral_norm_power_iteration_grouped([w, w], [u], [v, v])
    with pytest.raises(ValueError, match="one dtype and device"):
        spectral_norm_power_iteration_grouped([w, w.double()], [u, u], [v, v])


def test_native_op_checks_its_arguments():
    skip_unless_runnable("cpu", "cpu", torch.float32, DTYPES)
    op = torch.ops.fastgan.sn_power_iteration
    w, u, v = torch.randn(4, 6), torch.randn(4), torch.randn(6)
    with pytest.raises(RuntimeError, match=r"us\[0\] must have shape \[4\]"):
        op([w], [torch.randn(5)], [v], 1, 1e-12)
    with pytest.raises(RuntimeError, match=r"vs\[0\] must be Float"):
        op([w], [u], [v.double()], 1, 1e-12)
    with pytest.raises(RuntimeError, match="must not be empty"):
        op([torch.randn(0, 6)], [torch.randn(0)], [v], 1, 1e-12)
    with pytest.raises(RuntimeError, match="eps must be > 0"):
        op([w], [u], [v], 1, 0.0)


def test_explicit_unavailable_backend_raises():
    with pytest.raises(fastgan.BackendUnavailableError, match="backend 'cuda' cannot run"):
        spectral_norm_power_iteration(torch.randn(3, 4), torch.randn(3), torch.randn(4),
                                      backend="cuda")


def test_reference_is_torchs_loop():
    """The oracle itself, against torch's loop written out (float64)."""
    w = torch.randn(9, 14, dtype=torch.float64)
    u, v = make_vectors((9, 14), torch.float64)
    cu, cv = u.clone(), v.clone()
    sigma = sn_power_iteration_reference([w], [cu], [cv], 3, 1e-12)
    u64, v64, s64 = torch_power_iteration(w, u, v, 3, 1e-12)
    torch.testing.assert_close(sigma[0], s64)
    torch.testing.assert_close(cu, u64)
    torch.testing.assert_close(cv, v64)


# --- GPU -----------------------------------------------------------------------------------------

# The SN weights of BigGAN-128 (ch=96) G and D as matrices, a representative slice of them.
BIGGAN_SHAPES = [(1536, 13824), (1536, 1536), (768, 13824), (768, 6912), (384, 3456),
                 (192, 1728), (96, 864), (3, 864), (1536, 120), (24576, 20), (1, 1536),
                 (1000, 1536), (96, 27), (48, 96)]


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16],
                         ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_gpu_matches_reference(backend, dtype, layout):
    skip_unless_runnable(backend, "cuda", dtype, DTYPES)
    shapes = SHAPES + [(512, 4608)]
    weights = [make_weight(s, dtype, layout, "cuda") for s in shapes]
    us, vs = zip(*(make_vectors(s, dtype, "cuda") for s in shapes))
    for n in (0, 1, 3):
        check_group(backend, weights, list(us), list(vs), n)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_biggan_group(backend):
    skip_unless_runnable(backend, "cuda", torch.float32, DTYPES)
    weights = [make_weight(s, torch.float32, device="cuda") for s in BIGGAN_SHAPES]
    us, vs = zip(*(make_vectors(s, torch.float32, "cuda") for s in BIGGAN_SHAPES))
    check_group(backend, weights, list(us), list(vs), 1)
    test = torch.ops.fastgan.sn_power_iteration if backend == "cuda" else \
        torch.ops.fastgan.sn_power_iteration_triton
    cu, cv = [u.clone() for u in us], [v.clone() for v in vs]
    first = test(weights, cu, cv, 2, 1e-12)
    cu2, cv2 = [u.clone() for u in us], [v.clone() for v in vs]
    assert torch.equal(first, test(weights, cu2, cv2, 2, 1e-12)), "not bitwise reproducible"


@pytest.mark.gpu
@pytest.mark.parametrize("op", ["sn_power_iteration", "sn_power_iteration_triton"])
def test_gpu_opcheck(op):
    skip_unless_runnable("triton" if op.endswith("triton") else "cuda", "cuda", torch.float32,
                         DTYPES)
    weights = [make_weight(s, torch.float32, device="cuda") for s in [(4, 9), (64, 576)]]
    us, vs = zip(*(make_vectors(w.shape, torch.float32, "cuda") for w in weights))
    torch.library.opcheck(getattr(torch.ops.fastgan, op), (weights, list(us), list(vs), 1, 1e-12))


@pytest.mark.gpu
def test_gpu_cuda_equals_triton():
    for backend in ("cuda", "triton"):
        skip_unless_runnable(backend, "cuda", torch.float32, DTYPES)
    weights = [make_weight(s, torch.float32, device="cuda") for s in BIGGAN_SHAPES]
    us, vs = zip(*(make_vectors(s, torch.float32, "cuda") for s in BIGGAN_SHAPES))
    results = []
    for backend in ("cuda", "triton"):
        cu, cv = [u.clone() for u in us], [v.clone() for v in vs]
        results.append((spectral_norm_power_iteration_grouped(weights, cu, cv, 1, backend=backend),
                        cu, cv))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-5)
