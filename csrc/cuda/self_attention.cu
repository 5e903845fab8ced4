// CUDA kernels of fastgan::self_attention_core_{fwd,bwd} (contract:
// fastgan/ops/self_attention/README.md), flash-attention style: the [N, M] scores exist only as
// kBlock x kBlock tiles in shared memory.
//
//   forward  one block per (batch, query tile): Q stays in shared memory, K and V tiles stream
//            past it; an online softmax (running max m and sum l per row, base 2) rescales the
//            fp32 accumulator O, so o = O / l and lse = ln 2 (m + log2 l) come out at the end.
//   backward delta_i = grad_o_i . o_i (one warp per row); then dK / dV, one block per (batch,
//            key tile) looping over the query tiles, and dQ, one block per (batch, query tile)
//            looping over the key tiles. Each output element is summed by one block in a fixed
//            order: bitwise reproducible, no atomics.
//
// Every tile is loaded through the caller's strides (vector loads when the last stride is 1 and
// the alignment allows) and zero-padded to whole 16 x 16 tiles, so D and E need no padding by the
// caller; padded keys are masked out of the softmax, padded queries are never stored.
// Products: fp16 / bf16 on tensor cores (WMMA 16x16x16, fp32 accumulators); fp32 with plain FMAs
// (no TF32, so fp32 matches the reference to ~1e-5). The probabilities P and dS are fp32; for
// the tensor cores each is split into hi + lo parts in the 16-bit type and both are multiplied,
// so the products keep ~fp32 accuracy (the reference accumulates in fp32 and rounds only o).
// Accumulators (O, dK, dV, dQ) live in shared memory, which lets one kernel serve D, E <= 256;
// the tile size (64, 32 or 16 rows) is the largest whose shared memory fits the device.
#include <mma.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "self_attention.cuh"
#include "utils.cuh"

