// CPU kernels of fastgan::cond_bn_{fwd,bwd_reduce,bwd_dx} and of the training ops
// cond_bn_train_{fwd,bwd} (the sweep, below); cond_bn_stats is in cond_batch_norm_stats.cpp.
// The math they implement: fastgan/ops/batch_norm/README.md.
//
// x and grad_out arrive as [B, C, S] views with any strides. Two walks cover every layout:
//   rows:   a task unit is a (b, c) row, taken over S in spans of at most kSpan. Used when S is
//           x's unit-stride dimension (NCHW), and for layouts that fit neither walk (the loads
//           then gather: correct, and slower).
//   pixels: a task unit is a (b, s) pixel, taken over C. Used when C is x's unit-stride dimension
//           (channels_last), and for [B, C] inputs (S == 1).
// Each tensor (x, grad_out, output) is addressed through its own strides, so grad_out may be laid
// out differently from x. Spans go through common/cpu_span.h, so the arithmetic loops run over
// contiguous acc values with no branch inside, which gcc vectorizes (see pixel_shuffle_act.cpp
// for why not at::vec::Vectorized), and every task runs at the CPU's x86-64 level (cpu_isa.h):
// with AVX-512 the passes ran up to 4.3x faster than at baseline on maps in cache (fp16, bf16
// the most; side by side, FASTGAN_CPU_ISA=baseline against the default).
//
// z = (x - mean) * scale + shift, scale = invstd * gain, shift = bias, with the per-(b, c)
// constants formed per row or per pixel from mean, invstd, gain and bias where they lie; x - mean
// is taken first so that a large mean does not cancel away the digits of z.
//
// Determinism: each reduction is cut into pieces fixed by the shape alone (never by the thread
// count or parallel_for's split), each piece is computed by one task in a fixed order, and the
// pieces are combined in index order. The statistics take a centred two-pass sum within each
// piece (it is in cache for the second pass) and merge the pieces with Chan's formula.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/cond_batch_norm_checks.h"
#include "common/cpu_scalar.h"
#include "common/cpu_span.h"
#include "cpu/cond_batch_norm.h"
#include "cpu/cond_batch_norm_stats.h"

namespace fastgan {
namespace cond_bn {
namespace {

using namespace cpu;  // NOLINT: the span and scalar helpers are this file's vocabulary

// Whether every tensor in ts is unit-stride along the walk (C for pixels, S for rows).
bool unit_stride_along(bool pixels, std::initializer_list<const at::Tensor*> ts) {
  const int dim = pixels ? 1 : 2;
  return std::all_of(ts.begin(), ts.end(), [&](const at::Tensor* t) {
    return t->stride(dim) == 1 || t->size(dim) == 1;
  });
}

// ----------------------------------------------------------------------- per-call constants

// The constants of one span: the same for every element of a row (Uniform), one per element of
// a pixel, i.e. per channel (PerChannel). q and r are bwd_dx's training terms (see dx_span).
template <typename T>
struct Uniform {
  T mean_, scale_, shift_, q_, r_;
  T mean(int64_t) const { return mean_; }
  T scale(int64_t) const { return scale_; }
  T shift(int64_t) const { return shift_; }
  T q(int64_t) const { return q_; }
  T r(int64_t) const { return r_; }
};

template <typename T>
struct PerChannel {
  const T *mean_, *scale_, *shift_, *q_, *r_;
  T mean(int64_t k) const { return mean_[k]; }
  T scale(int64_t k) const { return scale_[k]; }
  T shift(int64_t k) const { return shift_[k]; }
  T q(int64_t k) const { return q_[k]; }
  T r(int64_t k) const { return r_[k]; }
};

// The arguments the constants come from, read where they lie: mean, invstd, mean_dxhat,
// mean_dxhat_xhat [C] contiguous acc (the last two null outside training bwd_dx); gain, bias
// [B, C] in x's dtype with any strides, null when absent.
template <typename scalar_t>
struct Coeffs {
  using T = acc_t<scalar_t>;
  const T *mean, *invstd, *mean_dxhat, *mean_dxhat_xhat;
  const scalar_t *gain, *bias;
  int64_t gain_sb, gain_sc, bias_sb, bias_sc, C;
  T slope;

  T scale(int64_t b, int64_t c) const {
    return gain ? invstd[c] * load_op(gain[b * gain_sb + c * gain_sc]) : invstd[c];
  }
  // No bias adds -0.0, the one value with z + b == z for every z (+0.0 turns -0.0 into +0.0).
  T shift(int64_t b, int64_t c) const {
    return bias ? load_op(bias[b * bias_sb + c * bias_sc]) : T(-0.0);
  }
  T q(int64_t c) const {
    return mean_dxhat_xhat ? -(invstd[c] * invstd[c]) * mean_dxhat_xhat[c] : T(0);
  }
  T r(int64_t c) const { return mean_dxhat ? -invstd[c] * mean_dxhat[c] : T(0); }
  Uniform<T> row(int64_t b, int64_t c) const {
    return {mean[c], scale(b, c), shift(b, c), q(c), r(c)};
  }
};

// A pixels-walk task's per-channel constants; scale and shift are refilled when the sample
// changes, i.e. every S pixels.
template <typename scalar_t>
class PixelCoeffs {
 public:
  using T = acc_t<scalar_t>;
  explicit PixelCoeffs(const Coeffs<scalar_t>& k)
      : k_(k), scale_(k.C), shift_(k.C), q_(k.C), r_(k.C) {
    for (int64_t c = 0; c < k.C; ++c) {
      q_[c] = k.q(c);
      r_[c] = k.r(c);
    }
  }
  PerChannel<T> at(int64_t b) {
    if (b != b_) {
      for (int64_t c = 0; c < k_.C; ++c) {
        scale_[c] = k_.scale(b, c);
        shift_[c] = k_.shift(b, c);
      }
      b_ = b;
    }
    return {k_.mean, scale_.data(), shift_.data(), q_.data(), r_.data()};
  }

