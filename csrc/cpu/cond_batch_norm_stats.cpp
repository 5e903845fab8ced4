// CPU kernel of fastgan::cond_bn_stats: per-channel mean and biased variance of x [B, C, S].
// The walks and the determinism rules: cond_batch_norm.cpp.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/cond_batch_norm_checks.h"
#include "common/cpu_scalar.h"
#include "common/cpu_span.h"
#include "cpu/cond_batch_norm.h"

namespace fastgan {
namespace cond_bn {
namespace {

using namespace cpu;  // NOLINT: the span and scalar helpers are this file's vocabulary

// The statistics are taken of x - shift[c], shift[c] = x[0, c, 0] (0 where that is inf or NaN,
// which would make every deviation NaN): where the mean is large the deviations are small, and
// sums of them round far less than sums of the values (a channel with mean 1000 and std 0.01
// keeps 6 digits of its variance rather than 3).
template <typename scalar_t>
std::vector<acc_t<scalar_t>> channel_shifts(const Strided<const scalar_t>& x, int64_t C) {
  std::vector<acc_t<scalar_t>> shift(C);
  for (int64_t c = 0; c < C; ++c) {
    const acc_t<scalar_t> v = load_op(x.data[c * x.sc]);
    shift[c] = std::isfinite(v) ? v : 0;
  }
  return shift;
}

// The mean mu of the n deviations v - shift and their centred sum of squares, in two passes over
// the values that sum(f) feeds to f. The second pass centres on m = shift + mu as rounded; the
// rounding's offset from the true mean is known, and is taken back out of the sum of squares.
template <typename T, typename Sum>
inline std::pair<T, T> centred_moments(int64_t n, T shift, const Sum& sum) {
  const T mu = sum([shift](T v) { return v - shift; }) / T(n);
  const T m = shift + mu, off = mu - (m - shift);
  return {mu, sum([m](T v) { return (v - m) * (v - m); }) - T(n) * off * off};
}

// Per-piece (mean, centred sum of squares) of x - shift -> per-channel (mean, biased variance),
// merged with Chan's formula in piece order. Piece k of a channel holds min(L, N - k * L) of its
// N values; its partials sit at index k * piece_stride + c * chan_stride.
template <typename T>
void merge_pieces(const std::vector<T>& pmean, const std::vector<T>& pm2, int64_t piece_stride,
                  int64_t chan_stride, int64_t K, int64_t L, int64_t N, const std::vector<T>& shift,
                  T* mean, T* var) {
  const int64_t C = static_cast<int64_t>(shift.size());
  // The weights depend on the counts alone, which are the same for every channel.
  std::vector<T> w_mean(K), w_m2(K);
  int64_t na = L;
  for (int64_t k = 1; k < K; ++k) {
    const int64_t nb = std::min(L, N - k * L), n = na + nb;
    w_mean[k] = T(nb) / T(n);
    w_m2[k] = T(na) * (T(nb) / T(n));
    na = n;
  }
  parallel_for_isa(0, C, grain_for(K), [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      mean[c] = pmean[c * chan_stride];
      var[c] = pm2[c * chan_stride];
    }
    for (int64_t k = 1; k < K; ++k) {
      const T* pm = pmean.data() + k * piece_stride;
      const T* p2 = pm2.data() + k * piece_stride;
      for (int64_t c = begin; c < end; ++c) {
        const T delta = pm[c * chan_stride] - mean[c];
        mean[c] += delta * w_mean[k];
        var[c] += p2[c * chan_stride] + delta * delta * w_m2[k];
      }
    }
    for (int64_t c = begin; c < end; ++c) {
      mean[c] += shift[c];
      var[c] /= T(N);
    }
  });
}

// Rows walk: piece k of channel c is the values at flat positions [k * L, (k + 1) * L) of its
// B * S, f = b * S + s; the pieces of a short S span several rows. A piece is summed where it
// lies when its rows are unit-stride acc values, else from a copy.
template <typename scalar_t>
void stats_rows(const Strided<const scalar_t>& x, int64_t B, int64_t C, int64_t S,
                acc_t<scalar_t>* mean, acc_t<scalar_t>* var) {
  using T = acc_t<scalar_t>;
  const int64_t N = B * S, L = std::min(N, kSpan), K = divup(N, L);
  const bool in_place = std::is_same_v<T, scalar_t> && (x.ss == 1 || S == 1);
  const std::vector<T> shift = channel_shifts(x, C);
  std::vector<T> pmean(C * K), pm2(C * K);
  parallel_for_isa(0, C * K, grain_for(L), [&](int64_t begin, int64_t end) {
    std::vector<T> buf(in_place ? 0 : L);
    walk_2d(begin, end, K, [&](int64_t c, int64_t k) {
      const int64_t f0 = k * L, n = std::min(L, N - f0);
      // Calls g(row segment, its length) for the rows the piece spans, in order.
      const auto for_each_segment = [&](const auto& g) {
        int64_t b = f0 / S, s = f0 % S;
        for (int64_t done = 0; done < n; s = 0, ++b) {
          const int64_t m = std::min(n - done, S - s);
          g(x.row(b, c) + s * x.ss, m, done);
          done += m;
        }
      };
      // Calls h(values, count) over the piece: its segments, or its copy. With S == 16 the
      // pieces hold whole rows (L is a multiple of 16), each a segment of static length.
      const auto for_each_values = [&](const auto& h) {
        if constexpr (std::is_same_v<T, scalar_t>) {
          if (in_place) {
            return with_static_row<true>(S, [&](auto R) {
              for_each_segment([&](const T* v, int64_t m, int64_t) {
                if constexpr (decltype(R)::value > 0) {
                  h(v, R);
                } else {
                  h(v, m);
                }
              });
            });
          }
        }
        h(static_cast<const T*>(buf.data()), n);
      };
      if (!in_place) {
        for_each_segment([&](const scalar_t* v, int64_t m, int64_t done) {
          copy_span(v, x.ss, m, buf.data() + done);
        });
      }
      const auto [mu, m2] = centred_moments<T>(n, shift[c], [&](const auto& f) {
        LaneSum<T> sum;
        for_each_values([&](const T* v, auto m) { sum.add(v, m, f); });
        return sum.total();
      });
      pmean[c * K + k] = mu;
      pm2[c * K + k] = m2;
    });
  });
  merge_pieces(pmean, pm2, 1, K, K, L, N, shift, mean, var);
}

// Pixels walk: piece k is the pixels at flat positions [k * P, (k + 1) * P) of all B * S,
// f = b * S + s, for every channel at once.
template <typename scalar_t>
void stats_pixels(const Strided<const scalar_t>& x, int64_t B, int64_t C, int64_t S,
                  acc_t<scalar_t>* mean, acc_t<scalar_t>* var) {
  using T = acc_t<scalar_t>;
  const int64_t N = B * S, P = std::clamp<int64_t>(kStatsBlock / C, 1, std::min(N, kMaxPixels));
  const int64_t K = divup(N, P);
  const std::vector<T> shift = channel_shifts(x, C);
  std::vector<T> pmean(K * C), pm2(K * C);
  parallel_for_isa(0, K, grain_for(P * C), [&](int64_t begin, int64_t end) {
    std::vector<T> block(P * C), centres(C);
    std::vector<const T*> pixels(P);
    for (int64_t k = begin; k < end; ++k) {
      const int64_t n = std::min(P, N - k * P);
      walk_2d(k * P, k * P + n, S, [&](int64_t b, int64_t s) {
        const int64_t p = b * S + s - k * P;
        pixels[p] = load_span(x.pixel(b, s), x.sc, C, block.data() + p * C);
      });
      T* __restrict m = pmean.data() + k * C;
      T* __restrict m2 = pm2.data() + k * C;
      // centred_moments for every channel at once.
      const T* __restrict sh = shift.data();
      T* __restrict centre = centres.data();
      std::fill(m, m + C, T(0));
      std::fill(m2, m2 + C, T(0));
      for (int64_t p = 0; p < n; ++p) {
        const T* __restrict v = pixels[p];
        for (int64_t c = 0; c < C; ++c) m[c] += v[c] - sh[c];
      }
      for (int64_t c = 0; c < C; ++c) {
        m[c] /= T(n);
        centre[c] = sh[c] + m[c];
      }
      for (int64_t p = 0; p < n; ++p) {
        const T* __restrict v = pixels[p];
        for (int64_t c = 0; c < C; ++c) m2[c] += (v[c] - centre[c]) * (v[c] - centre[c]);
      }
      for (int64_t c = 0; c < C; ++c) {
        const T off = m[c] - (centre[c] - sh[c]);
        m2[c] -= T(n) * off * off;
      }
    }
  });
  merge_pieces(pmean, pm2, C, 1, K, P, N, shift, mean, var);
}

std::tuple<at::Tensor, at::Tensor> cond_bn_stats_cpu(const at::Tensor& x) {
  check_cond_bn_input(x);
  const int64_t B = x.size(0), C = x.size(1), S = x.size(2);
  const auto acc = x.options().dtype(cond_bn_acc_type(x));
  at::Tensor mean = at::empty({C}, acc), var = at::empty({C}, acc);
  if (C == 0) return {mean, var};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "cond_bn_stats", [&] {
    using T = acc_t<scalar_t>;
    const auto xs = strided(x, x.const_data_ptr<scalar_t>());
    T* m = mean.mutable_data_ptr<T>();
    T* v = var.mutable_data_ptr<T>();
    if (use_pixels_walk(x)) {
      stats_pixels(xs, B, C, S, m, v);
    } else {
      stats_rows(xs, B, C, S, m, v);
    }
  });
  return {mean, var};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, CPU, m) { m.impl("cond_bn_stats", &cond_bn_stats_cpu); }

}  // namespace cond_bn
}  // namespace fastgan