namespace fastgan {
namespace cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxDim = 256;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// 16-bit inputs go through the tensor cores, with P and dS split into two 16-bit parts.
template <typename T>
constexpr bool kSplit = !std::is_same_v<T, float>;
// Rows of 16-bit / fp32 tiles are padded by 16 bytes: WMMA still finds 32-byte aligned 16 x 16
// tiles, and consecutive rows start in different shared-memory banks.
template <typename T>
constexpr int kPad = 16 / static_cast<int>(sizeof(T));

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

struct Params {
  AttentionInputs a;
  AttentionGradInputs g;  // backward only
  int dp, ep;             // d and e rounded up to 16: the padded tile widths
  float scale2;           // scale * log2(e): scores in base 2 for exp2f
  float* delta;
  void* out0;  // forward: o; backward: grad_q
  void* out1;  // grad_k
  void* out2;  // grad_v
  float* out_lse;
};

enum Kind { kFwd, kDkDv, kDq };

// Byte offsets of a kernel's shared-memory buffers (128-byte aligned), the same on the host,
// which sizes the launch, and on the device.
struct Smem {
  size_t q, k, v, go, s, dpr, p_hi, p_lo, ds_hi, ds_lo, acc0, acc1, lse, delta, total;
};

template <typename T>
__host__ __device__ Smem plan_smem(Kind kind, int block, int dp, int ep) {
  Smem s{};
  size_t used = 0;
  auto take = [&used](size_t bytes) {
    const size_t at = used;
    used += (bytes + 127) / 128 * 128;
    return at;
  };
  const size_t in_d = size_t(block) * (dp + kPad<T>) * sizeof(T);
  const size_t in_e = size_t(block) * (ep + kPad<T>) * sizeof(T);
  const size_t scores = size_t(block) * (block + 4) * sizeof(float);
  const size_t split = kSplit<T> ? size_t(block) * (block + kPad<T>) * sizeof(T) : 0;
  const size_t rows = size_t(block) * sizeof(float);
  s.q = take(in_d);
  s.k = take(in_d);
  s.v = take(in_e);
  s.s = take(scores);
  if (kind != kFwd) {
    s.go = take(in_e);
    s.dpr = take(scores);
    s.ds_hi = take(split);
    s.ds_lo = take(split);
    s.lse = take(rows);
    s.delta = take(rows);
  }
  if (kind != kDq) {
    s.p_hi = take(split);
    s.p_lo = take(split);
  }
  // forward: O [block, ep]; dK / dV: dV [block, ep] and dK [block, dp]; dQ: dQ [block, dp].
  s.acc0 = take(size_t(block) * ((kind == kDq ? dp : ep) + 4) * sizeof(float));
  if (kind == kDkDv) s.acc1 = take(size_t(block) * (dp + 4) * sizeof(float));
  if (kind == kFwd) s.lse = take(rows);  // l of each row
  s.total = used;
  return s;
}

__device__ __forceinline__ unsigned char* shared_base() {
  extern __shared__ __align__(128) unsigned char shared_raw[];
  return shared_raw;
}

template <typename T>
__device__ __forceinline__ T* at_offset(size_t offset) {
  return reinterpret_cast<T*>(shared_base() + offset);
}

// dst[r * ld + c] = x[b, r0 + r, c] for r < rows, c < cols, zero elsewhere in the
// tile_rows x cols_pad tile; x[b, i, c] is base[b * st[0] + i * st[1] + c * st[2]].
template <typename T>
__device__ void load_tile(T* dst, int ld, int tile_rows, int cols_pad, const void* base,
                          const int64_t (&st)[3], int64_t b, int64_t r0, int rows, int64_t width) {
  const T* src = static_cast<const T*>(base) + b * st[0] + r0 * st[1];
  const int64_t rs = st[1], cs = st[2];
  const int cols = static_cast<int>(width);
  constexpr int V = 16 / static_cast<int>(sizeof(T));
  if (cs == 1 && cols % V == 0 && rs % V == 0 && reinterpret_cast<uintptr_t>(src) % 16 == 0) {
    // cols and cols_pad are multiples of V, so a vector is wholly inside or outside the data.
    const int per_row = cols_pad / V;
    for (int e = threadIdx.x; e < tile_rows * per_row; e += kThreads) {
      const int r = e / per_row, c = e % per_row * V;
      Vec<T, V> x;
      if (r < rows && c < cols) {
        x = *reinterpret_cast<const Vec<T, V>*>(src + r * rs + c);
      } else {
#pragma unroll
        for (int i = 0; i < V; ++i) x.v[i] = from_acc<T>(0.f);
      }
      *reinterpret_cast<Vec<T, V>*>(dst + r * ld + c) = x;
    }
    return;
  }
  // A transposed view (q of a [B, D, H, W] conv output) walks down the columns, which keeps
  // the global reads of a warp consecutive.
  const bool by_col = rs == 1 && cs != 1;
  for (int e = threadIdx.x; e < tile_rows * cols_pad; e += kThreads) {
    const int r = by_col ? e % tile_rows : e / cols_pad;
    const int c = by_col ? e / tile_rows : e % cols_pad;
    dst[r * ld + c] = r < rows && c < cols ? src[r * rs + c * cs] : from_acc<T>(0.f);
  }
}

template <typename T>
__device__ void zero(T* p, int count) {
  for (int i = threadIdx.x; i < count; i += kThreads) p[i] = T(0);
}

// c (+)= A B (+ A2 B) for rows x cols outputs, all multiples of 16. A is rows x depth, (r, k) at
// a[r * lda + k], or a[k * lda + r] when kAT; B is depth x cols, (k, n) at b[k * ldb + n], or
// b[n * ldb + k] when kBT. a2 (or nullptr) is the low part of a split A. Each output is summed
// over k in a fixed order by one thread (FMA) or one warp (WMMA).
template <bool kAT, bool kBT, bool kAcc, typename T>
__device__ void tile_mm_fma(const T* a, const T* a2, int lda, const T* b, int ldb, float* c,
                            int ldc, int rows, int cols, int depth) {
  const int tiles_c = cols / 4, tiles = rows / 4 * tiles_c;
  for (int t = threadIdx.x; t < tiles; t += kThreads) {
    const int r0 = t / tiles_c * 4, c0 = t % tiles_c * 4;
    float* out = c + r0 * ldc + c0;  // acc[i][j] is out[i * ldc + j]
    float acc[4][4];
#pragma unroll
    for (int ij = 0; ij < 16; ++ij) acc[ij / 4][ij % 4] = kAcc ? out[ij / 4 * ldc + ij % 4] : 0.f;
    for (int half = 0; half < 2; ++half) {
      const T* part = half == 0 ? a : a2;
      if (part == nullptr) continue;
      for (int k = 0; k < depth; ++k) {
        float x[4], y[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          x[i] = to_acc(kAT ? part[k * lda + r0 + i] : part[(r0 + i) * lda + k]);
          y[i] = to_acc(kBT ? b[(c0 + i) * ldb + k] : b[k * ldb + c0 + i]);
        }
#pragma unroll
        for (int ij = 0; ij < 16; ++ij)
          acc[ij / 4][ij % 4] = fmaf(x[ij / 4], y[ij % 4], acc[ij / 4][ij % 4]);
      }
    }
#pragma unroll
    for (int ij = 0; ij < 16; ++ij) out[ij / 4 * ldc + ij % 4] = acc[ij / 4][ij % 4];
  }
}

template <bool kAT, bool kBT, bool kAcc, typename T>
__device__ void tile_mm(const T* a, const T* a2, int lda, const T* b, int ldb, float* c, int ldc,
                        int rows, int cols, int depth) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  constexpr bool kTensorCores = false;  // no bf16 WMMA before sm_80
#else
  constexpr bool kTensorCores = kSplit<T>;
#endif
  if constexpr (!kTensorCores) {
    tile_mm_fma<kAT, kBT, kAcc>(a, a2, lda, b, ldb, c, ldc, rows, cols, depth);
  } else {
    using namespace nvcuda;
    using ALayout = std::conditional_t<kAT, wmma::col_major, wmma::row_major>;
    using BLayout = std::conditional_t<kBT, wmma::col_major, wmma::row_major>;
    const int tiles_c = cols / 16, tiles = rows / 16 * tiles_c;
    for (int t = threadIdx.x / 32; t < tiles; t += kWarps) {
      const int r0 = t / tiles_c * 16, c0 = t % tiles_c * 16;
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      if constexpr (kAcc) wmma::load_matrix_sync(acc, c + r0 * ldc + c0, ldc, wmma::mem_row_major);
      else wmma::fill_fragment(acc, 0.f);
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, ALayout> fa;
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, BLayout> fb;
      for (int k0 = 0; k0 < depth; k0 += 16) {
        wmma::load_matrix_sync(fb, kBT ? b + c0 * ldb + k0 : b + k0 * ldb + c0, ldb);
        const int a_at = kAT ? k0 * lda + r0 : r0 * lda + k0;
        wmma::load_matrix_sync(fa, a + a_at, lda);
        wmma::mma_sync(acc, fa, fb, acc);
        if (a2 != nullptr) {
          wmma::load_matrix_sync(fa, a2 + a_at, lda);
          wmma::mma_sync(acc, fa, fb, acc);
        }
      }
      wmma::store_matrix_sync(c + r0 * ldc + c0, acc, ldc, wmma::mem_row_major);
    }
  }
}

