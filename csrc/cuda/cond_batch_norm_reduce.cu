// CUDA kernels of fastgan::cond_bn_stats and cond_bn_bwd_reduce, the reductions (contract:
// fastgan/ops/batch_norm/README.md; layouts: cond_batch_norm_impl.cuh).
//
// A segment is what one result reduces: channel c over B and S (stats), or row (b, c) over S
// (bwd_reduce). Each thread accumulates its share in registers, the threads of a segment combine
// theirs in a fixed tree, and each block writes one result per segment. A segment too long for
// one block is split over several, which write partial results to a workspace that a merge kernel
// combines in a fixed order: no float atomics, bitwise reproducible.
// Rows (S innermost): `group` consecutive threads (a power of two) share a segment: a whole block
// for long segments, a few lanes for BigGAN's short 4x4 rows. Columns (C innermost): each thread
// owns V channels and walks down rows; the block's rows are combined through shared memory.
// Statistics are (count, mean, M2): each thread takes the mean and centred M2 of the values it
// holds in registers, then merges them in with Chan's formula.
#include <algorithm>

#include "cond_batch_norm_impl.cuh"

namespace fastgan {
namespace cuda {
namespace {

using namespace cbn;

struct Sums2 {
  A dz, dz_xhat;
};

__device__ __forceinline__ Sums2 merge(const Sums2& a, const Sums2& b) {
  return {a.dz + b.dz, a.dz_xhat + b.dz_xhat};
}

__device__ __forceinline__ Sums2 shfl_down(const Sums2& s, unsigned offset, int width) {
  return {__shfl_down_sync(0xffffffffu, s.dz, offset, width),
          __shfl_down_sync(0xffffffffu, s.dz_xhat, offset, width)};
}

__device__ __forceinline__ void finalize(const MeanM2& s, size_t seg, A* mean, A* var) {
  mean[seg] = s.mean;
  var[seg] = s.m2 / s.n;
}

__device__ __forceinline__ void finalize(const Sums2& s, size_t seg, A* sum_dz, A* sum_dz_xhat) {
  sum_dz[seg] = s.dz;
  sum_dz_xhat[seg] = s.dz_xhat;
}

template <typename State, typename T, typename Index>
__device__ __forceinline__ void store_result(const Params<T, Index>& p, size_t seg, size_t splits,
                                             size_t split, const State& s) {
  if (splits > 1) {
    static_cast<State*>(p.partials)[seg * splits + split] = s;
  } else {
    finalize(s, seg, p.result0, p.result1);
  }
}

// Folds `count` values with mean `mean` and centred M2 `m2` into s; f = count / (s.n + count),
// shared by the channels of a column thread, which all hold the same count.
__device__ __forceinline__ void add_chunk(MeanM2& s, A count, A f, A mean, A m2) {
  const A d = mean - s.mean;
  s.m2 += m2 + d * d * s.n * f;
  s.mean = fmaf(d, f, s.mean);
  s.n += count;
}

__device__ __forceinline__ void add_sums(Sums2& s, const Coef& k, A x, A dy, Activation act,
                                         A slope) {
  const A xhat = xhat_of(k, x);
  const A dz = act_grad(act, z_of(k, xhat), dy, slope);
  s.dz += dz;
  s.dz_xhat = fmaf(dz, xhat, s.dz_xhat);
}

// v combined over each group of `group` consecutive threads (a power of two <= kThreads) in a
// fixed tree, valid in the group's first thread. Every thread of the block must call it, once.
template <typename State>
__device__ __forceinline__ State group_reduce(State v, unsigned group) {
  const int width = group < 32 ? static_cast<int>(group) : 32;
  for (int off = width / 2; off > 0; off /= 2) v = merge(v, shfl_down(v, off, width));
  if (group <= 32) return v;
  __shared__ State warp_results[kThreads / 32];
  if (threadIdx.x % 32 == 0) warp_results[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x % group == 0) {
    for (unsigned w = 1; w < group / 32; ++w) v = merge(v, warp_results[threadIdx.x / 32 + w]);
  }
  return v;
}

// Segment `seg` of the row kernels holds the vectors (b0 + j / (S / V), c, j % (S / V) * V),
// j < vectors: stats has segments c (b0 = 0, vectors = B * S / V), bwd_reduce segments
// (b0, c) = (seg / C, seg % C) of S / V vectors. grid = (segment blocks, splits).
template <typename Index>
struct RowsPlan {
  Index segments, vectors, group;
  Index splits, chunk;        // blocks per segment, vectors per block
  Divmod<Index> row_vectors;  // S / V
  Divmod<Index> channels;
};

template <typename T, int V, typename Index, bool kStats>
__global__ void __launch_bounds__(kThreads)
    cond_bn_rows_reduce_kernel(const Params<T, Index> p, const RowsPlan<Index> g) {
  using State = std::conditional_t<kStats, MeanM2, Sums2>;
  const Index lane = threadIdx.x % g.group;
  const Index seg = blockIdx.x * (kThreads / g.group) + threadIdx.x / g.group;
  State st{};
  if (seg < g.segments) {
    const Index b0 = g.channels.div(seg), c = seg - b0 * p.channels;
    const Index k0 = blockIdx.y * g.chunk, k1 = min(k0 + g.chunk, g.vectors);
    Coef k{};
    if constexpr (!kStats) k = coef(p, b0, c);
    for (Index i = k0 + lane; i < k1; i += g.group * kUnroll) {
      A xv[kUnroll][V] = {}, dv[kUnroll][V] = {};
      bool valid[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const Index j = i + u * g.group;
        valid[u] = j < k1;
        if (!valid[u]) continue;
        const Index db = g.row_vectors.div(j);
        const Index b = b0 + db, s = (j - db * g.row_vectors.divisor) * V;
        load_row<V>(p.x + offset(p.xs, b, c, s), Index{1}, V > 1, xv[u]);
        if constexpr (!kStats) load_row<V>(p.dy + offset(p.dys, b, c, s), Index{1}, V > 1, dv[u]);
      }
      if constexpr (kStats) {
        A sum = 0, count = 0;
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          if (!valid[u]) continue;
#pragma unroll
          for (int e = 0; e < V; ++e) sum += xv[u][e];
          count += V;
        }
        const A mean = sum / count;
        A m2 = 0;
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          if (!valid[u]) continue;
#pragma unroll
          for (int e = 0; e < V; ++e) m2 = fmaf(xv[u][e] - mean, xv[u][e] - mean, m2);
        }
        add_chunk(st, count, count / (st.n + count), mean, m2);
      } else {
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          if (!valid[u]) continue;
#pragma unroll
          for (int e = 0; e < V; ++e) add_sums(st, k, xv[u][e], dv[u][e], p.act, p.slope);
        }
      }
    }
  }
  st = group_reduce(st, g.group);
  if (seg < g.segments && lane == 0) store_result(p, seg, g.splits, blockIdx.y, st);
}

