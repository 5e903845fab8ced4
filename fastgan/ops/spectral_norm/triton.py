"""Triton backend of the spectral-norm power iteration (README.md beside this file).

    torch.ops.fastgan.sn_power_iteration_triton(weights, us, vs, n_power_iterations, eps)
        -> sigmas [L] float32

One kernel computes y = M^T x for every layer of the group at once, M [R, C] being W (launch A:
x = u, y = v) or W^T (launch B: x = v, y = u); an iteration is A then B, so it takes 2 launches
(n == 0: one B launch for sigma). A metadata row per (layer, launch kind) holds M's address,
sizes and strides, its partition and its workspace offsets; a program map sends each program id
to its layer, big layers first so that small ones fill the tail instead of serialising.

A program owns one block of M's output axis (several when the reduce axis is short) and one
chunk of its reduce axis (_STEPS tile steps of _TILE_BYTES of W) and writes partial y blocks.
Tiles are long along the unit-stride axis, whichever of M's axes that is, and use 16-byte vector
loads where the host proved the alignment.

No float atomics: the last program to arrive at an output block (a per-block counter) sums the
block's partials in chunk order into raw y and its sum of squares; the last block finisher of a
layer (a per-layer counter) sums those in block order into ||y||, so every result is the same on
every call. The next launch divides raw y by max(||y||, eps) as it loads it, and the last launch
writes the normalised u and v and sigma = ||u_raw||^2 / max(||u_raw||, eps) = u . W v.
"""

import contextlib
import functools

import numpy as np
import torch
import triton
import triton.language as tl

from .._triton_common import needs_int64

# Bytes of W per aligned tile step: 16 fp32 / 32 fp16 values per thread at 8 warps, i.e. four
# 16-byte loads in flight per thread. The sm_90 compile takes 64-80 (fp32) / 99-121 (fp16)
# registers, no spills: 3 / 2 programs per SM, 48 / 32 KiB of loads in flight per SM.
_TILE_BYTES = 16384
# Tile extent along the unit-stride axis: a warp reads 512 (fp16) or 1024 (fp32) contiguous bytes.
_FAST = 256
# Tile steps per program: 128 KiB of W, which amortises a program's setup and its partial
# (1/128 of the values it reads) while keeping thousands of programs over BigGAN's weights.
# A constant, so the partition (and the bits of the result) depends on the shapes alone.
_STEPS = 8
# Block of the finishers' vector loops (raw vectors, per-block sums).
_FIN_BLOCK = 2048
# Partial rows a block finisher sums per step, so tall layers (many chunks) finish in few steps.
_CH_BLOCK = 16
_NUM_WARPS = 8

# Fields of a metadata row (int64): M's address, reduce and output lengths and strides, path
# (bit 0: the reduce axis is the fast one; bit 1: 16-byte aligned), output block size, blocks,
# blocks per program, block groups, chunks, chunk length, first program, workspace offsets
# (partials, raw y, per-block sums, ||y||), the stored x and y vectors' addresses, the input's
# raw vector and norm (the other launch kind's raw y and ||y||), the counters (int32 index) and
# the layer index.
_FIELDS = ("w", "red", "out", "s_red", "s_out", "path", "bo", "n_ob", "group", "n_og", "n_ch",
           "chunk", "first", "part", "raw", "ss", "den", "x", "y", "x_raw", "x_den", "ctr", "layer")
_N_FIELDS = tl.constexpr(len(_FIELDS))
(_F_W, _F_RED, _F_OUT, _F_S_RED, _F_S_OUT, _F_PATH, _F_BO, _F_N_OB, _F_GROUP, _F_N_OG, _F_N_CH,
 _F_CHUNK, _F_FIRST, _F_PART, _F_RAW, _F_SS, _F_DEN, _F_X, _F_Y, _F_X_RAW, _F_X_DEN, _F_CTR,
 _F_LAYER) = (tl.constexpr(i) for i in range(len(_FIELDS)))


# --------------------------------------------------------------------------- jit helpers


@triton.jit
def _field(row, f, INT64: tl.constexpr):
    """An int64 metadata field, narrowed to int32 when every offset fits (cheaper index math)."""
    v = tl.load(row + f)
    if not INT64:
        v = v.to(tl.int32)
    return v


