// The arithmetic of cond_batch_norm's statistics on the rows walk, shared by cond_bn_stats
// (cond_batch_norm_stats.cpp) and the single-sweep training forward (cond_batch_norm.cpp), so
// that both give a channel the same mean and variance: the shift, the centred two-pass moments
// of one piece, and Chan's merge of a channel's pieces in piece order.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/cpu_scalar.h"
#include "common/cpu_span.h"
#include "cpu/cond_batch_norm.h"

namespace fastgan {
namespace cond_bn {

// The statistics are taken of x - shift[c], shift[c] = x[0, c, 0] (0 where that is inf or NaN,
// which would make every deviation NaN): where the mean is large the deviations are small, and
// sums of them round far less than sums of the values (a channel with mean 1000 and std 0.01
// keeps 6 digits of its variance rather than 3).
template <typename scalar_t>
inline acc_t<scalar_t> channel_shift(const Strided<const scalar_t>& x, int64_t c) {
  const acc_t<scalar_t> v = cpu::load_op(x.data[c * x.sc]);
  return std::isfinite(v) ? v : 0;
}

// The two passes of centred_moments over n values: the first sums the deviations v - shift and
// gives their mean mu; the second sums (v - m)^2 around m = shift + mu as rounded. The rounding's
// offset from the true mean is known, and m2() takes it back out of the sum of squares.
template <typename T>
struct Centre {
  T mu = 0, m = 0, off = 0;
  Centre() = default;
  Centre(int64_t n, T shift, T sum_dev)
      : mu(sum_dev / T(n)), m(shift + mu), off(mu - (m - shift)) {}
  T m2(int64_t n, T sum_sq) const { return sum_sq - T(n) * off * off; }
};

// The mean of the n deviations v - shift and their centred sum of squares, in two passes over
// the values that sum(f) feeds to f.
template <typename T, typename Sum>
inline std::pair<T, T> centred_moments(int64_t n, T shift, const Sum& sum) {
  const Centre<T> c(n, shift, sum([shift](T v) { return v - shift; }));
  const T m = c.m;
  return {c.mu, c.m2(n, sum([m](T v) { return (v - m) * (v - m); }))};
}

// Chan's merge of a channel's K pieces in piece order, piece k holding min(L, N - k * L) of its
// N values. The weights depend on the counts alone, the same for every channel.
template <typename T>
struct PieceMerge {
  int64_t N, L, K;
  std::vector<T> w_mean, w_m2;

