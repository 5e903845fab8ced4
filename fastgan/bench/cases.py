"""What to benchmark: one `OpBench` entry per fused op, each with shapes taken from real models.

A new op adds one `register(OpBench(...))` below: its eager reference, its public functional API,
its cases (full and quick), and the bytes each case moves per mode.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .timing import InputSet

DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.float32: "fp32",
    torch.bfloat16: "bf16",
    torch.float16: "fp16",
}


def dtypes_for(device: torch.device) -> list[torch.dtype]:
    """fp32 everywhere; bf16 too on CUDA, where GAN training actually runs in it."""
    return [torch.float32, torch.bfloat16] if device.type == "cuda" else [torch.float32]


@dataclass(frozen=True)
class Case:
    """One benchmark shape: `shape` is the CSV key, `model` says where the shape comes from."""

    shape: str
    model: str
    make: Callable[[torch.device, torch.dtype], InputSet]
    bytes_moved: Callable[[str, int], int]  # (mode, element size) -> bytes read + written
    flops: Callable[[str], int] | None = None  # mode -> floating-point operations (matmul-bound ops)


@dataclass(frozen=True)
class OpBench:
    """A benchmarked op. `reference` / `fused` are "module:attr" paths, imported only when run."""

    name: str
    reference: str
    fused: str
    cases: Callable[[bool, torch.device], list[Case]]  # (quick, device) -> cases
    backends: tuple[str, ...] = ("cuda", "triton", "cpu")
    dtypes: Callable[[torch.device], list[torch.dtype]] | None = None  # default: dtypes_for
    # More baselines beside eager and compile: (provider name, "module:attr" taking the same
    # keyword arguments as the reference).
    extra_providers: tuple[tuple[str, str], ...] = ()

    def dtypes_on(self, device: torch.device) -> list[torch.dtype]:
        return (self.dtypes or dtypes_for)(device)

    def reference_fn(self) -> Callable[..., torch.Tensor]:
        return _resolve(self.reference)

    def fused_fn(self) -> Callable[..., torch.Tensor]:
        return _resolve(self.fused)


def _resolve(path: str) -> Callable[..., torch.Tensor]:
    module, attr = path.split(":")
    return getattr(importlib.import_module(module), attr)


REGISTRY: dict[str, OpBench] = {}


def register(op: OpBench) -> OpBench:
    REGISTRY[op.name] = op
    return op


def get_op(name: str) -> OpBench:
    """The registered op, or a KeyError listing the known names."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown op {name!r}; known: {', '.join(sorted(REGISTRY))}") from None


# ---------------------------------------------------------------- pixel_shuffle_act


def _pixel_shuffle_case(
    model: str, n: int, cin: int, hw: int, r: int, activation: str, negative_slope: float = 0.2,
    prelu_channels: int = 0,
) -> Case:
    """x [n, cin, hw, hw] -> y [n, cin / r^2, hw * r, hw * r], with bias and `activation`."""
    if cin % (r * r):
        raise ValueError(f"cin={cin} is not a multiple of r^2={r * r}")
    act = activation if activation != "leaky_relu" else f"leaky_relu{negative_slope:g}"
    if activation == "prelu":
        act = f"prelu{prelu_channels}"
    shape = f"{n}x{cin}x{hw}x{hw} r{r} {act}+bias"
    numel = n * cin * hw * hw
    params = cin + prelu_channels  # bias and PReLU weight: read in fwd; read + grad written in bwd

    def make(device: torch.device, dtype: torch.dtype) -> InputSet:
        x = torch.randn(n, cin, hw, hw, device=device, dtype=dtype, requires_grad=True)
        bias = torch.randn(cin, device=device, dtype=dtype, requires_grad=True)
        kwargs: dict[str, Any] = dict(
            x=x, upscale_factor=r, bias=bias, activation=activation, negative_slope=negative_slope
        )
        leaves = [x, bias]
        if activation == "prelu":
            w = torch.full((prelu_channels,), 0.25, device=device, dtype=dtype, requires_grad=True)
            kwargs["prelu_weight"] = w
            leaves.append(w)
        return InputSet(kwargs=kwargs, leaves=leaves)

    def bytes_moved(mode: str, elem: int) -> int:
        fwd = (2 * numel + params) * elem  # read x, write y
        bwd = (3 * numel + 2 * params) * elem  # read dy and x, write dx
        return {"fwd": fwd, "bwd": bwd, "full": fwd + bwd}[mode]

    return Case(shape=shape, model=model, make=make, bytes_moved=bytes_moved)


