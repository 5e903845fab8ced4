"""self_attention2d: SAGAN's / BigGAN's non-local block with a flash-style attention core.

``self_attention2d(x, w_query, w_key, w_value, gamma, w_out, ...)`` equals the upstream block
(reference.py) in the output and in the gradients of x, every weight and bias, and gamma. On the
fused backends the attention core — softmax over keys of query^T key, times value — is an
online-softmax kernel that never stores the [N, M] attention matrix, forward or backward (extra
memory O(B N C) instead of O(B N M)). README.md beside this file is the contract of the core.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ... import backend as _backend
from .._common import (
    CPU_DTYPES,
    GPU_DTYPES,
    check_float,
    check_int,
    check_tensor,
    output_memory_format,
)
from . import native
from .reference import acc_dtype, attention_core_reference, project, self_attention2d_reference

__all__ = ["attention_core_reference", "self_attention2d", "self_attention2d_reference"]

_OP = "self_attention2d"
DTYPES = {"cpu": CPU_DTYPES, "cuda": GPU_DTYPES, "triton": GPU_DTYPES}

_CORES: dict[str, tuple] = {}
if native.AVAILABLE:
    _CORES["cpu"] = _CORES["cuda"] = (native.fwd, native.bwd)
if _backend.triton_importable():
    from . import triton as _triton

    _CORES["triton"] = (_triton.self_attention_core_fwd_triton,
                        _triton.self_attention_core_bwd_triton)


def backend_core(name: str) -> tuple:
    """(fwd, bwd) core ops of backend ``name`` (KeyError when it is not built here)."""
    return _CORES[name]


def _core_backward_differentiable(grad_o, q, k, v, scale):
    """The core's gradients in plain differentiable torch (materialising [B, N, M]): the path of
    double backward (gradient penalties), with the same first and second derivatives."""
    acc = acc_dtype(q.dtype)
    qa, ka, va, ga = q.to(acc), k.to(acc), v.to(acc), grad_o.to(acc)
    p = torch.softmax(scale * torch.bmm(qa, ka.transpose(1, 2)), dim=-1)
    grad_v = torch.bmm(p.transpose(1, 2), ga)
    dp = torch.bmm(ga, va.transpose(1, 2))
    ds = p * (dp - (dp * p).sum(-1, keepdim=True))
    grad_q = scale * torch.bmm(ds, ka)
    grad_k = scale * torch.bmm(ds.transpose(1, 2), qa)
    return grad_q.to(q.dtype), grad_k.to(k.dtype), grad_v.to(v.dtype)


class _AttentionCore(torch.autograd.Function):
    """o = softmax(scale q k^T) v on a fused backend; its backward recomputes the attention from
    the saved log-sum-exp, block by block."""

    @staticmethod
    def forward(ctx, q, k, v, scale, name):
        fwd, _ = _CORES[name]
        o, lse = fwd(q, k, v, scale)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.scale, ctx.name = scale, name
        ctx.mark_non_differentiable(lse)
        return o, lse

    @staticmethod
    def backward(ctx, grad_o, grad_lse):
        q, k, v, o, lse = ctx.saved_tensors
        if torch.is_grad_enabled():
            grads = _core_backward_differentiable(grad_o, q, k, v, ctx.scale)
        else:
            _, bwd = _CORES[ctx.name]
            grads = bwd(grad_o, q, k, v, o, lse, ctx.scale)
        return *grads, None, None


def _check_weight(name: str, w, c_in: int, c_out: int | None, x: torch.Tensor) -> int:
    """w: [C_out, C_in] or [C_out, C_in, 1, 1] like x; returns C_out."""
    op = _OP
    check_tensor(name, w, op=op)
    ok_shape = w.dim() in (2, 4) and w.shape[1] == c_in and (w.dim() == 2 or w.shape[2:] == (1, 1))
    if not ok_shape or (c_out is not None and w.shape[0] != c_out):
        want = f"[{c_out if c_out is not None else 'C_out'}, {c_in}] (or [..., 1, 1])"
        raise ValueError(f"fastgan.{op}: {name} must have shape {want}, got {tuple(w.shape)}")
    if w.device != x.device or w.dtype != x.dtype:
        raise ValueError(f"fastgan.{op}: {name} must be {x.dtype} on {x.device} like x, got "
                         f"{w.dtype} on {w.device}")
    return w.shape[0]


def _check_bias(name: str, b, size: int, x: torch.Tensor) -> None:
    if b is None:
        return
    check_tensor(name, b, op=_OP)
    if b.shape != (size,):
        raise ValueError(f"fastgan.{_OP}: {name} must have shape ({size},), got {tuple(b.shape)}")
    if b.device != x.device or b.dtype != x.dtype:
        raise ValueError(f"fastgan.{_OP}: {name} must be {x.dtype} on {x.device} like x, got "
                         f"{b.dtype} on {b.device}")


def _check_args(x, w_query, w_key, w_value, gamma, w_out, b_query, b_key, b_value, b_out, pool,
                scale) -> None:
    op = _OP
    check_tensor("x", x, op=op)
    if x.dim() != 4:
        raise ValueError(f"fastgan.{op}: x must be 4-D [B, C, H, W], got shape {tuple(x.shape)}")
    check_float("x", x, op=op)
    c = x.shape[1]
    c_qk = _check_weight("w_query", w_query, c, None, x)
    _check_weight("w_key", w_key, c, c_qk, x)
    c_v = _check_weight("w_value", w_value, c, None, x)
    if w_out is not None:
        _check_weight("w_out", w_out, c_v, c, x)
    elif c_v != c:
        raise ValueError(f"fastgan.{op}: without w_out the value must have x's {c} channels, "
                         f"w_value has {c_v}")
    for name, b, size in (("b_query", b_query, c_qk), ("b_key", b_key, c_qk),
                          ("b_value", b_value, c_v), ("b_out", b_out, c)):
        _check_bias(name, b, size, x)
    if b_out is not None and w_out is None:
        raise ValueError(f"fastgan.{op}: b_out is given without w_out")
    if isinstance(gamma, torch.Tensor):
        if gamma.numel() != 1:
            raise ValueError(f"fastgan.{op}: gamma must hold one value, got shape "
                             f"{tuple(gamma.shape)}")
    elif isinstance(gamma, bool) or not isinstance(gamma, (int, float)):
        raise TypeError(f"fastgan.{op}: gamma must be a tensor of one value or a float, got "
                        f"{type(gamma).__name__}")
    check_int("pool", pool, op=op, minimum=1)
    if x.shape[2] < pool or x.shape[3] < pool:
        raise ValueError(f"fastgan.{op}: x's spatial size {tuple(x.shape[2:])} is smaller than "
                         f"pool={pool}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"fastgan.{op}: scale must be a float, got {type(scale).__name__}")


def self_attention2d(x: torch.Tensor, w_query: torch.Tensor, w_key: torch.Tensor,
                     w_value: torch.Tensor, gamma: torch.Tensor | float,
                     w_out: torch.Tensor | None = None, b_query: torch.Tensor | None = None,
                     b_key: torch.Tensor | None = None, b_value: torch.Tensor | None = None,
                     b_out: torch.Tensor | None = None, pool: int = 2, scale: float = 1.0,
                     backend: str | None = None) -> torch.Tensor:
    """SAGAN/BigGAN self-attention: gamma * out + x.

    Args:
        x: [B, C, H, W], float32/float16/bfloat16 (float64 on reference and cpu), NCHW or
            channels_last.
        w_query, w_key: [C_qk, C] (or [C_qk, C, 1, 1]) 1x1-conv weights (C_qk = C / 8 upstream).
        w_value: [C_v, C]: C_v = C / 2 with ``w_out`` (BigGAN), C without (SAGAN).
        gamma: the residual gain (a parameter of one value, or a float).
        w_out: [C, C_v], BigGAN's output projection, or None.
        b_query, b_key, b_value, b_out: the 1x1 convs' biases, or None.
        pool: max-pool of key and value (2 in BigGAN, 1 = none in SAGAN); floors like F.max_pool2d.
        scale: the score scale (upstream uses 1.0, not 1/sqrt(C_qk)).
        backend: "reference", "triton", "cuda", "cpu", "auto" or None.

    Returns:
        y [B, C, H, W] in x's dtype and memory format.
    """
    _check_args(x, w_query, w_key, w_value, gamma, w_out, b_query, b_key, b_value, b_out, pool,
                scale)
    name = _backend.resolve(_OP, x, backend, DTYPES)
    if name == "reference":
        return self_attention2d_reference(x, w_query, w_key, w_value, gamma, w_out, b_query,
                                          b_key, b_value, b_out, pool, float(scale))
    b, c, h, w = x.shape
    query = project(x, w_query, b_query)
    key = project(x, w_key, b_key)
    value = project(x, w_value, b_value)
    if pool > 1:
        key, value = F.max_pool2d(key, pool), F.max_pool2d(value, pool)
    # [B, C', N] views of the conv outputs, then [B, N, C'] views: the core reads any strides.
    q3, k3, v3 = (t.flatten(2).transpose(1, 2) for t in (query, key, value))
    o3, _ = _AttentionCore.apply(q3, k3, v3, float(scale), name)
    o = o3.transpose(1, 2).reshape(b, v3.shape[2], h, w)
    out = project(o, w_out, b_out) if w_out is not None else o
    if not isinstance(gamma, torch.Tensor):
        gamma = x.new_tensor(gamma)
    y = torch.addcmul(x, out, gamma.reshape(()))
    return y.contiguous(memory_format=output_memory_format(x))  # a no-op when addcmul kept it