 private:
  const Coeffs<scalar_t>& k_;
  std::vector<T> scale_, shift_, q_, r_;
  int64_t b_ = -1;
};

// ------------------------------------------------------------------------------- span math

// The activation is a template parameter so that the span loops are branch-free.
template <typename F>
inline void dispatch_activation(Activation act, const F& f) {
  using A = Activation;
  switch (act) {
    case A::kNone: return f(std::integral_constant<A, A::kNone>{});
    case A::kRelu: return f(std::integral_constant<A, A::kRelu>{});
    case A::kLeakyRelu: return f(std::integral_constant<A, A::kLeakyRelu>{});
    default: break;
  }
  TORCH_CHECK(false, "fastgan.cond_batch_norm: unhandled activation");
}

template <Activation A, typename T>
inline T act_forward(T z, T slope) {
  if constexpr (A == Activation::kRelu) {
    return select(z < T(0), T(0), z);  // not max(z, 0): NaN stays NaN, as in torch.relu
  } else if constexpr (A == Activation::kLeakyRelu) {
    return select(z > T(0), z, z * slope);
  } else {
    return z;
  }
}

// dz = dy * act'(z).
template <Activation A, typename T>
inline T act_backward(T z, T dy, T slope) {
  if constexpr (A == Activation::kRelu) {
    return select(z > T(0), dy, T(0));
  } else if constexpr (A == Activation::kLeakyRelu) {
    return select(z > T(0), dy, dy * slope);
  } else {
    return dy;
  }
}

// In the span functions n is an int64_t, or an integral_constant for a static row length.
template <Activation A, typename T, typename P, typename N>
inline void fwd_span(const T* __restrict x, T* __restrict y, N n, const P& p, T slope) {
  for (int64_t k = 0; k < n; ++k) {
    y[k] = act_forward<A>((x[k] - p.mean(k)) * p.scale(k) + p.shift(k), slope);
  }
}

// dx = dz * invstd * gain + (x - mean) * q + r, with q = -invstd^2 * mean_dxhat_xhat and
// r = -invstd * mean_dxhat (both 0 in eval): the contract's formula with invstd multiplied in.
template <Activation A, typename T, typename P, typename N>
inline void dx_span(const T* __restrict x, const T* __restrict dy, T* __restrict dx, N n,
                    const P& p, T slope) {
  for (int64_t k = 0; k < n; ++k) {
    const T xc = x[k] - p.mean(k);
    const T dz = act_backward<A>(xc * p.scale(k) + p.shift(k), dy[k], slope);
    dx[k] = dz * p.scale(k) + xc * p.q(k) + p.r(k);
  }
}

// (sum of dz, sum of dz * (x - mean)) over n values of one row, in LaneSum's interleaved partial
// sums: the order of the additions depends on n alone, whatever the vector width.
template <Activation A, typename T, typename N>
inline std::pair<T, T> row_sums(const T* __restrict x, const T* __restrict dy, N n,
                                const Uniform<T>& p, T slope) {
  constexpr int64_t kLanes = LaneSum<T>::kLanes;
  T a1[kLanes] = {}, a2[kLanes] = {};
  T r1 = 0, r2 = 0;
  const auto terms = [&](int64_t j, T& s1, T& s2) {
    const T xc = x[j] - p.mean_;
    const T dz = act_backward<A>(xc * p.scale_ + p.shift_, dy[j], slope);
    s1 += dz;
    s2 += dz * xc;
  };
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
#pragma omp simd
    for (int64_t l = 0; l < kLanes; ++l) terms(j + l, a1[l], a2[l]);
  }
  for (; j < n; ++j) terms(j, r1, r2);
  return {tree_sum(a1) + r1, tree_sum(a2) + r2};
}

// a1 += dz, a2 += dz * (x - mean) over the C channels of one pixel.
template <Activation A, typename T>
inline void accumulate_pixel(const T* __restrict x, const T* __restrict dy, const PerChannel<T>& p,
                             T slope, T* __restrict a1, T* __restrict a2, int64_t C) {
  for (int64_t c = 0; c < C; ++c) {
    const T xc = x[c] - p.mean(c);
    const T dz = act_backward<A>(xc * p.scale(c) + p.shift(c), dy[c], slope);
    a1[c] += dz;
    a2[c] += dz * xc;
  }
}

// ------------------------------------------------------------- fwd, bwd_reduce and bwd_dx

// How a pass walks [B, C, S]: the pixels or the rows walk, and whether it is direct, i.e. every
// tensor the pass touches is unit-stride along the walk and stored in acc precision, so that
// spans are used in place with no per-span bookkeeping (which costs as much as the arithmetic of
// a row of 16).
template <bool kPixels_, bool kDirect_>
struct Walk {
  static constexpr bool kPixels = kPixels_, kDirect = kDirect_;

