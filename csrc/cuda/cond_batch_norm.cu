// CUDA kernels of fastgan::cond_bn_fwd and cond_bn_bwd_dx, the elementwise passes (contract:
// fastgan/ops/batch_norm/README.md; layouts: cond_batch_norm_impl.cuh). The reductions are in
// cond_batch_norm_reduce.cu.
//
// Rows (S innermost): a grid-stride loop over the flat [B, C, S / V] index, so a warp reads and
// writes 32 consecutive vectors whatever S is (S = 16 at BigGAN's 4x4 stage), and each vector
// looks its four (b, c) constants up in L1. Columns (C innermost): a block owns one sample b, a
// group of channel vectors and a chunk of rows; each thread loads its channels' constants once.
#include <algorithm>

#include "cond_batch_norm_impl.cuh"

namespace fastgan {
namespace cuda {
namespace {

using namespace cbn;

// act(z) forward; backward grad_x = invstd * (dz * gain [- m1 - xhat * m2 when training]).
template <bool kBwd>
__device__ __forceinline__ A map_value(const Coef& k, A x, A dy, Activation act, A slope,
                                       bool train) {
  const A xhat = xhat_of(k, x);
  const A z = z_of(k, xhat);
  if constexpr (!kBwd) {
    return act_fwd(act, z, slope);
  } else {
    const A dxhat = act_grad(act, z, dy, slope) * k.gain;
    return (train ? dxhat - k.m1 - xhat * k.m2 : dxhat) * k.invstd;
  }
}

template <typename T, int V, typename Index, bool kBwd>
__global__ void __launch_bounds__(kThreads)
    cond_bn_rows_map_kernel(const Params<T, Index> p, const Divmod<Index> row_vectors,
                            const Divmod<Index> channels, const Index total) {
  // The kUnroll vectors of a thread lie a grid apart, so that every block does the same number of
  // iterations (the last one masked alike everywhere) and the blocks end together.
  const Index stride = gridDim.x * Index{kThreads};
  const bool train = p.mean_dxhat != nullptr;
  for (Index i = blockIdx.x * Index{kThreads} + threadIdx.x; i < total; i += stride * kUnroll) {
    Index b[kUnroll] = {}, c[kUnroll] = {}, s[kUnroll] = {};
    A xv[kUnroll][V] = {}, dv[kUnroll][V] = {};
    // All loads before any store: the compiler may not move loads past stores that could alias.
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const Index j = i + u * stride;
      if (j >= total) continue;
      const Index r = row_vectors.div(j);
      s[u] = (j - r * row_vectors.divisor) * V;
      b[u] = channels.div(r);
      c[u] = r - b[u] * p.channels;
      load_row<V>(p.x + offset(p.xs, b[u], c[u], s[u]), Index{1}, V > 1, xv[u]);
      if constexpr (kBwd) {
        load_row<V>(p.dy + offset(p.dys, b[u], c[u], s[u]), Index{1}, V > 1, dv[u]);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (i + u * stride >= total) continue;
      const Coef k = coef(p, b[u], c[u]);
      A out[V];
#pragma unroll
      for (int e = 0; e < V; ++e) {
        out[e] = map_value<kBwd>(k, xv[u][e], dv[u][e], p.act, p.slope, train);
      }
      store_row<V>(p.out + offset(p.outs, b[u], c[u], s[u]), Index{1}, V > 1, out);
    }
  }
}

template <typename T, int V, typename Index, bool kBwd>
__global__ void __launch_bounds__(kThreads)
    cond_bn_cols_map_kernel(const Params<T, Index> p, const ColsPlan<Index> g) {
  const Index col = threadIdx.x % g.width, lane = threadIdx.x / g.width;
  const Index cv = blockIdx.y * g.width + col;
  if (cv >= g.vectors) return;
  const Index b = blockIdx.x / g.splits, r0 = (blockIdx.x - b * g.splits) * g.chunk;
  const Index r1 = min(r0 + g.chunk, p.size), c0 = cv * V;
  const bool train = p.mean_dxhat != nullptr;
  Coef k[V];
#pragma unroll
  for (int e = 0; e < V; ++e) k[e] = coef(p, b, c0 + e);
  for (Index r = r0 + lane; r < r1; r += g.height * kUnroll) {
    A xv[kUnroll][V] = {}, dv[kUnroll][V] = {};
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const Index s = r + u * g.height;
      if (s >= r1) continue;
      load_row<V>(p.x + offset(p.xs, b, c0, s), Index{1}, V > 1, xv[u]);
      if constexpr (kBwd) load_row<V>(p.dy + offset(p.dys, b, c0, s), Index{1}, V > 1, dv[u]);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const Index s = r + u * g.height;
      if (s >= r1) continue;
      A out[V];
#pragma unroll
      for (int e = 0; e < V; ++e) {
        out[e] = map_value<kBwd>(k[e], xv[u][e], dv[u][e], p.act, p.slope, train);
      }
      store_row<V>(p.out + offset(p.outs, b, c0, s), Index{1}, V > 1, out);
    }
  }
}

// ---- host side -----------------------------------------------------------------------------

template <bool kBwd, typename T, typename Index, int V>
cudaError_t launch_map(const CondBnInputs& in, const Problem& pr, const A* mean_dxhat,
                       const A* mean_dxhat_xhat, cudaStream_t stream) {
  Params<T, Index> p = make_params<T, Index>(in, pr);
  const Operand& out = pr.ops[pr.count - 1];
  p.out = static_cast<T*>(const_cast<void*>(out.data));
  p.outs = strides_of<Index>(out);
  if constexpr (kBwd) {
    p.dy = static_cast<const T*>(pr.ops[1].data);
    p.dys = strides_of<Index>(pr.ops[1]);
    p.mean_dxhat = mean_dxhat;
    p.mean_dxhat_xhat = mean_dxhat_xhat;
  }
  const int64_t B = in.batch, C = in.channels, S = in.size;
  int64_t resident = 0;
  cudaError_t err;
  if (pr.cols) {
    const auto kernel = cond_bn_cols_map_kernel<T, V, Index, kBwd>;
    const ColsShape sh = cols_shape(C / V);
    if (sh.groups > kMaxGridY) return cudaErrorInvalidValue;
    err = resident_blocks(kernel, sh.threads(), &resident);
    if (err != cudaSuccess) return err;
    // Rows split only as far as it takes to fill whole waves: each block loads its constants.
    const int64_t splits = best_splits(B * sh.groups, S, sh.height * kUnroll, resident);
    const ColsPlan<Index> g = cols_plan<Index>(sh, S, splits, S);
    if (B * static_cast<int64_t>(g.splits) > INT32_MAX) return cudaErrorInvalidValue;
    kernel<<<dim3(static_cast<unsigned>(B * g.splits), static_cast<unsigned>(sh.groups)),
             dim3(static_cast<unsigned>(sh.threads())), 0, stream>>>(p, g);
  } else {
    const auto kernel = cond_bn_rows_map_kernel<T, V, Index, kBwd>;
    err = resident_blocks(kernel, kThreads, &resident);
    if (err != cudaSuccess) return err;
    const int64_t total = B * C * (S / V);
    const int64_t blocks = std::min(ceil_div(total, int64_t{kThreads} * kUnroll), resident);
    kernel<<<dim3(static_cast<unsigned>(blocks)), dim3(kThreads), 0, stream>>>(
        p, Divmod<Index>(static_cast<Index>(S / V)), Divmod<Index>(static_cast<Index>(C)),
        static_cast<Index>(total));
  }
  return cudaGetLastError();
}

template <bool kBwd>
cudaError_t map(const CondBnInputs& in, const CondBnGradOut* dy, const A* mean_dxhat,
                const A* mean_dxhat_xhat, void* out, const int64_t out_strides[3],
                cudaStream_t stream) {
  const int64_t sizes[3] = {in.batch, in.channels, in.size};
  Operand extra[2];
  int count = 0;
  if (kBwd) extra[count++] = make_operand(dy->data, dy->strides, sizes);
  extra[count++] = make_operand(out, out_strides, sizes);
  Problem pr;
  const cudaError_t err = make_problem(in, false, extra, count, &pr);
  if (err != cudaSuccess) return err;
  if ((mean_dxhat == nullptr) != (mean_dxhat_xhat == nullptr)) return cudaErrorInvalidValue;
  if (in.channels == 0) return cudaSuccess;
  return dispatch(in.dtype, pr, [&](auto type, auto index, auto vec) {
    using T = typename decltype(type)::type;
    using Index = typename decltype(index)::type;
    return launch_map<kBwd, T, Index, decltype(vec)::value>(in, pr, mean_dxhat, mean_dxhat_xhat,
                                                           stream);
  });
}

}  // namespace

cudaError_t cond_bn_fwd(const CondBnInputs& in, void* y, const int64_t y_strides[3],
                        cudaStream_t stream) {
  return map<false>(in, nullptr, nullptr, nullptr, y, y_strides, stream);
}

cudaError_t cond_bn_bwd_dx(const CondBnInputs& in, const CondBnGradOut& dy,
                           const float* mean_dxhat, const float* mean_dxhat_xhat, void* grad_x,
                           const int64_t grad_x_strides[3], cudaStream_t stream) {
  return map<true>(in, &dy, mean_dxhat, mean_dxhat_xhat, grad_x, grad_x_strides, stream);
}

}  // namespace cuda
}  // namespace fastgan
