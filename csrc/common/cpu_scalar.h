// Scalar building blocks for CPU kernels whose loops gcc auto-vectorizes (no at::vec: the
// extension is compiled once, without ATen's per-CPU-capability flags, where at::vec is its
// scalar fallback). Each is branch-free so that a loop calling it stays one straight-line body.
#pragma once

#include <ATen/OpMathType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <c10/util/bit_cast.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

namespace fastgan {
namespace cpu {

// c ? a : b, on the bits. gcc keeps the default -ftrapping-math and so will not if-convert a ?:
// whose arms need arithmetic: the loop would keep a branch, mispredicted on half the elements,
// and not vectorize.
template <typename T>
inline T select(bool c, T a, T b) {
  using I = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;
  const I mask = -static_cast<I>(c);
  return c10::bit_cast<T>((c10::bit_cast<I>(a) & mask) | (c10::bit_cast<I>(b) & ~mask));
}

// Loads and stores between a stored dtype and its opmath type. c10's Half conversions branch
// (subnormals, NaN) when built without F16C, which keeps every loop they sit in scalar; these are
// c10's fp16_ieee_* bit recipes made branch-free, with bitwise identical results. c10's BFloat16
// conversions vectorize as they are.
template <typename scalar_t>
inline at::opmath_type<scalar_t> load_op(scalar_t v) { return v; }

inline float load_op(c10::Half h) {
  const uint32_t two_w = static_cast<uint32_t>(h.x) << 17;  // exponent and mantissa at the top
  const float normal = c10::bit_cast<float>((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
  const float subnormal = c10::bit_cast<float>((two_w >> 17) | (126u << 23)) - 0.5f;
  const float magnitude = select(two_w < (1u << 27), subnormal, normal);
  return c10::bit_cast<float>(((static_cast<uint32_t>(h.x) & 0x8000u) << 16) |
                              c10::bit_cast<uint32_t>(magnitude));
}

template <typename scalar_t>
inline scalar_t store_op(at::opmath_type<scalar_t> v) { return static_cast<scalar_t>(v); }

template <>
inline c10::Half store_op<c10::Half>(float f) {
  const uint32_t w = c10::bit_cast<uint32_t>(f), two_w = w + w;
  const uint32_t bias = std::max(two_w & 0xFF000000u, 0x71000000u);
  const uint32_t bits = c10::bit_cast<uint32_t>(c10::bit_cast<float>((bias >> 1) + 0x07800000u) +
                                                std::fabs(f) * 0x1.0p+112f * 0x1.0p-110f);
  const uint32_t magnitude = ((bits >> 13) & 0x7C00u) + (bits & 0x0FFFu);
  const uint32_t half = ((w & 0x80000000u) >> 16) | select(two_w > 0xFF000000u, 0x7E00u, magnitude);
  return c10::Half(static_cast<uint16_t>(half), c10::Half::from_bits());
}

}  // namespace cpu
}  // namespace fastgan