// An fp32 operand of a product: itself for fp32, hi + lo in the 16-bit type otherwise.
template <typename T>
__device__ __forceinline__ void put_operand(T* hi, T* lo, int at, float x) {
  if constexpr (kSplit<T>) {
    const T h = from_acc<T>(x);
    hi[at] = h;
    lo[at] = from_acc<T>(x - to_acc(h));
  } else {
    hi[at] = x;
  }
}

// Reductions over the G consecutive lanes that share a row, in a fixed butterfly order.
template <int G>
__device__ __forceinline__ float group_max(float x) {
  for (int off = G / 2; off > 0; off /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, off));
  return x;
}

template <int G>
__device__ __forceinline__ float group_sum(float x) {
  for (int off = G / 2; off > 0; off /= 2) x += __shfl_xor_sync(0xffffffffu, x, off);
  return x;
}

// Block (b, tile) of a launch over batch x ceil(len / kBlock) tiles, and the tile's length.
template <int kBlock>
__device__ __forceinline__ void tile_of(int64_t len, int64_t* b, int64_t* start, int* count) {
  const int64_t tiles = (len + kBlock - 1) / kBlock;
  *b = blockIdx.x / tiles;
  *start = blockIdx.x % tiles * kBlock;
  *count = static_cast<int>(len - *start < kBlock ? len - *start : kBlock);
}