  template <typename U>
  static U* start(const Strided<U>& t, int64_t b, int64_t i, int64_t s0) {
    if constexpr (kPixels) {
      return t.pixel(b, i);
    } else {
      return t.row(b, i) + s0 * t.ss;
    }
  }
  template <typename T, typename U>
  static const T* load(const Strided<const U>& t, int64_t b, int64_t i, int64_t s0, int64_t n,
                       T* buf) {
    if constexpr (kDirect) {
      return start(t, b, i, s0);
    } else {
      return load_span(start(t, b, i, s0), kPixels ? t.sc : t.ss, n, buf);
    }
  }
  template <typename T, typename U>
  static OutSpan<T, U> out(const Strided<U>& t, int64_t b, int64_t i, int64_t s0, int64_t n,
                           T* buf) {
    return {start(t, b, i, s0), kPixels ? t.sc : t.ss, n, buf};
  }
};

// Calls f(Walk<pixels, direct>{}); direct only where scalar_t is its own acc type.
template <typename scalar_t, typename F>
void dispatch_walk(bool pixels, bool direct, const F& f) {
  if constexpr (std::is_same_v<scalar_t, acc_t<scalar_t>>) {
    if (direct) return pixels ? f(Walk<true, true>{}) : f(Walk<false, true>{});
  }
  return pixels ? f(Walk<true, false>{}) : f(Walk<false, false>{});
}

// Calls f(p, b, c, s0, n, scratch, cap) for the spans of row (b, c): the whole row as one span
// of static length R when R > 0, else spans of at most cap values.
template <typename R, typename T, typename F>
inline void for_row_spans(R, const Uniform<T>& p, int64_t b, int64_t c, int64_t S, T* scratch,
                          int64_t cap, const F& f) {
  if constexpr (R::value > 0) {
    f(p, b, c, int64_t{0}, R{}, scratch, cap);
  } else {
    for (int64_t s0 = 0; s0 < S; s0 += cap) f(p, b, c, s0, std::min(cap, S - s0), scratch, cap);
  }
}

// Calls f(params, b, i, s0, n, scratch, cap) for every span: rows walk i = c, the span
// s0 .. s0+n-1 of row (b, c); pixels walk i = s, s0 = 0 and n = C. scratch holds nbuf spans of
// cap acc values each.
template <typename W, typename scalar_t, typename F>
void for_each_span(W, int64_t B, int64_t C, int64_t S, const Coeffs<scalar_t>& k, int nbuf,
                   const F& f) {
  using T = acc_t<scalar_t>;
  if constexpr (W::kPixels) {
    parallel_for_isa(0, B * S, grain_for(C), [&](int64_t begin, int64_t end) {
      std::vector<T> scratch(nbuf * C);
      PixelCoeffs<scalar_t> pc(k);
      walk_2d(begin, end, S, [&](int64_t b, int64_t s) {
        f(pc.at(b), b, s, int64_t{0}, C, scratch.data(), C);
      });
    });
  } else {
    const int64_t span = std::min(S, kSpan);
    with_static_row<W::kDirect>(S, [&](auto R) {
      parallel_for_isa(0, B * C, grain_for(S), [&](int64_t begin, int64_t end) {
        std::vector<T> scratch(nbuf * span);
        walk_2d_nested(begin, end, C, [&](int64_t b, int64_t c) {
          for_row_spans(R, k.row(b, c), b, c, S, scratch.data(), span, f);
        });
      });
    });
  }
}

// The per-span work of fwd and bwd_dx, f(params, b, i, s0, n, scratch, cap) for for_each_span
// and for_row_spans; scratch holds kFwdBuffers / kDxBuffers spans.
template <typename W>
constexpr int kFwdBuffers = W::kDirect ? 0 : 2;
template <typename W>
constexpr int kDxBuffers = W::kDirect ? 0 : 3;

template <Activation A, typename W, typename scalar_t>
auto fwd_spans(W, const Strided<const scalar_t>& x, const Strided<scalar_t>& y,
               acc_t<scalar_t> slope) {
  using T = acc_t<scalar_t>;
  return [&x, &y, slope](const auto& p, int64_t b, int64_t i, int64_t s0, auto n, T* scratch,
                         int64_t cap) {
    const T* xs = W::load(x, b, i, s0, n, scratch);
    if constexpr (W::kDirect) {
      fwd_span<A>(xs, W::start(y, b, i, s0), n, p, slope);
    } else {
      const auto ys = W::out(y, b, i, s0, n, scratch + cap);
      fwd_span<A>(xs, ys.data(), n, p, slope);
      ys.commit();
    }
  };
}

template <Activation A, typename W, typename scalar_t>
auto dx_spans(W, const Strided<const scalar_t>& dy, const Strided<const scalar_t>& x,
              const Strided<scalar_t>& dx, acc_t<scalar_t> slope) {
  using T = acc_t<scalar_t>;
  return [&dy, &x, &dx, slope](const auto& p, int64_t b, int64_t i, int64_t s0, auto n,
                               T* scratch, int64_t cap) {
    const T* xs = W::load(x, b, i, s0, n, scratch);
    const T* dys = W::load(dy, b, i, s0, n, scratch + cap);
    if constexpr (W::kDirect) {
      dx_span<A>(xs, dys, W::start(dx, b, i, s0), n, p, slope);
    } else {
      const auto out = W::out(dx, b, i, s0, n, scratch + 2 * cap);
      dx_span<A>(xs, dys, out.data(), n, p, slope);
      out.commit();
    }
  };
}

template <Activation A, typename W, typename scalar_t>
void fwd_kernel(W w, const Strided<const scalar_t>& x, const Strided<scalar_t>& y, int64_t B,
                int64_t C, int64_t S, const Coeffs<scalar_t>& k) {
  for_each_span(w, B, C, S, k, kFwdBuffers<W>, fwd_spans<A>(w, x, y, k.slope));
}

template <Activation A, typename W, typename scalar_t>
void dx_kernel(W w, const Strided<const scalar_t>& dy, const Strided<const scalar_t>& x,
               const Strided<scalar_t>& dx, int64_t B, int64_t C, int64_t S,
               const Coeffs<scalar_t>& k) {
  for_each_span(w, B, C, S, k, kDxBuffers<W>, dx_spans<A>(w, dy, x, dx, k.slope));
}

// Rows walk: (sum of dz, sum of dz * (x - mean)) over row (b, c), span by span (one span of
// static length R when R > 0). scratch: 2 * cap acc values unless direct.
template <Activation A, typename W, typename R, typename scalar_t>
std::pair<acc_t<scalar_t>, acc_t<scalar_t>> reduce_row(
    W, R, const Strided<const scalar_t>& dy, const Strided<const scalar_t>& x, int64_t b,
    int64_t c, int64_t S, const Uniform<acc_t<scalar_t>>& p, acc_t<scalar_t> slope,
    acc_t<scalar_t>* scratch, int64_t cap) {
  using T = acc_t<scalar_t>;
  if constexpr (R::value > 0) {
    return row_sums<A>(W::load(x, b, c, 0, R{}, scratch), W::load(dy, b, c, 0, R{}, scratch + cap),
                       R{}, p, slope);
  } else {
    T s1 = 0, s2 = 0;
    for (int64_t s0 = 0; s0 < S; s0 += cap) {
      const int64_t n = std::min(cap, S - s0);
      const auto [a1, a2] = row_sums<A>(W::load(x, b, c, s0, n, scratch),
                                        W::load(dy, b, c, s0, n, scratch + cap), n, p, slope);
      s1 += a1;
      s2 += a2;
    }
    return {s1, s2};
  }
}

// Rows walk: one task sums a whole row, span by span. The second sum leaves as
// sum(dz * (x - mean)) * invstd: invstd is the same for all of a row's terms.
template <Activation A, typename W, typename scalar_t>
void reduce_rows(W w, const Strided<const scalar_t>& dy, const Strided<const scalar_t>& x,
                 int64_t B, int64_t C, int64_t S, const Coeffs<scalar_t>& k,
                 acc_t<scalar_t>* sum_dz, acc_t<scalar_t>* sum_dz_xhat) {
  using T = acc_t<scalar_t>;
  const int64_t span = std::min(S, kSpan);
  with_static_row<W::kDirect>(S, [&](auto R) {
    parallel_for_isa(0, B * C, grain_for(S), [&](int64_t begin, int64_t end) {
      std::vector<T> scratch(W::kDirect ? 0 : 2 * span);
      walk_2d_nested(begin, end, C, [&](int64_t b, int64_t c) {
        const auto [s1, s2] =
            reduce_row<A>(w, R, dy, x, b, c, S, k.row(b, c), k.slope, scratch.data(), span);
        sum_dz[b * C + c] = s1;
        sum_dz_xhat[b * C + c] = s2 * k.invstd[c];
      });
    });
  });
}

// Pixels walk: piece j of sample b is its pixels [j * P, (j + 1) * P), accumulated for every
// channel at once into [C] partials; a sample's partials are then added in piece order. (Four
// pixels at a time saves loads in cache, but breaks the sequential streams the memory-bound
// shapes need: 3x slower at 64x64.)
template <Activation A, typename W, typename scalar_t>
void reduce_pixels(W, const Strided<const scalar_t>& dy, const Strided<const scalar_t>& x,
                   int64_t B, int64_t C, int64_t S, const Coeffs<scalar_t>& k,
                   acc_t<scalar_t>* sum_dz, acc_t<scalar_t>* sum_dz_xhat) {
  using T = acc_t<scalar_t>;
  const int64_t P = std::clamp<int64_t>(at::internal::GRAIN_SIZE / C, 1, std::min(S, kMaxPixels));
  const int64_t J = divup(S, P);
  std::vector<T> partial(B * J * 2 * C);
  parallel_for_isa(0, B * J, grain_for(P * C), [&](int64_t begin, int64_t end) {
    std::vector<T> scratch(W::kDirect ? 0 : 2 * C);
    PixelCoeffs<scalar_t> pc(k);
    walk_2d(begin, end, J, [&](int64_t b, int64_t j) {
      const PerChannel<T> p = pc.at(b);
      T* a1 = partial.data() + (b * J + j) * 2 * C;
      T* a2 = a1 + C;
      std::fill(a1, a1 + 2 * C, T(0));
      for (int64_t s = j * P; s < std::min(S, (j + 1) * P); ++s) {
        accumulate_pixel<A>(W::load(x, b, s, 0, C, scratch.data()),
                            W::load(dy, b, s, 0, C, scratch.data() + C), p, k.slope, a1, a2, C);
      }
    });
  });
  parallel_for_isa(0, B, grain_for(J * 2 * C), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      T* __restrict o1 = sum_dz + b * C;
      T* __restrict o2 = sum_dz_xhat + b * C;
      std::fill(o1, o1 + C, T(0));
      std::fill(o2, o2 + C, T(0));
      for (int64_t j = 0; j < J; ++j) {
        const T* __restrict a1 = partial.data() + (b * J + j) * 2 * C;
        for (int64_t c = 0; c < C; ++c) o1[c] += a1[c];
        for (int64_t c = 0; c < C; ++c) o2[c] += a1[C + c];
      }
      for (int64_t c = 0; c < C; ++c) o2[c] *= k.invstd[c];
    }
  });
}

