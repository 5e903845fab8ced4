// CPU kernels of fastgan::pixel_shuffle_act_{fwd,bwd}.
// The math they implement: fastgan/ops/pixel_shuffle/README.md.
//
// Both layouts share one shape of work: the activation (or its derivative) runs over spans that
// are contiguous in x, in opmath precision, into a small buffer that stays in L1, and a second
// loop moves the buffer to (or, backward, from) its shuffled place in y. x is read once and y
// written once; the shuffle only costs L1 traffic.
//   NCHW:          a task unit is (n, c, h): r*r input rows of W -> r output rows of W*r.
//   channels_last: a task unit is (n, h): W input pixels of Cin -> r output rows of W*r pixels.
// The backward also writes one partial sum per (n, h, cin) for grad_bias / grad_prelu; each has one
// owner and they are summed in a fixed order, so the gradients do not depend on the thread count.
//
// The loops are plain C++ shaped for gcc's auto-vectorizer rather than at::vec::Vectorized: this
// file is compiled once, without ATen's per-CPU-capability flags, and there Vectorized is its
// generic fallback, whose compares, blends and NaN-aware max run one lane at a time (the forward
// was 2x slower with it). Each task runs at the CPU's x86-64 level (common/cpu_isa.h), where the
// same loops vectorize to AVX2 or AVX-512: side by side with FASTGAN_CPU_ISA=baseline, tanh ran
// 1.8-4.9x faster with AVX-512 and most fp16 / bf16 cases 1.3-3.5x; fp32 relu (memory-bound) the
// same within the noise.
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/TensorIterator.h>
#include <c10/util/bit_cast.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/cpu_scalar.h"
#include "common/cpu_span.h"
#include "common/pixel_shuffle_act_checks.h"

