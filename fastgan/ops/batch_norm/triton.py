"""Triton backend of cond_batch_norm: the four passes of README.md beside this file.

    torch.ops.fastgan.cond_bn_stats_triton(x) -> (mean [C], var [C])
    torch.ops.fastgan.cond_bn_fwd_triton(x, mean, invstd, gain, bias, activation, negative_slope)
        -> y
    torch.ops.fastgan.cond_bn_bwd_reduce_triton(grad_out, x, mean, invstd, gain, bias, activation,
                                                negative_slope) -> (sum_dz, sum_dz_xhat) [B, C]
    torch.ops.fastgan.cond_bn_bwd_dx_triton(grad_out, x, mean, invstd, gain, bias, activation,
                                            negative_slope, mean_dxhat, mean_dxhat_xhat) -> grad_x

Arguments and results as the schemas in csrc/fastgan.cpp; the public API validates them. Every
tensor is read through its strides; y and grad_x are empty_like(x, preserve_format). Math and
reductions are fp32 (float32 / float16 / bfloat16 storage).

Every kernel works on [BLOCK_C, BLOCK_S] tiles of the [B, C, S] view. The host makes the tile long
along x's smaller-stride axis (S for NCHW, C for channels_last) and cuts that axis into blocks that
pad it least, so warps read (and write) contiguous runs in either layout. Reductions give each
program a fixed slice of the reduced axis and write its partial result to a workspace row; a small
second kernel combines the rows in a fixed order: no atomics, bitwise reproducible, and the
partition depends only on the shape and strides.
"""

from typing import Optional

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from .._triton_common import ACT_CODES, act, act_grad, launch, needs_int64
from .reference import Passes

# Bytes of x per tile: 16 (fp16/bf16) or 8 (fp32) values per thread at 8 warps, i.e. two 16-byte
# vector loads per tensor per thread in flight, without spilling the reductions' accumulators
# (sm_90 compile: at most ~100 registers, no spills, for the BigGAN-128 shapes).
_TILE_BYTES = 8192
# Cap on the tile's S block: a warp reads whole 128-byte lines long before it, and a tile of at
# least a few channels keeps bwd_reduce's (sample, channel block) programs numerous.
_S_CAP = 1024
# Cap on the tile's C block when C is the unit-stride axis. Reductions keep it small so that more
# channel blocks (rather than more split partials) fill the GPU.
_C_CAP, _C_CAP_REDUCE = 256, 64
# Smallest block worth shrinking to when rounding the fast axis up would waste lanes: 32 values
# are still whole 32-byte sectors in every storage dtype.
_MIN_FAST_BLOCK = 32
# A reduction splits its reduced axis until this many programs run: several per SM on an H100
# (132 SMs). A constant rather than the device's SM count, so the partition (and hence the bits
# of the result) is the same on every GPU.
_TARGET_PROGRAMS = 1024


# --------------------------------------------------------------------------- jit helpers


@triton.jit
def _chan_combine(mean_a, m2_a, n_a, mean_b, m2_b, n_b):
    # Chan et al.'s pairwise merge of (mean, M2, count); max() keeps two empty sets at mean 0
    # rather than 0 / 0.
    n = n_a + n_b
    w_b = n_b / tl.maximum(n, 1.0)
    delta = mean_b - mean_a
    return mean_a + delta * w_b, m2_a + m2_b + delta * delta * n_a * w_b, n


