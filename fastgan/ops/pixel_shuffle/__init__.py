"""pixel_shuffle_act: conv bias + PixelShuffle + activation in one pass over the tensor.

``pixel_shuffle_act(x, r, bias, activation)`` equals
``act(F.pixel_shuffle(x + bias[:, None, None], r))`` (reference.py) in the output and in the
gradients of x, bias and the PReLU weight, and on the fused backends reads x once and writes the
output once. Backends: reference, triton, cuda, cpu (fastgan.backends()).
"""

from __future__ import annotations

import torch

from ... import backend as _backend
from .._common import CPU_DTYPES, GPU_DTYPES, check_float, check_int, check_like, check_tensor
from . import autograd, native
from .reference import ACTIVATIONS, pixel_shuffle_act_reference

__all__ = ["ACTIVATIONS", "pixel_shuffle_act", "pixel_shuffle_act_reference"]

_OP = "pixel_shuffle_act"
DTYPES = {"cpu": CPU_DTYPES, "cuda": GPU_DTYPES, "triton": GPU_DTYPES}

_FUSED: dict[str, object] = {}
if native.AVAILABLE:
    autograd.register("fastgan::pixel_shuffle_act_fwd", native.bwd)
    _FUSED["cpu"] = _FUSED["cuda"] = native.fwd
if _backend.triton_importable():
    from . import triton as _triton

    autograd.register("fastgan::pixel_shuffle_act_fwd_triton", _triton.pixel_shuffle_act_bwd_triton)
    _FUSED["triton"] = _triton.pixel_shuffle_act_fwd_triton


def _check_args(x, upscale_factor, bias, activation, negative_slope, prelu_weight) -> str:
    op = _OP
    check_tensor("x", x, op=op)
    if x.dim() != 4:
        raise ValueError(f"fastgan.{op}: x must be 4-D [N, C*r*r, H, W], got shape {tuple(x.shape)}")
    check_float("x", x, op=op)
    r = check_int("upscale_factor", upscale_factor, op=op, minimum=1)
    cin = x.shape[1]
    if cin % (r * r):
        raise ValueError(
            f"fastgan.{op}: x.shape[1] ({cin}) must be divisible by upscale_factor**2 ({r * r})")
    if bias is not None:
        check_tensor("bias", bias, op=op)
        if bias.shape != (cin,):
            raise ValueError(f"fastgan.{op}: bias must have shape ({cin},) (one per input channel), "
                             f"got {tuple(bias.shape)}")
        check_like("bias", bias, x, op=op)
    activation = "none" if activation is None else activation
    if activation not in ACTIVATIONS:
        raise ValueError(f"fastgan.{op}: activation must be None or one of {ACTIVATIONS}, "
                         f"got {activation!r}")
    if isinstance(negative_slope, bool) or not isinstance(negative_slope, (int, float)):
        raise TypeError(f"fastgan.{op}: negative_slope must be a float, got {type(negative_slope).__name__}")
    if activation == "prelu":
        if prelu_weight is None:
            raise ValueError(f"fastgan.{op}: activation 'prelu' needs prelu_weight ([1] or [C])")
        check_tensor("prelu_weight", prelu_weight, op=op)
        cout = cin // (r * r)
        if prelu_weight.dim() != 1 or prelu_weight.shape[0] not in (1, cout):
            raise ValueError(f"fastgan.{op}: prelu_weight must have shape (1,) or ({cout},) "
                             f"(output channels), got {tuple(prelu_weight.shape)}")
        check_like("prelu_weight", prelu_weight, x, op=op)
    elif prelu_weight is not None:
        raise ValueError(f"fastgan.{op}: prelu_weight is only used with activation 'prelu', "
                         f"got activation {activation!r}")
    return activation


def pixel_shuffle_act(x: torch.Tensor, upscale_factor: int, bias: torch.Tensor | None = None,
                      activation: str | None = None, negative_slope: float = 0.2,
                      prelu_weight: torch.Tensor | None = None,
                      backend: str | None = None) -> torch.Tensor:
    """Adds the per-channel bias, pixel-shuffles by ``upscale_factor`` and applies ``activation``.

    Args:
        x: [N, C*r*r, H, W], float32/float16/bfloat16 (float64 on the reference and cpu backends),
            NCHW or channels_last, any strides.
        upscale_factor: r >= 1.
        bias: [C*r*r] (the bias of the conv that produced x, applied per input channel) or None.
        activation: None/"none", "relu", "leaky_relu", "prelu" or "tanh".
        negative_slope: the slope of "leaky_relu" for negative inputs.
        prelu_weight: the "prelu" weight, [1] or [C] like nn.PReLU.
        backend: "reference", "triton", "cuda", "cpu", "auto" or None (see fastgan.use_backend).

    Returns:
        [N, C, H*r, W*r] in x's dtype; on the fused backends in x's memory format.
    """
    activation = _check_args(x, upscale_factor, bias, activation, negative_slope, prelu_weight)
    name = _backend.resolve(_OP, x, backend, DTYPES)
    if name == "reference":
        return pixel_shuffle_act_reference(x, upscale_factor, bias, activation, negative_slope,
                                           prelu_weight)
    return _FUSED[name](x, bias, upscale_factor, activation, float(negative_slope), prelu_weight)