namespace fastgan {
namespace {

template <typename scalar_t>
using opmath_t = at::opmath_type<scalar_t>;

// Leaky ReLU and PReLU are one kernel (kLeakyRelu): slope * z below zero, with the slope coming
// from negative_slope or prelu_weight. The activation is a template parameter so that the span
// loops are branch-free and vectorize.
template <typename F>
inline void dispatch_activation(Activation act, const F& f) {
  using A = Activation;
  switch (act) {
    case A::kNone: return f(std::integral_constant<A, A::kNone>{});
    case A::kRelu: return f(std::integral_constant<A, A::kRelu>{});
    case A::kLeakyRelu:
    case A::kPrelu: return f(std::integral_constant<A, A::kLeakyRelu>{});
    case A::kTanh: return f(std::integral_constant<A, A::kTanh>{});
  }
  TORCH_CHECK(false, "fastgan.pixel_shuffle_act: unhandled activation");
}

// Branch-free select and fp16-safe loads/stores that keep the span loops vectorizable.
using cpu::grain_for;
using cpu::load_op;
using cpu::parallel_for_isa;
using cpu::select;
using cpu::store_op;

// Calls f(R) with R an integral_constant equal to r for the factors models use (1-4), so that the
// loops moving elements to and from their shuffled places vectorize (measured 2x on the NCHW
// forward); other factors get R = 0, meaning "use r at run time".
template <typename F>
inline void with_static_factor(int64_t r, const F& f) {
  using I = int64_t;
  switch (r) {
    case 1: return f(std::integral_constant<I, 1>{});
    case 2: return f(std::integral_constant<I, 2>{});
    case 3: return f(std::integral_constant<I, 3>{});
    case 4: return f(std::integral_constant<I, 4>{});
    default: return f(std::integral_constant<I, 0>{});
  }
}

// tanh(z) for float without a libm call, so that the span loops vectorize (with std::tanh the
// tanh forward was 3x slower than eager torch.tanh). Cephes' tanhf scheme: an odd polynomial below
// |z| = 0.625, 1 - 2 / (exp(2|z|) + 1) above, with Cephes' expf polynomial; both sides are
// computed and one selected, as vector code must. Within 1.4 ulp of tanh (checked against float64
// on every 7th float in [-12, 12]); NaN stays NaN and the sign of zero is kept.
inline float tanh_op(float z) {
  const float a = std::fabs(z), z2 = z * z;
  const float small = std::copysign(
      z + z * z2 *
              ((((-5.70498872745e-3f * z2 + 2.06390887954e-2f) * z2 - 5.37397155531e-2f) * z2 +
                1.33314422036e-1f) * z2 - 3.33332819422e-1f),
      z);
  // exp(e) = 2^n * exp(f): n = round(e / ln 2) by the 1.5 * 2^23 trick, f = e - n ln 2 in two
  // parts. e is clamped to 20, past which tanh rounds to 1; a NaN z takes the `small` branch.
  const float e = select(2.0f * a < 20.0f, 2.0f * a, 20.0f);
  const float n = (e * 1.44269504089f + 12582912.0f) - 12582912.0f;
  const float f = (e - n * 0.693359375f) + n * 2.12194440e-4f;
  const float exp_f =
      (((((1.9875691500e-4f * f + 1.3981999507e-3f) * f + 8.3334519073e-3f) * f +
         4.1665795894e-2f) * f + 1.6666665459e-1f) * f + 5.0000001201e-1f) * f * f + f + 1.0f;
  const float exp_e = exp_f * c10::bit_cast<float>((static_cast<int32_t>(n) + 127) << 23);
  const float large = std::copysign(1.0f - 2.0f / (exp_e + 1.0f), z);
  return select(a >= 0.625f, large, small);
}

inline double tanh_op(double z) { return std::tanh(z); }

template <Activation A, typename T>
inline T act_forward(T z, T slope) {
  if constexpr (A == Activation::kRelu) {
    return select(z < T(0), T(0), z);  // not max(z, 0): NaN stays NaN, as in torch.relu
  } else if constexpr (A == Activation::kLeakyRelu) {
    return select(z > T(0), z, z * slope);
  } else if constexpr (A == Activation::kTanh) {
    return tanh_op(z);
  } else {
    return z;
  }
}

// out[k] = act(x[k] + bias_k) for k < len. params(k) gives {bias, slope} of element k: constants in
// NCHW (a span is one input channel), per-channel arrays in channels_last.
template <Activation A, typename scalar_t, typename Params>
inline void act_span(const scalar_t* __restrict x, opmath_t<scalar_t>* __restrict out,
                     int64_t len, const Params& params) {
  for (int64_t k = 0; k < len; ++k) {
    const auto [b, s] = params(k);
    out[k] = act_forward<A>(load_op(x[k]) + b, s);
  }
}

// gx[k] = dL/dz for k < len, from x and the opmath dy. sink(k, dz, dprelu) receives the terms of
// grad_bias and grad_prelu.
template <Activation A, typename scalar_t, typename Params, typename Sink>
inline void grad_span(const scalar_t* __restrict x, const opmath_t<scalar_t>* __restrict dy,
                      scalar_t* __restrict gx, int64_t len, const Params& params,
                      const Sink& sink) {
  using T = opmath_t<scalar_t>;
  for (int64_t k = 0; k < len; ++k) {
    const auto [b, s] = params(k);
    const T z = load_op(x[k]) + b;
    T dz = dy[k], dprelu = T(0);
    if constexpr (A == Activation::kRelu) {
      dz = select(z > T(0), dz, T(0));
    } else if constexpr (A == Activation::kLeakyRelu) {
      dprelu = select(z > T(0), T(0), z * dz);
      dz = select(z > T(0), dz, dz * s);
    } else if constexpr (A == Activation::kTanh) {
      const T t = tanh_op(z);
      dz = dz * (T(1) - t * t);
    }
    gx[k] = store_op<scalar_t>(dz);
    sink(k, dz, dprelu);
  }
}

// Sizes of one call, and its opmath per-input-channel bias and slope (Cin each).
template <typename T>
struct Problem {
  int64_t N, C, H, W, r, rr, cin;
  const T* bias;
  const T* slope;
};

template <Activation A, typename scalar_t>
void forward_nchw(const scalar_t* x, scalar_t* y, const Problem<opmath_t<scalar_t>>& p) {
  using T = opmath_t<scalar_t>;
  const int64_t r = p.r, rr = p.rr, H = p.H, W = p.W, HW = H * W, OW = W * r;
  parallel_for_isa(0, p.N * p.C * H, grain_for(rr * W), [&](int64_t begin, int64_t end) {
    std::vector<T> buf(r * W);
    for (int64_t u = begin; u < end; ++u) {
      const int64_t nc = u / H, h = u % H, c = nc % p.C;
      const scalar_t* xg = x + nc * rr * HW + h * W;  // row h of input channel c*r*r
      const T s = p.slope[c * rr];
      for (int64_t i = 0; i < r; ++i) {
        for (int64_t j = 0; j < r; ++j) {
          const T b = p.bias[c * rr + i * r + j];
          act_span<A>(xg + (i * r + j) * HW, buf.data() + j * W, W,
                      [&](int64_t) { return std::pair(b, s); });
        }
        scalar_t* out = y + (nc * H * r + h * r + i) * OW;
        with_static_factor(r, [&](auto R) {
          const int64_t rs = R ? R : r;
          for (int64_t w = 0; w < W; ++w) {
            for (int64_t j = 0; j < rs; ++j) out[w * rs + j] = store_op<scalar_t>(buf[j * W + w]);
          }
        });
      }
    }
  });
}

template <Activation A, typename scalar_t>
void forward_channels_last(const scalar_t* x, scalar_t* y, const Problem<opmath_t<scalar_t>>& p) {
  using T = opmath_t<scalar_t>;
  const int64_t r = p.r, rr = p.rr, C = p.C, Cin = p.cin, W = p.W, OW = W * r;
  const auto params = [&](int64_t k) { return std::pair(p.bias[k], p.slope[k]); };
  parallel_for_isa(0, p.N * p.H, grain_for(W * Cin), [&](int64_t begin, int64_t end) {
    std::vector<T> buf(Cin);
    for (int64_t u = begin; u < end; ++u) {  // u = n * H + h
      for (int64_t w = 0; w < W; ++w) {
        act_span<A>(x + (u * W + w) * Cin, buf.data(), Cin, params);
        for (int64_t i = 0; i < r; ++i) {
          // Output pixels (h*r+i, w*r .. w*r+r-1) are r*C contiguous elements.
          scalar_t* out = y + ((u * r + i) * OW + w * r) * C;
          with_static_factor(r, [&](auto R) {
            const int64_t rrs = R ? R * R : rr;
            for (int64_t j = 0; j < r; ++j) {
              const T* in = buf.data() + i * r + j;
              for (int64_t c = 0; c < C; ++c) out[j * C + c] = store_op<scalar_t>(in[c * rrs]);
            }
          });
        }
      }
    }
  });
}

// Sum of v[0, len), in an order fixed by len alone (cpu_span.h's LaneSum).
template <typename T>
T sum_span(const T* v, int64_t len) {
  cpu::LaneSum<T> sum;
  sum.add(v, len, [](T x) { return x; });
  return sum.total();
}

// Backward kernels fill grad_x and, when partial_bias / partial_prelu are given, one opmath
// partial sum per (n*H + h, cin) of the grad_bias and grad_prelu terms.
template <Activation A, typename scalar_t>
void backward_nchw(const scalar_t* dy, const scalar_t* x, scalar_t* gx,
                   const Problem<opmath_t<scalar_t>>& p, opmath_t<scalar_t>* partial_bias,
                   opmath_t<scalar_t>* partial_prelu) {
  using T = opmath_t<scalar_t>;
  const int64_t r = p.r, rr = p.rr, H = p.H, W = p.W, HW = H * W, OW = W * r;
  parallel_for_isa(0, p.N * p.C * H, grain_for(rr * W), [&](int64_t begin, int64_t end) {
    std::vector<T> buf(r * W), dz_row(W), dprelu_row(W);
    const auto sink = [&](int64_t k, T dz, T dprelu) {
      dz_row[k] = dz;
      dprelu_row[k] = dprelu;
    };
    for (int64_t u = begin; u < end; ++u) {
      const int64_t nc = u / H, h = u % H, n = nc / p.C, c = nc % p.C;
      const int64_t offset = nc * rr * HW + h * W;
      const int64_t partial_row = (n * H + h) * p.cin;
      const T s = p.slope[c * rr];
      for (int64_t i = 0; i < r; ++i) {
        const scalar_t* dy_row = dy + (nc * H * r + h * r + i) * OW;
        with_static_factor(r, [&](auto R) {
          const int64_t rs = R ? R : r;
          for (int64_t w = 0; w < W; ++w) {
            for (int64_t j = 0; j < rs; ++j) buf[j * W + w] = load_op(dy_row[w * rs + j]);
          }
        });
        for (int64_t j = 0; j < r; ++j) {
          const int64_t cin = c * rr + i * r + j, off = offset + (i * r + j) * HW;
          const T b = p.bias[cin];
          grad_span<A>(x + off, buf.data() + j * W, gx + off, W,
                       [&](int64_t) { return std::pair(b, s); }, sink);
          if (partial_bias) partial_bias[partial_row + cin] = sum_span(dz_row.data(), W);
          if (partial_prelu) partial_prelu[partial_row + cin] = sum_span(dprelu_row.data(), W);
        }
      }
    }
  });
}

template <Activation A, typename scalar_t>
void backward_channels_last(const scalar_t* dy, const scalar_t* x, scalar_t* gx,
                            const Problem<opmath_t<scalar_t>>& p, opmath_t<scalar_t>* partial_bias,
                            opmath_t<scalar_t>* partial_prelu) {
  using T = opmath_t<scalar_t>;
  const int64_t r = p.r, rr = p.rr, C = p.C, Cin = p.cin, W = p.W, OW = W * r;
  const auto params = [&](int64_t k) { return std::pair(p.bias[k], p.slope[k]); };
  parallel_for_isa(0, p.N * p.H, grain_for(W * Cin), [&](int64_t begin, int64_t end) {
    std::vector<T> buf(Cin), sum_dz(Cin), sum_dprelu(Cin);
    const auto sink = [&](int64_t k, T dz, T dprelu) {
      sum_dz[k] += dz;
      sum_dprelu[k] += dprelu;
    };
    for (int64_t u = begin; u < end; ++u) {  // u = n * H + h
      std::fill(sum_dz.begin(), sum_dz.end(), T(0));
      std::fill(sum_dprelu.begin(), sum_dprelu.end(), T(0));
      for (int64_t w = 0; w < W; ++w) {
        for (int64_t i = 0; i < r; ++i) {
          const scalar_t* in = dy + ((u * r + i) * OW + w * r) * C;
          with_static_factor(r, [&](auto R) {
            const int64_t rrs = R ? R * R : rr;
            for (int64_t j = 0; j < r; ++j) {
              T* out = buf.data() + i * r + j;
              for (int64_t c = 0; c < C; ++c) out[c * rrs] = load_op(in[j * C + c]);
            }
          });
        }
        const int64_t off = (u * W + w) * Cin;
        grad_span<A>(x + off, buf.data(), gx + off, Cin, params, sink);
      }
      if (partial_bias) std::copy(sum_dz.begin(), sum_dz.end(), partial_bias + u * Cin);
      if (partial_prelu) std::copy(sum_dprelu.begin(), sum_dprelu.end(), partial_prelu + u * Cin);
    }
  });
}

// Column sums of a [rows, cols] buffer, each column summed top to bottom by one task.
template <typename T>
std::vector<at::acc_type<T, false>> column_sums(const T* data, int64_t rows, int64_t cols) {
  std::vector<at::acc_type<T, false>> sums(cols, 0);
  at::parallel_for(0, cols, grain_for(rows), [&](int64_t begin, int64_t end) {
    for (int64_t m = 0; m < rows; ++m) {
      for (int64_t c = begin; c < end; ++c) sums[c] += data[m * cols + c];
    }
  });
  return sums;
}

// Inputs in the layout the kernels index: x dense in its output memory format. Inputs that are
// neither NCHW- nor channels_last-dense are copied to NCHW first (a strided gather in the kernel
// would slow the common dense case for a rare one).
struct Prepared {
  at::Tensor x, bias, slope;
  at::MemoryFormat format;
};

Prepared prepare(const at::Tensor& x, const c10::optional<at::Tensor>& bias, int64_t r,
                 Activation act, double negative_slope,
                 const c10::optional<at::Tensor>& prelu_weight) {
  const at::MemoryFormat format = output_memory_format(x);
  const int64_t cin = x.size(1), C = cin / (r * r);
  const auto op_options = x.options().dtype(at::toOpMathType(x.scalar_type()));
  // No bias adds -0.0, the one value with x + b == x for every x (+0.0 would turn -0.0 into +0.0).
  at::Tensor b = bias.has_value() ? bias->to(op_options.dtype()).contiguous()
                                  : at::full({cin}, -0.0, op_options);
  // One slope per input channel, so that channels_last reads it alongside the bias.
  at::Tensor slope;
  if (act == Activation::kPrelu) {
    slope = prelu_weight->to(op_options.dtype()).expand({C}).repeat_interleave(r * r);
  } else {
    slope = at::full({cin}, act == Activation::kLeakyRelu ? negative_slope : 0.0, op_options);
  }
  return {x.contiguous(format), b, slope, format};
}

template <typename T>
Problem<T> problem_of(const Prepared& in, int64_t r) {
  const at::Tensor& x = in.x;
  return {x.size(0), x.size(1) / (r * r), x.size(2), x.size(3), r, r * r, x.size(1),
          in.bias.const_data_ptr<T>(), in.slope.const_data_ptr<T>()};
}

at::Tensor pixel_shuffle_act_fwd_cpu(const at::Tensor& x, const c10::optional<at::Tensor>& bias,
                                     int64_t upscale_factor, c10::string_view activation,
                                     double negative_slope,
                                     const c10::optional<at::Tensor>& prelu_weight) {
  const Activation act =
      check_pixel_shuffle_act_args(x, bias, upscale_factor, activation, prelu_weight);
  const int64_t r = upscale_factor;
  const Prepared in = prepare(x, bias, r, act, negative_slope, prelu_weight);
  at::Tensor y = at::empty({x.size(0), x.size(1) / (r * r), x.size(2) * r, x.size(3) * r},
                           x.options().memory_format(in.format));
  const auto dtype = x.scalar_type();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "pixel_shuffle_act_fwd", [&] {
    const auto p = problem_of<opmath_t<scalar_t>>(in, r);
    const scalar_t* xp = in.x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    dispatch_activation(act, [&](auto A) {
      if (in.format == at::MemoryFormat::ChannelsLast) {
        forward_channels_last<decltype(A)::value>(xp, yp, p);
      } else {
        forward_nchw<decltype(A)::value>(xp, yp, p);
      }
    });
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pixel_shuffle_act_bwd_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const c10::optional<at::Tensor>& bias,
    int64_t upscale_factor, c10::string_view activation, double negative_slope,
    const c10::optional<at::Tensor>& prelu_weight) {
  const Activation act =
      check_pixel_shuffle_act_args(x, bias, upscale_factor, activation, prelu_weight);
  check_pixel_shuffle_act_grad(grad_out, x, upscale_factor);
  const int64_t r = upscale_factor, cin = x.size(1);
  const Prepared in = prepare(x, bias, r, act, negative_slope, prelu_weight);
  // dy in y's layout (= x's), so that both are walked contiguously.
  const at::Tensor dy = grad_out.contiguous(in.format);
  at::Tensor grad_x, grad_bias, grad_prelu;  // not structured bindings: lambdas capture these
  std::tie(grad_x, grad_bias, grad_prelu) = empty_pixel_shuffle_act_grads(x, bias, prelu_weight);
  const auto dtype = x.scalar_type();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "pixel_shuffle_act_bwd", [&] {
    using T = opmath_t<scalar_t>;
    const auto p = problem_of<T>(in, r);
    const int64_t rows = p.N * p.H;
    const auto op_options = x.options().dtype(c10::CppTypeToScalarType<T>::value);
    at::Tensor partial_bias, partial_prelu;
    if (bias.has_value()) partial_bias = at::empty({rows, cin}, op_options);
    if (prelu_weight.has_value()) partial_prelu = at::empty({rows, cin}, op_options);
    T* pb = bias.has_value() ? partial_bias.mutable_data_ptr<T>() : nullptr;
    T* pp = prelu_weight.has_value() ? partial_prelu.mutable_data_ptr<T>() : nullptr;
    const scalar_t* dyp = dy.const_data_ptr<scalar_t>();
    const scalar_t* xp = in.x.const_data_ptr<scalar_t>();
    scalar_t* gxp = grad_x.mutable_data_ptr<scalar_t>();
    dispatch_activation(act, [&](auto A) {
      if (in.format == at::MemoryFormat::ChannelsLast) {
        backward_channels_last<decltype(A)::value>(dyp, xp, gxp, p, pb, pp);
      } else {
        backward_nchw<decltype(A)::value>(dyp, xp, gxp, p, pb, pp);
      }
    });
    if (bias.has_value()) {
      const auto sums = column_sums(pb, rows, cin);
      scalar_t* out = grad_bias.mutable_data_ptr<scalar_t>();
      for (int64_t k = 0; k < cin; ++k) out[k] = static_cast<scalar_t>(sums[k]);
    }
    if (prelu_weight.has_value()) {
      // A [1] weight takes every input channel; a [C] weight the r*r channels of its output one.
      const auto sums = column_sums(pp, rows, cin);
      const int64_t group = grad_prelu.numel() == 1 ? cin : p.rr;
      std::vector<at::acc_type<T, false>> folded(grad_prelu.numel(), 0);
      for (int64_t k = 0; k < cin; ++k) folded[k / group] += sums[k];
      scalar_t* out = grad_prelu.mutable_data_ptr<scalar_t>();
      for (size_t k = 0; k < folded.size(); ++k) out[k] = static_cast<scalar_t>(folded[k]);
    }
  });
  return {grad_x, grad_bias, grad_prelu};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, CPU, m) {
  m.impl("pixel_shuffle_act_fwd", &pixel_shuffle_act_fwd_cpu);
  m.impl("pixel_shuffle_act_bwd", &pixel_shuffle_act_bwd_cpu);
}

}  // namespace fastgan
