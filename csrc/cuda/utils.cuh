// Device and dispatch helpers shared by fastgan's CUDA kernels. CUDA toolkit headers only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "../common/activation.h"
#include "../common/dtype.h"

namespace fastgan {
namespace cuda {

// Arithmetic type of a storage type: fp32 for fp32 / fp16 / bf16, fp64 for fp64.
template <typename T>
using Acc = std::conditional_t<std::is_same_v<T, double>, double, float>;

template <typename T>
__device__ __forceinline__ Acc<T> to_acc(T v) {
  if constexpr (std::is_same_v<T, __half>) return __half2float(v);
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return __bfloat162float(v);
  else return v;
}

template <typename T>
__device__ __forceinline__ T from_acc(Acc<T> v) {
  if constexpr (std::is_same_v<T, __half>) return __float2half_rn(v);
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return __float2bfloat16_rn(v);
  else return v;
}

// Quotient by a divisor fixed for a launch. The 32-bit one multiplies by a magic number instead of
// dividing (Granlund & Montgomery, round-up variant): exact for dividends and divisors < 2^31.
template <typename Index>
struct Divmod;

template <>
struct Divmod<uint32_t> {
  uint32_t divisor, magic, shift;
  Divmod() = default;
  explicit Divmod(uint32_t d) : divisor(d), shift(0) {
    while ((uint64_t{1} << shift) < d) ++shift;
    magic = static_cast<uint32_t>(((uint64_t{1} << 32) * ((uint64_t{1} << shift) - d)) / d + 1);
  }
  __device__ __forceinline__ uint32_t div(uint32_t n) const {
    return (__umulhi(n, magic) + n) >> shift;
  }
};

// For launches whose offsets need 64 bits (tensors of 2^31 elements or more) a slow division
// is an acceptable price.
template <>
struct Divmod<uint64_t> {
  uint64_t divisor;
  Divmod() = default;
  explicit Divmod(uint64_t d) : divisor(d) {}
  __device__ __forceinline__ uint64_t div(uint64_t n) const { return n / divisor; }
};

template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

// Elements base[0], base[stride], ..., base[(N-1) * stride] in Acc<T>. `contiguous` promises
// stride 1 and N * sizeof(T) alignment, and makes it one vector access.
template <int N, typename T, typename Index>
__device__ __forceinline__ void load_row(const T* base, Index stride, bool contiguous,
                                         Acc<T> (&out)[N]) {
  if (N > 1 && contiguous) {
    const Vec<T, N> v = *reinterpret_cast<const Vec<T, N>*>(base);
#pragma unroll
    for (int k = 0; k < N; ++k) out[k] = to_acc(v.v[k]);
  } else {
#pragma unroll
    for (int k = 0; k < N; ++k) out[k] = to_acc(base[k * stride]);
  }
}

template <int N, typename T, typename Index>
__device__ __forceinline__ void store_row(T* base, Index stride, bool contiguous,
                                          const Acc<T> (&in)[N]) {
  if (N > 1 && contiguous) {
    Vec<T, N> v;
#pragma unroll
    for (int k = 0; k < N; ++k) v.v[k] = from_acc<T>(in[k]);
    *reinterpret_cast<Vec<T, N>*>(base) = v;
  } else {
#pragma unroll
    for (int k = 0; k < N; ++k) base[k * stride] = from_acc<T>(in[k]);
  }
}

// Sum of v over the kBlock threads of a 1-D block, added in a fixed order (deterministic); the
// result is valid in thread 0. Every thread must call it, at most once per kernel.
template <int kBlock, typename A>
__device__ __forceinline__ A block_sum(A v) {
  static_assert(kBlock % 32 == 0, "whole warps");
  __shared__ A warp_sums[kBlock / 32];
  for (int lane = 16; lane > 0; lane /= 2) v += __shfl_down_sync(0xffffffffu, v, lane);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    v = 0;
    for (int w = 0; w < kBlock / 32; ++w) v += warp_sums[w];
  }
  return v;
}

// Activations shared by the fused ops, in the accumulation type A.
template <typename A>
__device__ __forceinline__ A tanh_acc(A z) {
  if constexpr (std::is_same_v<A, float>) return tanhf(z);
  else return tanh(z);
}

// `neg` is the slope of the negative side: negative_slope for leaky_relu, the weight for prelu.
template <typename A>
__device__ __forceinline__ A act_fwd(Activation act, A z, A neg) {
  switch (act) {
    case Activation::kRelu: return z < A(0) ? A(0) : z;  // keeps NaN, as torch.relu does
    case Activation::kLeakyRelu:
    case Activation::kPrelu: return z > A(0) ? z : z * neg;
    case Activation::kTanh: return tanh_acc(z);
    default: return z;
  }
}

// d act(z) / dz * dy, with torch's choice of derivative at z == 0.
template <typename A>
__device__ __forceinline__ A act_grad(Activation act, A z, A dy, A neg) {
  switch (act) {
    case Activation::kRelu: return z > A(0) ? dy : A(0);
    case Activation::kLeakyRelu:
    case Activation::kPrelu: return z > A(0) ? dy : dy * neg;
    case Activation::kTanh: {
      const A t = tanh_acc(z);
      return dy * (A(1) - t * t);
    }
    default: return dy;
  }
}

// Count, mean and centred sum of squares (M2) of a set of values. Merging two with Chan et al.'s
// parallel formula keeps the variance of data far from zero, which E[x^2] - E[x]^2 would lose.
// An aggregate (no initialisers) so that it can live in __shared__ arrays; MeanM2{} is empty.
struct MeanM2 {
  float n, mean, m2;
};

__device__ __forceinline__ MeanM2 merge(const MeanM2& a, const MeanM2& b) {
  const float n = a.n + b.n;
  const float f = n > 0.f ? b.n / n : 0.f;  // two empty sets stay empty rather than 0 / 0
  const float d = b.mean - a.mean;
  return {n, fmaf(d, f, a.mean), a.m2 + b.m2 + d * d * a.n * f};
}

__device__ __forceinline__ MeanM2 shfl_down(const MeanM2& s, unsigned offset, int width) {
  return {__shfl_down_sync(0xffffffffu, s.n, offset, width),
          __shfl_down_sync(0xffffffffu, s.mean, offset, width),
          __shfl_down_sync(0xffffffffu, s.m2, offset, width)};
}

template <typename T>
struct TypeTag {
  using type = T;
};

// f(TypeTag<storage type>); cudaErrorInvalidValue for a dtype outside the enum.
template <typename F>
cudaError_t dispatch_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat32: return f(TypeTag<float>{});
    case DType::kFloat16: return f(TypeTag<__half>{});
    case DType::kBFloat16: return f(TypeTag<__nv_bfloat16>{});
    case DType::kFloat64: return f(TypeTag<double>{});
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace fastgan
