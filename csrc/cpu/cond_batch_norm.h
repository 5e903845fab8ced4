// Internals shared by the CPU kernels of fastgan::cond_bn_* (cond_batch_norm.cpp: fwd, bwd_reduce,
// bwd_dx, train_fwd, train_bwd; cond_batch_norm_stats.cpp: stats). The design notes are at the
// top of cond_batch_norm.cpp.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/OpMathType.h>

#include <cstdint>
#include <tuple>
#include <type_traits>

namespace fastgan {
namespace cond_bn {

template <typename scalar_t>
using acc_t = at::opmath_type<scalar_t>;  // double for double, float for float, half, bfloat16

// Rows walk: elements per span; the three float buffers of a span stay in L1.
constexpr int64_t kSpan = 2048;
// Pixels walk, stats: elements of one piece, read twice (mean, then centred squares) while it
// stays in L2 (256 KiB in float; fewer, larger pieces make less merge work when C is large).
constexpr int64_t kStatsBlock = 65536;
// Pixels walk: most pixels a channel accumulates in sequence before a new partial starts, which
// bounds the rounding error of the running sums.
constexpr int64_t kMaxPixels = 512;

// Calls f(integral_constant<int64_t, S>) for the row lengths worth a span unrolled at compile
// time, else f(integral_constant<int64_t, 0>), meaning S at run time. 4x4 feature maps are common
// in generators, and a loop over 16 values costs as much in bookkeeping as in arithmetic.
template <bool kEnable, typename F>
inline void with_static_row(int64_t S, const F& f) {
  if (kEnable && S == 16) return f(std::integral_constant<int64_t, 16>{});
  return f(std::integral_constant<int64_t, 0>{});
}

// A row length for with_static_row's R: R itself where it is static, else the run-time n.
template <typename R>
inline auto static_or(R, int64_t n) {
  if constexpr (R::value > 0) {
    return R{};
  } else {
    return n;
  }
}

// A [B, C, S] tensor's data and element strides.
template <typename T>
struct Strided {
  T* data;
  int64_t sb, sc, ss;
  T* row(int64_t b, int64_t c) const { return data + b * sb + c * sc; }
  T* pixel(int64_t b, int64_t s) const { return data + b * sb + s * ss; }
};

template <typename T>
inline Strided<T> strided(const at::Tensor& t, T* data) {
  return {data, t.stride(0), t.stride(1), t.stride(2)};
}

// Which walk suits x: pixels when C is the unit-stride dimension or there is no S to walk.
inline bool use_pixels_walk(const at::Tensor& x) {
  const int64_t C = x.size(1), S = x.size(2);
  if (S > 1 && x.stride(2) == 1) return false;
  return C > 1 && (x.stride(1) == 1 || S == 1);
}

// The CPU kernel of fastgan::cond_bn_stats (cond_batch_norm_stats.cpp): per-channel mean and
// biased variance of x [B, C, S].
std::tuple<at::Tensor, at::Tensor> stats_cpu(const at::Tensor& x);

}  // namespace cond_bn
}  // namespace fastgan