// Row segment `seg` of the column kernels holds rows q = seg * rows + r, r < rows, of all
// channels, with (b, s) = (q / S, q % S): stats has one segment of B * S rows, bwd_reduce one per
// sample b of S rows. Results are per (seg, c), at seg * C + c.
template <typename T, int V, typename Index, bool kStats>
__global__ void __launch_bounds__(kThreads)
    cond_bn_cols_reduce_kernel(const Params<T, Index> p, const ColsPlan<Index> g) {
  using State = std::conditional_t<kStats, MeanM2, Sums2>;
  __shared__ State tile[V][kThreads];
  const Index col = threadIdx.x % g.width, lane = threadIdx.x / g.width;
  const Index cv = blockIdx.y * g.width + col, c0 = cv * V;
  const Index seg = blockIdx.x / g.splits, split = blockIdx.x - seg * g.splits;
  State st[V] = {};
  if (cv < g.vectors) {
    const Index r0 = split * g.chunk, r1 = min(r0 + g.chunk, g.rows), base = seg * g.rows;
    Coef k[kStats ? 1 : V] = {};
    if constexpr (!kStats) {
#pragma unroll
      for (int e = 0; e < V; ++e) k[e] = coef(p, seg, c0 + e);
    }
    for (Index r = r0 + lane; r < r1; r += g.height * kUnroll) {
      A xv[kUnroll][V] = {}, dv[kUnroll][V] = {};
      bool valid[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const Index q = base + r + u * g.height;
        valid[u] = r + u * g.height < r1;
        if (!valid[u]) continue;
        const Index b = g.size.div(q), s = q - b * p.size;
        load_row<V>(p.x + offset(p.xs, b, c0, s), Index{1}, V > 1, xv[u]);
        if constexpr (!kStats) load_row<V>(p.dy + offset(p.dys, b, c0, s), Index{1}, V > 1, dv[u]);
      }
      if constexpr (kStats) {
        A count = 0;
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) count += valid[u] ? A(1) : A(0);
        const A inv = A(1) / count, f = count / (st[0].n + count);
#pragma unroll
        for (int e = 0; e < V; ++e) {
          A sum = 0;
#pragma unroll
          for (int u = 0; u < kUnroll; ++u) sum += valid[u] ? xv[u][e] : A(0);
          const A mean = sum * inv;
          A m2 = 0;
#pragma unroll
          for (int u = 0; u < kUnroll; ++u) {
            if (valid[u]) m2 = fmaf(xv[u][e] - mean, xv[u][e] - mean, m2);
          }
          add_chunk(st[e], count, f, mean, m2);
        }
      } else {
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          if (!valid[u]) continue;
#pragma unroll
          for (int e = 0; e < V; ++e) add_sums(st[e], k[e], xv[u][e], dv[u][e], p.act, p.slope);
        }
      }
    }
  }
  // The block's rows: a fixed tree over `lane` (height need not be a power of two).
