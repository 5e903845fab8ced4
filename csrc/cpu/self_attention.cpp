// CPU kernels of fastgan::self_attention_core_{fwd,bwd}. The contract:
// fastgan/ops/self_attention/README.md.
//
// Flash-style blocked attention whose block products are BLAS-class GEMMs and whose softmax
// loops are compiled for the machine's vector width.
//
// Inputs are first converted once to contiguous tensors in the accumulation dtype T, in the
// layouts the products read (q and grad_o also transposed, [B, D, N] and [B, E, N]; k
// transposed for the forward): O(B (N + M) (D + E)) extra memory, one pass over each input,
// and every product below is then C (+)= A B on row-major blocks with no packing of its own.
// The products of float blocks go to at::native::cpublas::brgemm (oneDNN's micro-kernel, or
// the BLAS sgemm torch was built with); float64 — the checking dtype — and torch builds without
// brgemm use gemm_acc, a plain loop nest. Nothing N x M is allocated: the largest buffers are
// a few score blocks per thread.
//
// The softmax loops (an exp per score) run at the CPU's x86-64 level (cpu::run_isa, cpu_isa.h): at
// baseline x86-64 they would run 4 floats at a time without FMA and cost as much as the products.
//
//   forward, a task per (batch, block of kFwdQ queries): for each block of kFwdK keys in order,
//     S = q K^T, the running row max m and sum l of scale S (online softmax),
//     O = O exp(m_old - m) + exp(scale S - m) V; then o = O / l and lse = m + log l.
//   backward, a task per (batch, key chunk): for each block of kBwdQ queries and each block of
//     kBwdK keys of the chunk, in the keys' orientation (so that no block is transposed):
//     S^T = K q^T, P^T = exp(scale S^T - lse), dP^T = V grad_o^T, dS^T = P^T (dP^T - delta)
//     with delta = rowsum(grad_o o); grad_v += P^T grad_o and grad_k += dS^T q for the chunk's
//     own keys, and the chunk's share of grad_q^T, K^T dS^T, into a buffer of its own. The
//     shares are summed in chunk order at the end.
// The partition into blocks and chunks is a function of the shape alone and every output element
// is summed in a fixed order, so the results are bitwise the same on every call and for any
// thread count. The chunk count grows as the batch shrinks, so that B * chunks tasks keep the
// threads busy also at batch 1 (each chunk costs one [B, D, N] share of grad_q).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <c10/util/bit_cast.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>
#include <vector>

#include "common/cpu_scalar.h"
#include "common/cpu_span.h"
#include "common/self_attention_checks.h"

