"""cond_batch_norm: batch norm + per-sample (or per-channel) affine + activation, fused.

``cond_batch_norm(x, gain, bias, running_mean, running_var, training, ...)`` equals
``act(F.batch_norm(x, running_mean, running_var, None, None, training, momentum, eps) * gain + bias)``
(reference.py) in the output, the running statistics and every gradient. The fused backends make
two passes over x in training (statistics, then normalise + affine + activation), one in eval, and
two over (x, dy) in backward; with ``process_group`` the statistics are synchronized across
processes like nn.SyncBatchNorm. README.md beside this file is the contract of each pass.
"""

from __future__ import annotations

import math

import torch

from ... import backend as _backend
from .._common import CPU_DTYPES, GPU_DTYPES, check_float, check_tensor
from . import native, sync
from .reference import (
    ACTIVATIONS,
    REFERENCE_PASSES,
    Passes,
    acc_dtype,
    cond_batch_norm_reference,
)

__all__ = ["ACTIVATIONS", "cond_batch_norm", "cond_batch_norm_reference"]

_OP = "cond_batch_norm"
DTYPES = {"cpu": CPU_DTYPES, "cuda": GPU_DTYPES, "triton": GPU_DTYPES}

_PASSES: dict[str, Passes] = {"reference": REFERENCE_PASSES}
if native.AVAILABLE:
    _PASSES["cpu"] = _PASSES["cuda"] = native.PASSES
if _backend.triton_importable():
    from . import triton as _triton

    _PASSES["triton"] = _triton.PASSES


def backend_passes(name: str) -> Passes:
    """The four passes of backend ``name`` (KeyError when that backend is not built here)."""
    return _PASSES[name]


def _as_bcs(t: torch.Tensor) -> torch.Tensor:
    """[B, C, *spatial] -> [B, C, S]: a view when the strides allow (NCHW, channels_last and most
    slices do), else a contiguous copy."""
    shape = (t.shape[0], t.shape[1], math.prod(t.shape[2:]))
    try:
        return t.view(shape)
    except RuntimeError:
        return t.reshape(shape)


def _as_bc(t: torch.Tensor | None, b: int) -> torch.Tensor | None:
    """Per-channel [C] -> [B, C] with stride 0 over B; per-sample [B, C] as is."""
    if t is None or t.dim() == 2:
        return t
    return t.expand(b, -1)


class _CondBatchNorm(torch.autograd.Function):
    """The normalise pass and the fused backward. mean/invstd arrive computed (and, in training,
    synchronized) by the caller, without a graph: the backward accounts for their dependence on x
    itself, so they get no gradient of their own."""

    @staticmethod
    def forward(ctx, x, gain, bias, mean, invstd, training, count, eps, activation,
                negative_slope, group, name):
        ctx.save_for_backward(x, gain, bias, mean, invstd)
        ctx.args = (training, count, eps, activation, negative_slope, group, name)
        if x.numel() == 0:  # an empty local batch still joins the backward all-reduce
            return torch.empty_like(x)
        b = x.shape[0]
        return _PASSES[name].fwd(x, mean, invstd, _as_bc(gain, b), _as_bc(bias, b), activation,
                                 negative_slope)

    @staticmethod
    def backward(ctx, grad_out):
        x, gain, bias, mean, invstd = ctx.saved_tensors
        training, count, eps, activation, negative_slope, group, name = ctx.args
        passes = _PASSES[name]
        if torch.is_grad_enabled():
            # Gradient of a gradient (R1, gradient penalties): run the same two passes in plain
            # differentiable torch, recomputing the batch statistics from x so that their
            # dependence on x is part of the graph.
            if group is not None and training:
                raise NotImplementedError(
                    "fastgan.cond_batch_norm: double backward through synchronized statistics "
                    "(process_group) is not supported")
            passes = REFERENCE_PASSES
            if training:
                m, var = passes.stats(x)
                mean, invstd = m, torch.rsqrt(var + eps)
        need_x, need_gain, need_bias = ctx.needs_input_grad[:3]
        b = x.shape[0]
        g2, b2 = _as_bc(gain, b), _as_bc(bias, b)
        args = (mean, invstd, g2, b2, activation, negative_slope)
        grad_x = grad_gain = grad_bias = None
        if x.numel() == 0:
            sum_dz = sum_dz_xhat = x.new_zeros(x.shape[:2], dtype=acc_dtype(x.dtype))
        elif training and need_x and group is None and name == "cpu" \
                and passes is not REFERENCE_PASSES:
            # The reduce, the [C] terms and grad_x in one op (csrc/cpu).
            grad_x, sum_dz, sum_dz_xhat = native.TRAIN_BWD(grad_out, x, *args)
        elif training or need_gain or need_bias:
            sum_dz, sum_dz_xhat = passes.bwd_reduce(grad_out, x, *args)
        if need_gain:
            grad_gain = _affine_grad(sum_dz_xhat, gain)
        if need_bias:
            grad_bias = _affine_grad(sum_dz, bias)
        if training and grad_x is None:
            # The [C] sums of dxhat = dz * gain and of dxhat * xhat, in as few ops as they take:
            # at small maps (BigGAN's 4x4 stage) each op costs as much as a pass of a kernel.
            sums = torch.stack((sum_dz, sum_dz_xhat))  # [2, B, C]
            if g2 is not None:
                sums.mul_(g2.to(sums.dtype))
            sums = sums.sum(1)
            if group is not None:  # every rank joins, whether or not it needs grad_x itself
                sums = sync.all_reduce_sum(sums, group)
            if need_x and x.numel():
                grad_x = passes.bwd_dx(grad_out, x, *args, *sums.div_(count).unbind(0))
        elif not training and need_x and x.numel():
            grad_x = passes.bwd_dx(grad_out, x, *args, None, None)
        if ctx.needs_input_grad[0] and grad_x is None:
            grad_x = torch.zeros_like(x)
        return grad_x, grad_gain, grad_bias, *(None,) * (len(ctx.needs_input_grad) - 3)