#pragma unroll
  for (int e = 0; e < V; ++e) tile[e][threadIdx.x] = st[e];
  __syncthreads();
  for (Index h = g.height_pow2 / 2; h > 0; h /= 2) {
    if (lane < h && lane + h < g.height) {
#pragma unroll
      for (int e = 0; e < V; ++e) {
        tile[e][threadIdx.x] = merge(tile[e][threadIdx.x], tile[e][threadIdx.x + h * g.width]);
      }
    }
    __syncthreads();
  }
  if (cv < g.vectors && lane == 0) {
#pragma unroll
    for (int e = 0; e < V; ++e) {
      store_result(p, size_t{seg} * p.channels + c0 + e, g.splits, split, tile[e][threadIdx.x]);
    }
  }
}

// Merges the partial results of each segment in order of their split; a warp per segment.
template <typename State>
__global__ void __launch_bounds__(kThreads)
    cond_bn_merge_kernel(const State* partials, size_t segments, size_t splits, A* result0,
                         A* result1) {
  const size_t seg = size_t{blockIdx.x} * (kThreads / 32) + threadIdx.x / 32;
  if (seg >= segments) return;  // the whole warp: seg is the same across it
  const unsigned lane = threadIdx.x % 32;
  State v{};
  for (size_t j = lane; j < splits; j += 32) v = merge(v, partials[seg * splits + j]);
  for (int off = 16; off > 0; off /= 2) v = merge(v, shfl_down(v, off, 32));
  if (lane == 0) finalize(v, seg, result0, result1);
}

// ---- host side -----------------------------------------------------------------------------

struct Launch {
  dim3 grid, block;
  int64_t segments, splits;  // results, and partials per result (1: no workspace, no merge)
};

