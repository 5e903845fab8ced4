// CUDA kernels of fastgan::pixel_shuffle_act (contract: fastgan/ops/pixel_shuffle/README.md).
//
// Work split, shared by forward and backward: a thread owns a "unit" of input channels of one
// output channel c and loops over input pixels (n, h, w). For r = 2 and r = 4 a unit is all of c:
// its r*r input channels, contiguous in channels-last memory, and the r x r output block they fill,
// whose rows are r contiguous elements in NCHW memory; rows move as one vector access where
// aligned. Other r use one input channel per unit. A block is (units x pixels) threads, with the
// warp running along whichever of the two is contiguous in the tensor written (y forward, grad_x
// backward), so writes are coalesced in both memory formats and reads are too for matching inputs.
#include "pixel_shuffle_act.cuh"

#include <algorithm>
#include <climits>

#include "utils.cuh"

namespace fastgan {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxGridY = 65535;

// Index is uint32_t when every element offset of the launch fits in 31 bits, else uint64_t.
template <typename Index>
struct Geometry {
  Index units, pixels, r;  // units per pixel; pixels = N * H * W
  Divmod<Index> width, height;
  Index x[4], out[4];  // strides of x and of y (forward) / grad_out (backward)
};

template <typename Index>
struct Pixel {
  Index n, h, w;
};

template <typename Index>
__device__ __forceinline__ Pixel<Index> pixel_at(const Geometry<Index>& g, Index q) {
  const Index nh = g.width.div(q);
  const Index n = g.height.div(nh);
  return {n, nh - n * g.height.divisor, q - nh * g.width.divisor};
}

template <typename Index>
__device__ __forceinline__ Index offset(const Index (&s)[4], Index n, Index h, Index w) {
  return n * s[0] + h * s[2] + w * s[3];
}

// Output channel c of unit u, and the top-left (i0, j0) of the unit's part of the r x r block.
template <typename Index>
struct Unit {
  Index c, i0, j0;
};

template <int R, typename Index>
__device__ __forceinline__ Unit<Index> unit_at(Index u, Index r) {
  if constexpr (R > 0) {
    return {u, 0, 0};
  } else {
    const Index c = u / (r * r), k = u - c * r * r, i0 = k / r;
    return {c, i0, k - i0 * r};
  }
}

template <typename T, typename Index>
struct Inputs {
  Geometry<Index> g;
  const T* x;
  const T* bias;
  const T* prelu;
  bool prelu_per_channel;
  Activation act;
  Acc<T> slope;
  bool x_rows_contiguous;  // a unit's channels in one block row: x[n, cin + 0..R-1, h, w]
};

// The bias of each channel of a unit, and the slope of the unit's negative side.
template <int N, typename T, typename Index>
__device__ __forceinline__ Acc<T> unit_constants(const Inputs<T, Index>& in, Index c, Index cin,
                                                 Acc<T> (&bias)[N]) {
#pragma unroll
  for (int e = 0; e < N; ++e) bias[e] = in.bias ? to_acc(in.bias[cin + e]) : Acc<T>(0);
  return in.prelu ? to_acc(in.prelu[in.prelu_per_channel ? c : 0]) : in.slope;
}

template <typename T, typename Index>
struct FwdParams {
  Inputs<T, Index> in;
  T* y;
  bool y_rows_contiguous;  // y[n, c, h*R + i, w*R + 0..R-1]
};

template <typename T, typename Index>
struct BwdParams {
  Inputs<T, Index> in;
  const T* dy;
  T* dx;
  Index dx_strides[4];
  Index in_channels;
  bool dy_rows_contiguous, dx_rows_contiguous;
  Acc<T>* bias_partials;   // [gridDim.x][in_channels], or nullptr
  Acc<T>* prelu_partials;  // [gridDim.x][units], or nullptr
};

template <typename T, typename Index, int R>
__global__ void __launch_bounds__(kThreads)
    pixel_shuffle_act_fwd_kernel(const FwdParams<T, Index> p) {
  using A = Acc<T>;
  constexpr int kPack = R > 0 ? R : 1;  // edge of a unit's block; r == R when R > 0
  const Inputs<T, Index>& in = p.in;
  const Geometry<Index>& g = in.g;
  const Index r = R > 0 ? Index{R} : g.r;
  for (Index u = blockIdx.y * blockDim.x + threadIdx.x; u < g.units; u += gridDim.y * blockDim.x) {
    const Unit<Index> un = unit_at<R>(u, r);
    const Index cin = (un.c * r + un.i0) * r + un.j0;  // the unit's first input channel
    A bias[kPack * kPack];
    const A neg = unit_constants(in, un.c, cin, bias);
    const T* xu = in.x + cin * g.x[1];
    T* yu = p.y + un.c * g.out[1] + un.i0 * g.out[2] + un.j0 * g.out[3];
    for (Index q = blockIdx.x * blockDim.y + threadIdx.y; q < g.pixels;
         q += gridDim.x * blockDim.y) {
      const Pixel<Index> px = pixel_at(g, q);
      const T* xq = xu + offset(g.x, px.n, px.h, px.w);
      T* yq = yu + offset(g.out, px.n, px.h * r, px.w * r);
      // All loads before any store: the compiler may not move loads past stores that could alias.
      A v[kPack][kPack];
#pragma unroll
      for (int i = 0; i < kPack; ++i) {
        load_row(xq + i * kPack * g.x[1], g.x[1], in.x_rows_contiguous, v[i]);
      }
#pragma unroll
      for (int i = 0; i < kPack; ++i) {
#pragma unroll
        for (int j = 0; j < kPack; ++j) {
          v[i][j] = act_fwd(in.act, v[i][j] + bias[i * kPack + j], neg);
        }
        store_row(yq + i * g.out[2], g.out[3], p.y_rows_contiguous, v[i]);
      }
    }
  }
}

// Stage one of the backward: grad_x, plus each block's sums of grad_bias / grad_prelu per unit,
// reduced over the block's threads in a fixed tree and stored to the partials (no atomics).
template <typename T, typename Index, int R>
__global__ void __launch_bounds__(kThreads)
    pixel_shuffle_act_bwd_kernel(const BwdParams<T, Index> p) {
  using A = Acc<T>;
  constexpr int kPack = R > 0 ? R : 1;
  constexpr int kSums = kPack * kPack + 1;  // grad_bias of each channel of the unit, grad_prelu
  __shared__ A block_sums[kSums][kThreads];
  const Inputs<T, Index>& in = p.in;
  const Geometry<Index>& g = in.g;
  const Index r = R > 0 ? Index{R} : g.r;
  const unsigned t = threadIdx.y * blockDim.x + threadIdx.x;
  // Every thread runs every iteration, inactive units included: the block sums synchronize.
  for (Index u0 = blockIdx.y * blockDim.x; u0 < g.units; u0 += gridDim.y * blockDim.x) {
    const Index u = u0 + threadIdx.x;
    const bool active = u < g.units;
    const Unit<Index> un = unit_at<R>(u, r);
    const Index cin = (un.c * r + un.i0) * r + un.j0;
    A sums[kSums] = {};
    if (active) {
      A bias[kPack * kPack];
      const A neg = unit_constants(in, un.c, cin, bias);
      const T* xu = in.x + cin * g.x[1];
      const T* dyu = p.dy + un.c * g.out[1] + un.i0 * g.out[2] + un.j0 * g.out[3];
      T* dxu = p.dx + cin * p.dx_strides[1];
      for (Index q = blockIdx.x * blockDim.y + threadIdx.y; q < g.pixels;
           q += gridDim.x * blockDim.y) {
        const Pixel<Index> px = pixel_at(g, q);
        const T* xq = xu + offset(g.x, px.n, px.h, px.w);
        const T* dyq = dyu + offset(g.out, px.n, px.h * r, px.w * r);
        T* dxq = dxu + offset(p.dx_strides, px.n, px.h, px.w);
        A v[kPack][kPack], d[kPack][kPack];
#pragma unroll
        for (int i = 0; i < kPack; ++i) {
          load_row(xq + i * kPack * g.x[1], g.x[1], in.x_rows_contiguous, v[i]);
          load_row(dyq + i * g.out[2], g.out[3], p.dy_rows_contiguous, d[i]);
        }
#pragma unroll
        for (int i = 0; i < kPack; ++i) {
#pragma unroll
          for (int j = 0; j < kPack; ++j) {
            const A z = v[i][j] + bias[i * kPack + j];
            v[i][j] = act_grad(in.act, z, d[i][j], neg);
            sums[i * kPack + j] += v[i][j];
            if (p.prelu_partials) sums[kSums - 1] += z > A(0) ? A(0) : z * d[i][j];
          }
          store_row(dxq + i * kPack * p.dx_strides[1], p.dx_strides[1], p.dx_rows_contiguous, v[i]);
        }
      }
    }
    if (!p.bias_partials && !p.prelu_partials) continue;
    // Threads of one unit share threadIdx.x; sum them over threadIdx.y (a power of two).
#pragma unroll
    for (int k = 0; k < kSums; ++k) block_sums[k][t] = sums[k];
    __syncthreads();
    for (unsigned s = blockDim.y / 2; s > 0; s /= 2) {
      if (threadIdx.y < s) {
#pragma unroll
        for (int k = 0; k < kSums; ++k) block_sums[k][t] += block_sums[k][t + s * blockDim.x];
      }
      __syncthreads();
    }
    if (threadIdx.y == 0 && active) {
      if (p.bias_partials) {
        A* row = p.bias_partials + size_t{blockIdx.x} * p.in_channels + cin;
#pragma unroll
        for (int e = 0; e < kPack * kPack; ++e) row[e] = block_sums[e][t];
      }
      if (p.prelu_partials) {
        p.prelu_partials[size_t{blockIdx.x} * g.units + u] = block_sums[kSums - 1][t];
      }
    }
    __syncthreads();  // block_sums is rewritten by the next iteration
  }
}

template <typename T>
struct FinalizeParams {
  const Acc<T>* bias_partials;   // [groups][in_channels]
  const Acc<T>* prelu_partials;  // [groups][units]
  size_t groups, in_channels, units, units_per_weight, num_bias;
  T* grad_bias;
  T* grad_prelu;
};

// Stage two of the backward: block b < num_bias sums grad_bias[b] over the groups of stage one,
// each later block one grad_prelu entry over the groups and the units it covers. Fixed order.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    pixel_shuffle_act_bwd_finalize_kernel(const FinalizeParams<T> p) {
  using A = Acc<T>;
  const bool is_bias = blockIdx.x < p.num_bias;
  const size_t k = is_bias ? blockIdx.x : blockIdx.x - p.num_bias;
  const A* src = is_bias ? p.bias_partials : p.prelu_partials;
  const size_t row = is_bias ? p.in_channels : p.units;
  const size_t count = is_bias ? 1 : p.units_per_weight;  // values per group
  // Walk (group, m) in steps of blockDim.x without dividing in the loop.
  const size_t step_group = blockDim.x / count, step_m = blockDim.x % count;
  size_t group = threadIdx.x / count, m = threadIdx.x % count;
  A sum = 0;
  for (size_t i = threadIdx.x; i < p.groups * count; i += blockDim.x) {
    sum += src[group * row + k * count + m];
    group += step_group;
    m += step_m;
    if (m >= count) {
      m -= count;
      ++group;
    }
  }
  sum = block_sum<kThreads>(sum);
  if (threadIdx.x == 0) (is_bias ? p.grad_bias : p.grad_prelu)[k] = from_acc<T>(sum);
}

