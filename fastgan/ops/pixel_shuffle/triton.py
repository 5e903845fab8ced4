"""Triton backend of pixel_shuffle_act: y = act(pixel_shuffle(x + bias[:, None, None], r)).

The math contract is README.md beside this file; reference.py is the oracle. Two ops:

    torch.ops.fastgan.pixel_shuffle_act_fwd_triton(x, bias, r, activation, negative_slope,
                                                   prelu_weight) -> y [N, C, H*r, W*r]
    torch.ops.fastgan.pixel_shuffle_act_bwd_triton(grad_out, x, bias, r, activation, negative_slope,
                                                   prelu_weight) -> (grad_x, grad_bias, grad_prelu)

Inputs are validated by the public API (fastgan.ops.pixel_shuffle). Any strides are accepted and
passed to the kernels; outputs keep x's memory format. Math is fp32 whatever the storage dtype.
"""

from typing import Optional

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from .._common import output_memory_format
from .._triton_common import ACT_CODES, ACT_LEAKY, act, act_grad, launch, needs_int64

# PReLU is leaky ReLU whose slope is loaded from prelu_weight, so it shares ACT_LEAKY and only
# the slope source (the SLOPE constexpr) differs.
_ACT_CODES = {**ACT_CODES, "prelu": ACT_LEAKY}
# Slope source: the scalar argument, prelu_weight[0], or prelu_weight[c].
_SLOPE_SCALAR, _SLOPE_SHARED, _SLOPE_PER_CHANNEL = 0, 1, 2

# Elements per tile: big enough to amortise the per-program index math, small enough to keep
# 8 values per thread at 8 warps (one 128-bit fp16 store each).
_TILE = 2048
# Upper bound on backward programs when a bias/PReLU reduction is needed: several full waves on
# an A100/H100, while the fp32 workspace stays at most _MAX_REDUCE_PROGRAMS channel blocks.
_MAX_REDUCE_PROGRAMS = 4096