// The partition depends on the sizes, the layout and the device's resident block count (never on
// timing), so every call on one GPU model adds the same numbers in the same order.
template <typename Index>
cudaError_t rows_plan(bool stats, const int64_t sizes[3], int V, int64_t resident,
                      RowsPlan<Index>* g, Launch* l) {
  const int64_t B = sizes[0], C = sizes[1], S = sizes[2];
  const int64_t vectors = stats ? B * (S / V) : S / V, segments = stats ? C : B * C;
  // A few vectors per thread; more threads per segment while that still adds blocks.
  int64_t group = std::min<int64_t>(kThreads, next_pow2(ceil_div(vectors, kUnroll)));
  while (group < kThreads && group < vectors && ceil_div(segments, kThreads / group) < resident) {
    group *= 2;
  }
  const int64_t blocks = ceil_div(segments, kThreads / group);
  // Few, long segments: split them until the blocks fill whole waves.
  int64_t splits =
      group == kThreads ? best_splits(blocks, vectors, kThreads * kUnroll, resident) : 1;
  const int64_t chunk = ceil_div(vectors, splits);
  splits = ceil_div(vectors, chunk);
  if (blocks > INT32_MAX || splits > kMaxGridY) return cudaErrorInvalidValue;
  g->segments = static_cast<Index>(segments);
  g->vectors = static_cast<Index>(vectors);
  g->group = static_cast<Index>(group);
  g->splits = static_cast<Index>(splits);
  g->chunk = static_cast<Index>(chunk);
  g->row_vectors = Divmod<Index>(static_cast<Index>(S / V));
  g->channels = Divmod<Index>(static_cast<Index>(C));
  *l = {dim3(static_cast<unsigned>(blocks), static_cast<unsigned>(splits)), dim3(kThreads),
        segments, splits};
  return cudaSuccess;
}

template <typename Index>
cudaError_t cols_reduce_plan(bool stats, const int64_t sizes[3], int V, int64_t resident,
                             ColsPlan<Index>* g, Launch* l) {
  const int64_t B = sizes[0], C = sizes[1], S = sizes[2];
  const ColsShape sh = cols_shape(C / V);
  const int64_t segments = stats ? 1 : B, rows = stats ? B * S : S;
  const int64_t splits =
      best_splits(segments * sh.groups, rows, sh.height * kUnroll, resident);
  *g = cols_plan<Index>(sh, rows, splits, S);
  const int64_t grid_x = segments * static_cast<int64_t>(g->splits);
  if (sh.groups > kMaxGridY || grid_x > INT32_MAX) return cudaErrorInvalidValue;
  *l = {dim3(static_cast<unsigned>(grid_x), static_cast<unsigned>(sh.groups)),
        dim3(static_cast<unsigned>(sh.threads())), segments * C,
        static_cast<int64_t>(g->splits)};
  return cudaSuccess;
}

