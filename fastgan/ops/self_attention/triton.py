"""Triton backend of the self-attention core: flash attention over one head (README.md beside
this file is the contract; reference.py's ``attention_core_reference`` is the oracle).

    torch.ops.fastgan.self_attention_core_fwd_triton(q, k, v, scale) -> (o [B, N, E], lse [B, N])
    torch.ops.fastgan.self_attention_core_bwd_triton(grad_o, q, k, v, o, lse, scale)
        -> (grad_q [B, N, D], grad_k [B, M, D], grad_v [B, M, E])

Forward: one program per (batch, query block) sweeps the key blocks with an online softmax and
stores o and lse. Backward, two launches in stream order, each program owning the rows it
writes, so there are no atomics and every call gives the same bits:
  1. per (batch, query block): delta_i = sum_j P_ij dP_ij, stored for launch 2, then grad_q,
     by two sweeps over the key blocks;
  2. per (batch, key block): grad_k and grad_v by a sweep over the query blocks.
P = exp(scale q k^T - lse) is recomputed block by block from q, k and lse; no [N, M] tensor.
The contract's o argument goes unused: delta from rowsum(grad_o * o) is cheaper but less exact
(see the dQ kernel).

Head dims D and E of any size are padded to powers of two (at least 16, the smallest tl.dot K)
under masks; N and M need not be multiples of the blocks; q, k, v, o, grad_o and lse may have
any strides (q is usually the transposed view of a conv output). Dots accumulate in fp32:
IEEE fp32 for fp32 inputs (TF32 would miss the reference by ~1e-3), tensor-core fp16/bf16
otherwise, with P and dS rounded to the input dtype for their dots as in flash attention.
The public API (fastgan.ops.self_attention) validates arguments; ``_check`` below repeats what
the raw pointers rely on, for direct calls of the ops.
"""

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from .._triton_common import launch, needs_int64


@triton.jit
def _rows(start, BLOCK: tl.constexpr, INT64: tl.constexpr):
    """start + arange(BLOCK), in int64 when some offset may not fit in int32."""
    r = start + tl.arange(0, BLOCK)
    if INT64:
        r = r.to(tl.int64)
    return r


@triton.jit
def _tile(ptr, rows, cols, s_row, s_col, n_rows, n_cols):
    """The [len(rows), len(cols)] tile ptr[rows, cols], zero outside [n_rows, n_cols]."""
    mask = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
    return tl.load(ptr + rows[:, None] * s_row + cols[None, :] * s_col, mask=mask, other=0.0)


@triton.jit
def _scores(q, k, j, M, scale, PRECISION: tl.constexpr):
    """scale * q k^T for key rows j, -inf on padded keys (j >= M).

    Scaled after the dot, in fp32 (scaling fp16 q first would round it again). The explicit
    -inf matters in the backward too: there exp(0 - lse) overflows when every real score is very
    negative, and inf times a padded (zero) k row is NaN.
    """
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
    return tl.where((j < M)[None, :], s, float("-inf"))


@triton.jit
def _attention_fwd_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr,
    N, M, D, E, n_qblocks, scale,
    sqb, sqn, sqd, skb, skm, skd, svb, svm, sve, sob, son, soe, slb, sln,
    PRECISION: tl.constexpr, INT64: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_E: tl.constexpr,
):
    """o and lse of query rows [qb * BLOCK_N, +BLOCK_N) of batch b."""
    pid = tl.program_id(0)
    if INT64:
        pid = pid.to(tl.int64)
    b = pid // n_qblocks
    i = _rows((pid % n_qblocks) * BLOCK_N, BLOCK_N, INT64)
    d = _rows(0, BLOCK_D, INT64)
    e = _rows(0, BLOCK_E, INT64)
    k_ptr += b * skb
    v_ptr += b * svb
    q = _tile(q_ptr + b * sqb, i, d, sqn, sqd, N, D)

    # Running max, normaliser and unnormalised output of each row. Every key block holds a real
    # key (M >= 1), so m_i is finite after the first and exp(-inf - m) = 0 drops the initial state.
    m_i = tl.full([BLOCK_N], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_N], dtype=tl.float32)
    acc = tl.zeros([BLOCK_N, BLOCK_E], dtype=tl.float32)
    for j0 in range(0, M, BLOCK_M):
        j = _rows(j0, BLOCK_M, INT64)
        s = _scores(q, _tile(k_ptr, j, d, skm, skd, M, D), j, M, scale, PRECISION)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = _tile(v_ptr, j, e, svm, sve, M, E)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new

    i_ok = i < N
    tl.store(o_ptr + b * sob + i[:, None] * son + e[None, :] * soe,
             (acc / l_i[:, None]).to(o_ptr.dtype.element_ty),
             mask=i_ok[:, None] & (e < E)[None, :])
    # Where one score dominates, m + log(l) rounds to m itself, so the backward's
    # exp(s_max - lse) is exactly 1, as in the reference's logsumexp.
    tl.store(lse_ptr + b * slb + i * sln, m_i + tl.log(l_i), mask=i_ok)