def _pixel_shuffle_cases(quick: bool, device: torch.device) -> list[Case]:
    # The x4 upsampler of MSRResNet / SRResNet (SRGAN): conv 64 -> 256, pixel_shuffle(2), act,
    # twice; LR training patches of 32x32 put its two stages at 32x32 and 64x64, batch 16.
    # The 128x128 stage is the ESRGAN-size (128x128 LR) input. SRGAN uses PReLU (one weight per
    # channel here, the heavier variant), MSRResNet / ESRGAN LeakyReLU(0.1 / 0.2).
    if quick:
        return [
            _pixel_shuffle_case("MSRResNet x4 up1", 16, 256, 32, 2, "relu"),
            _pixel_shuffle_case("SRResNet x4 up1", 4, 256, 32, 2, "prelu", prelu_channels=64),
        ]
    return [
        _pixel_shuffle_case("MSRResNet x4 up1", 16, 256, 32, 2, "relu"),
        _pixel_shuffle_case("MSRResNet x4 up2", 16, 256, 64, 2, "relu"),
        _pixel_shuffle_case("ESRGAN-size 128 LR", 16, 256, 128, 2, "relu"),
        _pixel_shuffle_case("MSRResNet x4 up2", 16, 256, 64, 2, "leaky_relu", negative_slope=0.1),
        _pixel_shuffle_case("ESRGAN-size 128 LR", 16, 256, 128, 2, "leaky_relu",
                            negative_slope=0.2),
        _pixel_shuffle_case("SRResNet x4 up1", 16, 256, 32, 2, "prelu", prelu_channels=64),
        _pixel_shuffle_case("SRResNet x4 up2", 16, 256, 64, 2, "prelu", prelu_channels=64),
    ]


register(
    OpBench(
        name="pixel_shuffle",
        reference="fastgan.ops.pixel_shuffle.reference:pixel_shuffle_act_reference",
        fused="fastgan.ops:pixel_shuffle_act",
        cases=_pixel_shuffle_cases,
    )
)


# ---------------------------------------------------------------- cond_batch_norm


def _cond_batch_norm_case(model: str, b: int, c: int, hw: int, affine: str,
                          activation: str = "relu") -> Case:
    """Training batch norm of x [b, c, hw, hw] with running stats, a per-sample ("cond") or
    per-channel ("bn") gain and bias, and `activation`."""
    shape = f"{b}x{c}x{hw}x{hw} {affine} {activation}"
    numel = b * c * hw * hw
    params = 2 * (b * c if affine == "cond" else c)

    def make(device: torch.device, dtype: torch.dtype) -> InputSet:
        x = torch.randn(b, c, hw, hw, device=device, dtype=dtype, requires_grad=True)
        pshape = (b, c) if affine == "cond" else (c,)
        gain = (1 + 0.2 * torch.randn(pshape, device=device, dtype=dtype)).requires_grad_()
        bias = torch.randn(pshape, device=device, dtype=dtype, requires_grad=True)
        stats = dict(running_mean=torch.zeros(c, device=device),
                     running_var=torch.ones(c, device=device))
        return InputSet(kwargs=dict(x=x, gain=gain, bias=bias, activation=activation, **stats),
                        leaves=[x, gain, bias])

    def bytes_moved(mode: str, elem: int) -> int:
        # The floor: fwd reads x twice (statistics, normalise) and writes y; bwd reads dy and x
        # twice (reduce, then grad_x) and writes dx. Parameters are small but counted.
        fwd = (3 * numel + params) * elem
        bwd = (5 * numel + 2 * params) * elem
        return {"fwd": fwd, "bwd": bwd, "full": fwd + bwd}[mode]

    return Case(shape=shape, model=model, make=make, bytes_moved=bytes_moved)