// Sizes the workspace when `bytes_needed` is given, else launches; both take the same path so
// that they agree on the partition.
template <bool kStats, typename T, typename Index, int V>
cudaError_t run_reduce(const CondBnInputs& in, const Problem& pr, A* result0, A* result1,
                       void* workspace, size_t workspace_bytes, size_t* bytes_needed,
                       cudaStream_t stream) {
  using State = std::conditional_t<kStats, MeanM2, Sums2>;
  Params<T, Index> p = make_params<T, Index>(in, pr);
  if constexpr (!kStats) {
    p.dy = static_cast<const T*>(pr.ops[1].data);
    p.dys = strides_of<Index>(pr.ops[1]);
  }
  p.result0 = result0;
  p.result1 = result1;
  const auto rows_kernel = cond_bn_rows_reduce_kernel<T, V, Index, kStats>;
  const auto cols_kernel = cond_bn_cols_reduce_kernel<T, V, Index, kStats>;
  RowsPlan<Index> rows{};
  ColsPlan<Index> cols{};
  Launch l;
  int64_t resident = 0;
  cudaError_t err =
      pr.cols ? resident_blocks(cols_kernel, cols_shape(in.channels / V).threads(), &resident)
              : resident_blocks(rows_kernel, kThreads, &resident);
  if (err != cudaSuccess) return err;
  err = pr.cols ? cols_reduce_plan<Index>(kStats, pr.sizes, V, resident, &cols, &l)
                : rows_plan<Index>(kStats, pr.sizes, V, resident, &rows, &l);
  if (err != cudaSuccess) return err;
  const size_t needed =
      l.splits > 1 ? static_cast<size_t>(l.segments * l.splits) * sizeof(State) : 0;
  if (bytes_needed) {
    *bytes_needed = needed;
    return cudaSuccess;
  }
  if (workspace_bytes < needed ||
      (needed > 0 && reinterpret_cast<uintptr_t>(workspace) % alignof(State) != 0)) {
    return cudaErrorInvalidValue;
  }
  p.partials = workspace;
  if (pr.cols) {
    cols_kernel<<<l.grid, l.block, 0, stream>>>(p, cols);
  } else {
    rows_kernel<<<l.grid, l.block, 0, stream>>>(p, rows);
  }
  err = cudaGetLastError();
  if (err != cudaSuccess || l.splits == 1) return err;
  const int64_t blocks = ceil_div(l.segments, kThreads / 32);
  if (blocks > INT32_MAX) return cudaErrorInvalidValue;
  cond_bn_merge_kernel<State><<<dim3(static_cast<unsigned>(blocks)), dim3(kThreads), 0, stream>>>(
      static_cast<const State*>(workspace), static_cast<size_t>(l.segments),
      static_cast<size_t>(l.splits), result0, result1);
  return cudaGetLastError();
}

template <bool kStats>
cudaError_t reduce(const CondBnInputs& in, const CondBnGradOut* dy, A* result0, A* result1,
                   void* workspace, size_t workspace_bytes, size_t* bytes_needed,
                   cudaStream_t stream) {
  const int64_t sizes[3] = {in.batch, in.channels, in.size};
  Operand extra[1];
  if (!kStats) extra[0] = make_operand(dy->data, dy->strides, sizes);
  Problem pr;
  const cudaError_t err = make_problem(in, kStats, extra, kStats ? 0 : 1, &pr);
  if (err != cudaSuccess) return err;
  if (in.channels == 0) {
    if (bytes_needed) *bytes_needed = 0;
    return cudaSuccess;
  }
  return dispatch(in.dtype, pr, [&](auto type, auto index, auto vec) {
    using T = typename decltype(type)::type;
    using Index = typename decltype(index)::type;
    return run_reduce<kStats, T, Index, decltype(vec)::value>(
        in, pr, result0, result1, workspace, workspace_bytes, bytes_needed, stream);
  });
}

}  // namespace

cudaError_t cond_bn_stats_workspace_bytes(const CondBnInputs& in, size_t* bytes) {
  return reduce<true>(in, nullptr, nullptr, nullptr, nullptr, 0, bytes, nullptr);
}

cudaError_t cond_bn_stats(const CondBnInputs& in, float* mean, float* var, void* workspace,
                          size_t workspace_bytes, cudaStream_t stream) {
  return reduce<true>(in, nullptr, mean, var, workspace, workspace_bytes, nullptr, stream);
}

cudaError_t cond_bn_bwd_reduce_workspace_bytes(const CondBnInputs& in, const CondBnGradOut& dy,
                                               size_t* bytes) {
  return reduce<false>(in, &dy, nullptr, nullptr, nullptr, 0, bytes, nullptr);
}

cudaError_t cond_bn_bwd_reduce(const CondBnInputs& in, const CondBnGradOut& dy, float* sum_dz,
                               float* sum_dz_xhat, void* workspace, size_t workspace_bytes,
                               cudaStream_t stream) {
  return reduce<false>(in, &dy, sum_dz, sum_dz_xhat, workspace, workspace_bytes, nullptr, stream);
}

}  // namespace cuda
}  // namespace fastgan