@triton.jit
def _strip_partial(row, w_like_ptr, x_ptr, x_den, part_ptr, ob0, ob1, ch,
                   X_SCALED: tl.constexpr, RED_FAST: tl.constexpr, ALIGNED: tl.constexpr,
                   INT64: tl.constexpr, BR: tl.constexpr, BO: tl.constexpr, VEC: tl.constexpr):
    """part[o] = sum over r in chunk ch of M[r, o] * x[r], o in output blocks [ob0, ob1) (BO
    wide each).

    ALIGNED: the host guarantees a 16-byte aligned base, a unit fast stride and a slow stride and
    fast length that are multiples of VEC, and the hints below tell Triton so that it vectorises
    the loads (masks included); it cannot prove any of it of values read from the table. The
    fields are loaded here rather than passed in because a hint only sticks to a value that an
    op of this function defines (not to an argument), and must not reach the unaligned branches.
    """
    red_len = _field(row, _F_RED, INT64)
    out_len = _field(row, _F_OUT, INT64)
    chunk = tl.multiple_of(_field(row, _F_CHUNK, INT64), 16)
    w_ptr = tl.load(row + _F_W).to(tl.pointer_type(w_like_ptr.dtype.element_ty))
    if ALIGNED:
        w_ptr = tl.multiple_of(w_ptr, 16)
    r0 = ch * chunk
    r1 = tl.minimum(r0 + chunk, red_len)
    if not ALIGNED:
        s_red = _field(row, _F_S_RED, INT64)
        s_out = _field(row, _F_S_OUT, INT64)
    elif RED_FAST:
        s_red = 1
        s_out = tl.multiple_of(_field(row, _F_S_OUT, INT64), VEC)
        r1 = tl.multiple_of(r1, VEC)
    else:
        s_red = tl.multiple_of(_field(row, _F_S_RED, INT64), VEC)
        s_out = 1
        out_len = tl.multiple_of(out_len, VEC)
    for ob in range(ob0, ob1):
        o = ob * BO + tl.arange(0, BO)
        o_ok = o < out_len
        # Elementwise fp32 accumulation in the loop, one cross-lane reduction after it.
        if RED_FAST:
            acc = tl.zeros([BO, BR], dtype=tl.float32)
        else:
            acc = tl.zeros([BR, BO], dtype=tl.float32)
        for rs in range(r0, r1, BR):
            r = rs + tl.arange(0, BR)
            r_ok = r < r1
            x = tl.load(x_ptr + r, mask=r_ok, other=0.0)
            if X_SCALED:
                x = tl.div_rn(x, x_den)
            if RED_FAST:
                w = tl.load(w_ptr + o[:, None] * s_out + r[None, :] * s_red,
                            mask=o_ok[:, None] & r_ok[None, :], other=0.0)
                acc += w.to(tl.float32) * x[None, :]
            else:
                w = tl.load(w_ptr + r[:, None] * s_red + o[None, :] * s_out,
                            mask=r_ok[:, None] & o_ok[None, :], other=0.0)
                acc += w.to(tl.float32) * x[:, None]
        if RED_FAST:
            tl.store(part_ptr + o, tl.sum(acc, 1), mask=o_ok)
        else:
            tl.store(part_ptr + o, tl.sum(acc, 0), mask=o_ok)


@triton.jit
def _finish_block(ws_ptr, y_ptr, part, raw, ss, ob, bo, n_ch, out_len,
                  SIGMA_DOT: tl.constexpr, FAST: tl.constexpr, CH_BLOCK: tl.constexpr):
    """raw y = the block's partials summed in chunk order; ss[ob] = its sum of squares (SIGMA_DOT:
    its dot with the stored y instead). The other programs' partials are read past L1 (.cg)."""
    o = ob * bo + tl.arange(0, FAST)
    o_ok = (o < ob * bo + bo) & (o < out_len)
    acc = tl.zeros([CH_BLOCK, FAST], dtype=tl.float32)
    for c0 in range(0, n_ch, CH_BLOCK):
        c = c0 + tl.arange(0, CH_BLOCK)
        acc += tl.load(ws_ptr + part + c[:, None] * out_len + o[None, :],
                       mask=(c < n_ch)[:, None] & o_ok[None, :], other=0.0, cache_modifier=".cg")
    y_raw = tl.sum(acc, 0)
    if SIGMA_DOT:
        s = tl.sum(y_raw * tl.load(y_ptr + o, mask=o_ok, other=0.0), 0)
    else:
        tl.store(ws_ptr + raw + o, y_raw, mask=o_ok)
        s = tl.sum(y_raw * y_raw, 0)
    tl.store(ws_ptr + ss + ob, s)