// ---- host side -----------------------------------------------------------------------------

// f(TypeTag<T>, TypeTag<Index>, integral_constant<R>): R = r for the unrolled r = 2 and r = 4
// kernels, 0 for any other r.
template <typename F>
cudaError_t dispatch(const PixelShuffleActInputs& in, bool wide, F&& f) {
  return dispatch_dtype(in.dtype, [&](auto type) {
    auto with_index = [&](auto index) -> cudaError_t {
      if (in.upscale == 2) return f(type, index, std::integral_constant<int, 2>{});
      if (in.upscale == 4) return f(type, index, std::integral_constant<int, 4>{});
      return f(type, index, std::integral_constant<int, 0>{});
    };
    return wide ? with_index(TypeTag<uint64_t>{}) : with_index(TypeTag<uint32_t>{});
  });
}

bool strides_valid(const int64_t s[4]) { return s[0] >= 0 && s[1] >= 0 && s[2] >= 0 && s[3] >= 0; }

cudaError_t validate(const PixelShuffleActInputs& in) {
  const int64_t r = in.upscale;
  if (r < 1 || r > INT32_MAX || in.batch < 0 || in.in_channels < 0 || in.height < 0 ||
      in.width < 0 || in.in_channels % (r * r) != 0 || !strides_valid(in.x_strides)) {
    return cudaErrorInvalidValue;
  }
  // An empty [C] weight (C == 0) has no data pointer; anything else must match the activation.
  const int64_t c = in.in_channels / (r * r);
  if (in.prelu_weight ? in.act != Activation::kPrelu || (in.prelu_numel != 1 && in.prelu_numel != c)
                      : in.act == Activation::kPrelu && c > 0) {
    return cudaErrorInvalidValue;
  }
  return cudaSuccess;
}

