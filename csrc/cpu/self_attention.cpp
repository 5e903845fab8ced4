// CPU kernels of fastgan::self_attention_core_{fwd,bwd}. The contract:
// fastgan/ops/self_attention/README.md.
//
// Flash-style blocked attention. Queries are cut into blocks of kBlockQ and keys into blocks of
// kBlockK, a partition fixed by the shape alone. A block of q, k, v, grad_o is first gathered
// (any strides, any dtype) into a small contiguous buffer in the accumulation dtype T, laid out so
// that every product below is C += A B with B's rows and C's rows contiguous (gemm_acc): the inner
// loop is then a unit-stride axpy of at least one block length that gcc vectorizes. The gather
// costs one pass over a block per use, 1 / kBlockQ of the arithmetic. Per-thread buffers hold a
// few blocks; nothing N x M is allocated.
//
//   forward, a task per (batch, query block): for each key block in order, S = scale Q K^T, the
//     running row max m and sum l (online softmax), O = O * exp(m_old - m) + exp(S - m) V;
//     then o = O / l and lse = m + log l.
//   backward pass 1, a task per (batch, query block): delta = rowsum(grad_o * o) (stored for
//     pass 2), and for each key block P = exp(S - lse), dS = P (grad_o V^T - delta),
//     grad_q += scale dS K.
//   backward pass 2, a task per (batch, key block): for each query block the same P^T and dS^T
//     (S^T = K Q^T sums over d in the same order as S, so P is bitwise the same as in pass 1),
//     grad_v += P^T grad_o, grad_k += scale dS^T q.
// Every output element is written by one task and summed in a fixed order, so the results are
// bitwise the same on every call and for any thread count.
//
// Loops are plain C++ shaped for gcc's auto-vectorizer, as in the other CPU kernels (cpu_scalar.h).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/util/bit_cast.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
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

// 64 x 64 scores (16 KiB in float) plus the packed blocks stay in L2 for D, E up to a few hundred;
// 64 is also long enough for the vectorized inner loops to amortise their epilogue.
constexpr int64_t kBlockQ = 64;
constexpr int64_t kBlockK = 64;

// exp(x) for the softmax, branch-free so that its loops vectorize (std::exp is a libm call, one
// lane at a time, and costs as much as the products of a block at small D and E). Cephes' expf:
// x = n ln2 + r, |r| <= ln2 / 2, exp(r) by a degree-7 polynomial, within 1 ulp. x is clamped to
// the normal range: below it (scores far under the row max) the result is ~1e-38 instead of 0,
// nothing next to a row sum >= 1. The clamp is a bit select: gcc keeps std::min / std::max on
// floats as branches (it may not assume away NaN), and the loop would not vectorize.
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

// C[r, c] += sum_k A[r, k] B[k, c] for r < R, k < K, c < Cn, the sum over k in order (so the
// result does not depend on how rows are grouped). Four rows share each load of a row of B. (A
// tile of C held in locals over the k loop was no faster here and slower when gcc spilled it.)
template <typename T>
void gemm_acc(int64_t R, int64_t K, int64_t Cn, const T* A, int64_t lda, const T* B, int64_t ldb,
              T* C, int64_t ldc) {
  int64_t r = 0;
  for (; r + 4 <= R; r += 4) {
    T* __restrict c0 = C + r * ldc;
    T* __restrict c1 = c0 + ldc;
    T* __restrict c2 = c1 + ldc;
    T* __restrict c3 = c2 + ldc;
    const T* a = A + r * lda;
    for (int64_t k = 0; k < K; ++k) {
      const T a0 = a[k], a1 = a[lda + k], a2 = a[2 * lda + k], a3 = a[3 * lda + k];
      const T* __restrict b = B + k * ldb;
      for (int64_t c = 0; c < Cn; ++c) {
        c0[c] += a0 * b[c];
        c1[c] += a1 * b[c];
        c2[c] += a2 * b[c];
        c3[c] += a3 * b[c];
      }
    }
  }
  for (; r < R; ++r) {
    T* __restrict c0 = C + r * ldc;
    for (int64_t k = 0; k < K; ++k) {
      const T a0 = A[r * lda + k];
      const T* __restrict b = B + k * ldb;
      for (int64_t c = 0; c < Cn; ++c) c0[c] += a0 * b[c];
    }
  }
}