  PieceMerge(int64_t n, int64_t l) : N(n), L(l), K(cpu::divup(n, l)), w_mean(K), w_m2(K) {
    int64_t na = L;
    for (int64_t k = 1; k < K; ++k) {
      const int64_t nb = std::min(L, N - k * L), nab = na + nb;
      w_mean[k] = T(nb) / T(nab);
      w_m2[k] = T(na) * (T(nb) / T(nab));
      na = nab;
    }
  }
  // Folds piece k >= 1's (mean, m2) of deviations into pieces 0 .. k-1's (mean, m2).
  void fold(int64_t k, T piece_mean, T piece_m2, T& mean, T& m2) const {
    const T delta = piece_mean - mean;
    mean += delta * w_mean[k];
    m2 += piece_m2 + delta * delta * w_m2[k];
  }
  // The merged (mean, m2) of deviations from shift -> (mean, biased variance), in place.
  void finish(T shift, T& mean, T& m2) const {
    mean += shift;
    m2 /= T(N);
  }
};

// Rows walk: the (mean, centred sum of squares) of x - shift over piece k of channel c, the
// values at flat positions [k * L, (k + 1) * L) of its N = B * S, f = b * S + s; the pieces of a
// short S span several rows. A piece is summed where it lies when its rows are unit-stride acc
// values (in_place), else from its copy in buf (L values).
template <typename scalar_t>
std::pair<acc_t<scalar_t>, acc_t<scalar_t>> rows_piece_moments(
    const Strided<const scalar_t>& x, int64_t S, int64_t c, int64_t k, int64_t L, int64_t N,
    bool in_place, acc_t<scalar_t> shift, acc_t<scalar_t>* buf) {
  using T = acc_t<scalar_t>;
  const int64_t f0 = k * L, n = std::min(L, N - f0);
  // Calls g(row segment, its length, values before it) for the rows the piece spans, in order.
  const auto for_each_segment = [&](const auto& g) {
    int64_t b = f0 / S, s = f0 % S;
    for (int64_t done = 0; done < n; s = 0, ++b) {
      const int64_t m = std::min(n - done, S - s);
      g(x.row(b, c) + s * x.ss, m, done);
      done += m;
    }
  };
  // Calls h(values, count) over the piece: its segments, or its copy. With S == 16 the pieces
  // hold whole rows (L is a multiple of 16), each a segment of static length.
  const auto for_each_values = [&](const auto& h) {
    if constexpr (std::is_same_v<T, scalar_t>) {
      if (in_place) {
        return with_static_row<true>(S, [&](auto R) {
          for_each_segment([&](const T* v, int64_t m, int64_t) { h(v, static_or(R, m)); });
        });
      }
    }
    h(static_cast<const T*>(buf), n);
  };
  if (!in_place) {
    for_each_segment([&](const scalar_t* v, int64_t m, int64_t done) {
      cpu::copy_span(v, x.ss, m, buf + done);
    });
  }
  return centred_moments<T>(n, shift, [&](const auto& f) {
    cpu::LaneSum<T> sum;
    for_each_values([&](const T* v, auto m) { sum.add(v, m, f); });
    return sum.total();
  });
}

// Whether the rows walk sums x's pieces where they lie (else each is copied to acc values).
template <typename scalar_t>
inline bool rows_in_place(const Strided<const scalar_t>& x, int64_t S) {
  return std::is_same_v<acc_t<scalar_t>, scalar_t> && (x.ss == 1 || S == 1);
}

// Rows walk: channel c's (mean, biased variance), its pieces taken and merged in order in one
// task: what cond_bn_stats gives it. buf: merge.L values, used when the pieces are copied.
template <typename scalar_t>
std::pair<acc_t<scalar_t>, acc_t<scalar_t>> rows_channel_stats(
    const Strided<const scalar_t>& x, int64_t S, int64_t c,
    const PieceMerge<acc_t<scalar_t>>& merge, acc_t<scalar_t>* buf) {
  const bool in_place = rows_in_place(x, S);
  const acc_t<scalar_t> shift = channel_shift(x, c);
  auto [mean, m2] = rows_piece_moments(x, S, c, 0, merge.L, merge.N, in_place, shift, buf);
  for (int64_t k = 1; k < merge.K; ++k) {
    const auto [pm, p2] = rows_piece_moments(x, S, c, k, merge.L, merge.N, in_place, shift, buf);
    merge.fold(k, pm, p2, mean, m2);
  }
  merge.finish(shift, mean, m2);
  return {mean, m2};
}

// Rows walk: rows_channel_stats of the G channels c0 .. c0 + G - 1, bitwise, where each channel
// is one piece (merge.K == 1) summed in place, its B rows of `len` values (S, or S as a static
// length) at x.row(b, c). The G channels' sums run in lockstep: on short rows one channel's sum
// is a chain of dependent vector adds that waits on their latency, and G chains overlap.
template <int G, typename T, typename Len>
void rows_group_stats(const Strided<const T>& x, int64_t B, int64_t c0, Len len,
                      const PieceMerge<T>& merge, T* mean, T* var) {
  const int64_t n = merge.N;
  // out[g] = the LaneSum, over channel c0 + g's rows in order, of f_of(g)(value).
  const auto sums = [&](const auto& f_of, T (&out)[G]) {
    cpu::LaneSum<T> sum[G];
    for (int64_t b = 0; b < B; ++b) {
      for (int g = 0; g < G; ++g) sum[g].add(x.row(b, c0 + g), len, f_of(g));
    }
    for (int g = 0; g < G; ++g) out[g] = sum[g].total();
  };
  T shift[G], dev[G], sq[G];
  Centre<T> centre[G];
  for (int g = 0; g < G; ++g) shift[g] = channel_shift(x, c0 + g);
  sums([&shift](int g) { const T s = shift[g]; return [s](T v) { return v - s; }; }, dev);
  for (int g = 0; g < G; ++g) centre[g] = Centre<T>(n, shift[g], dev[g]);
  sums([&centre](int g) { const T c = centre[g].m; return [c](T v) { return (v - c) * (v - c); }; },
       sq);
  for (int g = 0; g < G; ++g) {
    T mu = centre[g].mu, m2 = centre[g].m2(n, sq[g]);
    merge.finish(shift[g], mu, m2);
    mean[g] = mu;
    var[g] = m2;
  }
}

// Rows walk: channels [c0, c1)'s (mean, biased variance), each what rows_channel_stats gives it;
// where the channels are single pieces summed in place, four at a time (rows_group_stats), which
// measured 1.4-1.7x faster at S = 16-256, B = 8. buf: as for rows_channel_stats.
template <typename scalar_t>
void rows_channels_stats(const Strided<const scalar_t>& x, int64_t B, int64_t S, int64_t c0,
                         int64_t c1, const PieceMerge<acc_t<scalar_t>>& merge,
                         acc_t<scalar_t>* buf, acc_t<scalar_t>* mean, acc_t<scalar_t>* var) {
  constexpr int kGroup = 4;
  int64_t c = c0;
  if constexpr (std::is_same_v<acc_t<scalar_t>, scalar_t>) {
    if (merge.K == 1 && rows_in_place(x, S)) {
      with_static_row<true>(S, [&](auto R) {
        for (; c + kGroup <= c1; c += kGroup) {
          rows_group_stats<kGroup>(x, B, c, static_or(R, S), merge, mean + c, var + c);
        }
      });
    }
  }
  for (; c < c1; ++c) std::tie(mean[c], var[c]) = rows_channel_stats(x, S, c, merge, buf);
}

}  // namespace cond_bn
}  // namespace fastgan