def _cond_batch_norm_cases(quick: bool, device: torch.device) -> list[Case]:
    # BigGAN-128's generator (ch=96): class-conditional BN + ReLU in each GBlock at
    # [16ch, 4x4] ... [ch, 128x128], batch 64 per GPU; on CPU batch 8 keeps a full run in minutes.
    # Plus the BN + ReLU of a ResNet/DCGAN-style body with a per-channel affine.
    b = 64 if device.type == "cuda" else 8
    if quick:
        return [_cond_batch_norm_case("BigGAN-128 G 16x16", b, 768, 16, "cond"),
                _cond_batch_norm_case("ResNet-style BN+ReLU", 8, 64, 32, "bn")]
    biggan = [(1536, 4), (1536, 8), (768, 16), (384, 32), (192, 64), (96, 128)]
    return [_cond_batch_norm_case(f"BigGAN-128 G {hw}x{hw}", b, c, hw, "cond") for c, hw in biggan] + [
        _cond_batch_norm_case("ResNet-50 stage-1 BN+ReLU", 32 if device.type == "cuda" else 8,
                              256, 56, "bn")]


register(
    OpBench(
        name="cond_batch_norm",
        reference="fastgan.ops.batch_norm.reference:cond_batch_norm_reference",
        fused="fastgan.ops:cond_batch_norm",
        cases=_cond_batch_norm_cases,
    )
)


# ---------------------------------------------------------------- spectral_norm