// One batch of a [B, L, F] tensor of any strides: row i, feature f at p[i * rs + f * fs].
template <typename scalar_t>
struct Rows {
  const scalar_t* p;
  int64_t rs, fs;
};

template <typename scalar_t>
Rows<scalar_t> batch_rows(const at::Tensor& t, int64_t b) {
  return {t.const_data_ptr<scalar_t>() + b * t.stride(0), t.stride(1), t.stride(2)};
}

// Rows [i0, i0 + n) of x as T: dst[i * ld + f] (kTransposed: dst[f * ld + i]). The loops run
// along whichever of x's strides is smaller, so a transposed view is read contiguously.
template <bool kTransposed, typename T, typename scalar_t>
void pack(Rows<scalar_t> x, int64_t i0, int64_t n, int64_t F, T* __restrict dst, int64_t ld) {
  const scalar_t* src = x.p + i0 * x.rs;
  const auto out = [&](int64_t i, int64_t f) -> T& {
    return kTransposed ? dst[f * ld + i] : dst[i * ld + f];
  };
  if (x.fs <= x.rs) {
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t f = 0; f < F; ++f) out(i, f) = load_op(src[i * x.rs + f * x.fs]);
    }
  } else {
    for (int64_t f = 0; f < F; ++f) {
      for (int64_t i = 0; i < n; ++i) out(i, f) = load_op(src[i * x.rs + f * x.fs]);
    }
  }
}

// out[t] = buf[t] * factor for the n rows of F values of a block, in the output dtype.
template <typename scalar_t, typename T>
void store_rows(const T* __restrict buf, T factor, int64_t n, int64_t F, scalar_t* __restrict out) {
  for (int64_t t = 0; t < n * F; ++t) out[t] = store_op<scalar_t>(buf[t] * factor);
}

// max_j x[j] in 8 independent lanes, so that the compares do not wait on each other (max is
// exact: the order does not change the result).
template <typename T>
T row_max(const T* x, int64_t n) {
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

template <typename T>
T row_sum(const T* x, int64_t n) {
  cpu::LaneSum<T> sum;
  sum.add(x, n, [](T v) { return v; });
  return sum.total();
}

// A per-thread scratch of several arrays carved from one vector.
template <typename T>
class Scratch {
 public:
  explicit Scratch(std::initializer_list<int64_t> sizes) {
    int64_t total = 0;
    for (int64_t s : sizes) total += s;
    buf_.resize(total);
    T* next = buf_.data();
    for (int64_t s : sizes) {
      parts_.push_back(next);
      next += s;
    }
  }
  T* operator[](size_t i) const { return parts_[i]; }

 private:
  std::vector<T> buf_;
  std::vector<T*> parts_;
};

template <typename scalar_t>
void attention_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale_d,
                   at::Tensor& o, at::Tensor& lse) {
  using T = at::opmath_type<scalar_t>;
  const int64_t B = q.size(0), N = q.size(1), D = q.size(2), M = k.size(1), E = v.size(2);
  const int64_t nqb = divup(N, kBlockQ);
  const T scale = static_cast<T>(scale_d);
  scalar_t* o_ptr = o.mutable_data_ptr<scalar_t>();
  T* lse_ptr = lse.mutable_data_ptr<T>();
  at::parallel_for(0, B * nqb, 1, [&](int64_t begin, int64_t end) {
    Scratch<T> s({kBlockQ * D, D * kBlockK, kBlockK * E, kBlockQ * kBlockK, kBlockQ * E,
                  kBlockQ, kBlockQ});
    T *Qp = s[0], *Kt = s[1], *Vp = s[2], *S = s[3], *O = s[4], *m = s[5], *l = s[6];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / nqb, i0 = (task % nqb) * kBlockQ;
      const int64_t nq = std::min(kBlockQ, N - i0);
      pack<false>(batch_rows<scalar_t>(q, b), i0, nq, D, Qp, D);
      std::fill(O, O + nq * E, T(0));
      std::fill(m, m + nq, -std::numeric_limits<T>::infinity());
      std::fill(l, l + nq, T(0));
      for (int64_t j0 = 0; j0 < M; j0 += kBlockK) {
        const int64_t nk = std::min(kBlockK, M - j0);
        pack<true>(batch_rows<scalar_t>(k, b), j0, nk, D, Kt, kBlockK);
        pack<false>(batch_rows<scalar_t>(v, b), j0, nk, E, Vp, E);
        std::fill(S, S + nq * kBlockK, T(0));
        gemm_acc(nq, D, nk, Qp, D, Kt, kBlockK, S, kBlockK);
        for (int64_t i = 0; i < nq; ++i) {
          T* __restrict row = S + i * kBlockK;
          for (int64_t j = 0; j < nk; ++j) row[j] *= scale;
          const T m_new = std::max(m[i], row_max(row, nk));
          for (int64_t j = 0; j < nk; ++j) row[j] = exp_softmax(row[j] - m_new);
          // exp(-inf) = 0 on the first block, where O and l are still 0.
          const T alpha = std::exp(m[i] - m_new);
          l[i] = l[i] * alpha + row_sum(row, nk);
          m[i] = m_new;
          T* __restrict orow = O + i * E;
          for (int64_t e = 0; e < E; ++e) orow[e] *= alpha;
        }
        gemm_acc(nq, nk, E, S, kBlockK, Vp, E, O, E);
      }
      for (int64_t i = 0; i < nq; ++i) {
        store_rows(O + i * E, T(1) / l[i], 1, E, o_ptr + (b * N + i0 + i) * E);
        lse_ptr[b * N + i0 + i] = m[i] + std::log(l[i]);
      }
    }
  });
}