namespace fastgan {
namespace self_attention {
namespace {

using cpu::divup;
using cpu::load_op;
using cpu::store_op;

// Blocks: the forward's score block (64 x 512 floats, 128 KiB) and the backward's two
// (128 x 128 each) stay in L2 next to the rows of the operands; the products' shapes are ones
// the micro-kernels run near their peak.
constexpr int64_t kFwdQ = 64;
constexpr int64_t kFwdK = 512;
constexpr int64_t kBwdQ = 128;
constexpr int64_t kBwdK = 128;
// Backward tasks: at least kMinTasks (batch, key chunk) pairs, at most kMaxChunks chunks per batch.
constexpr int64_t kMinTasks = 32;
constexpr int64_t kMaxChunks = 8;

// exp(x) for the softmax, branch-free so that its loops vectorize (std::exp is a libm call, one
// lane at a time). Cephes' expf: x = n ln2 + r, |r| <= ln2 / 2, exp(r) by a degree-7
// polynomial, within 1 ulp. x is clamped to the normal range: below it (scores far under the
// row max) the result is ~1e-38 instead of 0, nothing next to a row sum >= 1. The clamp is a bit
// select: gcc keeps std::min / std::max on floats as branches (it may not assume away NaN), and
// the loop would not vectorize.
inline float exp_softmax(float x) {
  x = cpu::select(x < -87.33654f, -87.33654f, x);
  x = cpu::select(x > 88.0f, 88.0f, x);
  // n = round(x / ln2) by the 1.5 * 2^23 trick: the sum's low mantissa bits are n.
  constexpr float kRound = 12582912.0f;
  const float shifted = x * 1.44269504088896341f + kRound;
  const int32_t n = c10::bit_cast<int32_t>(shifted) - c10::bit_cast<int32_t>(kRound);
  const float nf = shifted - kRound;
  float r = x - nf * 0.693359375f;
  r = r - nf * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return p * c10::bit_cast<float>((n + 127) << 23);
}

// float64 is the checking dtype: exact libm exp, speed secondary.
inline double exp_softmax(double x) { return std::exp(x); }

// ------------------------------------------------------------------------------ block products

// C = A B (accumulate: C += A B) for row-major A [m, k], B [k, n], C [m, n] with leading
// dimensions lda, ldb, ldc. The plain loop nest: float64, and float where torch has no brgemm.
// Four rows of C share each load of a row of B; the sum over k runs in order.
template <typename T>
void gemm_acc(int64_t m, int64_t n, int64_t k, const T* A, int64_t lda, const T* B, int64_t ldb,
              T* C, int64_t ldc, bool accumulate) {
  if (!accumulate) {
    for (int64_t r = 0; r < m; ++r) std::fill(C + r * ldc, C + r * ldc + n, T(0));
  }
  int64_t r = 0;
  for (; r + 4 <= m; r += 4) {
    T* __restrict c0 = C + r * ldc;
    T* __restrict c1 = c0 + ldc;
    T* __restrict c2 = c1 + ldc;
    T* __restrict c3 = c2 + ldc;
    const T* a = A + r * lda;
    for (int64_t kk = 0; kk < k; ++kk) {
      const T a0 = a[kk], a1 = a[lda + kk], a2 = a[2 * lda + kk], a3 = a[3 * lda + kk];
      const T* __restrict b = B + kk * ldb;
      for (int64_t c = 0; c < n; ++c) {
        c0[c] += a0 * b[c];
        c1[c] += a1 * b[c];
        c2[c] += a2 * b[c];
        c3[c] += a3 * b[c];
      }
    }
  }
  for (; r < m; ++r) {
    T* __restrict c0 = C + r * ldc;
    for (int64_t kk = 0; kk < k; ++kk) {
      const T a0 = A[r * lda + kk];
      const T* __restrict b = B + kk * ldb;
      for (int64_t c = 0; c < n; ++c) c0[c] += a0 * b[c];
    }
  }
}

template <typename T>
void gemm(int64_t m, int64_t n, int64_t k, const T* A, int64_t lda, const T* B, int64_t ldb, T* C,
          int64_t ldc, bool accumulate) {
  gemm_acc(m, n, k, A, lda, B, ldb, C, ldc, accumulate);
}

#ifdef CPUBLAS_BRGEMM_F32F32F32
template <>
void gemm<float>(int64_t m, int64_t n, int64_t k, const float* A, int64_t lda, const float* B,
                 int64_t ldb, float* C, int64_t ldc, bool accumulate) {
  at::native::cpublas::brgemm(m, n, k, lda, ldb, ldc, accumulate, A, B, C, /*is_vnni=*/false);
}
#endif

// --------------------------------------------------------------------- softmax (vector clones)

// max_j x[j] in 8 independent lanes, so that the compares do not wait on each other and
// vectorize (max is exact: the order does not change the result).
template <typename T>
inline T row_max(const T* x, int64_t n) {
  constexpr int kLanes = 8;
  T lane[kLanes];
  std::fill(lane, lane + kLanes, -std::numeric_limits<T>::infinity());
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) lane[l] = std::max(lane[l], x[j + l]);
  }
  for (; j < n; ++j) lane[0] = std::max(lane[0], x[j]);
  return *std::max_element(lane, lane + kLanes);
}

// sum_e a[e] b[e] in 8 lanes (then the tail, then the lanes in order).
template <typename T>
inline T dot(const T* __restrict a, const T* __restrict b, int64_t n) {
  constexpr int kLanes = 8;
  T lane[kLanes] = {};
  int64_t e = 0;
  for (; e + kLanes <= n; e += kLanes) {
    for (int l = 0; l < kLanes; ++l) lane[l] += a[e + l] * b[e + l];
  }
  T total = 0;
  for (; e < n; ++e) total += a[e] * b[e];
  for (int l = 0; l < kLanes; ++l) total += lane[l];
  return total;
}

// One block of an online softmax over the rows of S [rows, cols] (leading dimension ld), which
// holds raw products q k^T: with s = scale S and m_new = max(m, max_j s), S := exp(s - m_new),
// l := l alpha + sum_j S, alpha := exp(m - m_new) (0 on the first block, where m = -inf), m := m_new.
template <typename T>
void online_softmax_block(T* S, int64_t rows, int64_t cols, int64_t ld, T scale, T* m, T* l,
                          T* alpha) {
  for (int64_t r = 0; r < rows; ++r) {
    T* __restrict s = S + r * ld;
    for (int64_t j = 0; j < cols; ++j) s[j] *= scale;
    const T m_new = std::max(m[r], row_max(s, cols));
    for (int64_t j = 0; j < cols; ++j) s[j] = exp_softmax(s[j] - m_new);
    cpu::LaneSum<T> sum;
    sum.add(s, cols, [](T v) { return v; });
    alpha[r] = std::exp(m[r] - m_new);
    l[r] = l[r] * alpha[r] + sum.total();
    m[r] = m_new;
  }
}

// One transposed block of the backward: rows are keys, columns queries. St holds S^T (raw
// products k q^T), dPt holds dP^T; on return St = P^T = exp(scale S^T - lse) and
// dPt = dS^T = P^T (dP^T - delta), lse and delta running along the columns.
template <typename T>
void softmax_grad_block(T* St, T* dPt, int64_t rows, int64_t cols, int64_t ld, T scale,
                        const T* lse, const T* delta) {
  for (int64_t r = 0; r < rows; ++r) {
    T* __restrict p = St + r * ld;
    T* __restrict dp = dPt + r * ld;
    for (int64_t c = 0; c < cols; ++c) {
      p[c] = exp_softmax(p[c] * scale - lse[c]);
      dp[c] = p[c] * (dp[c] - delta[c]);
    }
  }
}

// O [rows, n] (leading dimension ld): row r times f[r].
template <typename T>
void scale_rows(T* O, int64_t rows, int64_t n, int64_t ld, const T* f) {
  for (int64_t r = 0; r < rows; ++r) {
    T* __restrict o = O + r * ld;
    const T a = f[r];
    for (int64_t e = 0; e < n; ++e) o[e] *= a;
  }
}

// out[t] = buf[t] * factor for n values, in the output dtype.
template <typename scalar_t, typename T>
void store_scaled(const T* __restrict buf, T factor, int64_t n, scalar_t* __restrict out) {
  for (int64_t t = 0; t < n; ++t) out[t] = store_op<scalar_t>(buf[t] * factor);
}

// t [B, L, F] of any strides and dtype as a contiguous tensor in dtype acc: [B, L, F], or
// [B, F, L] when transposed (t itself when it already is that).
at::Tensor packed(const at::Tensor& t, at::ScalarType acc, bool transposed) {
  const at::Tensor a = t.to(acc);
  return transposed ? a.transpose(1, 2).contiguous() : a.contiguous();
}

// ------------------------------------------------------------------------------------- forward

template <typename scalar_t>
void attention_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale_d,
                   at::Tensor& o, at::Tensor& lse) {
  using T = at::opmath_type<scalar_t>;
  const at::ScalarType acc = c10::CppTypeToScalarType<T>::value;
  const int64_t B = q.size(0), N = q.size(1), D = q.size(2), M = k.size(1), E = v.size(2);
  const at::Tensor qa = packed(q, acc, false), kt = packed(k, acc, true), va = packed(v, acc, false);
  const T* Q = qa.const_data_ptr<T>();   // [B, N, D]
  const T* Kt = kt.const_data_ptr<T>();  // [B, D, M]
  const T* V = va.const_data_ptr<T>();   // [B, M, E]
  const int64_t nqb = divup(N, kFwdQ);
  const T scale = static_cast<T>(scale_d);
  scalar_t* o_ptr = o.mutable_data_ptr<scalar_t>();
  T* lse_ptr = lse.mutable_data_ptr<T>();
  at::parallel_for(0, B * nqb, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> buf(kFwdQ * kFwdK + kFwdQ * E + 3 * kFwdQ);
    T* S = buf.data();
    T* O = S + kFwdQ * kFwdK;
    T *m = O + kFwdQ * E, *l = m + kFwdQ, *alpha = l + kFwdQ;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / nqb, i0 = (task % nqb) * kFwdQ;
      const int64_t nq = std::min(kFwdQ, N - i0);
      const T* Qb = Q + (b * N + i0) * D;
      std::fill(m, m + nq, -std::numeric_limits<T>::infinity());
      std::fill(l, l + nq, T(0));
      for (int64_t j0 = 0; j0 < M; j0 += kFwdK) {
        const int64_t nk = std::min(kFwdK, M - j0);
        gemm(nq, nk, D, Qb, D, Kt + b * D * M + j0, M, S, kFwdK, false);
        cpu::run_isa([&] { online_softmax_block(S, nq, nk, kFwdK, scale, m, l, alpha); });
        if (j0 > 0) scale_rows(O, nq, E, E, alpha);
        gemm(nq, E, nk, S, kFwdK, V + (b * M + j0) * E, E, O, E, j0 > 0);
      }
      for (int64_t i = 0; i < nq; ++i) {
        store_scaled(O + i * E, T(1) / l[i], E, o_ptr + (b * N + i0 + i) * E);
        lse_ptr[b * N + i0 + i] = m[i] + std::log(l[i]);
      }
    }
  });
}

