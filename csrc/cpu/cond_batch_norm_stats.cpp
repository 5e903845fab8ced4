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
#include "cpu/cond_batch_norm_stats.h"

namespace fastgan {
namespace cond_bn {
namespace {

using namespace cpu;  // NOLINT: the span and scalar helpers are this file's vocabulary

template <typename scalar_t>
std::vector<acc_t<scalar_t>> channel_shifts(const Strided<const scalar_t>& x, int64_t C) {
  std::vector<acc_t<scalar_t>> shift(C);
  for (int64_t c = 0; c < C; ++c) shift[c] = channel_shift(x, c);
  return shift;
}

// Per-piece (mean, centred sum of squares) of x - shift -> per-channel (mean, biased variance),
// merged in piece order (PieceMerge). Piece k of a channel's partials sit at index
// k * piece_stride + c * chan_stride.
template <typename T>
void merge_pieces(const std::vector<T>& pmean, const std::vector<T>& pm2, int64_t piece_stride,
                  int64_t chan_stride, const PieceMerge<T>& merge, const std::vector<T>& shift,
                  T* mean, T* var) {
  const int64_t C = static_cast<int64_t>(shift.size());
  parallel_for_isa(0, C, grain_for(merge.K), [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      mean[c] = pmean[c * chan_stride];
      var[c] = pm2[c * chan_stride];
    }
    for (int64_t k = 1; k < merge.K; ++k) {
      const T* pm = pmean.data() + k * piece_stride;
      const T* p2 = pm2.data() + k * piece_stride;
      for (int64_t c = begin; c < end; ++c) {
        merge.fold(k, pm[c * chan_stride], p2[c * chan_stride], mean[c], var[c]);
      }
    }
    for (int64_t c = begin; c < end; ++c) merge.finish(shift[c], mean[c], var[c]);
  });
}

// Rows walk: the pieces of every channel (rows_piece_moments), one task unit each, then merged.
template <typename scalar_t>
void stats_rows(const Strided<const scalar_t>& x, int64_t B, int64_t C, int64_t S,
                acc_t<scalar_t>* mean, acc_t<scalar_t>* var) {
  using T = acc_t<scalar_t>;
  const int64_t N = B * S;
  const PieceMerge<T> merge(N, std::min(N, kSpan));
  const int64_t L = merge.L, K = merge.K;
  const bool in_place = rows_in_place(x, S);
  if (K == 1 && in_place) {  // whole channels in one task each, four at a time
    parallel_for_isa(0, C, grain_for(L), [&](int64_t begin, int64_t end) {
      rows_channels_stats(x, B, S, begin, end, merge, static_cast<T*>(nullptr), mean, var);
    });
    return;
  }
  const std::vector<T> shift = channel_shifts(x, C);
  std::vector<T> pmean(C * K), pm2(C * K);
  parallel_for_isa(0, C * K, grain_for(L), [&](int64_t begin, int64_t end) {
    std::vector<T> buf(in_place ? 0 : L);
    walk_2d(begin, end, K, [&](int64_t c, int64_t k) {
      std::tie(pmean[c * K + k], pm2[c * K + k]) =
          rows_piece_moments(x, S, c, k, L, N, in_place, shift[c], buf.data());
    });
  });
  merge_pieces(pmean, pm2, 1, K, merge, shift, mean, var);
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
  merge_pieces(pmean, pm2, C, 1, PieceMerge<T>(N, P), shift, mean, var);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> stats_cpu(const at::Tensor& x) {
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

TORCH_LIBRARY_IMPL(fastgan, CPU, m) { m.impl("cond_bn_stats", &stats_cpu); }

}  // namespace cond_bn
}  // namespace fastgan