struct Sizes {
  int64_t x[4], y[4];
};

Sizes sizes_of(const PixelShuffleActInputs& in) {
  const int64_t r = in.upscale;
  return {{in.batch, in.in_channels, in.height, in.width},
          {in.batch, in.in_channels / (r * r), in.height * r, in.width * r}};
}

// Whether 32-bit indexing covers every element (and element offset) of a tensor.
bool fits_int32(const int64_t size[4], const int64_t stride[4]) {
  int64_t numel = 1, last = 0;
  for (int d = 0; d < 4; ++d) {
    numel *= size[d];
    last += (size[d] - 1) * stride[d];
  }
  return numel <= INT32_MAX && last <= INT32_MAX;
}

// Whether every row of R elements along dimension `along` is contiguous and R * sizeof(T)
// aligned, given that rows start at multiples of R along `along` (true for the kernels' rows).
template <typename T>
bool rows_contiguous(const void* data, const int64_t s[4], int along, int R) {
  if (R < 2 || s[along] != 1) return false;
  for (int d = 0; d < 4; ++d) {
    if (d != along && s[d] % R != 0) return false;
  }
  return reinterpret_cast<uintptr_t>(data) % (sizeof(T) * R) == 0;
}

struct LaunchShape {
  dim3 grid, block;
};

