"""Pure-PyTorch cond_batch_norm: the oracle every backend is tested against, and the fallback.

Two layers:
- ``cond_batch_norm_reference``: the op as the issue defines it, on F.batch_norm (non-synchronized).
- the four passes every fused backend implements (README.md), written with plain torch ops:
  ``stats_reference``, ``fwd_reference``, ``bwd_reduce_reference``, ``bwd_dx_reference``. The
  reference backend runs these when statistics are synchronized across processes, and the fused
  kernels are tested against them pass by pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

ACTIVATIONS = ("none", "relu", "leaky_relu")


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 inputs, else float32: the dtype of the statistics and reductions."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def activation_reference(z: torch.Tensor, activation: str, negative_slope: float) -> torch.Tensor:
    if activation == "relu":
        return F.relu(z)
    if activation == "leaky_relu":
        return F.leaky_relu(z, negative_slope)
    return z


def _affine_view(t: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    """[C] or [B, C] -> broadcastable against x [B, C, *spatial]."""
    if t is None:
        return None
    if t.dim() == 1:
        t = t.expand(x.shape[0], -1)
    return t.reshape(t.shape + (1,) * (x.dim() - 2))


def cond_batch_norm_reference(x: torch.Tensor, gain: torch.Tensor | None = None,
                              bias: torch.Tensor | None = None,
                              running_mean: torch.Tensor | None = None,
                              running_var: torch.Tensor | None = None, training: bool = True,
                              momentum: float | None = 0.1, eps: float = 1e-5,
                              activation: str = "none", negative_slope: float = 0.2) -> torch.Tensor:
    """act(F.batch_norm(x, running_mean, running_var, None, None, training, momentum, eps)
    * gain + bias), gain/bias per sample [B, C] or per channel [C]. Updates the running stats in
    place in training, like F.batch_norm (momentum None: the caller passes the cumulative-average
    factor, as nn.BatchNorm does)."""
    y = F.batch_norm(x, running_mean, running_var, None, None, training,
                     0.0 if momentum is None else momentum, eps)
    g, b = _affine_view(gain, x), _affine_view(bias, x)
    if g is not None:
        y = y * g
    if b is not None:
        y = y + b
    return activation_reference(y, activation, negative_slope)


# --------------------------------------------------------------------------- the four passes
# x, grad_out: [B, C, S]; gain, bias: [B, C] or None; mean, invstd: [C] in acc_dtype(x.dtype).


def _z(x, mean, invstd, gain, bias):
    acc = acc_dtype(x.dtype)
    xhat = (x.to(acc) - mean[:, None]) * invstd[:, None]
    z = xhat
    if gain is not None:
        z = z * gain.to(acc)[:, :, None]
    if bias is not None:
        z = z + bias.to(acc)[:, :, None]
    return xhat, z


def _dz(grad_out, z, activation, negative_slope):
    dy = grad_out.to(z.dtype)
    if activation == "relu":
        return torch.where(z > 0, dy, torch.zeros_like(dy))
    if activation == "leaky_relu":
        return torch.where(z > 0, dy, dy * negative_slope)
    return dy


def stats_reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance over B and S, in the accumulation dtype."""
    xa = x.to(acc_dtype(x.dtype))
    var, mean = torch.var_mean(xa, dim=(0, 2), correction=0)
    return mean, var


def fwd_reference(x, mean, invstd, gain, bias, activation, negative_slope):
    _, z = _z(x, mean, invstd, gain, bias)
    return activation_reference(z, activation, negative_slope).to(x.dtype)


def bwd_reduce_reference(grad_out, x, mean, invstd, gain, bias, activation, negative_slope):
    xhat, z = _z(x, mean, invstd, gain, bias)
    dz = _dz(grad_out, z, activation, negative_slope)
    return dz.sum(2), (dz * xhat).sum(2)


def bwd_dx_reference(grad_out, x, mean, invstd, gain, bias, activation, negative_slope,
                     mean_dxhat, mean_dxhat_xhat):
    xhat, z = _z(x, mean, invstd, gain, bias)
    dxhat = _dz(grad_out, z, activation, negative_slope)
    if gain is not None:
        dxhat = dxhat * gain.to(dxhat.dtype)[:, :, None]
    if mean_dxhat is not None:
        dxhat = dxhat - mean_dxhat[:, None] - xhat * mean_dxhat_xhat[:, None]
    return (dxhat * invstd[:, None]).to(x.dtype)


class Passes(NamedTuple):
    """One backend's implementation of the four passes (signatures as in csrc/fastgan.cpp)."""

    stats: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    fwd: Callable[..., torch.Tensor]
    bwd_reduce: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    bwd_dx: Callable[..., torch.Tensor]


REFERENCE_PASSES = Passes(stats_reference, fwd_reference, bwd_reduce_reference, bwd_dx_reference)
