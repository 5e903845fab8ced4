// CPU kernel of fastgan::sn_power_iteration. The contract: fastgan/ops/spectral_norm/README.md.
//
// Each layer's W is read as a matrix M [m, n], element (i, j) at i * rs + j * cs, oriented so that
// its unit-stride dimension (if it has one) is j: M = W for the row-major flatten(1) view of a conv
// weight, M = W^T for a transposed view. Every product then is one of two walks over M's rows:
//   axpy: y [n] = M^T x, a sum over rows of x[i] * M[i, :]   (W^T u when M = W)
//   dot:  y [m] = M x, one dot product per row                (W v when M = W)
// M is cut into tiles of Rb rows by Cb columns, a partition that depends on the shape alone. A
// tile sums over its share of the reduced dimension (rows for axpy, columns for dot) into a
// partial vector of its own; a merge pass adds the K partials of each output chunk in block order
// and takes the chunk's sum of squares, and a norm is the sum of those in chunk order. No sum
// depends on which thread ran what, so the results are bitwise the same for any thread count.
//
// The whole group runs as one parallel pass per step, over a work list holding every layer's
// items: per iteration W^T u, merge, W v, merge; then a last pass for u and sigma. Items are dealt
// to threads by cost, so one large layer spreads over every core and mixed groups balance. A
// product tile reads its slice of the input vector already normalised (raw / norm, or stored / 1),
// so the normalisation costs no pass of its own.
//
// Loops are plain C++ shaped for gcc's auto-vectorizer, as in the other CPU kernels (cpu_scalar.h),
// and each pass's tasks run at the CPU's x86-64 level (cpu_isa.h).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "common/cpu_scalar.h"
#include "common/cpu_span.h"
#include "common/spectral_norm_checks.h"

namespace fastgan {
namespace spectral_norm {
namespace {

using cpu::divup;
using cpu::load_op;

// A layer is cut into at most kMaxTiles tiles of at least kTileElems elements, whole rows first:
// a tile of whole rows of a contiguous matrix is one stream through memory, which the hardware
// prefetcher follows (row pieces of 4-8 KiB ran at half the speed). 32 tiles spread one large
// layer over 32 cores while an axpy merge reads at most 32 partials per output.
constexpr int64_t kMaxTiles = 32;
constexpr int64_t kTileElems = 32768;
// Widest tile: an axpy tile's accumulators (64 KiB in float) stay in L2 while its rows stream.
constexpr int64_t kMaxTileCols = 16384;

// sum_{j < n} f(j) in 16 interleaved partial sums, so that gcc makes them independent vector
// accumulators, and the order of the additions depends on n alone. The lanes are four named
// groups of four: one array of 16 (cpu_span.h's LaneSum) stays on the stack, every add waits on
// the store before it, and a dot product of long rows ran at half the speed.
template <typename T, typename F>
inline T lane_sum(int64_t n, const F& f) {
  T a[4] = {}, b[4] = {}, c[4] = {}, d[4] = {};
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    for (int l = 0; l < 4; ++l) a[l] += f(j + l);
    for (int l = 0; l < 4; ++l) b[l] += f(j + 4 + l);
    for (int l = 0; l < 4; ++l) c[l] += f(j + 8 + l);
    for (int l = 0; l < 4; ++l) d[l] += f(j + 12 + l);
  }
  T rest = 0;
  for (; j < n; ++j) rest += f(j);
  for (int l = 0; l < 4; ++l) rest += a[l];
  for (int l = 0; l < 4; ++l) rest += b[l];
  for (int l = 0; l < 4; ++l) rest += c[l];
  for (int l = 0; l < 4; ++l) rest += d[l];
  return rest;
}

// Element j of a row, converted to acc. The unit stride is a template parameter so that the
// row-major loops vectorize; the strided fallback runs the same loops with cs at run time.
template <bool kUnit, typename scalar_t>
inline at::opmath_type<scalar_t> col(const scalar_t* row, int64_t cs, int64_t j) {
  return load_op(row[kUnit ? j : j * cs]);
}

template <typename F>
inline void with_unit_stride(int64_t cs, const F& f) {
  if (cs == 1) return f(std::true_type{});
  return f(std::false_type{});
}

// y[j] = sum_i x[i] * w[i, j] over the tile's rows, in row order. Four rows share one pass over y,
// so y[j] is loaded and stored once per four products; the additions stay in row order, so the
// result is the same as one row at a time.
template <bool kUnit, typename scalar_t, typename T>
void axpy_tile(const scalar_t* w, int64_t rs, int64_t cs, int64_t rows, int64_t cols,
               const T* x, T* __restrict y) {
  std::fill(y, y + cols, T(0));
  int64_t i = 0;
  for (; i + 4 <= rows; i += 4) {
    const scalar_t *w0 = w + i * rs, *w1 = w0 + rs, *w2 = w1 + rs, *w3 = w2 + rs;
    const T x0 = x[i], x1 = x[i + 1], x2 = x[i + 2], x3 = x[i + 3];
    for (int64_t j = 0; j < cols; ++j) {
      T a = y[j];
      a += x0 * col<kUnit>(w0, cs, j);
      a += x1 * col<kUnit>(w1, cs, j);
      a += x2 * col<kUnit>(w2, cs, j);
      a += x3 * col<kUnit>(w3, cs, j);
      y[j] = a;
    }
  }
  for (; i < rows; ++i) {
    const scalar_t* w0 = w + i * rs;
    const T x0 = x[i];
    for (int64_t j = 0; j < cols; ++j) y[j] += x0 * col<kUnit>(w0, cs, j);
  }
}

// y[i] = sum_j w[i, j] * x[j] over the tile's columns, for each of its rows.
template <bool kUnit, typename scalar_t, typename T>
void dot_tile(const scalar_t* w, int64_t rs, int64_t cs, int64_t rows, int64_t cols,
              const T* __restrict x, T* __restrict y) {
  for (int64_t i = 0; i < rows; ++i) {
    const scalar_t* r = w + i * rs;
    y[i] = lane_sum<T>(cols, [&](int64_t j) { return col<kUnit>(r, cs, j) * x[j]; });
  }
}

// One product of a layer: x [x_len] in, K partial vectors of y [y_len] out. Item (k, p) reads
// x block k (Xb values) and writes chunk p (Yb values) of partial k.
struct Product {
  bool axpy;
  int64_t K, P, Xb, Yb, x_len, y_len;
};

template <typename scalar_t>
struct Layer {
  using T = at::opmath_type<scalar_t>;
  const scalar_t* w;
  int64_t m, n, rs, cs;
  bool transposed;           // M = W^T
  int64_t Rb, nrb, Cb, ncb;  // the tiles: nrb blocks of Rb rows by ncb blocks of Cb columns
  T* u;                      // us[l]
  T* v;                      // vs[l]
  // Step 0 is v_raw = W^T u, step 1 is u_raw = W v. Their K partials, of which the merge leaves
  // the sum in the first; and where the layer's chunks start in the per-chunk sums.
  T* part[2];
  int64_t chunk0[2];