// The query-side tiles of the backward: q, grad_o, lse (base 2) and delta of rows i0 ... i0 + rows.
template <typename T, int kBlock>
__device__ void load_query_side(const Params& p, const Smem& L, int64_t b, int64_t i0, int rows) {
  const int ldd = p.dp + kPad<T>, lde = p.ep + kPad<T>;
  load_tile<T>(at_offset<T>(L.q), ldd, kBlock, p.dp, p.a.q, p.a.q_strides, b, i0, rows, p.a.d);
  load_tile<T>(at_offset<T>(L.go), lde, kBlock, p.ep, p.g.grad_o, p.g.grad_o_strides, b, i0, rows,
               p.a.e);
  float* lse = at_offset<float>(L.lse);
  float* delta = at_offset<float>(L.delta);
  for (int r = threadIdx.x; r < kBlock; r += kThreads) {
    const int64_t at = b * p.g.lse_strides[0] + (i0 + r) * p.g.lse_strides[1];
    lse[r] = r < rows ? p.g.lse[at] * kLog2e : 0.f;
    delta[r] = r < rows ? p.delta[b * p.a.n + i0 + r] : 0.f;
  }
}

// The key-side tiles: k and v of keys j0 ... j0 + cols.
template <typename T, int kBlock>
__device__ void load_key_side(const Params& p, const Smem& L, int64_t b, int64_t j0, int cols) {
  load_tile<T>(at_offset<T>(L.k), p.dp + kPad<T>, kBlock, p.dp, p.a.k, p.a.k_strides, b, j0, cols,
               p.a.d);
  load_tile<T>(at_offset<T>(L.v), p.ep + kPad<T>, kBlock, p.ep, p.a.v, p.a.v_strides, b, j0, cols,
               p.a.e);
}

template <typename T, int kBlock>
__global__ void __launch_bounds__(kThreads) attention_fwd_kernel(const Params p) {
  constexpr int G = kThreads / kBlock, ldp = kBlock + kPad<T>, lds = kBlock + 4;
  const Smem L = plan_smem<T>(kFwd, kBlock, p.dp, p.ep);
  const int ldd = p.dp + kPad<T>, lde = p.ep + kPad<T>, ldo = p.ep + 4;
  T* q_s = at_offset<T>(L.q);
  T* k_s = at_offset<T>(L.k);
  T* v_s = at_offset<T>(L.v);
  float* s = at_offset<float>(L.s);
  // fp32: P overwrites the scores in place (the same row stride, kPad<float> == 4).
  T* p_hi = kSplit<T> ? at_offset<T>(L.p_hi) : reinterpret_cast<T*>(s);
  T* p_lo = kSplit<T> ? at_offset<T>(L.p_lo) : nullptr;
  float* acc = at_offset<float>(L.acc0);
  float* row_l = at_offset<float>(L.lse);
  int64_t b, i0;
  int rows;
  tile_of<kBlock>(p.a.n, &b, &i0, &rows);
  load_tile<T>(q_s, ldd, kBlock, p.dp, p.a.q, p.a.q_strides, b, i0, rows, p.a.d);
  zero(acc, kBlock * ldo);
  const int r = threadIdx.x / G, sub = threadIdx.x % G;
  float m = -INFINITY, l = 0.f;  // running max (base 2) and sum of this thread's row
  for (int64_t j0 = 0; j0 < p.a.m; j0 += kBlock) {
    const int cols = static_cast<int>(p.a.m - j0 < kBlock ? p.a.m - j0 : kBlock);
    __syncthreads();  // the previous step is done with k_s, v_s and P
    load_key_side<T, kBlock>(p, L, b, j0, cols);
    __syncthreads();
    tile_mm<false, true, false>(q_s, static_cast<const T*>(nullptr), ldd, k_s, ldd, s, lds,
                                kBlock, kBlock, p.dp);
    __syncthreads();
    float mx = -INFINITY;
    for (int c = sub; c < cols; c += G) mx = fmaxf(mx, s[r * lds + c] * p.scale2);
    const float m_new = fmaxf(m, group_max<G>(mx));
    const float alpha = exp2f(m - m_new);  // 0 on the first tile, where m = -inf
    float sum = 0.f;
    for (int c = sub; c < kBlock; c += G) {
      const float x = c < cols ? exp2f(s[r * lds + c] * p.scale2 - m_new) : 0.f;
      sum += x;
      put_operand(p_hi, p_lo, r * ldp + c, x);
    }
    l = l * alpha + group_sum<G>(sum);
    m = m_new;
    for (int c = sub; c < p.ep; c += G) acc[r * ldo + c] *= alpha;
    __syncthreads();
    tile_mm<false, false, true>(p_hi, p_lo, ldp, v_s, lde, acc, ldo, kBlock, p.ep, kBlock);
  }
  if (sub == 0) {
    row_l[r] = l;
    if (r < rows) p.out_lse[b * p.a.n + i0 + r] = (m + log2f(l)) * kLn2;
  }
  __syncthreads();
  T* o = static_cast<T*>(p.out0) + (b * p.a.n + i0) * p.a.e;
  const int e = static_cast<int>(p.a.e);
  for (int idx = threadIdx.x; idx < rows * e; idx += kThreads) {
    const int rr = idx / e, c = idx % e;
    o[idx] = from_acc<T>(acc[rr * ldo + c] / row_l[rr]);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) attention_delta_kernel(const Params p) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (row >= p.a.batch * p.a.n) return;  // whole warps
  const int64_t b = row / p.a.n, i = row % p.a.n;
  const T* go =
      static_cast<const T*>(p.g.grad_o) + b * p.g.grad_o_strides[0] + i * p.g.grad_o_strides[1];
  const T* o = static_cast<const T*>(p.g.o) + b * p.g.o_strides[0] + i * p.g.o_strides[1];
  float sum = 0.f;
  for (int64_t c = threadIdx.x % 32; c < p.a.e; c += 32)
    sum = fmaf(to_acc(go[c * p.g.grad_o_strides[2]]), to_acc(o[c * p.g.o_strides[2]]), sum);
  for (int off = 16; off > 0; off /= 2) sum += __shfl_down_sync(0xffffffffu, sum, off);
  if (threadIdx.x % 32 == 0) p.delta[row] = sum;
}

