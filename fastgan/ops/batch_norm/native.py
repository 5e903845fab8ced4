"""The compiled backends (csrc/cpu, csrc/cuda): fake kernels for torch.ops.fastgan.cond_bn_*.

The schemas live in csrc/fastgan.cpp; importing fastgan._C registers them with their CPU and CUDA
kernels. The fake kernels give torch.compile and FakeTensor the output shapes, dtypes and strides.
"""

from __future__ import annotations

import torch

from ... import backend
from .reference import Passes, acc_dtype

AVAILABLE = backend.extension() is not None


def stats_fake(x):
    c = x.shape[1]
    acc = acc_dtype(x.dtype)
    return x.new_empty(c, dtype=acc), x.new_empty(c, dtype=acc)


def fwd_fake(x, mean, invstd, gain, bias, activation, negative_slope):
    return torch.empty_like(x, memory_format=torch.preserve_format)


def bwd_reduce_fake(grad_out, x, mean, invstd, gain, bias, activation, negative_slope):
    b, c = x.shape[:2]
    acc = acc_dtype(x.dtype)
    return x.new_empty(b, c, dtype=acc), x.new_empty(b, c, dtype=acc)


def bwd_dx_fake(grad_out, x, mean, invstd, gain, bias, activation, negative_slope, mean_dxhat,
                mean_dxhat_xhat):
    return torch.empty_like(x, memory_format=torch.preserve_format)


def train_fwd_fake(x, gain, bias, running_mean, running_var, momentum, eps, activation,
                   negative_slope):
    c = x.shape[1]
    acc = acc_dtype(x.dtype)
    return fwd_fake(x, None, None, gain, bias, activation, negative_slope), \
        x.new_empty(c, dtype=acc), x.new_empty(c, dtype=acc)


def train_bwd_fake(grad_out, x, mean, invstd, gain, bias, activation, negative_slope):
    return (bwd_dx_fake(grad_out, x, mean, invstd, gain, bias, activation, negative_slope, None,
                        None),
            *bwd_reduce_fake(grad_out, x, mean, invstd, gain, bias, activation, negative_slope))


if AVAILABLE:
    torch.library.register_fake("fastgan::cond_bn_stats")(stats_fake)
    torch.library.register_fake("fastgan::cond_bn_fwd")(fwd_fake)
    torch.library.register_fake("fastgan::cond_bn_bwd_reduce")(bwd_reduce_fake)
    torch.library.register_fake("fastgan::cond_bn_bwd_dx")(bwd_dx_fake)
    torch.library.register_fake("fastgan::cond_bn_train_fwd")(train_fwd_fake)
    torch.library.register_fake("fastgan::cond_bn_train_bwd")(train_bwd_fake)
    # Training without a process group on CPU: stats + running stats + fwd, and the whole
    # backward, one op each (csrc/cpu/cond_batch_norm.cpp's sweep).
    TRAIN_FWD = torch.ops.fastgan.cond_bn_train_fwd.default
    TRAIN_BWD = torch.ops.fastgan.cond_bn_train_bwd.default
    PASSES = Passes(
        torch.ops.fastgan.cond_bn_stats.default,
        torch.ops.fastgan.cond_bn_fwd.default,
        torch.ops.fastgan.cond_bn_bwd_reduce.default,
        torch.ops.fastgan.cond_bn_bwd_dx.default,
    )