@triton.jit
def _attention_bwd_dq_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr,
    N, M, D, E, n_qblocks, scale,
    sqb, sqn, sqd, skb, skm, skd, svb, svm, sve, sgb, sgn, sge, slb, sln, sdqb, sdqn, sdqd,
    PRECISION: tl.constexpr, INT64: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_E: tl.constexpr,
):
    """delta and grad_q of query rows [qb * BLOCK_N, +BLOCK_N) of batch b: two sweeps over the
    key blocks, the first for delta, the second for grad_q."""
    pid = tl.program_id(0)
    if INT64:
        pid = pid.to(tl.int64)
    b = pid // n_qblocks
    i = _rows((pid % n_qblocks) * BLOCK_N, BLOCK_N, INT64)
    d = _rows(0, BLOCK_D, INT64)
    e = _rows(0, BLOCK_E, INT64)
    i_ok = i < N
    k_ptr += b * skb
    v_ptr += b * svb
    q = _tile(q_ptr + b * sqb, i, d, sqn, sqd, N, D)
    do = _tile(do_ptr + b * sgb, i, e, sgn, sge, N, E)
    lse = tl.load(lse_ptr + b * slb + i * sln, mask=i_ok, other=0.0)

    # delta_i = sum_j P_ij dP_ij (= grad_o_i . o_i), from the very P and dP that dS uses, over
    # sum_j P_ij (= 1): dS = P (dP - delta) cancels, and rowsum(grad_o * o) would cancel against
    # differently rounded values (o is rounded to fp16/bf16, P's recomputation off by ~|s| eps):
    # that made grad_q / grad_k 3-10x less accurate than the reference where scores are large.
    # Row sums per block: [BLOCK_N, BLOCK_M] accumulators would spill (sm_90 compile).
    pdp = tl.zeros([BLOCK_N], dtype=tl.float32)
    psum = tl.zeros([BLOCK_N], dtype=tl.float32)
    for j0 in range(0, M, BLOCK_M):
        j = _rows(j0, BLOCK_M, INT64)
        s = _scores(q, _tile(k_ptr, j, d, skm, skd, M, D), j, M, scale, PRECISION)
        p = tl.exp(s - lse[:, None])
        dp = tl.dot(do, _tile(v_ptr, e, j, sve, svm, E, M), input_precision=PRECISION)
        pdp += tl.sum(p * dp, 1)
        psum += tl.sum(p, 1)
    delta = pdp / psum
    tl.store(delta_ptr + b * N + i, delta, mask=i_ok)

    dq = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for j0 in range(0, M, BLOCK_M):
        j = _rows(j0, BLOCK_M, INT64)
        k = _tile(k_ptr, j, d, skm, skd, M, D)
        p = tl.exp(_scores(q, k, j, M, scale, PRECISION) - lse[:, None])
        dp = tl.dot(do, _tile(v_ptr, e, j, sve, svm, E, M), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)

    tl.store(dq_ptr + b * sdqb + i[:, None] * sdqn + d[None, :] * sdqd,
             (dq * scale).to(dq_ptr.dtype.element_ty), mask=i_ok[:, None] & (d < D)[None, :])


