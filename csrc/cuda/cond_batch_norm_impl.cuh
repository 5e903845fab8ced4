// What the kernels of fastgan::cond_bn_* share (cond_batch_norm.cu: the elementwise passes,
// cond_batch_norm_reduce.cu: the reductions): kernel parameters, the per-element math, and the
// host-side choice of layout and index width. Internal to those two files.
//
// Every kernel sees its tensors as [B, C, S] and runs its threads along the axis with unit stride
// in x, so that warps read and write contiguous memory in both layouts GANs use:
//   rows     S innermost (NCHW, and the fallback for any other strides): a thread takes V
//            consecutive s of one (b, c) row;
//   columns  C innermost (channels_last): a thread takes V consecutive channels of a (b, s) row
//            and keeps their per-channel constants in registers while it walks down the rows.
// V is 16 bytes of elements (one vector access) where the axis length, every operand's strides and
// its alignment allow, else 1. Each thread issues kUnroll independent loads per tensor before it
// uses any, which keeps enough bytes in flight to cover DRAM latency.
#pragma once

#include <algorithm>
#include <climits>
#include <cstdint>
#include <type_traits>

#include "cond_batch_norm.cuh"
#include "utils.cuh"

namespace fastgan {
namespace cuda {
namespace cbn {

using A = float;
constexpr int kThreads = 256;
constexpr int kUnroll = 4;
constexpr int64_t kMaxGridY = 65535;
// Channel vectors across a column-kernel block: 32 keeps a warp on 512 contiguous bytes of a row.
constexpr int64_t kMaxWidth = 32;

template <typename T>
constexpr int kVec = 16 / static_cast<int>(sizeof(T));

template <typename Index>
struct Strides {
  Index b, c, s;
};

template <typename Index>
__device__ __forceinline__ Index offset(const Strides<Index>& st, Index b, Index c, Index s) {
  return b * st.b + c * st.c + s * st.s;
}

template <typename T, typename Index>
struct Params {
  Index batch, channels, size;
  const T* x;
  Strides<Index> xs;
  const T* dy;  // backward passes
  Strides<Index> dys;
  T* out;       // y or grad_x
  Strides<Index> outs;
  const A* mean;
  const A* invstd;
  const A* mean_dxhat;  // bwd_dx in training; nullptr otherwise
  const A* mean_dxhat_xhat;
  const T* gain;
  Index gain_b, gain_c;
  const T* bias;
  Index bias_b, bias_c;
  Activation act;
  A slope;
  A* result0;     // reductions: mean / sum_dz, [segments]
  A* result1;     // var / sum_dz_xhat
  void* partials; // [segments][splits] when a segment spans several blocks
};

// The constants of channel c of sample b.
struct Coef {
  A mean, invstd, gain, bias, m1, m2;
};

template <typename T, typename Index>
__device__ __forceinline__ Coef coef(const Params<T, Index>& p, Index b, Index c) {
  return {p.mean[c],
          p.invstd[c],
          p.gain ? to_acc(p.gain[b * p.gain_b + c * p.gain_c]) : A(1),
          p.bias ? to_acc(p.bias[b * p.bias_b + c * p.bias_c]) : A(0),
          p.mean_dxhat ? p.mean_dxhat[c] : A(0),
          p.mean_dxhat_xhat ? p.mean_dxhat_xhat[c] : A(0)};
}

// The reference's order of operations; a missing gain / bias (1 / 0) leaves z == xhat exactly.
__device__ __forceinline__ A xhat_of(const Coef& k, A x) { return (x - k.mean) * k.invstd; }
__device__ __forceinline__ A z_of(const Coef& k, A xhat) { return fmaf(xhat, k.gain, k.bias); }

// Threads and blocks of a column kernel: a block is width x height threads (channel vectors x
// rows) and covers `chunk` rows of one row segment; grid = (segments * splits, channel groups).
template <typename Index>
struct ColsPlan {
  Index vectors;      // C / V
  Index width, height;
  Index height_pow2;  // smallest power of two >= height
  Index rows;         // rows per segment
  Index splits, chunk;
  Divmod<Index> size; // row of a segment -> (b, s)
};

// ---- host side -----------------------------------------------------------------------------

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline int64_t next_pow2(int64_t v) {
  int64_t p = 1;
  while (p < v) p *= 2;
  return p;
}

// A [B, C, S] operand; size-1 dimensions get stride 0, which they never move the address by, so
// that they cannot spoil the contiguity and alignment tests.
struct Operand {
  const void* data = nullptr;
  int64_t st[3] = {0, 0, 0};
};

inline Operand make_operand(const void* data, const int64_t strides[3], const int64_t sizes[3]) {
  Operand o;
  o.data = data;
  for (int d = 0; d < 3; ++d) o.st[d] = sizes[d] == 1 ? 0 : strides[d];
  return o;
}

// A pass's operands (x first; dy and out where the pass has them) and how its kernels walk them.
struct Problem {
  int64_t sizes[3];  // B, C, S
  Operand ops[3];
  int count;
  bool cols;  // C innermost, else S
  bool vec;   // 16-byte vectors along the inner axis
  bool wide;  // 64-bit indexing
  int64_t gain_st[2], bias_st[2];
};

inline bool fits_int32(const int64_t sizes[], const int64_t strides[], int dims) {
  int64_t numel = 1, last = 0;
  for (int d = 0; d < dims; ++d) {
    numel *= sizes[d];
    last += (sizes[d] - 1) * strides[d];
  }
  return numel <= INT32_MAX && last <= INT32_MAX;
}

// Checks the arguments and picks the layout: threads follow x's unit-stride axis (S when it has
// one, else C when it has one, else S with scalar strided accesses).
inline cudaError_t make_problem(const CondBnInputs& in, bool stats, const Operand* extra,
                                int extra_count, Problem* pr) {
  const int64_t* sz = pr->sizes;
  pr->sizes[0] = in.batch;
  pr->sizes[1] = in.channels;
  pr->sizes[2] = in.size;
  if (in.batch < 0 || in.channels < 0 || in.size < 0 || in.batch * in.size < 1 ||
      in.dtype == DType::kFloat64 || (in.channels > 0 && !in.x)) {
    return cudaErrorInvalidValue;
  }
  if (!stats && in.channels > 0 &&
      (!in.mean || !in.invstd ||
       (in.act != Activation::kNone && in.act != Activation::kRelu &&
        in.act != Activation::kLeakyRelu))) {
    return cudaErrorInvalidValue;
  }
  pr->ops[0] = make_operand(in.x, in.x_strides, sz);
  pr->count = 1 + extra_count;
  for (int i = 0; i < extra_count; ++i) pr->ops[1 + i] = extra[i];
  const int64_t bc[2] = {in.batch, in.channels};
  for (int d = 0; d < 2; ++d) {
    pr->gain_st[d] = bc[d] == 1 ? 0 : in.gain_strides[d];
    pr->bias_st[d] = bc[d] == 1 ? 0 : in.bias_strides[d];
  }
  if (!stats && ((in.gain && (pr->gain_st[0] < 0 || pr->gain_st[1] < 0)) ||
                 (in.bias && (pr->bias_st[0] < 0 || pr->bias_st[1] < 0)))) {
    return cudaErrorInvalidValue;
  }
  const Operand& x = pr->ops[0];
  pr->cols = x.st[2] != 1 && x.st[1] == 1;
  const int inner = pr->cols ? 1 : 2;
  const int64_t elem = in.dtype == DType::kFloat32 ? 4 : 2;
  const int64_t v = 16 / elem;
  pr->vec = sz[inner] % v == 0;
  pr->wide = false;
  for (int i = 0; i < pr->count; ++i) {
    const Operand& o = pr->ops[i];
    for (int d = 0; d < 3; ++d) {
      if (o.st[d] < 0) return cudaErrorInvalidValue;
      if (d == inner ? o.st[d] != 1 : o.st[d] % v != 0) pr->vec = false;
    }
    if (reinterpret_cast<uintptr_t>(o.data) % 16 != 0) pr->vec = false;
    pr->wide = pr->wide || !fits_int32(sz, o.st, 3);
  }
  if (!stats) {
    pr->wide = pr->wide || (in.gain && !fits_int32(bc, pr->gain_st, 2)) ||
               (in.bias && !fits_int32(bc, pr->bias_st, 2));
  }
  return cudaSuccess;
}

template <typename Index>
Strides<Index> strides_of(const Operand& o) {
  return {static_cast<Index>(o.st[0]), static_cast<Index>(o.st[1]), static_cast<Index>(o.st[2])};
}

template <typename T, typename Index>
Params<T, Index> make_params(const CondBnInputs& in, const Problem& pr) {
  Params<T, Index> p{};
  p.batch = static_cast<Index>(in.batch);
  p.channels = static_cast<Index>(in.channels);
  p.size = static_cast<Index>(in.size);
  p.x = static_cast<const T*>(pr.ops[0].data);
  p.xs = strides_of<Index>(pr.ops[0]);
  p.mean = in.mean;
  p.invstd = in.invstd;
  p.gain = static_cast<const T*>(in.gain);
  p.gain_b = static_cast<Index>(pr.gain_st[0]);
  p.gain_c = static_cast<Index>(pr.gain_st[1]);
  p.bias = static_cast<const T*>(in.bias);
  p.bias_b = static_cast<Index>(pr.bias_st[0]);
  p.bias_c = static_cast<Index>(pr.bias_st[1]);
  p.act = in.act;
  p.slope = static_cast<A>(in.negative_slope);
  return p;
}

// f(TypeTag<T>, TypeTag<Index>, integral_constant<V>) for the problem's dtype, index width and
// vector width; float64 has no kernels here (it runs on the CPU backend).
template <typename F>
cudaError_t dispatch(DType dtype, const Problem& pr, F&& f) {
  return dispatch_dtype(dtype, [&](auto type) -> cudaError_t {
    using T = typename decltype(type)::type;
    if constexpr (std::is_same_v<T, double>) {
      return cudaErrorInvalidValue;
    } else {
      auto with_index = [&](auto index) -> cudaError_t {
        if (pr.vec) return f(type, index, std::integral_constant<int, kVec<T>>{});
        return f(type, index, std::integral_constant<int, 1>{});
      };
      return pr.wide ? with_index(TypeTag<uint64_t>{}) : with_index(TypeTag<uint32_t>{});
    }
  });
}

// Blocks of `threads` threads that the device holds at once for `kernel`.
template <typename Kernel>
cudaError_t resident_blocks(Kernel kernel, int64_t threads, int64_t* blocks) {
  int device = 0, sms = 0, per_sm = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) {
    err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  }
  if (err == cudaSuccess) {
    err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel,
                                                        static_cast<int>(threads), 0);
  }
  *blocks = int64_t{sms} * std::max(per_sm, 1);
  return err;
}

// The share of the device's block slots that `blocks` blocks of equal work keep busy, over the
// waves of `resident` blocks they take: 768 blocks on 528 slots leave a half-empty second wave.
inline double wave_efficiency(int64_t blocks, int64_t resident) {
  return static_cast<double>(blocks) / static_cast<double>(ceil_div(blocks, resident) * resident);
}

// Into how many pieces (of at least `min_piece`) to cut each of `base` equal work items of
// `length`: the fewest that keep the most block slots busy, at most 8 waves' worth.
inline int64_t best_splits(int64_t base, int64_t length, int64_t min_piece, int64_t resident) {
  const int64_t most =
      std::min(ceil_div(length, min_piece), std::max<int64_t>(1, 8 * resident / base));
  int64_t best = 1;
  double best_efficiency = wave_efficiency(base, resident);
  for (int64_t s = 2; s <= most; ++s) {
    const int64_t pieces = ceil_div(length, ceil_div(length, s));  // what a chunk size can give
    const double efficiency = wave_efficiency(base * pieces, resident);
    if (efficiency > best_efficiency + 0.01) {
      best = pieces;
      best_efficiency = efficiency;
    }
  }
  return best;
}

// The column kernels' block shape for C / V channel vectors.
struct ColsShape {
  int64_t vectors, width, height, groups;
  int64_t threads() const { return width * height; }
};

inline ColsShape cols_shape(int64_t channel_vectors) {
  const int64_t width = std::min(channel_vectors, kMaxWidth);
  return {channel_vectors, width, kThreads / width, ceil_div(channel_vectors, width)};
}

// Cuts each segment's `rows` into `splits` chunks (fewer when that leaves no row to the last).
template <typename Index>
ColsPlan<Index> cols_plan(const ColsShape& sh, int64_t rows, int64_t splits, int64_t size) {
  ColsPlan<Index> g;
  const int64_t chunk = ceil_div(rows, std::max<int64_t>(splits, 1));
  g.vectors = static_cast<Index>(sh.vectors);
  g.width = static_cast<Index>(sh.width);
  g.height = static_cast<Index>(sh.height);
  g.height_pow2 = static_cast<Index>(next_pow2(sh.height));
  g.rows = static_cast<Index>(rows);
  g.chunk = static_cast<Index>(chunk);
  g.splits = static_cast<Index>(ceil_div(rows, chunk));
  g.size = Divmod<Index>(static_cast<Index>(size));
  return g;
}

}  // namespace cbn
}  // namespace cuda
}  // namespace fastgan