class _CondBatchNormTrainCPU(_CondBatchNorm):
    """Training on the cpu backend without a process group: the statistics, the running-stat
    update and the normalise pass in one op (csrc/cpu), and the backward's passes in another."""

    @staticmethod
    def forward(ctx, x, gain, bias, running_mean, running_var, momentum, eps, activation,
                negative_slope):
        b = x.shape[0]
        y, mean, invstd = native.TRAIN_FWD(x, _as_bc(gain, b), _as_bc(bias, b), running_mean,
                                           running_var, momentum, eps, activation, negative_slope)
        ctx.save_for_backward(x, gain, bias, mean, invstd)
        ctx.args = (True, b * x.shape[2], eps, activation, negative_slope, None, "cpu")
        return y


def _affine_grad(sums: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """[B, C] sums -> the gradient of a per-sample [B, C] or per-channel [C] gain/bias, summed
    over B in the accumulation dtype before rounding to the parameter's dtype."""
    return (sums if param.dim() == 2 else sums.sum(0)).to(param.dtype)


def _check_args(x, gain, bias, running_mean, running_var, training, momentum, eps, activation,
                negative_slope, process_group) -> str:
    op = _OP
    check_tensor("x", x, op=op)
    if x.dim() not in (2, 3, 4):
        raise ValueError(f"fastgan.{op}: x must be [B, C], [B, C, L] or [B, C, H, W], got shape "
                         f"{tuple(x.shape)}")
    check_float("x", x, op=op)
    b, c = x.shape[:2]
    for name, t in (("gain", gain), ("bias", bias)):
        if t is None:
            continue
        check_tensor(name, t, op=op)
        if tuple(t.shape) not in ((c,), (b, c)):
            raise ValueError(f"fastgan.{op}: {name} must be per channel [{c}] or per sample "
                             f"[{b}, {c}], got shape {tuple(t.shape)}")
        if t.device != x.device or t.dtype != x.dtype:
            raise ValueError(f"fastgan.{op}: {name} must be {x.dtype} on {x.device} like x, got "
                             f"{t.dtype} on {t.device}")
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"fastgan.{op}: running_mean and running_var must both be given or both "
                         "be None")
    for name, t in (("running_mean", running_mean), ("running_var", running_var)):
        if t is None:
            continue
        check_tensor(name, t, op=op)
        check_float(name, t, op=op)
        if tuple(t.shape) != (c,):
            raise ValueError(f"fastgan.{op}: {name} must have shape [{c}], got {tuple(t.shape)}")
        if t.device != x.device:
            raise ValueError(f"fastgan.{op}: {name} is on {t.device} but x is on {x.device}")
    if not training and running_mean is None:
        raise ValueError(f"fastgan.{op}: running_mean and running_var must be given in eval mode "
                         "(training=False)")
    if momentum is None:
        raise TypeError(f"fastgan.{op}: momentum must be a float; for momentum=None (cumulative "
                        "average) pass 1 / num_batches_tracked, as the modules do")
    for name, v in (("momentum", momentum), ("eps", eps), ("negative_slope", negative_slope)):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"fastgan.{op}: {name} must be a float, got {type(v).__name__}")
    if eps <= 0:
        raise ValueError(f"fastgan.{op}: eps must be > 0, got {eps}")
    activation = "none" if activation is None else activation
    if activation not in ACTIVATIONS:
        raise ValueError(f"fastgan.{op}: activation must be None or one of {ACTIVATIONS}, got "
                         f"{activation!r}")
    if process_group is not None:
        sync.check_group(process_group, op=op)
    return activation