@triton.jit
def _attention_bwd_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
    N, M, D, E, n_kblocks, scale,
    sqb, sqn, sqd, skb, skm, skd, svb, svm, sve, sgb, sgn, sge, slb, sln,
    sdkb, sdkm, sdkd, sdvb, sdvm, sdve,
    PRECISION: tl.constexpr, INT64: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_E: tl.constexpr,
):
    """grad_k and grad_v of key rows [kb * BLOCK_M, +BLOCK_M) of batch b.

    S is computed as q k^T, the forward's orientation, and P, dS transposed for their dots:
    S^T = k q^T sums in another order, and P^T's rounding then no longer matches lse, which
    cost up to 10x the reference's error in grad_v (fp32, large scores) and made grad_k of a
    single key nonzero instead of exactly 0.
    """
    pid = tl.program_id(0)
    if INT64:
        pid = pid.to(tl.int64)
    b = pid // n_kblocks
    j = _rows((pid % n_kblocks) * BLOCK_M, BLOCK_M, INT64)
    d = _rows(0, BLOCK_D, INT64)
    e = _rows(0, BLOCK_E, INT64)
    j_ok = j < M
    q_ptr += b * sqb
    do_ptr += b * sgb
    k = _tile(k_ptr + b * skb, j, d, skm, skd, M, D)
    v = _tile(v_ptr + b * svb, j, e, svm, sve, M, E)

    dk = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_M, BLOCK_E], dtype=tl.float32)
    for i0 in range(0, N, BLOCK_N):
        i = _rows(i0, BLOCK_N, INT64)
        i_ok = i < N
        q = _tile(q_ptr, i, d, sqn, sqd, N, D)
        do = _tile(do_ptr, i, e, sgn, sge, N, E)
        # lse = +inf on padded queries makes their P rows exactly 0.
        lse = tl.load(lse_ptr + b * slb + i * sln, mask=i_ok, other=float("inf"))
        delta = tl.load(delta_ptr + b * N + i, mask=i_ok, other=0.0)
        p = tl.exp(_scores(q, k, j, M, scale, PRECISION) - lse[:, None])
        dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)

    tl.store(dk_ptr + b * sdkb + j[:, None] * sdkm + d[None, :] * sdkd,
             (dk * scale).to(dk_ptr.dtype.element_ty), mask=j_ok[:, None] & (d < D)[None, :])
    tl.store(dv_ptr + b * sdvb + j[:, None] * sdvm + e[None, :] * sdve,
             dv.to(dv_ptr.dtype.element_ty), mask=j_ok[:, None] & (e < E)[None, :])


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, op: str) -> tuple[int, ...]:
    """(B, N, M, D, E) of q [B, N, D], k [B, M, D], v [B, M, E] of one GPU dtype and device."""
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError(f"{op}: q, k, v must be 3-D, got {q.dim()}, {k.dim()}, {v.dim()}")
    (b, n, d), (m, e) = q.shape, v.shape[1:]
    if k.shape != (b, m, d) or v.shape[0] != b or min(n, m, d, e) < 1:
        raise ValueError(f"{op}: need q [B, N, D], k [B, M, D], v [B, M, E] with N, M, D, E >= 1, "
                         f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"{op}: q has dtype {q.dtype}; float32, float16 or bfloat16 expected")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype or t.device != q.device:
            raise ValueError(f"{op}: {name} is {t.dtype} on {t.device}, "
                             f"q is {q.dtype} on {q.device}")
    return b, n, m, d, e


def _meta(q: torch.Tensor, d: int, e: int, n: int, m: int, backward: bool) -> dict:
    """The constexprs and warps of a kernel.

    Query / key blocks of 64: 64 x 64 score tiles feed full-size tensor-core MMAs while the fp32
    accumulators stay in registers. IEEE fp32 dots run on FMAs with both operands staged in
    shared memory, where 64-wide blocks need more than an H100's 227 KiB at E = 192 (sm_90
    compile): 32 for fp32. All three kernels get the same [BLOCK_N, BLOCK_M] score tiles, so
    that (where a dot's summation order depends on the tile shape) the backward recomputes the
    forward's scores bit for bit. The backward holds q, grad_o and a gradient accumulator besides
    P and dP: at 4 warps its sm_90 compile spills (D = 24, E = 96).
    """
    fp32 = q.dtype == torch.float32
    cap = 32 if fp32 else 64
    block_e = triton.next_power_of_2(max(e, 16))
    return dict(PRECISION="ieee" if fp32 else "tf32", BLOCK_N=_block(n, cap),
                BLOCK_M=_block(m, cap), BLOCK_D=triton.next_power_of_2(max(d, 16)),
                BLOCK_E=block_e, num_warps=8 if backward or block_e > 128 else 4)