// S (scores, raw products) -> P = exp(scale S - lse) and dP -> dS = P (dP - delta), for a block
// of rows x cols (leading dimension ld); lse and delta run along the rows (kPerRow) or the columns.
template <bool kPerRow, typename T>
void softmax_grad(T* __restrict S, T* __restrict dP, int64_t rows, int64_t cols, int64_t ld,
                  T scale, const T* lse, const T* delta) {
  for (int64_t r = 0; r < rows; ++r) {
    T* __restrict p = S + r * ld;
    T* __restrict dp = dP + r * ld;
    for (int64_t c = 0; c < cols; ++c) {
      const int64_t i = kPerRow ? r : c;
      p[c] = exp_softmax(p[c] * scale - lse[i]);
      dp[c] = p[c] * (dp[c] - delta[i]);
    }
  }
}

template <typename scalar_t>
void attention_bwd(const at::Tensor& grad_o, const at::Tensor& q, const at::Tensor& k,
                   const at::Tensor& v, const at::Tensor& o, const at::Tensor& lse, double scale_d,
                   at::Tensor& grad_q, at::Tensor& grad_k, at::Tensor& grad_v) {
  using T = at::opmath_type<scalar_t>;
  const int64_t B = q.size(0), N = q.size(1), D = q.size(2), M = k.size(1), E = v.size(2);
  const int64_t nqb = divup(N, kBlockQ), nkb = divup(M, kBlockK);
  const T scale = static_cast<T>(scale_d);
  // lse may have any strides; pass 1 copies it and writes delta beside it, [B, N] each.
  std::vector<T> lse_c(B * N), delta(B * N);
  const T* lse_p = lse.const_data_ptr<T>();
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t i = 0; i < N; ++i) lse_c[b * N + i] = lse_p[b * lse.stride(0) + i * lse.stride(1)];
  }

  // Pass 1: grad_q and delta, a task per (batch, query block).
  scalar_t* gq = grad_q.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, B * nqb, 1, [&](int64_t begin, int64_t end) {
    Scratch<T> s({kBlockQ * D, kBlockQ * E, kBlockQ * E, D * kBlockK, kBlockK * D, E * kBlockK,
                  kBlockQ * kBlockK, kBlockQ * kBlockK, kBlockQ * D});
    T *Qp = s[0], *dOp = s[1], *Op = s[2], *Kt = s[3], *Kp = s[4], *Vt = s[5], *S = s[6],
      *dP = s[7], *dQ = s[8];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / nqb, i0 = (task % nqb) * kBlockQ;
      const int64_t nq = std::min(kBlockQ, N - i0);
      pack<false>(batch_rows<scalar_t>(q, b), i0, nq, D, Qp, D);
      pack<false>(batch_rows<scalar_t>(grad_o, b), i0, nq, E, dOp, E);
      pack<false>(batch_rows<scalar_t>(o, b), i0, nq, E, Op, E);
      T* dl = delta.data() + b * N + i0;
      for (int64_t i = 0; i < nq; ++i) {
        T* __restrict prod = Op + i * E;
        const T* __restrict g = dOp + i * E;
        for (int64_t e = 0; e < E; ++e) prod[e] *= g[e];
        dl[i] = row_sum(prod, E);
      }
      std::fill(dQ, dQ + nq * D, T(0));
      for (int64_t j0 = 0; j0 < M; j0 += kBlockK) {
        const int64_t nk = std::min(kBlockK, M - j0);
        pack<true>(batch_rows<scalar_t>(k, b), j0, nk, D, Kt, kBlockK);
        pack<false>(batch_rows<scalar_t>(k, b), j0, nk, D, Kp, D);
        pack<true>(batch_rows<scalar_t>(v, b), j0, nk, E, Vt, kBlockK);
        std::fill(S, S + nq * kBlockK, T(0));
        std::fill(dP, dP + nq * kBlockK, T(0));
        gemm_acc(nq, D, nk, Qp, D, Kt, kBlockK, S, kBlockK);
        gemm_acc(nq, E, nk, dOp, E, Vt, kBlockK, dP, kBlockK);
        softmax_grad<true>(S, dP, nq, nk, kBlockK, scale, lse_c.data() + b * N + i0, dl);
        gemm_acc(nq, nk, D, dP, kBlockK, Kp, D, dQ, D);
      }
      store_rows(dQ, scale, nq, D, gq + (b * N + i0) * D);
    }
  });

  // Pass 2: grad_k and grad_v, a task per (batch, key block).
  scalar_t* gk = grad_k.mutable_data_ptr<scalar_t>();
  scalar_t* gv = grad_v.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, B * nkb, 1, [&](int64_t begin, int64_t end) {
    Scratch<T> s({kBlockK * D, kBlockK * E, D * kBlockQ, kBlockQ * D, E * kBlockQ, kBlockQ * E,
                  kBlockK * kBlockQ, kBlockK * kBlockQ, kBlockK * D, kBlockK * E});
    T *Kp = s[0], *Vp = s[1], *Qt = s[2], *Qp = s[3], *dOt = s[4], *dOp = s[5], *St = s[6],
      *dPt = s[7], *dK = s[8], *dV = s[9];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / nkb, j0 = (task % nkb) * kBlockK;
      const int64_t nk = std::min(kBlockK, M - j0);
      pack<false>(batch_rows<scalar_t>(k, b), j0, nk, D, Kp, D);
      pack<false>(batch_rows<scalar_t>(v, b), j0, nk, E, Vp, E);
      std::fill(dK, dK + nk * D, T(0));
      std::fill(dV, dV + nk * E, T(0));
      for (int64_t i0 = 0; i0 < N; i0 += kBlockQ) {
        const int64_t nq = std::min(kBlockQ, N - i0);
        pack<true>(batch_rows<scalar_t>(q, b), i0, nq, D, Qt, kBlockQ);
        pack<false>(batch_rows<scalar_t>(q, b), i0, nq, D, Qp, D);
        pack<true>(batch_rows<scalar_t>(grad_o, b), i0, nq, E, dOt, kBlockQ);
        pack<false>(batch_rows<scalar_t>(grad_o, b), i0, nq, E, dOp, E);
        std::fill(St, St + nk * kBlockQ, T(0));
        std::fill(dPt, dPt + nk * kBlockQ, T(0));
        gemm_acc(nk, D, nq, Kp, D, Qt, kBlockQ, St, kBlockQ);
        gemm_acc(nk, E, nq, Vp, E, dOt, kBlockQ, dPt, kBlockQ);
        softmax_grad<false>(St, dPt, nk, nq, kBlockQ, scale, lse_c.data() + b * N + i0,
                            delta.data() + b * N + i0);
        gemm_acc(nk, nq, E, St, kBlockQ, dOp, E, dV, E);
        gemm_acc(nk, nq, D, dPt, kBlockQ, Qp, D, dK, D);
      }
      store_rows(dK, scale, nk, D, gk + (b * M + j0) * D);
      store_rows(dV, T(1), nk, E, gv + (b * M + j0) * E);
    }
  });
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