@triton.jit
def _pixel_shuffle_act_fwd_kernel(
    x_ptr, bias_ptr, w_ptr, y_ptr,
    C, H, OH, OW, n_cblocks, n_wblocks,
    sxn, sxc, sxh, sxw, syn, syc, syh, syw, sb, sw,
    slope,
    R: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr, SLOPE: tl.constexpr,
    INT64: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """One [BLOCK_C, BLOCK_W] tile of output row (n, oh): gathers x, stores y coalesced."""
    pid = tl.program_id(0)
    if INT64:
        pid = pid.to(tl.int64)
    wb = pid % n_wblocks
    rest = pid // n_wblocks
    cb = rest % n_cblocks
    row = rest // n_cblocks
    n = row // OH
    oh = row % OH
    h = oh // R
    i = oh % R

    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    ow = wb * BLOCK_W + tl.arange(0, BLOCK_W)
    c_ok = c < C
    mask = c_ok[:, None] & (ow < OW)[None, :]
    # Output column ow = w*R + j reads input channel c*R*R + i*R + j of pixel (h, w).
    cin = c[:, None] * (R * R) + i * R + (ow % R)[None, :]
    x_off = n * sxn + cin * sxc + h * sxh + (ow // R)[None, :] * sxw
    z = tl.load(x_ptr + x_off, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        z += tl.load(bias_ptr + cin * sb, mask=mask, other=0.0).to(tl.float32)
    if SLOPE == 1:
        slope = tl.load(w_ptr).to(tl.float32)
    elif SLOPE == 2:
        slope = tl.load(w_ptr + c * sw, mask=c_ok, other=0.0).to(tl.float32)[:, None]
    y = act(z, slope, ACT)
    y_off = n * syn + c[:, None] * syc + oh * syh + ow[None, :] * syw
    tl.store(y_ptr + y_off, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _pixel_shuffle_act_bwd_kernel(
    dy_ptr, x_ptr, bias_ptr, w_ptr, dx_ptr, ws_bias_ptr, ws_prelu_ptr,
    CIN, H, W, NH, rows_per_prog, n_cblocks, n_wblocks,
    sdn, sdc, sdh, sdw, sxn, sxc, sxh, sxw, sgn, sgc, sgh, sgw, sb, sw,
    slope,
    R: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr, SLOPE: tl.constexpr,
    REDUCE_PRELU: tl.constexpr, INT64: tl.constexpr,
    BLOCK_CIN: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """A [BLOCK_CIN, BLOCK_W] input tile, swept over rows_per_prog consecutive (n, h) rows.

    Writes grad_x and, when asked, this program's per-input-channel partial sums of grad_bias and
    grad_prelu into row (row_group * n_wblocks + wb) of the fp32 workspaces.
    """
    pid = tl.program_id(0)
    if INT64:
        pid = pid.to(tl.int64)
    wb = pid % n_wblocks
    rest = pid // n_wblocks
    cb = rest % n_cblocks
    group = rest // n_cblocks

    cin = cb * BLOCK_CIN + tl.arange(0, BLOCK_CIN)
    w = wb * BLOCK_W + tl.arange(0, BLOCK_W)
    cin_ok = cin < CIN
    # Input channel cin = c*R*R + i*R + j lands on output (c, h*R + i, w*R + j).
    c = cin // (R * R)
    i = (cin // R) % R
    j = cin % R
    dy_col = c[:, None] * sdc + i[:, None] * sdh + (w[None, :] * R + j[:, None]) * sdw

    if HAS_BIAS:
        b = tl.load(bias_ptr + cin * sb, mask=cin_ok, other=0.0).to(tl.float32)[:, None]
    if SLOPE == 1:
        slope = tl.load(w_ptr).to(tl.float32)
    elif SLOPE == 2:
        slope = tl.load(w_ptr + c * sw, mask=cin_ok, other=0.0).to(tl.float32)[:, None]
    # Elementwise accumulators, reduced across columns once after the loop: no cross-thread
    # reduction per row.
    acc_bias = tl.zeros([BLOCK_CIN, BLOCK_W], dtype=tl.float32)
    acc_prelu = tl.zeros([BLOCK_CIN, BLOCK_W], dtype=tl.float32)

    for k in range(rows_per_prog):
        q = group * rows_per_prog + k
        n = q // H
        h = q % H
        # Rows past the end mask every column (a scalar bool & tile mask trips the interpreter).
        w_end = tl.where(q < NH, W, 0)
        mask = cin_ok[:, None] & (w < w_end)[None, :]
        x = tl.load(x_ptr + n * sxn + cin[:, None] * sxc + h * sxh + w[None, :] * sxw,
                    mask=mask, other=0.0).to(tl.float32)
        z = x
        if HAS_BIAS:
            z = x + b
        dy = tl.load(dy_ptr + n * sdn + h * R * sdh + dy_col, mask=mask, other=0.0).to(tl.float32)
        dz = act_grad(z, dy, slope, ACT)
        tl.store(dx_ptr + n * sgn + cin[:, None] * sgc + h * sgh + w[None, :] * sgw,
                 dz.to(dx_ptr.dtype.element_ty), mask=mask)
        # Masked lanes load dy = 0, so they add exactly zero to both sums.
        if HAS_BIAS:
            acc_bias += dz
        if REDUCE_PRELU:
            acc_prelu += tl.where(z > 0, 0.0, z * dy)

    ws_off = (group * n_wblocks + wb) * CIN + cin
    if HAS_BIAS:
        tl.store(ws_bias_ptr + ws_off, tl.sum(acc_bias, axis=1), mask=cin_ok)
    if REDUCE_PRELU:
        tl.store(ws_prelu_ptr + ws_off, tl.sum(acc_prelu, axis=1), mask=cin_ok)


def _tile(fast_extent: int, other_extent: int, fast_cap: int) -> tuple[int, int, int]:
    """(fast block, other block, num_warps) for a _TILE-element tile whose fast axis is the
    output's unit-stride axis, so each warp stores long contiguous runs."""
    fast = min(triton.next_power_of_2(fast_extent), fast_cap)
    other = min(triton.next_power_of_2(other_extent), max(1, _TILE // fast))
    return fast, other, max(1, min(8, fast * other // 256))


def _slope_args(activation: str, prelu_weight: Optional[torch.Tensor], x: torch.Tensor):
    """(slope source code, weight tensor to pass, its stride); x stands in for an absent weight."""
    if activation != "prelu" or prelu_weight is None:
        return _SLOPE_SCALAR, x, 0
    mode = _SLOPE_SHARED if prelu_weight.numel() == 1 else _SLOPE_PER_CHANNEL
    return mode, prelu_weight, prelu_weight.stride(0)


@triton_op("fastgan::pixel_shuffle_act_fwd_triton", mutates_args=())
def pixel_shuffle_act_fwd_triton(
    x: torch.Tensor,
    bias: Optional[torch.Tensor],
    upscale_factor: int,
    activation: str,
    negative_slope: float,
    prelu_weight: Optional[torch.Tensor],
) -> torch.Tensor:
    """y[N, C, H*r, W*r] = act(pixel_shuffle(x + bias[:, None, None], r)) in x's memory format.

    x: [N, C*r*r, H, W], any strides; bias: [C*r*r] or None; prelu_weight: [1] or [C] (prelu only).
    One program per (n, output row, channel block, column block); the tile's fast axis is the
    output's unit-stride axis (ow for NCHW, c for channels_last) so stores coalesce.
    """
    r = upscale_factor
    n, cin, h, w = x.shape
    c, oh, ow = cin // (r * r), h * r, w * r
    y = torch.empty((n, c, oh, ow), dtype=x.dtype, device=x.device,
                    memory_format=output_memory_format(x))
    if y.numel() == 0:
        return y
    if y.is_contiguous():
        block_w, block_c, warps = _tile(ow, c, 256)
    else:
        block_c, block_w, warps = _tile(c, ow, 128)
    n_cblocks, n_wblocks = triton.cdiv(c, block_c), triton.cdiv(ow, block_w)
    slope_mode, weight, sw = _slope_args(activation, prelu_weight, x)
    launch(
        _pixel_shuffle_act_fwd_kernel, n * oh * n_cblocks * n_wblocks,
        x, bias if bias is not None else x, weight, y,
        c, h, oh, ow, n_cblocks, n_wblocks,
        *x.stride(), *y.stride(), bias.stride(0) if bias is not None else 0, sw,
        float(negative_slope),
        R=r, HAS_BIAS=bias is not None, ACT=_ACT_CODES[activation], SLOPE=slope_mode,
        INT64=needs_int64(x, y), BLOCK_C=block_c, BLOCK_W=block_w, num_warps=warps,
    )
    return y


@triton_op("fastgan::pixel_shuffle_act_bwd_triton", mutates_args=())
def pixel_shuffle_act_bwd_triton(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    bias: Optional[torch.Tensor],
    upscale_factor: int,
    activation: str,
    negative_slope: float,
    prelu_weight: Optional[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_x [N, C*r*r, H, W] in x's memory format, grad_bias [C*r*r] or [0],
    grad_prelu [prelu_weight.numel()] or [0]), recomputing z = x + bias from x.

    grad_out: [N, C, H*r, W*r], any strides (expanded zero-stride gradients included).
    Programs tile the input (channel block x column block) and sweep a group of (n, h) rows, so
    the per-input-channel sums are a tl.sum over the tile's columns; each program writes its
    partials to one row of an fp32 workspace and torch sums the rows: deterministic, no atomics.
    """
    r = upscale_factor
    n, cin, h, w = x.shape
    grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device,
                         memory_format=output_memory_format(x))
    want_prelu = activation == "prelu" and prelu_weight is not None
    if x.numel() == 0:
        grad_bias = x.new_zeros(cin if bias is not None else 0)
        grad_prelu = x.new_zeros(prelu_weight.numel() if want_prelu else 0)
        return grad_x, grad_bias, grad_prelu

    if grad_x.is_contiguous():
        block_w, block_cin, warps = _tile(w, cin, 128)
    else:
        block_cin, block_w, warps = _tile(cin, w, 128)
    n_cblocks, n_wblocks = triton.cdiv(cin, block_cin), triton.cdiv(w, block_w)
    tiles = n * h * n_cblocks * n_wblocks
    # Sweeping several rows per program only pays when it shrinks the workspace.
    reduce = bias is not None or want_prelu
    rows_per_prog = triton.cdiv(tiles, _MAX_REDUCE_PROGRAMS) if reduce else 1
    groups = triton.cdiv(n * h, rows_per_prog)
    ws_shape = (groups * n_wblocks, cin)
    # x stands in for an absent workspace: an empty tensor may carry a null pointer.
    ws_bias = torch.empty(ws_shape, dtype=torch.float32, device=x.device) if bias is not None else x
    ws_prelu = torch.empty(ws_shape, dtype=torch.float32, device=x.device) if want_prelu else x
    slope_mode, weight, sw = _slope_args(activation, prelu_weight, x)
    launch(
        _pixel_shuffle_act_bwd_kernel, groups * n_cblocks * n_wblocks,
        grad_out, x, bias if bias is not None else x, weight, grad_x, ws_bias, ws_prelu,
        cin, h, w, n * h, rows_per_prog, n_cblocks, n_wblocks,
        *grad_out.stride(), *x.stride(), *grad_x.stride(),
        bias.stride(0) if bias is not None else 0, sw,
        float(negative_slope),
        R=r, HAS_BIAS=bias is not None, ACT=_ACT_CODES[activation], SLOPE=slope_mode,
        REDUCE_PRELU=want_prelu, INT64=needs_int64(grad_out, x, grad_x, ws_bias, ws_prelu),
        BLOCK_CIN=block_cin, BLOCK_W=block_w, num_warps=warps,
    )
    grad_bias = ws_bias.sum(0).to(x.dtype) if bias is not None else x.new_empty(0)
    if want_prelu:
        per_cin = ws_prelu.sum(0)
        if prelu_weight.numel() > 1:
            grad_prelu = per_cin.view(-1, r * r).sum(1).to(x.dtype)
        else:
            grad_prelu = per_cin.sum(0, keepdim=True).to(x.dtype)
    else:
        grad_prelu = x.new_empty(0)
    return grad_x, grad_bias, grad_prelu