// With both sides loaded: S = Q K^T and dP = dO V^T, then P = exp(S - lse) (when want_p) and
// dS = P (dP - delta) as product operands; zero outside the rows x cols of real data.
template <typename T, int kBlock>
__device__ void probs_and_grads(const Params& p, const Smem& L, int rows, int cols, bool want_p) {
  constexpr int ldp = kBlock + kPad<T>, lds = kBlock + 4;
  const int ldd = p.dp + kPad<T>, lde = p.ep + kPad<T>;
  float* s = at_offset<float>(L.s);
  float* dpr = at_offset<float>(L.dpr);
  const T* none = nullptr;
  tile_mm<false, true, false>(at_offset<T>(L.q), none, ldd, at_offset<T>(L.k), ldd, s, lds,
                              kBlock, kBlock, p.dp);
  tile_mm<false, true, false>(at_offset<T>(L.go), none, lde, at_offset<T>(L.v), lde, dpr, lds,
                              kBlock, kBlock, p.ep);
  __syncthreads();
  T* p_hi = kSplit<T> ? at_offset<T>(L.p_hi) : reinterpret_cast<T*>(s);
  T* p_lo = kSplit<T> ? at_offset<T>(L.p_lo) : nullptr;
  T* ds_hi = kSplit<T> ? at_offset<T>(L.ds_hi) : reinterpret_cast<T*>(dpr);
  T* ds_lo = kSplit<T> ? at_offset<T>(L.ds_lo) : nullptr;
  const float* lse = at_offset<float>(L.lse);
  const float* delta = at_offset<float>(L.delta);
  for (int idx = threadIdx.x; idx < kBlock * kBlock; idx += kThreads) {
    const int r = idx / kBlock, c = idx % kBlock;
    // Masked rather than left to the zero padding to cancel: P and dS are exactly 0 off the data.
    const float pr = r < rows && c < cols ? exp2f(s[r * lds + c] * p.scale2 - lse[r]) : 0.f;
    const float ds = pr * (dpr[r * lds + c] - delta[r]);
    if (want_p) put_operand(p_hi, p_lo, r * ldp + c, pr);
    put_operand(ds_hi, ds_lo, r * ldp + c, ds);
  }
  __syncthreads();
}

// out[r * width + c] = scale * acc[r * ld + c], r < rows, c < width: a contiguous row block.
template <typename T>
__device__ void store_rows(T* out, const float* acc, int ld, int rows, int width, float scale) {
  for (int idx = threadIdx.x; idx < rows * width; idx += kThreads)
    out[idx] = from_acc<T>(scale * acc[idx / width * ld + idx % width]);
}