def _block(length: int, cap: int) -> int:
    """cap, or the smallest tl.dot-legal power of two covering a shorter length."""
    return min(cap, triton.next_power_of_2(max(length, 16)))


@triton_op("fastgan::self_attention_core_fwd_triton", mutates_args=())
def self_attention_core_fwd_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                   scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(o [B, N, E] contiguous in q's dtype, lse [B, N] float32) of q [B, N, D], k [B, M, D],
    v [B, M, E] (any strides): o = softmax(scale q k^T) v, lse its row log-sum-exp."""
    b, n, m, d, e = _check(q, k, v, "self_attention_core_fwd_triton")
    o = torch.empty((b, n, e), dtype=q.dtype, device=q.device)
    lse = torch.empty((b, n), dtype=torch.float32, device=q.device)
    if b == 0:
        return o, lse
    meta = _meta(q, d, e, n, m, backward=False)
    n_qblocks = triton.cdiv(n, meta["BLOCK_N"])
    launch(_attention_fwd_kernel, b * n_qblocks,
           q, k, v, o, lse, n, m, d, e, n_qblocks, float(scale),
           *q.stride(), *k.stride(), *v.stride(), *o.stride(), *lse.stride(),
           INT64=needs_int64(q, k, v, o), **meta)
    return o, lse


@triton_op("fastgan::self_attention_core_bwd_triton", mutates_args=())
def self_attention_core_bwd_triton(
    grad_o: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
    lse: torch.Tensor, scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_q [B, N, D], grad_k [B, M, D], grad_v [B, M, E]), contiguous in q's dtype, from
    grad_o [B, N, E] and the forward's lse [B, N] float32 (any strides); o [B, N, E] is only
    checked."""
    op = "self_attention_core_bwd_triton"
    b, n, m, d, e = _check(q, k, v, op)
    for name, t in (("grad_o", grad_o), ("o", o)):
        if t.shape != (b, n, e) or t.dtype != q.dtype or t.device != q.device:
            raise ValueError(f"{op}: {name} must be [{b}, {n}, {e}] {q.dtype} on {q.device}, got "
                             f"{tuple(t.shape)} {t.dtype} on {t.device}")
    if lse.shape != (b, n) or lse.dtype != torch.float32 or lse.device != q.device:
        raise ValueError(f"{op}: lse must be [{b}, {n}] float32 on {q.device}, got "
                         f"{tuple(lse.shape)} {lse.dtype} on {lse.device}")
    grad_q = torch.empty((b, n, d), dtype=q.dtype, device=q.device)
    grad_k = torch.empty((b, m, d), dtype=q.dtype, device=q.device)
    grad_v = torch.empty((b, m, e), dtype=q.dtype, device=q.device)
    if b == 0:
        return grad_q, grad_k, grad_v
    delta = torch.empty((b, n), dtype=torch.float32, device=q.device)
    int64 = needs_int64(grad_o, q, k, v, lse)
    strides = (*q.stride(), *k.stride(), *v.stride())

    meta = _meta(q, d, e, n, m, backward=True)
    n_qblocks = triton.cdiv(n, meta["BLOCK_N"])
    launch(_attention_bwd_dq_kernel, b * n_qblocks,
           q, k, v, grad_o, lse, delta, grad_q, n, m, d, e, n_qblocks, float(scale),
           *strides, *grad_o.stride(), *lse.stride(), *grad_q.stride(),
           INT64=int64, **meta)

    n_kblocks = triton.cdiv(m, meta["BLOCK_M"])
    launch(_attention_bwd_dkdv_kernel, b * n_kblocks,
           q, k, v, grad_o, lse, delta, grad_k, grad_v, n, m, d, e, n_kblocks, float(scale),
           *strides, *grad_o.stride(), *lse.stride(), *grad_k.stride(),
           *grad_v.stride(), INT64=int64, **meta)
    return grad_q, grad_k, grad_v