// ------------------------------------------------------------- the training sweep (rows walk)
//
// cond_bn_train_fwd and cond_bn_train_bwd run training's two passes a block of channels at a
// time: a block's statistics (backward: its row sums and dx terms) are taken, then the block is
// normalised (its grad_x written) while it is still in L2. x (and dy) then stream from memory
// once per pair of passes: the forward moves 2 tensors' bytes instead of 3, the backward 3
// instead of 5. Each channel's arithmetic is that of the separate passes, in the same order.

// Bytes of the tensors read per block: a quarter of a 1 MiB L2, so that the block, its output
// and the scratch stay in it.
constexpr int64_t kSweepBytes = 256 * 1024;

// Channels per block: about kSweepBytes, at least one channel, and at most C / (2 * threads),
// so that every thread has blocks to take. (The results do not depend on it.)
inline int64_t sweep_block(int64_t C, int64_t bytes_per_channel) {
  const int64_t fit = kSweepBytes / std::max<int64_t>(1, bytes_per_channel);
  const int64_t share = divup(C, 2 * static_cast<int64_t>(at::get_num_threads()));
  return std::max<int64_t>(1, std::min(fit, share));
}

// Whether the sweep pays, for a pass pair that reads `tensors` tensors of x's size: on the rows
// walk, with channels enough for the threads (else the separate passes, whose tasks split a
// channel's values), and where x is at most kSweepSmall bytes (the gain is one parallel region
// instead of two) or the tensors read are at least kSweepLarge. In between, the separate passes'
// second read comes from L3 anyway, and the sweep's training step measured 8-17% slower than
// theirs at BigGAN's 8x8 and 16x16 maps (its tasks read shorter runs, which may be why). The
// bounds are from the 2-core EPYC VM of benchmarks/results/cpu (1 MiB L2, 32 MiB L3).
constexpr int64_t kSweepSmall = int64_t{1} << 20, kSweepLarge = int64_t{16} << 20;

