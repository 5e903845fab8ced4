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


@dataclass(frozen=True)
class OpBench:
    """A benchmarked op. `reference` / `fused` are "module:attr" paths, imported only when run."""

    name: str
    reference: str
    fused: str
    cases: Callable[[bool, torch.device], list[Case]]  # (quick, device) -> cases
    backends: tuple[str, ...] = ("cuda", "triton", "cpu")

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