@triton.jit
def _tile_coords(pid, C, S, n_cblocks, n_sblocks, CHANNELS_FAST: tl.constexpr,
                 INT64: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    """(b, channel indices, S indices) of elementwise tile pid; consecutive programs step along
    the fast axis so neighbouring programs touch neighbouring memory."""
    if INT64:
        pid = pid.to(tl.int64)
    if CHANNELS_FAST:
        cb = pid % n_cblocks
        rest = pid // n_cblocks
        sb = rest % n_sblocks
        b = rest // n_sblocks
    else:
        sb = pid % n_sblocks
        rest = pid // n_sblocks
        cb = rest % n_cblocks
        b = rest // n_cblocks
    return b, cb * BLOCK_C + tl.arange(0, BLOCK_C), sb * BLOCK_S + tl.arange(0, BLOCK_S)


@triton.jit
def _channel_params(b, c, c_ok, mean_ptr, invstd_ptr, gain_ptr, bias_ptr,
                    s_mean, s_invstd, sgb, sgc, sbb, sbc,
                    HAS_GAIN: tl.constexpr, HAS_BIAS: tl.constexpr):
    """mean, invstd and sample b's gain, bias as fp32 [BLOCK_C, 1] columns (absent: 1 and 0)."""
    mean = tl.load(mean_ptr + c * s_mean, mask=c_ok, other=0.0).to(tl.float32)[:, None]
    invstd = tl.load(invstd_ptr + c * s_invstd, mask=c_ok, other=0.0).to(tl.float32)[:, None]
    gain = 1.0
    bias = 0.0
    if HAS_GAIN:
        gain = tl.load(gain_ptr + b * sgb + c * sgc, mask=c_ok, other=0.0).to(tl.float32)[:, None]
    if HAS_BIAS:
        bias = tl.load(bias_ptr + b * sbb + c * sbc, mask=c_ok, other=0.0).to(tl.float32)[:, None]
    return mean, invstd, gain, bias


@triton.jit
def _normalize(x, mean, invstd, gain, bias, HAS_GAIN: tl.constexpr, HAS_BIAS: tl.constexpr):
    """(xhat, z) in the reference's order of operations, so the rounding matches it."""
    xhat = (x - mean) * invstd
    z = xhat
    if HAS_GAIN:
        z = z * gain
    if HAS_BIAS:
        z = z + bias
    return xhat, z


# --------------------------------------------------------------------------- kernels


@triton.jit
def _cond_bn_stats_partial_kernel(
    x_ptr, ws_ptr, cnt_ptr,
    C, S, n_tiles, tiles_per_prog, n_cblocks, n_sblocks, n_splits,
    sxb, sxc, sxs,
    INT64: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """(mean, M2) of one channel block over tiles [split * tiles_per_prog, ...) of the (b, S
    block) sequence -> ws[0 / 1, split, c]; the slice's count per channel -> cnt[split]."""
    pid = tl.program_id(0)
    if INT64:
        pid = pid.to(tl.int64)
    cb = pid % n_cblocks
    split = pid // n_cblocks
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    ds = tl.arange(0, BLOCK_S)
    # Per-lane Welford: elementwise updates in the loop, one tree merge after it. Every lane of a
    # column sees the same S positions, so the count is a [BLOCK_S] vector, and the per-element
    # division becomes one reciprocal per column.
    mean = tl.zeros([BLOCK_C, BLOCK_S], dtype=tl.float32)
    m2 = tl.zeros([BLOCK_C, BLOCK_S], dtype=tl.float32)
    n = tl.zeros([BLOCK_S], dtype=tl.float32)
    t0 = split * tiles_per_prog
    t1 = tl.minimum(t0 + tiles_per_prog, n_tiles)
    for t in range(t0, t1):
        b = t // n_sblocks
        s = (t % n_sblocks) * BLOCK_S + ds
        s_ok = s < S
        x = tl.load(x_ptr + b * sxb + c[:, None] * sxc + s[None, :] * sxs,
                    mask=c_ok[:, None] & s_ok[None, :], other=0.0).to(tl.float32)
        valid = s_ok.to(tl.float32)
        n += valid
        # w = 1/n and u = 1 - 1/n on valid columns, both 0 on padding, which leaves it untouched.
        w = valid / tl.maximum(n, 1.0)
        u = valid - w
        delta = x - mean
        mean += delta * w[None, :]
        m2 += delta * delta * u[None, :]
    n_tile = tl.broadcast_to(n[None, :], [BLOCK_C, BLOCK_S])
    p_mean, p_m2, _ = tl.reduce((mean, m2, n_tile), 1, _chan_combine)
    tl.store(ws_ptr + split * C + c, p_mean, mask=c_ok)
    tl.store(ws_ptr + (n_splits + split) * C + c, p_m2, mask=c_ok)
    tl.store(cnt_ptr + split, tl.sum(n, 0), mask=cb == 0)


@triton.jit
def _cond_bn_stats_merge_kernel(
    ws_ptr, cnt_ptr, mean_ptr, var_ptr, C, P,
    INT64: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Merges the P partials of a channel block in a fixed order; writes mean and biased var."""
    pid = tl.program_id(0)
    if INT64:
        pid = pid.to(tl.int64)
    c = pid * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    # Lane-wise merges down the rows, then one tree merge: no cross-warp traffic in the loop.
    # Padding rows carry count 0, which _chan_combine leaves untouched.
    mean = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    m2 = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    n = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    for p0 in range(0, P, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        p_ok = p < P
        mask = p_ok[:, None] & c_ok[None, :]
        off = p[:, None] * C + c[None, :]
        p_mean = tl.load(ws_ptr + off, mask=mask, other=0.0)
        p_m2 = tl.load(ws_ptr + P * C + off, mask=mask, other=0.0)
        p_n = tl.broadcast_to(tl.load(cnt_ptr + p, mask=p_ok, other=0.0)[:, None],
                              [BLOCK_P, BLOCK_C])
        mean, m2, n = _chan_combine(mean, m2, n, p_mean, p_m2, p_n)
    mean, m2, n = tl.reduce((mean, m2, n), 0, _chan_combine)
    tl.store(mean_ptr + c, mean, mask=c_ok)
    tl.store(var_ptr + c, m2 / n, mask=c_ok)


@triton.jit
def _cond_bn_fwd_kernel(
    x_ptr, y_ptr, mean_ptr, invstd_ptr, gain_ptr, bias_ptr,
    C, S, n_cblocks, n_sblocks,
    sxb, sxc, sxs, syb, syc, sys, s_mean, s_invstd, sgb, sgc, sbb, sbc,
    slope,
    ACT: tl.constexpr, HAS_GAIN: tl.constexpr, HAS_BIAS: tl.constexpr,
    CHANNELS_FAST: tl.constexpr, INT64: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """y = act(xhat * gain + bias) on one tile."""
    b, c, s = _tile_coords(tl.program_id(0), C, S, n_cblocks, n_sblocks, CHANNELS_FAST, INT64,
                           BLOCK_C, BLOCK_S)
    c_ok = c < C
    mask = c_ok[:, None] & (s < S)[None, :]
    mean, invstd, gain, bias = _channel_params(b, c, c_ok, mean_ptr, invstd_ptr, gain_ptr,
                                               bias_ptr, s_mean, s_invstd, sgb, sgc, sbb, sbc,
                                               HAS_GAIN, HAS_BIAS)
    x = tl.load(x_ptr + b * sxb + c[:, None] * sxc + s[None, :] * sxs,
                mask=mask, other=0.0).to(tl.float32)
    _, z = _normalize(x, mean, invstd, gain, bias, HAS_GAIN, HAS_BIAS)
    y = act(z, slope, ACT)
    tl.store(y_ptr + b * syb + c[:, None] * syc + s[None, :] * sys,
             y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _cond_bn_bwd_reduce_kernel(
    dy_ptr, x_ptr, mean_ptr, invstd_ptr, gain_ptr, bias_ptr, out_dz_ptr, out_dz_xhat_ptr,
    B, C, S, sblocks_per_prog, n_cblocks, n_sblocks, n_splits,
    sdb, sdc, sds, sxb, sxc, sxs, s_mean, s_invstd, sgb, sgc, sbb, sbc,
    slope,
    ACT: tl.constexpr, HAS_GAIN: tl.constexpr, HAS_BIAS: tl.constexpr, INT64: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """Sums of dz and dz * xhat over one slice of sample b's S blocks, for one channel block
    -> out_dz[split, b, c], out_dz_xhat[split, b, c]."""
    pid = tl.program_id(0)
    if INT64:
        pid = pid.to(tl.int64)
    cb = pid % n_cblocks
    rest = pid // n_cblocks
    split = rest % n_splits
    b = rest // n_splits
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    ds = tl.arange(0, BLOCK_S)
    mean, invstd, gain, bias = _channel_params(b, c, c_ok, mean_ptr, invstd_ptr, gain_ptr,
                                               bias_ptr, s_mean, s_invstd, sgb, sgc, sbb, sbc,
                                               HAS_GAIN, HAS_BIAS)
    # Elementwise accumulators, reduced across the tile once after the loop.
    acc_dz = tl.zeros([BLOCK_C, BLOCK_S], dtype=tl.float32)
    acc_dz_xhat = tl.zeros([BLOCK_C, BLOCK_S], dtype=tl.float32)
    sb0 = split * sblocks_per_prog
    sb1 = tl.minimum(sb0 + sblocks_per_prog, n_sblocks)
    for sb in range(sb0, sb1):
        s = sb * BLOCK_S + ds
        mask = c_ok[:, None] & (s < S)[None, :]
        x = tl.load(x_ptr + b * sxb + c[:, None] * sxc + s[None, :] * sxs,
                    mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + b * sdb + c[:, None] * sdc + s[None, :] * sds,
                     mask=mask, other=0.0).to(tl.float32)
        xhat, z = _normalize(x, mean, invstd, gain, bias, HAS_GAIN, HAS_BIAS)
        # Padding loads dy = 0, so dz = 0 there under every activation: no masking needed.
        dz = act_grad(z, dy, slope, ACT)
        acc_dz += dz
        acc_dz_xhat += dz * xhat
    off = (split * B + b) * C + c
    tl.store(out_dz_ptr + off, tl.sum(acc_dz, 1), mask=c_ok)
    tl.store(out_dz_xhat_ptr + off, tl.sum(acc_dz_xhat, 1), mask=c_ok)


@triton.jit
def _sum_partials_kernel(ws_ptr, out_a_ptr, out_b_ptr, M, P,
                         INT64: tl.constexpr, BLOCK: tl.constexpr):
    """out_a[m] = sum_p ws[0, p, m], out_b[m] = sum_p ws[1, p, m], in order p = 0, 1, ..."""
    pid = tl.program_id(0)
    if INT64:
        pid = pid.to(tl.int64)
    m = pid * BLOCK + tl.arange(0, BLOCK)
    ok = m < M
    acc_a = tl.zeros([BLOCK], dtype=tl.float32)
    acc_b = tl.zeros([BLOCK], dtype=tl.float32)
    for p in range(P):
        acc_a += tl.load(ws_ptr + p * M + m, mask=ok, other=0.0)
        acc_b += tl.load(ws_ptr + (P + p) * M + m, mask=ok, other=0.0)
    tl.store(out_a_ptr + m, acc_a, mask=ok)
    tl.store(out_b_ptr + m, acc_b, mask=ok)


@triton.jit
def _cond_bn_bwd_dx_kernel(
    dy_ptr, x_ptr, dx_ptr, mean_ptr, invstd_ptr, gain_ptr, bias_ptr, mdx_ptr, mdxx_ptr,
    C, S, n_cblocks, n_sblocks,
    sdb, sdc, sds, sxb, sxc, sxs, sob, soc, sos, s_mean, s_invstd, sgb, sgc, sbb, sbc,
    s_mdx, s_mdxx,
    slope,
    ACT: tl.constexpr, HAS_GAIN: tl.constexpr, HAS_BIAS: tl.constexpr, TRAINING: tl.constexpr,
    CHANNELS_FAST: tl.constexpr, INT64: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """grad_x = invstd * (dz * gain [- mean_dxhat - xhat * mean_dxhat_xhat]) on one tile."""
    b, c, s = _tile_coords(tl.program_id(0), C, S, n_cblocks, n_sblocks, CHANNELS_FAST, INT64,
                           BLOCK_C, BLOCK_S)
    c_ok = c < C
    mask = c_ok[:, None] & (s < S)[None, :]
    mean, invstd, gain, bias = _channel_params(b, c, c_ok, mean_ptr, invstd_ptr, gain_ptr,
                                               bias_ptr, s_mean, s_invstd, sgb, sgc, sbb, sbc,
                                               HAS_GAIN, HAS_BIAS)
    x = tl.load(x_ptr + b * sxb + c[:, None] * sxc + s[None, :] * sxs,
                mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + b * sdb + c[:, None] * sdc + s[None, :] * sds,
                 mask=mask, other=0.0).to(tl.float32)
    xhat, z = _normalize(x, mean, invstd, gain, bias, HAS_GAIN, HAS_BIAS)
    dxhat = act_grad(z, dy, slope, ACT)
    if HAS_GAIN:
        dxhat = dxhat * gain
    if TRAINING:
        mdx = tl.load(mdx_ptr + c * s_mdx, mask=c_ok, other=0.0).to(tl.float32)[:, None]
        mdxx = tl.load(mdxx_ptr + c * s_mdxx, mask=c_ok, other=0.0).to(tl.float32)[:, None]
        dxhat = dxhat - mdx - xhat * mdxx
    tl.store(dx_ptr + b * sob + c[:, None] * soc + s[None, :] * sos,
             (dxhat * invstd).to(dx_ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------- host helpers


def _fast_block(extent: int, cap: int) -> int:
    """The power-of-two block <= cap that pads extent least (the largest on ties), e.g. 32 for
    96 channels rather than 128: padded lanes cost issue slots in every load and FMA."""
    best = block = min(triton.next_power_of_2(extent), cap)
    while block > _MIN_FAST_BLOCK:
        block //= 2
        if triton.cdiv(extent, block) * block < triton.cdiv(extent, best) * best:
            best = block
    return best


def _channels_fast(c: int, s: int, stride_c: int, stride_s: int) -> bool:
    """Whether C (rather than S) is the axis with the smaller stride, i.e. the one to vectorise."""
    if s == 1 or c == 1:
        return s == 1
    return abs(stride_c) < abs(stride_s)


def _tile_shape(c: int, s: int, channels_fast: bool, element_size: int,
                c_cap: int) -> tuple[int, int, int]:
    """(BLOCK_C, BLOCK_S, num_warps): a tile of _TILE_BYTES of x, long along the fast axis."""
    tile = _TILE_BYTES // element_size
    if channels_fast:
        block_c = _fast_block(c, c_cap if s > 1 else tile)
        block_s = min(triton.next_power_of_2(s), max(1, tile // block_c))
    else:
        block_s = _fast_block(s, _S_CAP)
        block_c = min(triton.next_power_of_2(c), max(1, tile // block_s))
    return block_c, block_s, max(1, min(8, block_c * block_s // 256))


def _split(work: int, programs: int) -> tuple[int, int]:
    """(work units per split, splits): the fewest splits that bring programs * splits up to
    _TARGET_PROGRAMS, as far as work allows."""
    splits = max(1, min(work, triton.cdiv(_TARGET_PROGRAMS, programs)))
    per = triton.cdiv(work, splits)
    return per, triton.cdiv(work, per)


def _merged_batch(x: torch.Tensor) -> tuple[int, int, int, int]:
    """(B', S', stride_b', stride_s') of x viewed with B folded into S where the strides allow
    (channels_last, B == 1, S == 1): the statistics do not care which sample a value is from,
    and a longer S axis fills the tiles."""
    b, _, s = x.shape
    sxb, _, sxs = x.stride()
    if b == 1:
        return 1, s, 0, sxs
    if s == 1:
        return 1, b, 0, sxb
    if sxb == s * sxs:
        return 1, b * s, 0, sxs
    return b, s, sxb, sxs


def _affine_args(t: Optional[torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """(tensor, stride over B, stride over C); x stands in for an absent affine (never read)."""
    if t is None:
        return x, 0, 0
    return t, t.stride(0), t.stride(1)


def _param_args(x, mean, invstd, gain, bias) -> tuple:
    """The pointer and stride arguments _channel_params reads, in kernel order."""
    g, sgb, sgc = _affine_args(gain, x)
    bt, sbb, sbc = _affine_args(bias, x)
    return (mean, invstd, g, bt), (mean.stride(0), invstd.stride(0), sgb, sgc, sbb, sbc)


def _elementwise_grid(x: torch.Tensor) -> tuple[bool, int, int, int, int, int, int]:
    """(CHANNELS_FAST, BLOCK_C, BLOCK_S, warps, n_cblocks, n_sblocks, programs): one tile per
    program, oriented by x's strides (the output shares them when x is dense)."""
    b, c, s = x.shape
    cf = _channels_fast(c, s, x.stride(1), x.stride(2))
    block_c, block_s, warps = _tile_shape(c, s, cf, x.element_size(), _C_CAP)
    n_cblocks, n_sblocks = triton.cdiv(c, block_c), triton.cdiv(s, block_s)
    return cf, block_c, block_s, warps, n_cblocks, n_sblocks, b * n_cblocks * n_sblocks


# --------------------------------------------------------------------------- the ops


@triton_op("fastgan::cond_bn_stats_triton", mutates_args=())
def cond_bn_stats_triton(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (mean, biased var) of x [B, C, S] over B and S, float32 [C] each.

    Kernel 1: programs (channel block, split) run a per-lane Welford over a fixed slice of the
    (b, S block) tiles and merge their lanes with Chan's formula -> partials [2, splits, C] and
    counts [splits]. Kernel 2: one program per channel block merges the partials in order.
    """
    b, c, s = x.shape
    if b * s == 0:
        raise ValueError(f"fastgan.cond_batch_norm: x needs at least one value per channel "
                         f"(B * S >= 1), got shape {tuple(x.shape)}")
    mean = x.new_empty(c, dtype=torch.float32)
    var = x.new_empty(c, dtype=torch.float32)
    if c == 0:
        return mean, var
    nb, ns, sxb, sxs = _merged_batch(x)
    cf = _channels_fast(c, ns, x.stride(1), sxs)
    block_c, block_s, warps = _tile_shape(c, ns, cf, x.element_size(), _C_CAP_REDUCE)
    n_cblocks, n_sblocks = triton.cdiv(c, block_c), triton.cdiv(ns, block_s)
    n_tiles = nb * n_sblocks
    tiles_per_prog, n_splits = _split(n_tiles, n_cblocks)
    ws = x.new_empty((2, n_splits, c), dtype=torch.float32)
    counts = x.new_empty(n_splits, dtype=torch.float32)
    int64 = needs_int64(x, ws)
    launch(
        _cond_bn_stats_partial_kernel, n_cblocks * n_splits,
        x, ws, counts, c, ns, n_tiles, tiles_per_prog, n_cblocks, n_sblocks, n_splits,
        sxb, x.stride(1), sxs,
        INT64=int64, BLOCK_C=block_c, BLOCK_S=block_s, num_warps=warps,
    )
    merge_c = min(triton.next_power_of_2(c), 32)
    merge_p = min(triton.next_power_of_2(n_splits), max(1, 2048 // merge_c))
    launch(
        _cond_bn_stats_merge_kernel, triton.cdiv(c, merge_c),
        ws, counts, mean, var, c, n_splits,
        INT64=int64, BLOCK_P=merge_p, BLOCK_C=merge_c,
        num_warps=max(1, min(8, merge_p * merge_c // 256)),
    )
    return mean, var


@triton_op("fastgan::cond_bn_fwd_triton", mutates_args=())
def cond_bn_fwd_triton(
    x: torch.Tensor,
    mean: torch.Tensor,
    invstd: torch.Tensor,
    gain: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    activation: str,
    negative_slope: float,
) -> torch.Tensor:
    """y = act((x - mean) * invstd * gain + bias), x's shape and (when dense) strides.

    One [BLOCK_C, BLOCK_S] tile per program, the grid ordered along x's fast axis.
    """
    y = torch.empty_like(x, memory_format=torch.preserve_format)
    if y.numel() == 0:
        return y
    c, s = x.shape[1:]
    cf, block_c, block_s, warps, n_cblocks, n_sblocks, programs = _elementwise_grid(x)
    ptrs, strides = _param_args(x, mean, invstd, gain, bias)
    launch(
        _cond_bn_fwd_kernel, programs,
        x, y, *ptrs, c, s, n_cblocks, n_sblocks, *x.stride(), *y.stride(), *strides,
        float(negative_slope),
        ACT=ACT_CODES[activation], HAS_GAIN=gain is not None, HAS_BIAS=bias is not None,
        CHANNELS_FAST=cf, INT64=needs_int64(x, y), BLOCK_C=block_c, BLOCK_S=block_s,
        num_warps=warps,
    )
    return y


@triton_op("fastgan::cond_bn_bwd_reduce_triton", mutates_args=())
def cond_bn_bwd_reduce_triton(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    mean: torch.Tensor,
    invstd: torch.Tensor,
    gain: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    activation: str,
    negative_slope: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """([B, C] sums over S of dz, of dz * xhat), float32, dz = grad_out * act'(z).

    Programs (channel block, S split, b) each sum a fixed slice of S. With enough B x channel
    blocks to fill the GPU there is one split and the kernel writes the results directly;
    otherwise it writes [2, splits, B, C] partials that a second kernel sums in split order.
    """
    b, c, s = x.shape
    if b * c * s == 0:
        return (x.new_zeros((b, c), dtype=torch.float32),
                x.new_zeros((b, c), dtype=torch.float32))
    cf = _channels_fast(c, s, x.stride(1), x.stride(2))
    block_c, block_s, warps = _tile_shape(c, s, cf, x.element_size(), _C_CAP_REDUCE)
    n_cblocks, n_sblocks = triton.cdiv(c, block_c), triton.cdiv(s, block_s)
    sblocks_per_prog, n_splits = _split(n_sblocks, b * n_cblocks)
    sum_dz = x.new_empty((b, c), dtype=torch.float32)
    sum_dz_xhat = x.new_empty((b, c), dtype=torch.float32)
    # One split writes the results directly; more write partials [2, splits, B, C] to sum.
    ws = x.new_empty((2, n_splits, b, c), dtype=torch.float32) if n_splits > 1 else None
    out_dz, out_dz_xhat = (sum_dz, sum_dz_xhat) if ws is None else (ws[0], ws[1])
    ptrs, strides = _param_args(x, mean, invstd, gain, bias)
    int64 = needs_int64(grad_out, x, ws if ws is not None else sum_dz)
    launch(
        _cond_bn_bwd_reduce_kernel, n_cblocks * n_splits * b,
        grad_out, x, *ptrs, out_dz, out_dz_xhat,
        b, c, s, sblocks_per_prog, n_cblocks, n_sblocks, n_splits,
        *grad_out.stride(), *x.stride(), *strides, float(negative_slope),
        ACT=ACT_CODES[activation], HAS_GAIN=gain is not None, HAS_BIAS=bias is not None,
        INT64=int64, BLOCK_C=block_c, BLOCK_S=block_s, num_warps=warps,
    )
    if ws is None:
        return sum_dz, sum_dz_xhat
    block = min(triton.next_power_of_2(b * c), 1024)
    launch(
        _sum_partials_kernel, triton.cdiv(b * c, block),
        ws, sum_dz, sum_dz_xhat, b * c, n_splits,
        INT64=int64, BLOCK=block, num_warps=max(1, min(8, block // 256)),
    )
    return sum_dz, sum_dz_xhat


@triton_op("fastgan::cond_bn_bwd_dx_triton", mutates_args=())
def cond_bn_bwd_dx_triton(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    mean: torch.Tensor,
    invstd: torch.Tensor,
    gain: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    activation: str,
    negative_slope: float,
    mean_dxhat: Optional[torch.Tensor],
    mean_dxhat_xhat: Optional[torch.Tensor],
) -> torch.Tensor:
    """grad_x = invstd * (dz * gain - mean_dxhat - xhat * mean_dxhat_xhat) (training), or
    invstd * dz * gain when both means are None (eval); x's shape and (when dense) strides.

    One [BLOCK_C, BLOCK_S] tile per program, oriented by x's strides as in the forward.
    """
    grad_x = torch.empty_like(x, memory_format=torch.preserve_format)
    if grad_x.numel() == 0:
        return grad_x
    c, s = x.shape[1:]
    cf, block_c, block_s, warps, n_cblocks, n_sblocks, programs = _elementwise_grid(x)
    ptrs, strides = _param_args(x, mean, invstd, gain, bias)
    training = mean_dxhat is not None
    mdx = mean_dxhat if training else mean
    mdxx = mean_dxhat_xhat if training else mean
    launch(
        _cond_bn_bwd_dx_kernel, programs,
        grad_out, x, grad_x, *ptrs, mdx, mdxx, c, s, n_cblocks, n_sblocks,
        *grad_out.stride(), *x.stride(), *grad_x.stride(), *strides,
        mdx.stride(0), mdxx.stride(0), float(negative_slope),
        ACT=ACT_CODES[activation], HAS_GAIN=gain is not None, HAS_BIAS=bias is not None,
        TRAINING=training, CHANNELS_FAST=cf, INT64=needs_int64(grad_out, x, grad_x),
        BLOCK_C=block_c, BLOCK_S=block_s, num_warps=warps,
    )
    return grad_x


PASSES = Passes(
    torch.ops.fastgan.cond_bn_stats_triton.default,
    torch.ops.fastgan.cond_bn_fwd_triton.default,
    torch.ops.fastgan.cond_bn_bwd_reduce_triton.default,
    torch.ops.fastgan.cond_bn_bwd_dx_triton.default,
)