inline bool use_sweep(const at::Tensor& x, int64_t tensors) {
  if (use_pixels_walk(x) || x.size(1) < 2 * static_cast<int64_t>(at::get_num_threads())) {
    return false;
  }
  const int64_t bytes = x.numel() * static_cast<int64_t>(x.element_size());
  return bytes <= kSweepSmall || tensors * bytes >= kSweepLarge;
}

// Calls f(c0, c1) for the channel blocks [c0, c1) of tasks [begin, end), blocks of cb channels.
template <typename F>
inline void for_each_block(int64_t begin, int64_t end, int64_t cb, int64_t C, const F& f) {
  for (int64_t c0 = begin * cb; c0 < std::min(C, end * cb); c0 += cb) f(c0, std::min(C, c0 + cb));
}

// invstd = 1 / sqrt(var + eps), as torch's rsqrt computes it.
template <typename T>
inline T inverse_std(T var, double eps) {
  return T(1) / std::sqrt(var + T(eps));
}

// bwd_dx's training terms of channel c: the means over B and S of dxhat = dz * gain and of
// dxhat * xhat, from bwd_reduce's [B, C] sums, summed over b in order.
template <typename scalar_t>
inline void dx_terms(const Coeffs<scalar_t>& k, int64_t B, int64_t c, int64_t N,
                     const acc_t<scalar_t>* sum_dz, const acc_t<scalar_t>* sum_dz_xhat,
                     acc_t<scalar_t>* mean_dxhat, acc_t<scalar_t>* mean_dxhat_xhat) {
  using T = acc_t<scalar_t>;
  T a1 = 0, a2 = 0;
  for (int64_t b = 0; b < B; ++b) {
    const T g = k.gain ? load_op(k.gain[b * k.gain_sb + c * k.gain_sc]) : T(1);
    a1 += sum_dz[b * k.C + c] * g;
    a2 += sum_dz_xhat[b * k.C + c] * g;
  }
  mean_dxhat[c] = a1 / T(N);
  mean_dxhat_xhat[c] = a2 / T(N);
}

// Forward: per block, each channel's (mean, var) as cond_bn_stats takes them and its invstd,
// then the block's rows normalised. k reads mean and invstd where this writes them.
template <Activation A, typename W, typename scalar_t>
void train_fwd_sweep(W w, const Strided<const scalar_t>& x, const Strided<scalar_t>& y, int64_t B,
                     int64_t C, int64_t S, const Coeffs<scalar_t>& k, double eps,
                     acc_t<scalar_t>* mean, acc_t<scalar_t>* var, acc_t<scalar_t>* invstd) {
  using T = acc_t<scalar_t>;
  const int64_t N = B * S, span = std::min(S, kSpan);
  const PieceMerge<T> merge(N, std::min(N, kSpan));
  const int64_t cb = sweep_block(C, N * static_cast<int64_t>(sizeof(scalar_t)));
  const auto spans = fwd_spans<A>(w, x, y, k.slope);
  with_static_row<W::kDirect>(S, [&](auto R) {
    parallel_for_isa(0, divup(C, cb), 1, [&](int64_t begin, int64_t end) {
      std::vector<T> scratch(std::max<int64_t>(merge.L, kFwdBuffers<W> * span));
      for_each_block(begin, end, cb, C, [&](int64_t c0, int64_t c1) {
        rows_channels_stats(x, B, S, c0, c1, merge, scratch.data(), mean, var);
        for (int64_t c = c0; c < c1; ++c) invstd[c] = inverse_std(var[c], eps);
        for (int64_t b = 0; b < B; ++b) {
          for (int64_t c = c0; c < c1; ++c) {
            for_row_spans(R, k.row(b, c), b, c, S, scratch.data(), span, spans);
          }
        }
      });
    });
  });
}