template <typename T, int kBlock>
__global__ void __launch_bounds__(kThreads) attention_dkdv_kernel(const Params p) {
  constexpr int ldp = kBlock + kPad<T>;
  const Smem L = plan_smem<T>(kDkDv, kBlock, p.dp, p.ep);
  const int ldd = p.dp + kPad<T>, lde = p.ep + kPad<T>, ldv = p.ep + 4, ldk = p.dp + 4;
  float* dv = at_offset<float>(L.acc0);
  float* dk = at_offset<float>(L.acc1);
  int64_t b, j0;
  int cols;
  tile_of<kBlock>(p.a.m, &b, &j0, &cols);
  load_key_side<T, kBlock>(p, L, b, j0, cols);
  zero(dv, kBlock * ldv);
  zero(dk, kBlock * ldk);
  const T* p_hi = kSplit<T> ? at_offset<T>(L.p_hi) : at_offset<T>(L.s);
  const T* p_lo = kSplit<T> ? at_offset<T>(L.p_lo) : nullptr;
  const T* ds_hi = kSplit<T> ? at_offset<T>(L.ds_hi) : at_offset<T>(L.dpr);
  const T* ds_lo = kSplit<T> ? at_offset<T>(L.ds_lo) : nullptr;
  for (int64_t i0 = 0; i0 < p.a.n; i0 += kBlock) {
    const int rows = static_cast<int>(p.a.n - i0 < kBlock ? p.a.n - i0 : kBlock);
    __syncthreads();  // the previous step is done with the query side
    load_query_side<T, kBlock>(p, L, b, i0, rows);
    __syncthreads();
    probs_and_grads<T, kBlock>(p, L, rows, cols, true);
    // dV += P^T dO, dK += dS^T Q: key rows, summed over this tile's queries.
    tile_mm<true, false, true>(p_hi, p_lo, ldp, at_offset<T>(L.go), lde, dv, ldv, kBlock, p.ep,
                               kBlock);
    tile_mm<true, false, true>(ds_hi, ds_lo, ldp, at_offset<T>(L.q), ldd, dk, ldk, kBlock, p.dp,
                               kBlock);
  }
  __syncthreads();
  store_rows(static_cast<T*>(p.out1) + (b * p.a.m + j0) * p.a.d, dk, ldk, cols,
             static_cast<int>(p.a.d), p.a.scale);
  store_rows(static_cast<T*>(p.out2) + (b * p.a.m + j0) * p.a.e, dv, ldv, cols,
             static_cast<int>(p.a.e), 1.f);
}

template <typename T, int kBlock>
__global__ void __launch_bounds__(kThreads) attention_dq_kernel(const Params p) {
  constexpr int ldp = kBlock + kPad<T>;
  const Smem L = plan_smem<T>(kDq, kBlock, p.dp, p.ep);
  const int ldd = p.dp + kPad<T>, ldq = p.dp + 4;
  float* dq = at_offset<float>(L.acc0);
  int64_t b, i0;
  int rows;
  tile_of<kBlock>(p.a.n, &b, &i0, &rows);
  load_query_side<T, kBlock>(p, L, b, i0, rows);
  zero(dq, kBlock * ldq);
  const T* ds_hi = kSplit<T> ? at_offset<T>(L.ds_hi) : at_offset<T>(L.dpr);
  const T* ds_lo = kSplit<T> ? at_offset<T>(L.ds_lo) : nullptr;
  for (int64_t j0 = 0; j0 < p.a.m; j0 += kBlock) {
    const int cols = static_cast<int>(p.a.m - j0 < kBlock ? p.a.m - j0 : kBlock);
    __syncthreads();  // the previous step is done with the key side
    load_key_side<T, kBlock>(p, L, b, j0, cols);
    __syncthreads();
    probs_and_grads<T, kBlock>(p, L, rows, cols, false);
    tile_mm<false, false, true>(ds_hi, ds_lo, ldp, at_offset<T>(L.k), ldd, dq, ldq, kBlock, p.dp,
                                kBlock);
  }
  __syncthreads();
  store_rows(static_cast<T*>(p.out0) + (b * p.a.n + i0) * p.a.d, dq, ldq, rows,
             static_cast<int>(p.a.d), p.a.scale);
}