  Product product(int step) const {
    if ((step == 0) != transposed) return {true, nrb, ncb, Rb, Cb, m, n};
    return {false, ncb, nrb, Cb, Rb, n, m};
  }
};

template <typename scalar_t>
Layer<scalar_t> make_layer(const at::Tensor& w, const at::Tensor& u, const at::Tensor& v) {
  using T = at::opmath_type<scalar_t>;
  Layer<scalar_t> L{};
  const int64_t H = w.size(0), C = w.size(1);
  // A column (C == 1) is walked as one row of M = W^T, whatever its stride, not as H rows of one.
  L.transposed = C == 1 || (H > 1 && w.stride(0) == 1 && w.stride(1) != 1);
  L.w = w.const_data_ptr<scalar_t>();
  L.m = L.transposed ? C : H;
  L.n = L.transposed ? H : C;
  L.rs = L.transposed ? w.stride(1) : w.stride(0);
  // A single column's stride is never used: call it unit, for the vectorized loops.
  L.cs = L.n == 1 ? 1 : (L.transposed ? w.stride(0) : w.stride(1));
  const int64_t tiles = std::clamp<int64_t>(L.m * L.n / kTileElems, 1, kMaxTiles);
  L.nrb = std::min(L.m, tiles);
  L.Rb = divup(L.m, L.nrb);
  L.nrb = divup(L.m, L.Rb);
  L.ncb = std::max(divup(L.n, kMaxTileCols), divup(tiles, L.nrb));
  L.Cb = divup(L.n, L.ncb);
  L.ncb = divup(L.n, L.Cb);
  L.u = u.mutable_data_ptr<T>();
  L.v = v.mutable_data_ptr<T>();
  return L;
}

// Items with costs, dealt to threads as contiguous runs of about equal cost. Which thread runs an
// item never changes what the item computes.
struct Item {
  int64_t l, k, p;
};

class WorkList {
 public:
  void add(Item item, int64_t cost) {
    items_.push_back(item);
    start_.push_back(total_);
    total_ += cost;
  }