// Backward: per block, the rows' sums (as bwd_reduce), the channels' dx terms, then the rows'
// grad_x (as bwd_dx). kr has no dx terms; kd reads them where this writes them.
template <Activation A, typename W, typename scalar_t>
void train_bwd_sweep(W w, const Strided<const scalar_t>& dy, const Strided<const scalar_t>& x,
                     const Strided<scalar_t>& dx, int64_t B, int64_t C, int64_t S,
                     const Coeffs<scalar_t>& kr, const Coeffs<scalar_t>& kd,
                     acc_t<scalar_t>* sum_dz, acc_t<scalar_t>* sum_dz_xhat,
                     acc_t<scalar_t>* mean_dxhat, acc_t<scalar_t>* mean_dxhat_xhat) {
  using T = acc_t<scalar_t>;
  const int64_t N = B * S, span = std::min(S, kSpan);
  const int64_t cb = sweep_block(C, 2 * N * static_cast<int64_t>(sizeof(scalar_t)));
  const auto spans = dx_spans<A>(w, dy, x, dx, kd.slope);
  with_static_row<W::kDirect>(S, [&](auto R) {
    parallel_for_isa(0, divup(C, cb), 1, [&](int64_t begin, int64_t end) {
      std::vector<T> scratch(kDxBuffers<W> * span);  // reduce_row takes 2 of its 3 spans
      for_each_block(begin, end, cb, C, [&](int64_t c0, int64_t c1) {
        for (int64_t b = 0; b < B; ++b) {
          for (int64_t c = c0; c < c1; ++c) {
            const auto [s1, s2] =
                reduce_row<A>(w, R, dy, x, b, c, S, kr.row(b, c), kr.slope, scratch.data(), span);
            sum_dz[b * C + c] = s1;
            sum_dz_xhat[b * C + c] = s2 * kr.invstd[c];
          }
        }
        for (int64_t c = c0; c < c1; ++c) {
          dx_terms(kr, B, c, N, sum_dz, sum_dz_xhat, mean_dxhat, mean_dxhat_xhat);
        }
        for (int64_t b = 0; b < B; ++b) {
          for (int64_t c = c0; c < c1; ++c) {
            for_row_spans(R, kd.row(b, c), b, c, S, scratch.data(), span, spans);
          }
        }
      });
    });
  });
}

// -------------------------------------------------------------------------------------- glue

// The tensors behind a Coeffs, owned for the duration of one call.
struct CoeffTensors {
  at::Tensor mean, invstd, mean_dxhat, mean_dxhat_xhat;
};

template <typename scalar_t>
Coeffs<scalar_t> coeffs_of(const CoeffTensors& t, const c10::optional<at::Tensor>& gain,
                           const c10::optional<at::Tensor>& bias, double negative_slope) {
  using T = acc_t<scalar_t>;
  const auto ptr = [](const at::Tensor& v) {
    return v.defined() ? v.const_data_ptr<T>() : nullptr;
  };
  const scalar_t* g = gain.has_value() ? gain->const_data_ptr<scalar_t>() : nullptr;
  const scalar_t* b = bias.has_value() ? bias->const_data_ptr<scalar_t>() : nullptr;
  return {ptr(t.mean),
          ptr(t.invstd),
          ptr(t.mean_dxhat),
          ptr(t.mean_dxhat_xhat),
          g,
          b,
          g ? gain->stride(0) : 0,
          g ? gain->stride(1) : 0,
          b ? bias->stride(0) : 0,
          b ? bias->stride(1) : 0,
          t.mean.size(0),
          static_cast<T>(negative_slope)};
}

#define FASTGAN_DISPATCH_COND_BN(x, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, (x).scalar_type(), name, __VA_ARGS__)