// The block's warps run along units when `units_fastest` (the tensor written is channels-last),
// else along pixels; grid.x spreads the pixels over as many blocks as the device holds at once.
template <typename Kernel>
cudaError_t launch_shape(Kernel kernel, int64_t units, int64_t pixels, bool units_fastest,
                         LaunchShape* shape) {
  int device = 0, sms = 0, per_sm = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) {
    err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  }
  if (err == cudaSuccess) {
    err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, 0);
  }
  if (err != cudaSuccess) return err;
  int64_t bx = 1;
  while (units_fastest && bx < 32 && bx < units) bx *= 2;
  const int64_t by = kThreads / bx;
  const int64_t gy = std::min((units + bx - 1) / bx, kMaxGridY);
  const int64_t resident = int64_t{sms} * std::max(per_sm, 1);
  const int64_t gx = std::max<int64_t>(1, std::min(resident / gy, (pixels + by - 1) / by));
  shape->block = dim3(static_cast<unsigned>(bx), static_cast<unsigned>(by));
  shape->grid = dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy));
  return cudaSuccess;
}

template <typename T, typename Index, int R>
Inputs<T, Index> make_inputs(const PixelShuffleActInputs& in, const int64_t out_strides[4]) {
  Inputs<T, Index> p;
  Geometry<Index>& g = p.g;
  g.units = static_cast<Index>(R > 0 ? in.in_channels / (R * R) : in.in_channels);
  g.pixels = static_cast<Index>(in.batch * in.height * in.width);
  g.r = static_cast<Index>(in.upscale);
  // A zero size leaves no pixel to decompose; 1 keeps the divisor valid.
  g.width = Divmod<Index>(static_cast<Index>(std::max<int64_t>(in.width, 1)));
  g.height = Divmod<Index>(static_cast<Index>(std::max<int64_t>(in.height, 1)));
  for (int d = 0; d < 4; ++d) {
    g.x[d] = static_cast<Index>(in.x_strides[d]);
    g.out[d] = static_cast<Index>(out_strides[d]);
  }
  p.x = static_cast<const T*>(in.x);
  p.bias = static_cast<const T*>(in.bias);
  p.prelu = static_cast<const T*>(in.prelu_weight);
  p.prelu_per_channel = in.prelu_numel > 1;
  p.act = in.act;
  p.slope = static_cast<Acc<T>>(in.negative_slope);
  p.x_rows_contiguous = rows_contiguous<T>(in.x, in.x_strides, 1, R);
  return p;
}