// ------------------------------------------------------------------------------------ backward

// Keys per backward chunk (a multiple of kBwdK): about M / chunks for the chunk count that gives
// kMinTasks tasks, within [1, kMaxChunks]. A function of the shape alone.
int64_t bwd_chunk_keys(int64_t B, int64_t M) {
  const int64_t want = std::clamp<int64_t>(divup(kMinTasks, std::max<int64_t>(B, 1)), 1,
                                           kMaxChunks);
  return divup(divup(M, want), kBwdK) * kBwdK;
}

template <typename scalar_t>
void attention_bwd(const at::Tensor& grad_o, const at::Tensor& q, const at::Tensor& k,
                   const at::Tensor& v, const at::Tensor& o, const at::Tensor& lse, double scale_d,
                   at::Tensor& grad_q, at::Tensor& grad_k, at::Tensor& grad_v) {
  using T = at::opmath_type<scalar_t>;
  const at::ScalarType acc = c10::CppTypeToScalarType<T>::value;
  const int64_t B = q.size(0), N = q.size(1), D = q.size(2), M = k.size(1), E = v.size(2);
  const at::Tensor qa = packed(q, acc, false), qt = packed(q, acc, true);
  const at::Tensor ga = packed(grad_o, acc, false), gt = packed(grad_o, acc, true);
  const at::Tensor ka = packed(k, acc, false), kt = packed(k, acc, true), va = packed(v, acc, false);
  const at::Tensor lse_c = lse.contiguous();
  // delta_i = sum_e grad_o[i, e] o[i, e], [B, N], each a sum in a fixed order.
  at::Tensor delta = at::empty({B, N}, lse_c.options());
  {
    const at::Tensor oa = packed(o, acc, false);
    const T *g = ga.const_data_ptr<T>(), *op = oa.const_data_ptr<T>();
    T* dl = delta.mutable_data_ptr<T>();
    at::parallel_for(0, B * N, cpu::grain_for(E), [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const T* __restrict gr = g + row * E;
        const T* __restrict orow = op + row * E;
        dl[row] = dot(gr, orow, E);
      }
    });
  }
  const T *Q = qa.const_data_ptr<T>(), *Qt = qt.const_data_ptr<T>();    // [B, N, D], [B, D, N]
  const T *G = ga.const_data_ptr<T>(), *Gt = gt.const_data_ptr<T>();    // [B, N, E], [B, E, N]
  const T *K = ka.const_data_ptr<T>(), *Kt = kt.const_data_ptr<T>();    // [B, M, D], [B, D, M]
  const T* V = va.const_data_ptr<T>();                                   // [B, M, E]
  const T *L = lse_c.const_data_ptr<T>(), *Dl = delta.const_data_ptr<T>();  // [B, N]

  const int64_t kc = bwd_chunk_keys(B, M), nch = divup(M, kc);
  // Each chunk's share of grad_q^T (unscaled), [chunks, B, D, N]; summed into share 0 below.
  at::Tensor shares = at::empty({nch, B, D, N}, q.options().dtype(acc));
  T* share_ptr = shares.mutable_data_ptr<T>();
  const T scale = static_cast<T>(scale_d);
  scalar_t* gk = grad_k.mutable_data_ptr<scalar_t>();
  scalar_t* gv = grad_v.mutable_data_ptr<scalar_t>();

  at::parallel_for(0, B * nch, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> buf(2 * kBwdK * kBwdQ + kc * (D + E));
    T* St = buf.data();
    T* dPt = St + kBwdK * kBwdQ;
    T* dK = dPt + kBwdK * kBwdQ;  // [kc, D]
    T* dV = dK + kc * D;           // [kc, E]
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / nch, c = task % nch;
      const int64_t j0 = c * kc, j1 = std::min(M, j0 + kc);
      T* dQt = share_ptr + (c * B + b) * D * N;  // [D, N], leading dimension N
      for (int64_t i0 = 0; i0 < N; i0 += kBwdQ) {
        const int64_t nq = std::min(kBwdQ, N - i0);
        for (int64_t s0 = j0; s0 < j1; s0 += kBwdK) {
          const int64_t nk = std::min(kBwdK, j1 - s0);
          const T* Ks = K + (b * M + s0) * D;
          gemm(nk, nq, D, Ks, D, Qt + b * D * N + i0, N, St, kBwdQ, false);
          gemm(nk, nq, E, V + (b * M + s0) * E, E, Gt + b * E * N + i0, N, dPt, kBwdQ, false);
          cpu::run_isa([&] {
            softmax_grad_block(St, dPt, nk, nq, kBwdQ, scale, L + b * N + i0, Dl + b * N + i0);
          });
          const bool first_q = i0 == 0;
          gemm(nk, E, nq, St, kBwdQ, G + (b * N + i0) * E, E, dV + (s0 - j0) * E, E, !first_q);
          gemm(nk, D, nq, dPt, kBwdQ, Q + (b * N + i0) * D, D, dK + (s0 - j0) * D, D, !first_q);
          // grad_q^T [D, nq] += K^T [D, nk] dS^T [nk, nq].
          gemm(D, nq, nk, Kt + b * D * M + s0, M, dPt, kBwdQ, dQt + i0, N, s0 > j0);
        }
      }
      store_scaled(dK, scale, (j1 - j0) * D, gk + (b * M + j0) * D);
      store_scaled(dV, T(1), (j1 - j0) * E, gv + (b * M + j0) * E);
    }
  });

  // grad_q = scale * sum over chunks of the shares, in chunk order, transposed back.
  if (nch > 1) {
    at::parallel_for(0, B * D, 1, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        T* __restrict total = share_ptr + row * N;
        for (int64_t c = 1; c < nch; ++c) {
          const T* __restrict part = share_ptr + (c * B * D + row) * N;
          for (int64_t i = 0; i < N; ++i) total[i] += part[i];
        }
      }
    });
  }
  grad_q.copy_(shares[0].mul_(scale).transpose(1, 2));
}

