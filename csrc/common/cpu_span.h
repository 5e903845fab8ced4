// Loops over strided spans for CPU kernels whose arithmetic gcc auto-vectorizes (see
// cpu_scalar.h): a span is read into contiguous opmath values (in place when it already is
// that), computed on, and written back, so that the arithmetic loop never sees a stride or a
// conversion. Also the task-splitting helpers those kernels share.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "cpu_scalar.h"

namespace fastgan {
namespace cpu {

inline int64_t divup(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Units per parallel_for task, so that each task moves about GRAIN_SIZE elements.
inline int64_t grain_for(int64_t elems_per_unit) {
  return std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, elems_per_unit));
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
  T total() const {
    T t = rest;
    for (int64_t l = 0; l < kLanes; ++l) t += lane[l];
    return t;
  }
};

}  // namespace cpu
}  // namespace fastgan