@triton.jit
def _finish_layer(ws_ptr, y_ptr, sigma_ptr, layer, raw, ss, den, n_ob, out_len, eps,
                  SIGMA_DOT: tl.constexpr, FINAL: tl.constexpr, FIN_BLOCK: tl.constexpr):
    """||y|| from the per-block sums in block order -> den = max(||y||, eps) for the next launch;
    the last launch also stores sigma and y = raw y / den (SIGMA_DOT: sigma = the dot alone)."""
    k = tl.arange(0, FIN_BLOCK)
    acc = tl.zeros([FIN_BLOCK], dtype=tl.float32)
    for b0 in range(0, n_ob, FIN_BLOCK):
        acc += tl.load(ws_ptr + ss + b0 + k, mask=b0 + k < n_ob, other=0.0, cache_modifier=".cg")
    total = tl.sum(acc, 0)
    if SIGMA_DOT:
        tl.store(sigma_ptr + layer, total)
    else:
        d = tl.maximum(tl.sqrt_rn(total), eps)
        tl.store(ws_ptr + den, d)
        if FINAL:
            tl.store(sigma_ptr + layer, tl.div_rn(total, d))
            for o0 in range(0, out_len, FIN_BLOCK):
                o = o0 + k
                o_ok = o < out_len
                y = tl.load(ws_ptr + raw + o, mask=o_ok, other=0.0, cache_modifier=".cg")
                tl.store(y_ptr + o, tl.div_rn(y, d), mask=o_ok)


# --------------------------------------------------------------------------- the kernel