template <typename T, typename Index, int R>
cudaError_t launch_fwd(TypeTag<T>, TypeTag<Index>, std::integral_constant<int, R>,
                       const PixelShuffleActInputs& in, void* y, const int64_t y_strides[4],
                       cudaStream_t stream) {
  FwdParams<T, Index> p;
  p.in = make_inputs<T, Index, R>(in, y_strides);
  p.y = static_cast<T*>(y);
  p.y_rows_contiguous = rows_contiguous<T>(y, y_strides, 3, R);
  const auto kernel = pixel_shuffle_act_fwd_kernel<T, Index, R>;
  LaunchShape shape;
  const bool channels_last = y_strides[1] == 1 && y_strides[3] != 1;
  const cudaError_t err = launch_shape(kernel, p.in.g.units, p.in.g.pixels, channels_last, &shape);
  if (err != cudaSuccess) return err;
  kernel<<<shape.grid, shape.block, 0, stream>>>(p);
  return cudaGetLastError();
}

// Sizes the workspace when `bytes_needed` is given, else launches; both take the same path so
// that the number of partial-sum groups (stage one's grid.x) agrees.
template <typename T, typename Index, int R>
cudaError_t run_bwd(TypeTag<T>, TypeTag<Index>, std::integral_constant<int, R>,
                    const PixelShuffleActInputs& in, const PixelShuffleActGrads& gr,
                    void* workspace, size_t workspace_bytes, size_t* bytes_needed,
                    cudaStream_t stream) {
  using A = Acc<T>;
  BwdParams<T, Index> p;
  p.in = make_inputs<T, Index, R>(in, gr.grad_out_strides);
  p.dy = static_cast<const T*>(gr.grad_out);
  p.dx = static_cast<T*>(gr.grad_x);
  for (int d = 0; d < 4; ++d) p.dx_strides[d] = static_cast<Index>(gr.grad_x_strides[d]);
  p.in_channels = static_cast<Index>(in.in_channels);
  p.dy_rows_contiguous = rows_contiguous<T>(gr.grad_out, gr.grad_out_strides, 3, R);
  p.dx_rows_contiguous = rows_contiguous<T>(gr.grad_x, gr.grad_x_strides, 1, R);
  const auto kernel = pixel_shuffle_act_bwd_kernel<T, Index, R>;
  const size_t units = p.in.g.units;
  const bool has_work = p.in.g.pixels > 0 && units > 0;
  LaunchShape shape;
  size_t groups = 0;
  if (has_work) {
    const bool channels_last = gr.grad_x_strides[1] == 1 && gr.grad_x_strides[3] != 1;
    const cudaError_t err = launch_shape(kernel, units, p.in.g.pixels, channels_last, &shape);
    if (err != cudaSuccess) return err;
    groups = shape.grid.x;
  }
  const size_t bias_elems = gr.grad_bias ? groups * in.in_channels : 0;
  const size_t prelu_elems = gr.grad_prelu ? groups * units : 0;
  const size_t needed = (bias_elems + prelu_elems) * sizeof(A);
  if (bytes_needed) {
    *bytes_needed = needed;
    return cudaSuccess;
  }
  if (workspace_bytes < needed ||
      (needed > 0 && reinterpret_cast<uintptr_t>(workspace) % alignof(A) != 0)) {
    return cudaErrorInvalidValue;
  }
  A* partials = static_cast<A*>(workspace);
  p.bias_partials = gr.grad_bias ? partials : nullptr;
  p.prelu_partials = gr.grad_prelu ? partials + bias_elems : nullptr;
  if (has_work) {
    kernel<<<shape.grid, shape.block, 0, stream>>>(p);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  // Stage two also writes the zeros of an empty input, from groups == 0.
  const size_t units_per_channel = R > 0 ? 1 : in.upscale * in.upscale;
  const FinalizeParams<T> f{
      p.bias_partials, p.prelu_partials, groups, static_cast<size_t>(in.in_channels), units,
      in.prelu_numel == 1 ? std::max<size_t>(units, 1) : units_per_channel,
      gr.grad_bias ? static_cast<size_t>(in.in_channels) : 0, static_cast<T*>(gr.grad_bias),
      static_cast<T*>(gr.grad_prelu)};
  const size_t blocks = f.num_bias + (gr.grad_prelu ? in.prelu_numel : 0);
  if (blocks == 0) return cudaSuccess;
  const auto finalize = pixel_shuffle_act_bwd_finalize_kernel<T>;
  finalize<<<dim3(static_cast<unsigned>(blocks)), dim3(kThreads), 0, stream>>>(f);
  return cudaGetLastError();
}

cudaError_t bwd(const PixelShuffleActInputs& in, const PixelShuffleActGrads& gr, void* workspace,
                size_t workspace_bytes, size_t* bytes_needed, cudaStream_t stream) {
  const cudaError_t err = validate(in);
  if (err != cudaSuccess) return err;
  if (!strides_valid(gr.grad_out_strides) || !strides_valid(gr.grad_x_strides) ||
      (gr.grad_prelu && !in.prelu_weight)) {
    return cudaErrorInvalidValue;
  }
  const Sizes s = sizes_of(in);
  const bool wide = !fits_int32(s.x, in.x_strides) || !fits_int32(s.y, gr.grad_out_strides) ||
                    !fits_int32(s.x, gr.grad_x_strides);
  return dispatch(in, wide, [&](auto type, auto index, auto pack) {
    return run_bwd(type, index, pack, in, gr, workspace, workspace_bytes, bytes_needed, stream);
  });
}

}  // namespace