// f(std::integral_constant<int, kBlock>, shared bytes) with the largest tile whose shared memory
// fits the current device.
template <typename T, typename F>
cudaError_t with_block(Kind kind, const Params& p, F&& f) {
  int device = 0, limit = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess)
    err = cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (err != cudaSuccess) return err;
  const auto bytes = [&](int block) { return plan_smem<T>(kind, block, p.dp, p.ep).total; };
  const auto fits = [&](int block) { return bytes(block) <= static_cast<size_t>(limit); };
  if (fits(64)) return f(std::integral_constant<int, 64>{}, bytes(64));
  if (fits(32)) return f(std::integral_constant<int, 32>{}, bytes(32));
  if (fits(16)) return f(std::integral_constant<int, 16>{}, bytes(16));
  return cudaErrorInvalidConfiguration;
}

cudaError_t launch(void (*kernel)(Params), int64_t blocks, size_t bytes, cudaStream_t stream,
                   const Params& p) {
  if (blocks > INT32_MAX) return cudaErrorInvalidConfiguration;
  const cudaError_t err = cudaFuncSetAttribute(
      kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  if (err != cudaSuccess) return err;
  kernel<<<dim3(static_cast<unsigned>(blocks)), dim3(kThreads), bytes, stream>>>(p);
  return cudaGetLastError();
}

bool supported(const AttentionInputs& in) {
  return in.dtype != DType::kFloat64 && in.batch >= 0 && in.n >= 1 && in.m >= 1 && in.d >= 1 &&
         in.e >= 1 && in.d <= kMaxDim && in.e <= kMaxDim;
}

Params make_params(const AttentionInputs& in) {
  Params p{};
  p.a = in;
  p.dp = static_cast<int>(ceil_div(in.d, 16) * 16);
  p.ep = static_cast<int>(ceil_div(in.e, 16) * 16);
  p.scale2 = in.scale * kLog2e;
  return p;
}

// f(TypeTag<T>) for the dtypes these kernels take.
template <typename F>
cudaError_t dispatch_16_32(DType dtype, F&& f) {
  return dispatch_dtype(dtype, [&](auto tag) -> cudaError_t {
    using T = typename decltype(tag)::type;
    if constexpr (std::is_same_v<T, double>) return cudaErrorInvalidValue;
    else return f(tag);
  });
}

}  // namespace

cudaError_t self_attention_core_fwd(const AttentionInputs& in, void* o, float* lse,
                                    cudaStream_t stream) {
  if (!supported(in)) return cudaErrorInvalidValue;
  if (in.batch == 0) return cudaSuccess;
  Params p = make_params(in);
  p.out0 = o;
  p.out_lse = lse;
  return dispatch_16_32(in.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    return with_block<T>(kFwd, p, [&](auto block, size_t bytes) {
      constexpr int kBlock = decltype(block)::value;
      return launch(attention_fwd_kernel<T, kBlock>, p.a.batch * ceil_div(p.a.n, kBlock), bytes,
                    stream, p);
    });
  });
}

cudaError_t self_attention_core_bwd(const AttentionInputs& in, const AttentionGradInputs& g,
                                    float* delta, void* grad_q, void* grad_k, void* grad_v,
                                    cudaStream_t stream) {
  if (!supported(in)) return cudaErrorInvalidValue;
  if (in.batch == 0) return cudaSuccess;
  Params p = make_params(in);
  p.g = g;
  p.delta = delta;
  p.out0 = grad_q;
  p.out1 = grad_k;
  p.out2 = grad_v;
  return dispatch_16_32(in.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    cudaError_t err = launch(attention_delta_kernel<T>, ceil_div(p.a.batch * p.a.n, kWarps), 0,
                             stream, p);
    if (err != cudaSuccess) return err;
    err = with_block<T>(kDkDv, p, [&](auto block, size_t bytes) {
      constexpr int kBlock = decltype(block)::value;
      return launch(attention_dkdv_kernel<T, kBlock>, p.a.batch * ceil_div(p.a.m, kBlock), bytes,
                    stream, p);
    });
    if (err != cudaSuccess) return err;
    return with_block<T>(kDq, p, [&](auto block, size_t bytes) {
      constexpr int kBlock = decltype(block)::value;
      return launch(attention_dq_kernel<T, kBlock>, p.a.batch * ceil_div(p.a.n, kBlock), bytes,
                    stream, p);
    });
  });
}

}  // namespace cuda
}  // namespace fastgan