  // Calls f(first, last) on runs of items, in parallel.
  template <typename F>
  void run(const F& f) const {
    const int64_t parts = total_ < at::internal::GRAIN_SIZE
                              ? 1
                              : std::min<int64_t>(items_.size(), at::get_num_threads());
    const auto first = [&](int64_t t) {
      return std::lower_bound(start_.begin(), start_.end(), total_ * t / parts) - start_.begin();
    };
    cpu::parallel_for_isa(0, parts, 1, [&](int64_t begin, int64_t end) {
      f(items_.data() + first(begin), items_.data() + first(end));
    });
  }

 private:
  std::vector<Item> items_;
  std::vector<int64_t> start_;
  int64_t total_ = 0;
};

// A vector read as base[i] / den: a stored u or v (den 1, which divides exactly), or a merged
// raw product and its clamped norm.
template <typename T>
struct Source {
  const T* base;
  T den;
};

template <typename scalar_t>
class Group {
 public:
  using T = at::opmath_type<scalar_t>;

  Group(at::TensorList weights, at::TensorList us, at::TensorList vs) {
    int64_t workspace = 0, chunks[2] = {0, 0};
    for (size_t l = 0; l < weights.size(); ++l) {
      Layer<scalar_t> L = make_layer<scalar_t>(weights[l], us[l], vs[l]);
      for (int step = 0; step < 2; ++step) {
        const Product pr = L.product(step);
        L.chunk0[step] = chunks[step];
        chunks[step] += pr.P;
        workspace += pr.K * pr.y_len;
        max_xb_ = std::max(max_xb_, pr.Xb);
        for (int64_t p = 0; p < pr.P; ++p) {
          const int64_t yn = std::min(pr.Yb, pr.y_len - p * pr.Yb);
          merges_[step].add({int64_t(l), 0, p}, pr.K * yn);
          for (int64_t k = 0; k < pr.K; ++k) {
            const int64_t xn = std::min(pr.Xb, pr.x_len - k * pr.Xb);
            tiles_[step].add({int64_t(l), k, p}, (xn + 1) * yn);
          }
        }
      }
      layers_.push_back(L);
    }
    const at::ScalarType acc = sn_acc_type(weights[0].scalar_type());
    workspace_ = at::empty({workspace}, weights[0].options().dtype(acc));
    T* next = workspace_.mutable_data_ptr<T>();
    for (Layer<scalar_t>& L : layers_) {
      for (int step = 0; step < 2; ++step) {
        L.part[step] = next;
        next += L.product(step).K * L.product(step).y_len;
      }
    }
    chunk_sums_[0].resize(chunks[0]);
    chunk_sums_[1].resize(chunks[1]);
  }

  const std::vector<Layer<scalar_t>>& layers() const { return layers_; }

  // The partials of step's product of every layer with its x; stores x in dst[l] where not null.
  void product(int step, const std::vector<Source<T>>& x, const std::vector<T*>& dst) {
    tiles_[step].run([&](const Item* first, const Item* last) {
      std::vector<T> buf(max_xb_);
      for (const Item* it = first; it != last; ++it) {
        const Layer<scalar_t>& L = layers_[it->l];
        const Product pr = L.product(step);
        const int64_t x0 = it->k * pr.Xb, xn = std::min(pr.Xb, pr.x_len - x0);
        const int64_t y0 = it->p * pr.Yb, yn = std::min(pr.Yb, pr.y_len - y0);
        T* __restrict xs = buf.data();
        const T* src = x[it->l].base + x0;
        const T den = x[it->l].den;
        for (int64_t t = 0; t < xn; ++t) xs[t] = src[t] / den;
        if (dst[it->l] != nullptr && it->p == 0) std::copy(xs, xs + xn, dst[it->l] + x0);
        T* y = L.part[step] + it->k * pr.y_len + y0;
        with_unit_stride(L.cs, [&](auto unit) {
          constexpr bool kUnit = decltype(unit)::value;
          if (pr.axpy) {
            axpy_tile<kUnit>(L.w + x0 * L.rs + y0 * L.cs, L.rs, L.cs, xn, yn, xs, y);
          } else {
            dot_tile<kUnit>(L.w + y0 * L.rs + x0 * L.cs, L.rs, L.cs, yn, xn, xs, y);
          }
        });
      }
    });
  }