cudaError_t pixel_shuffle_act_fwd(const PixelShuffleActInputs& in, void* y,
                                  const int64_t y_strides[4], cudaStream_t stream) {
  const cudaError_t err = validate(in);
  if (err != cudaSuccess) return err;
  if (!strides_valid(y_strides)) return cudaErrorInvalidValue;
  const Sizes s = sizes_of(in);
  if (s.x[0] * s.x[1] * s.x[2] * s.x[3] == 0) return cudaSuccess;
  const bool wide = !fits_int32(s.x, in.x_strides) || !fits_int32(s.y, y_strides);
  return dispatch(in, wide, [&](auto type, auto index, auto pack) {
    return launch_fwd(type, index, pack, in, y, y_strides, stream);
  });
}

cudaError_t pixel_shuffle_act_bwd_workspace_bytes(const PixelShuffleActInputs& in,
                                                  const PixelShuffleActGrads& grads,
                                                  size_t* bytes) {
  return bwd(in, grads, nullptr, 0, bytes, nullptr);
}

cudaError_t pixel_shuffle_act_bwd(const PixelShuffleActInputs& in,
                                  const PixelShuffleActGrads& grads, void* workspace,
                                  size_t workspace_bytes, cudaStream_t stream) {
  return bwd(in, grads, workspace, workspace_bytes, nullptr, stream);
}

}  // namespace cuda
}  // namespace fastgan
