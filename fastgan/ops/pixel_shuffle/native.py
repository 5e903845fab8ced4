"""The compiled backends (csrc/cpu, csrc/cuda): fake kernels for torch.ops.fastgan.pixel_shuffle_act_*.

The schemas live in csrc/fastgan.cpp; importing fastgan._C registers them with their CPU and CUDA
kernels. The fake kernels here give torch.compile and FakeTensor the output shapes and strides.
"""

from __future__ import annotations

import torch

from ... import backend
from .._common import output_memory_format

AVAILABLE = backend.extension() is not None


def _out_shape(x: torch.Tensor, upscale_factor: int) -> tuple[int, int, int, int]:
    n, c, h, w = x.shape
    r = upscale_factor
    return n, c // (r * r), h * r, w * r


def pixel_shuffle_act_fwd_fake(x, bias, upscale_factor, activation, negative_slope, prelu_weight):
    return torch.empty(_out_shape(x, upscale_factor), dtype=x.dtype, device=x.device,
                       memory_format=output_memory_format(x))


def pixel_shuffle_act_bwd_fake(grad_out, x, bias, upscale_factor, activation, negative_slope,
                               prelu_weight):
    grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=output_memory_format(x))
    grad_bias = torch.empty_like(bias) if bias is not None else x.new_empty(0)
    grad_prelu = torch.empty_like(prelu_weight) if prelu_weight is not None else x.new_empty(0)
    return grad_x, grad_bias, grad_prelu


if AVAILABLE:
    torch.library.register_fake("fastgan::pixel_shuffle_act_fwd")(pixel_shuffle_act_fwd_fake)
    torch.library.register_fake("fastgan::pixel_shuffle_act_bwd")(pixel_shuffle_act_bwd_fake)
    fwd = torch.ops.fastgan.pixel_shuffle_act_fwd.default
    bwd = torch.ops.fastgan.pixel_shuffle_act_bwd.default