# The weights BigGAN-PyTorch spectrally normalises in BigGAN-128 (ch=96, 1000 classes, dim_z=120
# in 6 chunks, shared embedding 128) as [H, W] matrices (out, in * kh * kw), in model order.
def _biggan128_sn_shapes() -> list[tuple[int, int]]:
    ch, cond = 96, 128 + 20  # ccbn linears see [shared class embedding, z chunk]
    g: list[tuple[int, int]] = [(16 * ch * 4 * 4, 20)]  # z chunk -> 4x4x1536
    for cin, cout in [(16, 16), (16, 8), (8, 4), (4, 2), (2, 1)]:
        cin, cout = cin * ch, cout * ch
        g += [(cin, cond), (cin, cond), (cout, cin * 9), (cout, cond), (cout, cond),
              (cout, cout * 9), (cout, cin)]
        if cout == 2 * ch:  # self-attention at 64x64
            g += [(cout // 8, cout), (cout // 8, cout), (cout // 2, cout), (cout, cout // 2)]
    g.append((3, ch * 9))
    d: list[tuple[int, int]] = []
    for cin, cout in [(3, ch), (ch, 2 * ch), (2 * ch, 4 * ch), (4 * ch, 8 * ch),
                      (8 * ch, 16 * ch), (16 * ch, 16 * ch)]:
        d += [(cout, cin * 9), (cout, cout * 9)] + ([(cout, cin)] if cin != cout else [])
        if cout == ch:  # self-attention at 64x64
            d += [(ch // 8, ch), (ch // 8, ch), (ch // 2, ch), (ch, ch // 2)]
    d += [(1, 16 * ch), (1000, 16 * ch)]  # linear head, class embedding (projection)
    return g + d


BIGGAN128_SN_SHAPES = _biggan128_sn_shapes()


def torch_spectral_norm_sigmas(weights: list[torch.Tensor], us: list[torch.Tensor],
                               vs: list[torch.Tensor], n_power_iterations: int = 1,
                               grouped: bool = True) -> torch.Tensor:
    """What torch.nn.utils.parametrizations.spectral_norm computes per layer per training forward,
    before it divides W by sigma: the in-place power iteration (mv, normalize(out=)), clones of u
    and v, sigma = u . (W v). Layer by layer (``grouped`` is fastgan's knob, ignored here)."""
    sigmas = []
    for w, u, v in zip(weights, us, vs):
        with torch.no_grad():
            for _ in range(n_power_iterations):
                torch.nn.functional.normalize(torch.mv(w.t(), u), dim=0, eps=1e-12, out=v)
                torch.nn.functional.normalize(torch.mv(w, v), dim=0, eps=1e-12, out=u)
        u_, v_ = u.clone(), v.clone()
        sigmas.append(torch.vdot(u_, torch.mv(w, v_)))
    return torch.stack(sigmas)


def fastgan_spectral_norm_sigmas(weights: list[torch.Tensor], us: list[torch.Tensor],
                                 vs: list[torch.Tensor], n_power_iterations: int = 1,
                                 grouped: bool = True, backend: str | None = None) -> torch.Tensor:
    """The same sigmas through fastgan: one grouped op, or one op per layer."""
    from ..ops import spectral_norm_power_iteration, spectral_norm_power_iteration_grouped

    if grouped:
        return spectral_norm_power_iteration_grouped(weights, us, vs, n_power_iterations,
                                                     backend=backend)
    return torch.stack([spectral_norm_power_iteration(w, u, v, n_power_iterations, backend=backend)
                        for w, u, v in zip(weights, us, vs)])


def _spiked_weight(h: int, w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Gaussian noise plus a dominant rank-1 part: a clear top singular value (as trained SN
    weights have), so u and v start converged and repeated calls agree to rounding."""
    a = torch.nn.functional.normalize(torch.randn(h, device=device), dim=0)
    b = torch.nn.functional.normalize(torch.randn(w, device=device), dim=0)
    noise = torch.randn(h, w, device=device) / max(h, w) ** 0.5
    return (noise + 4 * torch.outer(a, b)).to(dtype)


def _spectral_norm_case(model: str, shapes: list[tuple[int, int]], grouped: bool,
                        label: str) -> Case:
    numel = sum(h * w for h, w in shapes)
    shape = f"{label} {'grouped' if grouped else 'per-layer'}"

    def make(device: torch.device, dtype: torch.dtype) -> InputSet:
        weights, us, vs = [], [], []
        for h, w in shapes:
            weight = _spiked_weight(h, w, device, dtype)
            u = torch.nn.functional.normalize(torch.randn(h, device=device), dim=0)
            v = torch.empty(w, device=device)
            for _ in range(30):  # converge u, v before timing
                torch.nn.functional.normalize(weight.float().t() @ u, dim=0, out=v)
                torch.nn.functional.normalize(weight.float() @ v, dim=0, out=u)
            weights.append(weight.requires_grad_(True))
            us.append(u)
            vs.append(v)
        return InputSet(kwargs=dict(weights=weights, us=us, vs=vs, n_power_iterations=1,
                                    grouped=grouped), leaves=weights)

    def bytes_moved(mode: str, elem: int) -> int:
        # The floor: one iteration reads W twice (W^T u, then W v); the backward writes
        # dsigma/dW = u v^T, W-sized. The vectors are negligible.
        fwd, bwd = 2 * numel * elem, numel * elem
        return {"fwd": fwd, "bwd": bwd, "full": fwd + bwd}[mode]

    return Case(shape=shape, model=model, make=make, bytes_moved=bytes_moved)


def _spectral_norm_cases(quick: bool, device: torch.device) -> list[Case]:
    if quick:
        return [_spectral_norm_case("SAGAN-size conv", [(512, 512 * 9)], True, "512x512x3x3"),
                _spectral_norm_case("BigGAN-128 G+D, attention and ccbn layers",
                                    [s for s in BIGGAN128_SN_SHAPES if s[0] * s[1] < 2**18],
                                    True, "BigGAN-128 small layers")]
    cases = []
    for label, shapes in [("512x512x3x3", [(512, 512 * 9)]),
                          ("1536x1536x3x3", [(1536, 1536 * 9)]),
                          (f"BigGAN-128 G+D {len(BIGGAN128_SN_SHAPES)} layers",
                           BIGGAN128_SN_SHAPES)]:
        for grouped in ((True, False) if len(shapes) > 1 else (True,)):
            cases.append(_spectral_norm_case("BigGAN-128 G+D" if len(shapes) > 1 else label,
                                             shapes, grouped, label))
    return cases


register(
    OpBench(
        name="spectral_norm",
        reference="fastgan.bench.cases:torch_spectral_norm_sigmas",
        fused="fastgan.bench.cases:fastgan_spectral_norm_sigmas",
        cases=_spectral_norm_cases,
        # SN runs on the fp32 master weights (autocast leaves parameters in fp32).
        dtypes=lambda device: [torch.float32],
    )
)


# ---------------------------------------------------------------- self_attention2d


def sdpa_self_attention2d(x, w_query, w_key, w_value, gamma, w_out=None, b_query=None, b_key=None,
                          b_value=None, b_out=None, pool=2, scale=1.0):
    """The block with its core written as F.scaled_dot_product_attention (one head, scale=1.0):
    what a PyTorch user reaches for first. Its fused kernels need equal q/k/v head dims, so on
    SAGAN/BigGAN shapes it mostly falls back to the math (N x M) path."""
    from ..ops.self_attention.reference import project

    b, c, h, w = x.shape
    q = project(x, w_query, b_query)
    k, v = project(x, w_key, b_key), project(x, w_value, b_value)
    if pool > 1:
        k, v = torch.nn.functional.max_pool2d(k, pool), torch.nn.functional.max_pool2d(v, pool)
    q, k, v = (t.flatten(2).transpose(1, 2)[:, None] for t in (q, k, v))  # [B, 1, L, C]
    o = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale)
    o = o[:, 0].transpose(1, 2).reshape(b, -1, h, w)
    out = project(o, w_out, b_out) if w_out is not None else o
    return gamma * out + x


def _self_attention_case(model: str, b: int, c: int, hw: int, layout: str) -> Case:
    pool = 2 if layout == "biggan" else 1
    c_qk, c_v = c // 8, (c // 2 if layout == "biggan" else c)
    n, m = hw * hw, (hw // pool) ** 2
    shape = f"{b}x{c}x{hw}x{hw} {layout}"

    def make(device: torch.device, dtype: torch.dtype) -> InputSet:
        def t(*size, s=1.0):
            return (s * torch.randn(*size, device=device)).to(dtype).requires_grad_()

        x = t(b, c, hw, hw)
        kw: dict[str, Any] = dict(x=x, w_query=t(c_qk, c, s=c ** -0.5),
                                  w_key=t(c_qk, c, s=c ** -0.5), w_value=t(c_v, c, s=c ** -0.5),
                                  gamma=t(1, s=0.5).reshape(()).detach().requires_grad_(),
                                  pool=pool)
        if layout == "biggan":
            kw["w_out"] = t(c, c_v, s=c_v ** -0.5)
        else:
            kw.update(b_query=t(c_qk), b_key=t(c_qk), b_value=t(c_v))
        return InputSet(kwargs=kw, leaves=[v for v in kw.values() if isinstance(v, torch.Tensor)])

    def core_flops(mode: str) -> int:
        fwd = 2 * b * n * m * (c_qk + c_v)  # scores, then attention times value
        bwd = 2 * fwd + 2 * b * n * m * c_qk  # recompute scores; dV, dP; dQ, dK
        return {"fwd": fwd, "bwd": bwd, "full": fwd + bwd}[mode]

    def bytes_moved(mode: str, elem: int) -> int:
        # x, y and the projections once each way; the floor of an attention block that never
        # stores its [N, M] matrix.
        act = b * n * (2 * c + 2 * c_qk + c_v) + b * m * (c_qk + c_v)
        return {"fwd": act * elem, "bwd": 2 * act * elem, "full": 3 * act * elem}[mode]

    return Case(shape=shape, model=model, make=make, bytes_moved=bytes_moved, flops=core_flops)


def _self_attention_cases(quick: bool, device: torch.device) -> list[Case]:
    if quick:
        return [_self_attention_case("BigGAN D attention", 2, 96, 32, "biggan")]
    if device.type == "cuda":
        return [_self_attention_case("BigGAN-128 G attention", 64, 192, 64, "biggan"),
                _self_attention_case("BigGAN-128 D attention", 64, 96, 64, "biggan"),
                _self_attention_case("SAGAN-128 attention", 16, 64, 64, "sagan"),
                _self_attention_case("SAGAN-128 attention", 4, 64, 128, "sagan")]
    # CPU: the same blocks at a batch that keeps eager's N x M matrices (and a full run) small.
    return [_self_attention_case("BigGAN-128 G attention", 4, 192, 64, "biggan"),
            _self_attention_case("BigGAN-128 D attention", 4, 96, 64, "biggan"),
            _self_attention_case("SAGAN-128 attention", 2, 64, 64, "sagan")]


register(
    OpBench(
        name="self_attention",
        reference="fastgan.ops.self_attention.reference:self_attention2d_reference",
        fused="fastgan.ops:self_attention2d",
        cases=_self_attention_cases,
        extra_providers=(("sdpa", "fastgan.bench.cases:sdpa_self_attention2d"),),
    )
)
