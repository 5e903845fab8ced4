// Loops over strided spans for CPU kernels whose arithmetic gcc auto-vectorizes (see
// cpu_scalar.h): a span is read into contiguous opmath values (in place when it already is
// that), computed on, and written back, so that the arithmetic loop never sees a stride or a
// conversion. Also the task-splitting helpers those kernels share.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cpu_isa.h"
#include "cpu_scalar.h"

namespace fastgan {
namespace cpu {

inline int64_t divup(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Units per parallel_for task, so that each task moves about GRAIN_SIZE elements.
inline int64_t grain_for(int64_t elems_per_unit) {
  return std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, elems_per_unit));
}

// at::parallel_for whose tasks run at the CPU's x86-64 level (cpu_isa.h's run_isa): for passes
// whose time is in the arithmetic of their tasks, not only in memory traffic.
template <typename F>
inline void parallel_for_isa(int64_t begin, int64_t end, int64_t grain, const F& f) {
  at::parallel_for(begin, end, grain, [&](int64_t b, int64_t e) { run_isa([&] { f(b, e); }); });
}

// Calls f(i, j) for u in [begin, end), u = i * J + j, in order, without a division per unit (a
// 64-bit division costs as much as a short unit's arithmetic).
template <typename F>
inline void walk_2d(int64_t begin, int64_t end, int64_t J, const F& f) {
  int64_t i = begin / J, j = begin % J;
  for (int64_t u = begin; u < end; ++u) {
    f(i, j);
    if (++j == J) {
      j = 0;
      ++i;
    }
  }
}

// walk_2d as nested loops, so that what a small f computes from i alone is hoisted out of the
// inner loop (20% faster on rows of 16 values; slower than walk_2d where f is large).
template <typename F>
inline void walk_2d_nested(int64_t begin, int64_t end, int64_t J, const F& f) {
  for (int64_t i = begin / J, j = begin % J, u = begin; u < end; ++i, j = 0) {
    const int64_t stop = std::min(J, j + (end - u));
    for (; j < stop; ++j, ++u) f(i, j);
  }
}

// dst[k] = src[k * stride] for k < n, converted to T.
template <typename T, typename scalar_t>
inline void copy_span(const scalar_t* src, int64_t stride, int64_t n, T* __restrict dst) {
  if (stride == 1) {
    for (int64_t k = 0; k < n; ++k) dst[k] = load_op(src[k]);
  } else {
    for (int64_t k = 0; k < n; ++k) dst[k] = load_op(src[k * stride]);
  }
}

// The n values src[0], src[stride], ... as T: src itself when it already holds them, else buf.
template <typename T, typename scalar_t>
inline const T* load_span(const scalar_t* src, int64_t stride, int64_t n, T* buf) {
  if constexpr (std::is_same_v<T, scalar_t>) {
    if (stride == 1) return src;
  }
  copy_span(src, stride, n, buf);
  return buf;
}

// Where n results bound for dst[0], dst[stride], ... are computed: dst itself when they can be
// stored as they are, else buf, which commit() then stores.
template <typename T, typename scalar_t>
struct OutSpan {
  scalar_t* dst;
  int64_t stride, n;
  T* buf;

  T* data() const {
    if constexpr (std::is_same_v<T, scalar_t>) {
      if (stride == 1) return dst;
    }
    return buf;
  }
  void commit() const {
    if (data() != buf) return;
    if (stride == 1) {
      for (int64_t k = 0; k < n; ++k) dst[k] = store_op<scalar_t>(buf[k]);
    } else {
      for (int64_t k = 0; k < n; ++k) dst[k * stride] = store_op<scalar_t>(buf[k]);
    }
  }
};

// v[0] + ... + v[kN - 1] as a tree: the upper half added to the lower, and again, down to one
// value (kN a power of two). Each level is one add of gcc vector-extension halves, which any
// target lowers to its widest vectors; a loop's reduction adds the lanes one by one, and those
// kN - 1 dependent adds are the whole time of a row of 16 values. The order of the additions is
// the same on every target.
template <typename T, int64_t kN>
inline T tree_sum(const T (&v)[kN]) {
  static_assert((kN & (kN - 1)) == 0, "tree_sum: kN must be a power of two");
  if constexpr (kN == 1) {
    return v[0];
  } else {
    T next[kN / 2];
#if defined(__GNUC__)
    typedef T Half __attribute__((vector_size(kN / 2 * sizeof(T))));
    Half lo, hi;
    std::memcpy(&lo, v, sizeof lo);
    std::memcpy(&hi, v + kN / 2, sizeof hi);
    const Half sum = lo + hi;
    std::memcpy(next, &sum, sizeof next);
#else
    for (int64_t l = 0; l < kN / 2; ++l) next[l] = v[l] + v[l + kN / 2];
#endif
    return tree_sum(next);
  }
}

// A sum in kLanes interleaved partial sums, fed span by span: gcc vectorizes this loop shape into
// independent vector accumulators (an `omp simd` reduction keeps a single one, and is 3x slower
// for waiting on the add latency), and the order of the additions is fixed by the spans alone.
template <typename T>
struct LaneSum {
  static constexpr int64_t kLanes = 16;
  T lane[kLanes] = {};
  T rest = 0;

  // n: an int64_t, or an integral_constant for a length known at compile time.
  template <typename N, typename F>
  void add(const T* v, N n, const F& f) {
    int64_t k = 0;
    for (; k + kLanes <= n; k += kLanes) {
#pragma omp simd
      for (int64_t l = 0; l < kLanes; ++l) lane[l] += f(v[k + l]);
    }
    for (; k < n; ++k) rest += f(v[k]);
  }
  T total() const { return tree_sum(lane) + rest; }
};

}  // namespace cpu
}  // namespace fastgan