  // Adds each layer's partials of step into the first, in block order; returns the raw vectors
  // and their norms clamped to eps, as the sources of the next product.
  std::vector<Source<T>> merge(int step, double eps) {
    merges_[step].run([&](const Item* first, const Item* last) {
      for (const Item* it = first; it != last; ++it) {
        const Layer<scalar_t>& L = layers_[it->l];
        const Product pr = L.product(step);
        const int64_t y0 = it->p * pr.Yb, yn = std::min(pr.Yb, pr.y_len - y0);
        T* __restrict y = L.part[step] + y0;
        for (int64_t k = 1; k < pr.K; ++k) {
          const T* __restrict q = L.part[step] + k * pr.y_len + y0;
          for (int64_t t = 0; t < yn; ++t) y[t] += q[t];
        }
        chunk_sums_[step][L.chunk0[step] + it->p] =
            lane_sum<T>(yn, [&](int64_t t) { return y[t] * y[t]; });
      }
    });
    std::vector<Source<T>> raw;
    for (const Layer<scalar_t>& L : layers_) {
      raw.push_back({L.part[step], std::max(std::sqrt(layer_sum(L, step)), static_cast<T>(eps))});
    }
    return raw;
  }

  // sigma_l = u . u_raw, u read from `u` and stored in dst[l] where not null; needs merge(1).
  void sigmas(const std::vector<Source<T>>& u, const std::vector<T*>& dst, T* sigma) {
    merges_[1].run([&](const Item* first, const Item* last) {
      for (const Item* it = first; it != last; ++it) {
        const Layer<scalar_t>& L = layers_[it->l];
        const Product pr = L.product(1);
        const int64_t y0 = it->p * pr.Yb, yn = std::min(pr.Yb, pr.y_len - y0);
        const T* __restrict raw = L.part[1] + y0;
        const T* un = u[it->l].base + y0;
        if (dst[it->l] != nullptr) {
          T* __restrict d = dst[it->l] + y0;
          const T den = u[it->l].den;
          for (int64_t t = 0; t < yn; ++t) d[t] = un[t] / den;
          un = d;
        }
        chunk_sums_[1][L.chunk0[1] + it->p] =
            lane_sum<T>(yn, [&](int64_t t) { return un[t] * raw[t]; });
      }
    });
    for (size_t l = 0; l < layers_.size(); ++l) sigma[l] = layer_sum(layers_[l], 1);
  }

 private:
  // The layer's per-chunk sums of step, added in chunk order.
  T layer_sum(const Layer<scalar_t>& L, int step) const {
    T s = 0;
    for (int64_t p = 0; p < L.product(step).P; ++p) s += chunk_sums_[step][L.chunk0[step] + p];
    return s;
  }

  std::vector<Layer<scalar_t>> layers_;
  WorkList tiles_[2], merges_[2];
  std::vector<T> chunk_sums_[2];
  int64_t max_xb_ = 0;
  at::Tensor workspace_;
};

template <typename scalar_t>
void power_iteration(at::TensorList weights, at::TensorList us, at::TensorList vs, int64_t n,
                     double eps, at::opmath_type<scalar_t>* sigma) {
  using T = at::opmath_type<scalar_t>;
  Group<scalar_t> group(weights, us, vs);
  const size_t L = group.layers().size();
  std::vector<Source<T>> stored_u, stored_v;
  std::vector<T*> none(L, nullptr), u_out, v_out;
  for (const Layer<scalar_t>& layer : group.layers()) {
    stored_u.push_back({layer.u, T(1)});
    stored_v.push_back({layer.v, T(1)});
    u_out.push_back(layer.u);
    v_out.push_back(layer.v);
  }
  std::vector<Source<T>> u = stored_u;
  for (int64_t it = 0; it < n; ++it) {
    group.product(0, u, none);
    const std::vector<Source<T>> v = group.merge(0, eps);
    // Only the last iteration's v is stored; the first product reads the stored u before any u
    // is stored, in sigmas().
    group.product(1, v, it == n - 1 ? v_out : none);
    u = group.merge(1, eps);
  }
  if (n == 0) {
    group.product(1, stored_v, none);
    group.merge(1, eps);
  }
  group.sigmas(u, n > 0 ? u_out : none, sigma);
}

at::Tensor sn_power_iteration_cpu(at::TensorList weights, at::TensorList us, at::TensorList vs,
                                  int64_t n_power_iterations, double eps) {
  check_sn_power_iteration_args(weights, us, vs, n_power_iterations, eps);
  const at::ScalarType dtype = weights[0].scalar_type();
  at::Tensor sigmas = at::empty({static_cast<int64_t>(weights.size())},
                                weights[0].options().dtype(sn_acc_type(dtype)));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "sn_power_iteration", [&] {
    power_iteration<scalar_t>(weights, us, vs, n_power_iterations, eps,
                              sigmas.mutable_data_ptr<at::opmath_type<scalar_t>>());
  });
  return sigmas;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, CPU, m) { m.impl("sn_power_iteration", &sn_power_iteration_cpu); }

}  // namespace spectral_norm
}  // namespace fastgan
