"""Helpers the Triton backends share: activation jit functions, int64 detection, launching.

Imported only where triton is importable (the ops' triton.py modules).
"""

import torch
import triton
import triton.language as tl
from torch._subclasses.fake_tensor import FakeTensor
from torch.library import wrap_triton

# Kernel activation codes (the ACT constexpr; the jit helpers compare against the literals).
ACT_NONE, ACT_RELU, ACT_LEAKY, ACT_TANH = 0, 1, 2, 3
ACT_CODES = {"none": ACT_NONE, "relu": ACT_RELU, "leaky_relu": ACT_LEAKY, "tanh": ACT_TANH}


@triton.jit
def tanh(z):
    # tl has no tanh and libdevice.tanh does not run under TRITON_INTERPRET, so build it from exp.
    # (1 - e) / (1 + e) with e = exp(-2|z|) never overflows but loses relative precision as
    # |z| -> 0, where an odd Taylor polynomial (truncation error < 1e-7 below 0.3) takes over.
    a = tl.abs(z)
    e = tl.exp(-2.0 * a)
    big = (1.0 - e) / (1.0 + e)
    z2 = z * z
    small = a * (1.0 + z2 * (-1.0 / 3.0 + z2 * (2.0 / 15.0 + z2 * (-17.0 / 315.0
                                                                   + z2 * (62.0 / 2835.0)))))
    t = tl.where(a < 0.3, small, big)
    return tl.where(z < 0, -t, t)


@triton.jit
def act(z, slope, ACT: tl.constexpr):
    if ACT == 1:
        # where(z < 0, 0, z) rather than maximum() so NaN propagates as in torch.relu.
        return tl.where(z < 0, 0.0, z)
    elif ACT == 2:
        return tl.where(z > 0, z, z * slope)
    elif ACT == 3:
        return tanh(z)
    else:
        return z


@triton.jit
def act_grad(z, dy, slope, ACT: tl.constexpr):
    if ACT == 1:
        return tl.where(z > 0, dy, 0.0)
    elif ACT == 2:
        return tl.where(z > 0, dy, dy * slope)
    elif ACT == 3:
        t = tanh(z)
        return dy * (1.0 - t * t)
    else:
        return dy


def needs_int64(*tensors: torch.Tensor) -> bool:
    """True if some element offset of some tensor (or its numel) does not fit in int32."""
    for t in tensors:
        span = sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride()))
        if t.numel() >= 2**31 or span >= 2**31:
            return True
    return False


def launch(kernel, n_programs: int, *args, **meta) -> None:
    """kernel[(n_programs,)](*args, **meta) through wrap_triton, so torch.compile sees it."""
    # A fake-tensor call (the fake kernel triton_op registers) only needs the outputs' metadata,
    # and the wrap_triton op launches nothing under FakeTensorMode anyway. Returning early also
    # keeps that path working under TRITON_INTERPRET, where wrap_triton hands back the bare
    # interpreted kernel, which would try to read the fake tensors' data.
    if any(isinstance(a, FakeTensor) for a in args):
        return
    wrap_triton(kernel)[(n_programs,)](*args, **meta)