@triton.jit
def _sn_matvec_kernel(
    meta_ptr, ctr_ptr, ws_ptr, sigma_ptr, w_like_ptr, map_off, rows_off, eps,
    X_STORED: tl.constexpr, FINAL: tl.constexpr, SIGMA_DOT: tl.constexpr, INT64: tl.constexpr,
    FAST: tl.constexpr, SLOW: tl.constexpr, VEC: tl.constexpr,
    CH_BLOCK: tl.constexpr, FIN_BLOCK: tl.constexpr,
):
    """One (layer, output block group, reduce chunk) program of y = M^T x over the whole group.

    X_STORED: x is the stored vector (u at the first A, v when n == 0), else the raw y of the
    previous launch divided by its den. FINAL (last B): block group 0's programs store their chunk
    of the final v, the layer finisher u and sigma. SIGMA_DOT (n == 0): sigma = u . W v only.
    """
    pid = tl.program_id(0)
    layer = tl.load(meta_ptr + map_off + pid)
    row = meta_ptr + rows_off + layer * _N_FIELDS
    out_len = _field(row, _F_OUT, INT64)
    n_ob = _field(row, _F_N_OB, INT64)
    n_og = _field(row, _F_N_OG, INT64)
    n_ch = _field(row, _F_N_CH, INT64)
    group = _field(row, _F_GROUP, INT64)
    t = pid - _field(row, _F_FIRST, INT64)
    ob0 = (t % n_og) * group
    ob1 = tl.minimum(ob0 + group, n_ob)
    ch = t // n_og
    x_stored = tl.load(row + _F_X).to(tl.pointer_type(tl.float32))
    y_stored = tl.load(row + _F_Y).to(tl.pointer_type(tl.float32))
    if X_STORED:
        x_ptr = x_stored
        x_den = 1.0
    else:
        x_ptr = ws_ptr + _field(row, _F_X_RAW, INT64)
        x_den = tl.load(ws_ptr + _field(row, _F_X_DEN, INT64))
    part = _field(row, _F_PART, INT64)
    part_ptr = ws_ptr + part + ch * out_len
    path = _field(row, _F_PATH, INT64)
    # One branch per tile orientation and alignment, so each gets constant strides and hints.
    # Unaligned tiles are half as deep: their scalar loads hold an address register per value,
    # and at full depth they would set the whole kernel's register count (and occupancy).
    if path == 3:
        _strip_partial(row, w_like_ptr, x_ptr, x_den, part_ptr, ob0, ob1, ch,
                       not X_STORED, True, True, INT64, FAST, SLOW, VEC)
    elif path == 2:
        _strip_partial(row, w_like_ptr, x_ptr, x_den, part_ptr, ob0, ob1, ch,
                       not X_STORED, False, True, INT64, SLOW, FAST, VEC)
    elif path == 1:
        _strip_partial(row, w_like_ptr, x_ptr, x_den, part_ptr, ob0, ob1, ch,
                       not X_STORED, True, False, INT64, FAST, SLOW // 2, VEC)
    else:
        _strip_partial(row, w_like_ptr, x_ptr, x_den, part_ptr, ob0, ob1, ch,
                       not X_STORED, False, False, INT64, SLOW // 2, FAST, VEC)
    if FINAL:
        # x is the last v: each chunk's block-0 program stores its slice, normalised as used.
        if ob0 == 0:
            chunk = _field(row, _F_CHUNK, INT64)
            r0 = ch * chunk
            r1 = tl.minimum(r0 + chunk, _field(row, _F_RED, INT64))
            for rs in range(r0, r1, FIN_BLOCK):
                r = rs + tl.arange(0, FIN_BLOCK)
                r_ok = r < r1
                tl.store(x_stored + r, tl.div_rn(tl.load(x_ptr + r, mask=r_ok, other=0.0), x_den),
                         mask=r_ok)
    # Last-arriving finish: every thread's partial store is ordered before the counter's release
    # by the barrier; the finisher's acquire makes all of them visible to its .cg loads. Each
    # finisher resets its counter (zeroed once by the metadata copy) for the next launch.
    tl.debug_barrier()
    ctr = ctr_ptr + _field(row, _F_CTR, INT64)
    raw = _field(row, _F_RAW, INT64)
    ss = _field(row, _F_SS, INT64)
    for ob in range(ob0, ob1):
        if tl.atomic_add(ctr + ob, 1, sem="acq_rel", scope="gpu") == n_ch - 1:
            tl.atomic_xchg(ctr + ob, 0, sem="relaxed", scope="gpu")
            _finish_block(ws_ptr, y_stored, part, raw, ss, ob, _field(row, _F_BO, INT64), n_ch,
                          out_len, SIGMA_DOT, FAST, CH_BLOCK)
            tl.debug_barrier()
            if tl.atomic_add(ctr + n_ob, 1, sem="acq_rel", scope="gpu") == n_ob - 1:
                tl.atomic_xchg(ctr + n_ob, 0, sem="relaxed", scope="gpu")
                _finish_layer(ws_ptr, y_stored, sigma_ptr, tl.load(row + _F_LAYER), raw, ss,
                              _field(row, _F_DEN, INT64), n_ob, out_len, eps, SIGMA_DOT, FINAL,
                              FIN_BLOCK)


# --------------------------------------------------------------------------- host side


def _cdiv(a: int, b: int) -> int:
    # triton.cdiv is a jit function: calling it from Python costs microseconds a call.
    return -(-a // b)


def _plan(red: int, out: int, s_red: int, s_out: int, base16: bool, elem: int, slow: int) -> dict:
    """Path, blocks and chunks of y = M^T x for M [red, out] with the given strides."""
    # A size-1 axis's stride is never used: zero it so the alignment test ignores it.
    s_red, s_out = (0 if red == 1 else s_red), (0 if out == 1 else s_out)
    red_fast = out == 1 or (red > 1 and abs(s_red) < abs(s_out))
    fast_len, s_fast, s_slow = (red, s_red, s_out) if red_fast else (out, s_out, s_red)
    vec = 16 // elem
    aligned = base16 and s_fast == 1 and s_slow % vec == 0 and fast_len % vec == 0
    if not aligned:
        slow //= 2
    bo, br = (slow, _FAST) if red_fast else (_FAST, slow)
    chunk = _STEPS * br
    n_ob, n_ch = _cdiv(out, bo), _cdiv(red, chunk)
    # A reduce axis shorter than a chunk leaves programs of a step or two, which would spend
    # their time on setup latency: give each several output blocks instead (BigGAN's [C, 148]
    # class-conditional linears under W v).
    group = max(1, _STEPS // _cdiv(red, br)) if n_ch == 1 else 1
    return dict(red=red, out=out, s_red=s_red, s_out=s_out, path=int(red_fast) + 2 * int(aligned),
                bo=bo, n_ob=n_ob, group=group, n_og=_cdiv(n_ob, group), n_ch=n_ch,
                chunk=chunk, w=0, x=0, y=0)


@functools.lru_cache(maxsize=64)
def _layout(geometry: tuple, elem: int, slow: int) -> tuple:
    """(rows [2, L, F] without addresses, the rest of the metadata, counters' offset, map
    offsets, row offsets, programs, workspace size) of layers geometry[l] = (H, W, s0, s1,
    16-byte aligned base). Cached: a training loop calls with the same group every step, and
    building it in Python costs more than the kernels of a small group."""
    plans = ([], [])
    ws_size = ctr_size = 0
    for h, wd, s0, s1, base16 in geometry:
        a = _plan(h, wd, s0, s1, base16, elem, slow)
        b = _plan(wd, h, s1, s0, base16, elem, slow)
        # A and B never run at once, so they share the partials region.
        part = ws_size
        ws_size += max(a["n_ch"] * wd, b["n_ch"] * h)
        for p in (a, b):
            ss = ws_size + p["out"]
            p.update(part=part, raw=ws_size, ss=ss, den=ss + p["n_ob"], ctr=ctr_size)
            ws_size += p["out"] + p["n_ob"] + 1
            ctr_size += p["n_ob"] + 1
        a.update(x_raw=b["raw"], x_den=b["den"])
        b.update(x_raw=a["raw"], x_den=a["den"])
        plans[0].append(a)
        plans[1].append(b)
    # Big layers first: their finishers then overlap the small layers' programs.
    n_layers = len(geometry)
    order = sorted(range(n_layers), key=lambda l: -geometry[l][0] * geometry[l][1])
    maps, programs = [], []
    for kind in plans:
        first = 0
        for l in order:
            kind[l].update(first=first, layer=l)
            first += kind[l]["n_og"] * kind[l]["n_ch"]
        maps.append(np.repeat(order, [kind[l]["n_og"] * kind[l]["n_ch"] for l in order]))
        programs.append(first)
    rows = np.array([[[p[f] for f in _FIELDS] for p in kind] for kind in plans], dtype=np.int64)
    rows_off = (0, n_layers * len(_FIELDS))
    map_off = (2 * rows_off[1], 2 * rows_off[1] + programs[0])
    ctr_off = map_off[1] + programs[1]
    rest = np.concatenate([maps[0], maps[1], np.zeros(_cdiv(ctr_size, 2), dtype=np.int64)])
    return rows, rest, ctr_off, map_off, rows_off, programs, ws_size


def _build(weights, us, vs, slow):
    """(metadata, counters' offset, map offsets, row offsets, programs, workspace size, INT64).

    The metadata (an int64 CPU tensor) holds the rows of kind A (M = W), then of kind B (M = W^T),
    the two program maps, then the int32 counters, zero: copied as one, it needs no memset."""
    geometry = tuple((*w.shape, *w.stride(), w.data_ptr() % 16 == 0) for w in weights)
    rows, rest, *offsets, ws_size = _layout(geometry, weights[0].element_size(), slow)
    rows = rows.copy()
    w_ptrs, u_ptrs, v_ptrs = ([t.data_ptr() for t in ts] for ts in (weights, us, vs))
    for kind, x, y in ((0, u_ptrs, v_ptrs), (1, v_ptrs, u_ptrs)):
        rows[kind, :, _FIELDS.index("w")] = w_ptrs
        rows[kind, :, _FIELDS.index("x")] = x
        rows[kind, :, _FIELDS.index("y")] = y
    meta = torch.from_numpy(np.concatenate([rows.ravel(), rest]))
    int64 = ws_size >= 2**31 or any(needs_int64(w) for w in weights)
    return (meta, *offsets, ws_size, int64)


def _check(weights, us, vs, n_power_iterations, eps) -> None:
    """What the kernel's raw pointers rely on (the public API has checked the rest)."""
    if not weights or len(us) != len(weights) or len(vs) != len(weights):
        raise ValueError("sn_power_iteration_triton: weights, us and vs need the same length >= 1")
    dev, dtype = weights[0].device, weights[0].dtype
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"sn_power_iteration_triton: unsupported weight dtype {dtype}")
    for l, (w, u, v) in enumerate(zip(weights, us, vs)):
        if (w.dim() != 2 or w.dtype != dtype or w.device != dev or min(w.shape) < 1
                or u.shape != w.shape[:1] or v.shape != w.shape[1:]
                or any(t.dtype != torch.float32 or t.device != dev or not t.is_contiguous()
                       for t in (u, v))):
            raise ValueError(f"sn_power_iteration_triton: layer {l}: need weights[{l}] [H, W] "
                             f"({dtype}, {dev}) and contiguous float32 us[{l}] [H], vs[{l}] [W]")
    if n_power_iterations < 0 or not eps > 0:
        raise ValueError("sn_power_iteration_triton: need n_power_iterations >= 0 and eps > 0")


# A custom_op rather than a triton_op: the group reaches one launch through a table of data
# pointers, and fake tensors (what torch.compile traces triton_ops with) have no data_ptr().
# Opaque to compile, the op still costs one graph node and no graph break.
@torch.library.custom_op("fastgan::sn_power_iteration_triton", mutates_args=("us", "vs"))
def sn_power_iteration_triton(weights: list[torch.Tensor], us: list[torch.Tensor],
                              vs: list[torch.Tensor], n_power_iterations: int,
                              eps: float) -> torch.Tensor:
    """Updates us[l] [H_l], vs[l] [W_l] in place; returns sigmas [L] float32 (README.md).

    Per iteration, launch A (y = W^T u) and launch B (y = W v), each one program per (layer,
    output block group, reduce chunk) over the whole group; n == 0 is one B launch (sigma only).
    """
    _check(weights, us, vs, n_power_iterations, eps)
    device = weights[0].device
    slow = _TILE_BYTES // (weights[0].element_size() * _FAST)
    meta, ctr_off, map_off, rows_off, programs, ws_size, int64 = _build(weights, us, vs, slow)
    if device.type == "cuda":
        meta = meta.pin_memory().to(device, non_blocking=True)
    ws = torch.empty(ws_size, dtype=torch.float32, device=device)
    sigmas = torch.empty(len(weights), dtype=torch.float32, device=device)
    counters = meta[ctr_off:].view(torch.int32)
    consts = dict(INT64=int64, FAST=_FAST, SLOW=slow, VEC=16 // weights[0].element_size(),
                  CH_BLOCK=_CH_BLOCK, FIN_BLOCK=_FIN_BLOCK, num_warps=_NUM_WARPS)

    def run(kind: int, x_stored: bool, final: bool, sigma_dot: bool) -> None:
        # Called directly: the op is opaque to torch.compile, so there is nothing to trace.
        _sn_matvec_kernel[(programs[kind],)](
            meta, counters, ws, sigmas, weights[0], map_off[kind], rows_off[kind], float(eps),
            X_STORED=x_stored, FINAL=final, SIGMA_DOT=sigma_dot, **consts)

    # Triton launches on the current device; a custom op gets no device guard of its own.
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        if n_power_iterations == 0:
            run(1, True, False, True)
        for it in range(n_power_iterations):
            run(0, it == 0, False, False)
            run(1, False, it == n_power_iterations - 1, False)
    return sigmas


@sn_power_iteration_triton.register_fake
def _(weights, us, vs, n_power_iterations, eps):
    return weights[0].new_empty(len(weights), dtype=torch.float32)