def cond_batch_norm(x: torch.Tensor, gain: torch.Tensor | None = None,
                    bias: torch.Tensor | None = None, running_mean: torch.Tensor | None = None,
                    running_var: torch.Tensor | None = None, training: bool = True,
                    momentum: float = 0.1, eps: float = 1e-5, activation: str | None = None,
                    negative_slope: float = 0.2, process_group=None,
                    backend: str | None = None) -> torch.Tensor:
    """Batch norm, then a per-sample or per-channel affine, then an activation, fused.

    Args:
        x: [B, C], [B, C, L] or [B, C, H, W]; float32/float16/bfloat16 (float64 on the reference
            and cpu backends); NCHW or channels_last, any strides.
        gain, bias: per sample [B, C] (BigGAN's class-conditional gain and bias), per channel [C]
            (plain batch norm's weight and bias) or None; x's dtype and device.
        running_mean, running_var: [C] or both None. In training they are updated in place like
            F.batch_norm: (1 - momentum) * running + momentum * batch stat, the variance unbiased.
            Required in eval (training=False), which normalises with them.
        training: normalise with the batch statistics (True) or the running ones (False).
        momentum: the running-stat update factor; modules with momentum=None pass
            1 / num_batches_tracked.
        eps: added to the variance.
        activation: None/"none", "relu" or "leaky_relu" (with ``negative_slope``).
        process_group: a torch.distributed group to synchronize the batch statistics over (as
            nn.SyncBatchNorm does; ranks may hold different batch sizes). Training only.
        backend: "reference", "triton", "cuda", "cpu", "auto" or None (see fastgan.use_backend).

    Returns:
        y with x's shape and dtype; on the fused backends in x's memory format.
    """
    activation = _check_args(x, gain, bias, running_mean, running_var, training, momentum, eps,
                             activation, negative_slope, process_group)
    name = _backend.resolve(_OP, x, backend, DTYPES)
    group = process_group if training else None
    if name == "reference" and group is None:  # F.batch_norm raises PyTorch's own errors
        return cond_batch_norm_reference(x, gain, bias, running_mean, running_var, training,
                                         momentum, eps, activation, negative_slope)
    return _fused(name, x, gain, bias, running_mean, running_var, training, float(momentum),
                  float(eps), activation, float(negative_slope), group)


def _check_values_per_channel(x: torch.Tensor, count: int, training: bool) -> None:
    if training and count == 1:  # PyTorch's own error, word for word
        raise ValueError("Expected more than 1 value per channel when training, got input size "
                         f"{x.size()}")


def _fused(name, x, gain, bias, running_mean, running_var, training, momentum, eps, activation,
           negative_slope, group) -> torch.Tensor:
    x3 = _as_bcs(x)
    b, c, s = x3.shape
    acc = acc_dtype(x.dtype)
    count = b * s
    if name == "cpu" and training and group is None and count:
        _check_values_per_channel(x, count, training)
        y3 = _CondBatchNormTrainCPU.apply(x3, gain, bias, running_mean, running_var, momentum,
                                          eps, activation, negative_slope)
        return y3.view(x.shape)
    if training:
        with torch.no_grad():
            if count:
                mean, var = _PASSES[name].stats(x3)
            else:  # an empty batch: nothing to normalise, and no statistics to update
                mean = var = x3.new_zeros(c, dtype=acc)
            if group is not None:
                mean, var, count = sync.merge_stats(mean, var, count, group)
            _check_values_per_channel(x, count, training)
            invstd = (var + eps).rsqrt_()
            if running_mean is not None and count:  # in F.batch_norm's order of operations
                unbiased = var * (count / (count - 1))
                running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
                running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)
    else:
        mean = running_mean.detach().to(acc)
        invstd = torch.rsqrt(running_var.detach().to(acc) + eps)
    if x3.numel() == 0 and group is None:
        return cond_batch_norm_reference(x, gain, bias, None, None, True, momentum, eps,
                                         activation, negative_slope)
    y3 = _CondBatchNorm.apply(x3, gain, bias, mean, invstd, training, count, eps, activation,
                              negative_slope, group, name)
    return y3.view(x.shape)