std::tuple<at::Tensor, at::Tensor> self_attention_core_fwd_cpu(const at::Tensor& q,
                                                               const at::Tensor& k,
                                                               const at::Tensor& v, double scale) {
  check_attention_inputs(q, k, v);
  const int64_t B = q.size(0), N = q.size(1), E = v.size(2);
  at::Tensor o = at::empty({B, N, E}, q.options());
  at::Tensor lse = at::empty({B, N}, q.options().dtype(attention_acc_type(q.scalar_type())));
  if (B == 0) return {o, lse};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(),
                                  "self_attention_core_fwd",
                                  [&] { attention_fwd<scalar_t>(q, k, v, scale, o, lse); });
  return {o, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> self_attention_core_bwd_cpu(
    const at::Tensor& grad_o, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& o, const at::Tensor& lse, double scale) {
  check_attention_inputs(q, k, v);
  check_attention_bwd_inputs(grad_o, q, v, o, lse);
  at::Tensor grad_q = at::empty(q.sizes(), q.options());
  at::Tensor grad_k = at::empty(k.sizes(), k.options());
  at::Tensor grad_v = at::empty(v.sizes(), v.options());
  if (q.size(0) == 0) return {grad_q, grad_k, grad_v};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(),
                                  "self_attention_core_bwd", [&] {
                                    attention_bwd<scalar_t>(grad_o, q, k, v, o, lse, scale, grad_q,
                                                            grad_k, grad_v);
                                  });
  return {grad_q, grad_k, grad_v};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, CPU, m) {
  m.impl("self_attention_core_fwd", &self_attention_core_fwd_cpu);
  m.impl("self_attention_core_bwd", &self_attention_core_bwd_cpu);
}

}  // namespace self_attention
}  // namespace fastgan