at::Tensor cond_bn_fwd_cpu(const at::Tensor& x, const at::Tensor& mean, const at::Tensor& invstd,
                           const c10::optional<at::Tensor>& gain,
                           const c10::optional<at::Tensor>& bias, c10::string_view activation,
                           double negative_slope) {
  const Activation act = check_cond_bn_args(x, mean, invstd, gain, bias, activation);
  at::Tensor y = empty_like_cond_bn_input(x);
  if (x.numel() == 0) return y;
  const CoeffTensors t{mean.contiguous(), invstd.contiguous(), {}, {}};
  FASTGAN_DISPATCH_COND_BN(x, "cond_bn_fwd", [&] {
    const auto k = coeffs_of<scalar_t>(t, gain, bias, negative_slope);
    const auto xs = strided(x, x.const_data_ptr<scalar_t>());
    const auto ys = strided(y, y.mutable_data_ptr<scalar_t>());
    const bool pixels = use_pixels_walk(x);
    dispatch_walk<scalar_t>(pixels, unit_stride_along(pixels, {&x, &y}), [&](auto w) {
      dispatch_activation(act, [&](auto A) {
        fwd_kernel<decltype(A)::value>(w, xs, ys, x.size(0), x.size(1), x.size(2), k);
      });
    });
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor> cond_bn_bwd_reduce_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& mean,
    const at::Tensor& invstd, const c10::optional<at::Tensor>& gain,
    const c10::optional<at::Tensor>& bias, c10::string_view activation, double negative_slope) {
  const Activation act = check_cond_bn_args(x, mean, invstd, gain, bias, activation);
  check_cond_bn_grad(grad_out, x);
  const int64_t B = x.size(0), C = x.size(1), S = x.size(2);
  const auto acc = invstd.options();
  at::Tensor sum_dz = at::empty({B, C}, acc), sum_dz_xhat = at::empty({B, C}, acc);
  if (x.numel() == 0) return {sum_dz.zero_(), sum_dz_xhat.zero_()};
  const CoeffTensors t{mean.contiguous(), invstd.contiguous(), {}, {}};
  FASTGAN_DISPATCH_COND_BN(x, "cond_bn_bwd_reduce", [&] {
    using T = acc_t<scalar_t>;
    const auto k = coeffs_of<scalar_t>(t, gain, bias, negative_slope);
    const auto xs = strided(x, x.const_data_ptr<scalar_t>());
    const auto dys = strided(grad_out, grad_out.const_data_ptr<scalar_t>());
    T* s1 = sum_dz.mutable_data_ptr<T>();
    T* s2 = sum_dz_xhat.mutable_data_ptr<T>();
    const bool pixels = use_pixels_walk(x);
    dispatch_walk<scalar_t>(pixels, unit_stride_along(pixels, {&x, &grad_out}), [&](auto w) {
      dispatch_activation(act, [&](auto A) {
        if constexpr (decltype(w)::kPixels) {
          reduce_pixels<decltype(A)::value>(w, dys, xs, B, C, S, k, s1, s2);
        } else {
          reduce_rows<decltype(A)::value>(w, dys, xs, B, C, S, k, s1, s2);
        }
      });
    });
  });
  return {sum_dz, sum_dz_xhat};
}

at::Tensor cond_bn_bwd_dx_cpu(const at::Tensor& grad_out, const at::Tensor& x,
                              const at::Tensor& mean, const at::Tensor& invstd,
                              const c10::optional<at::Tensor>& gain,
                              const c10::optional<at::Tensor>& bias, c10::string_view activation,
                              double negative_slope, const c10::optional<at::Tensor>& mean_dxhat,
                              const c10::optional<at::Tensor>& mean_dxhat_xhat) {
  const Activation act = check_cond_bn_args(x, mean, invstd, gain, bias, activation);
  check_cond_bn_grad(grad_out, x);
  check_cond_bn_dx_terms(x, mean_dxhat, mean_dxhat_xhat);
  at::Tensor dx = empty_like_cond_bn_input(x);
  if (x.numel() == 0) return dx;
  CoeffTensors t{mean.contiguous(), invstd.contiguous(), {}, {}};
  if (mean_dxhat.has_value()) {
    t.mean_dxhat = mean_dxhat->contiguous();
    t.mean_dxhat_xhat = mean_dxhat_xhat->contiguous();
  }
  FASTGAN_DISPATCH_COND_BN(x, "cond_bn_bwd_dx", [&] {
    const auto k = coeffs_of<scalar_t>(t, gain, bias, negative_slope);
    const auto xs = strided(x, x.const_data_ptr<scalar_t>());
    const auto dys = strided(grad_out, grad_out.const_data_ptr<scalar_t>());
    const auto dxs = strided(dx, dx.mutable_data_ptr<scalar_t>());
    const bool pixels = use_pixels_walk(x);
    dispatch_walk<scalar_t>(pixels, unit_stride_along(pixels, {&x, &grad_out, &dx}), [&](auto w) {
      dispatch_activation(act, [&](auto A) {
        dx_kernel<decltype(A)::value>(w, dys, xs, dxs, x.size(0), x.size(1), x.size(2), k);
      });
    });
  });
  return dx;
}

// running = (1 - momentum) * running + momentum * stat * factor over [C], in the running
// tensor's opmath; stat: [C] contiguous acc.
template <typename T>
void update_running(const at::Tensor& running, const T* stat, double momentum, double factor) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, running.scalar_type(),
                                  "cond_bn_running_stats", [&] {
    using R = at::opmath_type<scalar_t>;
    scalar_t* r = running.mutable_data_ptr<scalar_t>();
    const int64_t stride = running.stride(0);
    for (int64_t c = 0; c < running.size(0); ++c) {
      const R value = static_cast<R>(stat[c] * static_cast<T>(factor));
      r[c * stride] = store_op<scalar_t>(static_cast<R>(1 - momentum) * load_op(r[c * stride]) +
                                         static_cast<R>(momentum) * value);
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cond_bn_train_fwd_cpu(
    const at::Tensor& x, const c10::optional<at::Tensor>& gain,
    const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& running_mean,
    const c10::optional<at::Tensor>& running_var, double momentum, double eps,
    c10::string_view activation, double negative_slope) {
  const Activation act = check_cond_bn_affine_args(x, gain, bias, activation);
  check_cond_bn_train_args(x, running_mean, running_var, eps);
  const int64_t B = x.size(0), C = x.size(1), S = x.size(2);
  const auto acc = x.options().dtype(cond_bn_acc_type(x));
  at::Tensor y, mean, var, invstd = at::empty({C}, acc);
  if (use_sweep(x, 1)) {
    y = empty_like_cond_bn_input(x);
    mean = at::empty({C}, acc);
    var = at::empty({C}, acc);
    const CoeffTensors t{mean, invstd, {}, {}};
    FASTGAN_DISPATCH_COND_BN(x, "cond_bn_train_fwd", [&] {
      using T = acc_t<scalar_t>;
      const auto k = coeffs_of<scalar_t>(t, gain, bias, negative_slope);
      const auto xs = strided(x, x.const_data_ptr<scalar_t>());
      const auto ys = strided(y, y.mutable_data_ptr<scalar_t>());
      dispatch_walk<scalar_t>(false, unit_stride_along(false, {&x, &y}), [&](auto w) {
        dispatch_activation(act, [&](auto A) {
          train_fwd_sweep<decltype(A)::value>(w, xs, ys, B, C, S, k, eps,
                                              mean.mutable_data_ptr<T>(),
                                              var.mutable_data_ptr<T>(),
                                              invstd.mutable_data_ptr<T>());
        });
      });
    });
  } else {
    std::tie(mean, var) = stats_cpu(x);
    AT_DISPATCH_FLOATING_TYPES(cond_bn_acc_type(x), "cond_bn_invstd", [&] {
      const scalar_t* v = var.const_data_ptr<scalar_t>();
      scalar_t* inv = invstd.mutable_data_ptr<scalar_t>();
      for (int64_t c = 0; c < C; ++c) inv[c] = inverse_std(v[c], eps);
    });
    y = cond_bn_fwd_cpu(x, mean, invstd, gain, bias, activation, negative_slope);
  }
  if (running_mean.has_value()) {  // in F.batch_norm's terms: the variance unbiased
    const int64_t N = B * S;
    AT_DISPATCH_FLOATING_TYPES(cond_bn_acc_type(x), "cond_bn_running_stats", [&] {
      update_running(*running_mean, mean.const_data_ptr<scalar_t>(), momentum, 1.0);
      update_running(*running_var, var.const_data_ptr<scalar_t>(), momentum,
                     static_cast<double>(N) / static_cast<double>(N - 1));
    });
  }
  return {y, mean, invstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cond_bn_train_bwd_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& mean,
    const at::Tensor& invstd, const c10::optional<at::Tensor>& gain,
    const c10::optional<at::Tensor>& bias, c10::string_view activation, double negative_slope) {
  const Activation act = check_cond_bn_args(x, mean, invstd, gain, bias, activation);
  check_cond_bn_grad(grad_out, x);
  const int64_t B = x.size(0), C = x.size(1), S = x.size(2);
  const auto acc = invstd.options();
  at::Tensor mean_dxhat = at::empty({C}, acc), mean_dxhat_xhat = at::empty({C}, acc);
  const CoeffTensors tr{mean.contiguous(), invstd.contiguous(), {}, {}};
  if (!use_sweep(x, 2)) {
    auto [sum_dz, sum_dz_xhat] = cond_bn_bwd_reduce_cpu(grad_out, x, mean, invstd, gain, bias,
                                                        activation, negative_slope);
    FASTGAN_DISPATCH_COND_BN(x, "cond_bn_train_bwd", [&] {
      using T = acc_t<scalar_t>;
      const auto k = coeffs_of<scalar_t>(tr, gain, bias, negative_slope);
      const T *s1 = sum_dz.const_data_ptr<T>(), *s2 = sum_dz_xhat.const_data_ptr<T>();
      T *md = mean_dxhat.mutable_data_ptr<T>(), *mdx = mean_dxhat_xhat.mutable_data_ptr<T>();
      for (int64_t c = 0; c < C; ++c) dx_terms(k, B, c, B * S, s1, s2, md, mdx);
    });
    at::Tensor dx = cond_bn_bwd_dx_cpu(grad_out, x, mean, invstd, gain, bias, activation,
                                       negative_slope, mean_dxhat, mean_dxhat_xhat);
    return {dx, sum_dz, sum_dz_xhat};
  }
  at::Tensor dx = empty_like_cond_bn_input(x);
  at::Tensor sum_dz = at::empty({B, C}, acc), sum_dz_xhat = at::empty({B, C}, acc);
  const CoeffTensors td{tr.mean, tr.invstd, mean_dxhat, mean_dxhat_xhat};
  FASTGAN_DISPATCH_COND_BN(x, "cond_bn_train_bwd", [&] {
    using T = acc_t<scalar_t>;
    const auto kr = coeffs_of<scalar_t>(tr, gain, bias, negative_slope);
    const auto kd = coeffs_of<scalar_t>(td, gain, bias, negative_slope);
    const auto xs = strided(x, x.const_data_ptr<scalar_t>());
    const auto dys = strided(grad_out, grad_out.const_data_ptr<scalar_t>());
    const auto dxs = strided(dx, dx.mutable_data_ptr<scalar_t>());
    dispatch_walk<scalar_t>(false, unit_stride_along(false, {&x, &grad_out, &dx}), [&](auto w) {
      dispatch_activation(act, [&](auto A) {
        train_bwd_sweep<decltype(A)::value>(
            w, dys, xs, dxs, B, C, S, kr, kd, sum_dz.mutable_data_ptr<T>(),
            sum_dz_xhat.mutable_data_ptr<T>(), mean_dxhat.mutable_data_ptr<T>(),
            mean_dxhat_xhat.mutable_data_ptr<T>());
      });
    });
  });
  return {dx, sum_dz, sum_dz_xhat};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, CPU, m) {
  m.impl("cond_bn_fwd", &cond_bn_fwd_cpu);
  m.impl("cond_bn_bwd_reduce", &cond_bn_bwd_reduce_cpu);
  m.impl("cond_bn_bwd_dx", &cond_bn_bwd_dx_cpu);
  m.impl("cond_bn_train_fwd", &cond_bn_train_fwd_cpu);
  m.impl("cond_bn_train_bwd", &cond_bn_train_bwd_cpu);
}

}  // namespace cond_bn
}  // namespace fastgan
