// CUDA kernels of fastgan::sn_power_iteration (contract: fastgan/ops/spectral_norm/README.md).
//
// Each layer is read as M, W or W^T, whichever has unit column stride, so that a warp reads
// consecutive addresses. An iteration is two launches over the whole group: A, v = norm(W^T u),
// and B, u = norm(W v). On M each is one of two matrix-vector products:
//   col sums  y[c] = sum_r M[r, c] x[r]: a tile is a column strip of g * V columns (a V-element
//             vector per lane, g lanes a row) times kSteps passes of 256 / g rows;
//   row dots  y[r] = sum_c M[r, c] x[c]: a tile is 256 / g rows (a row per group of g lanes)
//             times kSteps vectors of each row, or, for rows of steps < kSteps vectors,
//             kSteps / steps such groups of rows times all their vectors.
// Either way a thread reads up to kSteps 16-byte vectors per tile (a tile is up to 64 KiB of
// 16-bit weights). A work list of (layer, tile) items, larger layers first, gives one block per
// tile, so small layers run beside big ones and big ones fill the GPU. A strip is the tiles that
// add into the same outputs; each tile writes its partial sums to the workspace, and the last
// tile of a strip to arrive (an arrival counter) adds them up in tile order and writes the
// strip's raw outputs and their sum of squares; the last strip of the layer to finish adds those
// in strip order and writes y = y_raw / max(||y_raw||, eps) and, in the last launch,
// sigma = u . W v. Alignment picks vector or element loads, never the order of the sums.
// Every sum has a fixed order and the partition depends only on shapes and strides: bitwise
// reproducible. The finishing blocks reset the counters, so every launch finds them zero.
#include <algorithm>
#include <numeric>
#include <vector>

#include "spectral_norm.cuh"
#include "utils.cuh"

namespace fastgan {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// Vectors each thread reads per tile: tiles of 64 KiB (16-bit weights), large enough that the
// partial sums cost ~3% of the weight traffic, small enough that a 3 MB layer has ~50 tiles.
constexpr int kSteps = 16;
// Resident blocks per SM the register budget must allow. Two give each thread up to 128
// registers, so that the row dots keep all kSteps loads in flight (with 64 the compiler spills):
// ~128 KiB in flight per SM, several times what covers the memory latency, and one block still
// streams while the other is in its start or finish.
constexpr int kMinBlocks = 2;

enum Mode : int32_t { kColSums = 0, kRowDots = 1 };

// One layer in one launch. M is [rows, cols], element (r, c) at w[r * rs + c * cs].
struct Job {
  const void* w;
  int64_t rows, cols, rs, cs;
  int64_t out;         // outputs: cols (col sums) or rows (row dots)
  int64_t strips;      // strips of `width` outputs
  int64_t parts;       // tiles per strip; the layer has strips * parts tiles
  int64_t width;       // outputs per strip: <= kThreads (col sums), <= kThreads * kSteps
  const float* x;      // input vector, [rows] (col sums) or [cols] (row dots)
  float* y;            // output vector [out], normalised here
  float* y_raw;        // [out]
  float* partials;     // [parts][out]
  float* strip_sumsq;  // [strips]
  unsigned* strip_count;  // [strips], zero between launches
  unsigned* layer_count;  // one, zero between launches
  int32_t mode;
  int32_t log2g;       // g = 1 << log2g lanes per row of M
  int32_t steps;       // row dots: vectors of a row per lane and tile, <= kSteps
  int32_t row_steps;   // row dots: rows per row group and tile, kSteps / steps
  int32_t vec_w;       // cs == 1 and rows 16-byte aligned: vector loads of W
  int32_t vec_x;       // x 16-byte aligned: float4 loads of x (row dots)
  int32_t layer;       // index of the layer in the caller's list, for sigmas
};

// Metadata block: Header, Job jobs[2][L] (launch A, then B), int64 begin[2][L + 1] (prefix sums
// of the tiles, in job order), unsigned counters[] (zero). The launcher reads the header on the
// host; its pointers are the device copies of jobs and begin.
struct Header {
  int64_t num_layers, dtype;
  int64_t tiles[2];  // of launch A, B
  const Job* jobs;
  const int64_t* begin;
};

// What the last strip of a layer does once it has y_raw.
struct Finish {
  float eps;
  int32_t write_y;  // store y = y_raw / max(||y_raw||, eps)
  int32_t sigma;    // 0: none; 1: sigma = y . y_raw; 2: sigma = (the stored y) . y_raw (n == 0)
  float* sigmas;
};

template <typename T>
constexpr int kVec = 16 / static_cast<int>(sizeof(T));

size_t align16(size_t n) { return (n + 15) / 16 * 16; }

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Sum over the block in a fixed tree, returned to every thread. Every thread must call it; it may
// be called repeatedly.
__device__ __forceinline__ float block_sum_all(float v) {
  __shared__ float warp_sums[kWarps];
  for (int off = 16; off > 0; off /= 2) v += __shfl_down_sync(0xffffffffu, v, off);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = v;
  __syncthreads();
  float s = 0.f;
  for (int w = 0; w < kWarps; ++w) s += warp_sums[w];
  __syncthreads();
  return s;
}

// Elements c .. c + V - 1 of a row of M in fp32: one vector load (the caller checked alignment
// and c + V <= cols), or element by element with any stride, zero past the row's end.
template <int V, typename T>
__device__ __forceinline__ void load_w_vec(const T* row, int64_t c, float (&out)[V]) {
  const Vec<T, V> v = *reinterpret_cast<const Vec<T, V>*>(row + c);
#pragma unroll
  for (int e = 0; e < V; ++e) out[e] = to_acc(v.v[e]);
}

template <int V, typename T>
__device__ __forceinline__ void load_w_any(const T* row, int64_t c, const Job& job,
                                           float (&out)[V]) {
#pragma unroll
  for (int e = 0; e < V; ++e) out[e] = c + e < job.cols ? to_acc(row[(c + e) * job.cs]) : 0.f;
}

// Partial column sums of rows [part * R, part * R + R), R = kSteps * 256 / g, for the g * V
// columns of the strip.
template <typename T>
__device__ __forceinline__ void col_sums_tile(const Job& job, int64_t strip, int64_t part) {
  constexpr int V = kVec<T>;
  const int g = 1 << job.log2g, rows_per_pass = kThreads / g, width = g * V;
  const int lane = threadIdx.x % 32, li = threadIdx.x % g;
  const T* w = static_cast<const T*>(job.w);
  const int64_t c = strip * width + li * V;
  const int64_t r0 = part * kSteps * rows_per_pass + threadIdx.x / g;
  // The tile's rows of this thread: r0 + k * rows_per_pass, k < n.
  const int64_t left = job.rows > r0 ? (job.rows - r0 - 1) / rows_per_pass + 1 : 0;
  const int n = left < kSteps ? static_cast<int>(left) : kSteps;
  float acc[V] = {};
  // The same sums in the same order on both paths: the bits do not depend on the alignment.
  if (job.vec_w && c + V <= job.cols) {
#pragma unroll 8
    for (int k = 0; k < n; ++k) {
      const int64_t r = r0 + k * rows_per_pass;
      float m[V];
      load_w_vec<V>(w + r * job.rs, c, m);
      const float xr = job.x[r];
#pragma unroll
      for (int e = 0; e < V; ++e) acc[e] = fmaf(m[e], xr, acc[e]);
    }
  } else {
    for (int k = 0; k < n; ++k) {
      const int64_t r = r0 + k * rows_per_pass;
      float m[V];
      load_w_any<V>(w + r * job.rs, c, job, m);
      const float xr = job.x[r];
#pragma unroll
      for (int e = 0; e < V; ++e) acc[e] = fmaf(m[e], xr, acc[e]);
    }
  }
  // The row groups of a warp, then the warps, in a fixed order.
  __shared__ float warp_sums[kWarps][kThreads];
#pragma unroll
  for (int e = 0; e < V; ++e) {
    for (int off = 16; off >= g; off /= 2) acc[e] += __shfl_down_sync(0xffffffffu, acc[e], off);
  }
  if (lane < g) {
#pragma unroll
    for (int e = 0; e < V; ++e) warp_sums[threadIdx.x / 32][li * V + e] = acc[e];
  }
  __syncthreads();
  const int64_t col = strip * width + threadIdx.x;
  if (static_cast<int>(threadIdx.x) < width && col < job.cols) {
    float s = 0.f;
    for (int wp = 0; wp < kWarps; ++wp) s += warp_sums[wp][threadIdx.x];
    job.partials[part * job.out + col] = s;
  }
}

// Partial dot products of the strip's rows, row_steps groups of 256 / g (a row per group of g
// lanes), with `steps` vectors of each, columns [part * C, part * C + C), C = steps * g * V;
// steps * row_steps <= kSteps, so that short rows give a thread several rows rather than a tile
// of a few KiB. Each thread first takes the dot product of each of its vectors, so that all its
// loads are independent, then adds them per row, then the row's lanes in a fixed tree.
template <typename T>
__device__ __forceinline__ void row_dots_tile(const Job& job, int64_t strip, int64_t part) {
  constexpr int V = kVec<T>;
  const int g = 1 << job.log2g, li = threadIdx.x % g, rows_per_pass = kThreads / g;
  const int steps = job.steps, row_steps = job.row_steps;
  const int64_t step = int64_t{g} * V;
  const int64_t r0 = strip * job.width + threadIdx.x / g;
  const int64_t c0 = part * steps * step + li * V;
  const T* w = static_cast<const T*>(job.w);
  float dots[kSteps];
  int s = 0, k = 0;  // q = s * steps + k
  // When every vector is whole (cols % V == 0) and aligned, a branch-free path on which the
  // compiler can issue all the loads before their uses: a vector out of range re-reads the
  // thread's first one, which is in range, and counts zero, as on the other path.
  if (job.vec_w && job.vec_x && job.cols % V == 0 && r0 < job.rows && c0 < job.cols) {
#pragma unroll
    for (int q = 0; q < kSteps; ++q) {
      const int64_t r = r0 + s * rows_per_pass, c = c0 + k * step;
      const bool used = s < row_steps && r < job.rows && c < job.cols;
      float m[V];
      load_w_vec<V>(w + (used ? r : r0) * job.rs, used ? c : c0, m);
      float d = 0.f;
#pragma unroll
      for (int e = 0; e < V; e += 4) {
        const float4 x = *reinterpret_cast<const float4*>(job.x + (used ? c : c0) + e);
        d = fmaf(m[e], x.x, d);
        d = fmaf(m[e + 1], x.y, d);
        d = fmaf(m[e + 2], x.z, d);
        d = fmaf(m[e + 3], x.w, d);
      }
      dots[q] = used ? d : 0.f;
      if (++k == steps) {
        k = 0;
        ++s;
      }
    }
  } else {
    // Element by element, the same products in the same order: the bits do not depend on the
    // alignment.
#pragma unroll
    for (int q = 0; q < kSteps; ++q) {
      const int64_t r = r0 + s * rows_per_pass, c = c0 + k * step;
      float d = 0.f;
      if (s < row_steps && r < job.rows && c < job.cols) {
        float m[V];
        load_w_any<V>(w + r * job.rs, c, job, m);
#pragma unroll
        for (int e = 0; e < V; ++e) d = fmaf(m[e], c + e < job.cols ? job.x[c + e] : 0.f, d);
      }
      dots[q] = d;
      if (++k == steps) {
        k = 0;
        ++s;
      }
    }
  }
  float acc = 0.f;
  s = 0;
  k = 0;
#pragma unroll
  for (int q = 0; q < kSteps; ++q) {
    acc += dots[q];
    if (++k == steps && s < row_steps) {  // the same in every thread: the shuffles are safe
      for (int off = g / 2; off > 0; off /= 2) acc += __shfl_down_sync(0xffffffffu, acc, off, g);
      const int64_t r = r0 + s * rows_per_pass;
      if (li == 0 && r < job.rows) job.partials[part * job.out + r] = acc;
      acc = 0.f;
      k = 0;
      ++s;
    }
  }
}

// True in every thread of the block that arrives last at *count of `expected` arrivals; that one
// resets the counter for the next launch. The fences make the block's earlier global writes
// visible before its arrival, and the other blocks' writes visible to the last one. A single
// arrival needs no counter: the block's own writes are visible to it after a barrier.
__device__ __forceinline__ bool arrive_last(unsigned* count, int64_t expected) {
  if (expected == 1) {
    __syncthreads();
    return true;
  }
  __shared__ unsigned last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    last = atomicAdd(count, 1u) == static_cast<unsigned>(expected - 1);
    if (last) *count = 0;
  }
  __syncthreads();
  if (last) __threadfence();
  return last;
}

// After a tile's partials are written: the strip's last tile adds them up, the layer's last
// strip normalises.
__device__ __forceinline__ void finish_tile(const Job& job, int64_t strip, const Finish& f) {
  if (!arrive_last(job.strip_count + strip, job.parts)) return;
  const int64_t o_end = (strip + 1) * job.width < job.out ? (strip + 1) * job.width : job.out;
  float sumsq = 0.f;
  for (int64_t o = strip * job.width + threadIdx.x; o < o_end; o += kThreads) {
    float y = 0.f;
#pragma unroll 4
    for (int64_t p = 0; p < job.parts; ++p) y += __ldcg(job.partials + p * job.out + o);
    job.y_raw[o] = y;
    sumsq = fmaf(y, y, sumsq);
  }
  sumsq = block_sum_all(sumsq);
  if (threadIdx.x == 0) job.strip_sumsq[strip] = sumsq;
  if (!arrive_last(job.layer_count, job.strips)) return;
  // Spread over the block: a layer can have hundreds of strips, and this pass and the next one
  // trail the launch when they belong to its last layer.
  float part = 0.f;
  for (int64_t s = threadIdx.x; s < job.strips; s += kThreads) part += __ldcg(job.strip_sumsq + s);
  const float total = block_sum_all(part);
  const float denom = fmaxf(sqrtf(total), f.eps);  // F.normalize: y / max(||y||, eps)
  // kBatch loads issued before the stores, which the compiler may not move them past (y and
  // y_raw could alias as far as it knows).
  constexpr int kBatch = 4;
  float dot = 0.f;
  for (int64_t i0 = threadIdx.x; i0 < job.out; i0 += kBatch * kThreads) {
    float raw[kBatch];
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const int64_t i = i0 + b * kThreads;
      raw[b] = i < job.out ? __ldcg(job.y_raw + i) : 0.f;
    }
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const int64_t i = i0 + b * kThreads;
      if (i >= job.out) break;
      const float yn = raw[b] / denom;
      if (f.write_y) job.y[i] = yn;
      dot = fmaf(f.sigma == 2 ? job.y[i] : yn, raw[b], dot);
    }
  }
  if (f.sigma == 0) return;
  dot = block_sum_all(dot);
  if (threadIdx.x == 0) f.sigmas[job.layer] = dot;
}

// One block per tile of the work list `jobs` (tile prefix sums `begin`, num_jobs + 1 of them).
template <typename T>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    sn_matvec_kernel(const Job* __restrict__ jobs, const int64_t* __restrict__ begin,
                     int num_jobs, Finish f) {
  const int64_t t = blockIdx.x;
  // The job is the number of later jobs' begins <= t (they increase strictly): one round of
  // independent loads by a warp rather than a binary search's chain of dependent ones.
  __shared__ int found;
  if (threadIdx.x < 32) {
    int count = 0;
    for (int j = 1 + static_cast<int>(threadIdx.x); j - static_cast<int>(threadIdx.x) < num_jobs;
         j += 32) {
      count += __popc(__ballot_sync(0xffffffffu, j < num_jobs && begin[j] <= t));
    }
    if (threadIdx.x == 0) found = count;
  }
  __syncthreads();
  const Job& job = jobs[found];
  const int64_t local = t - begin[found];
  const int64_t strip = local / job.parts, part = local - strip * job.parts;
  if (job.mode == kColSums) col_sums_tile<T>(job, strip, part);
  else row_dots_tile<T>(job, strip, part);
  finish_tile(job, strip, f);
}

// ---- host side -----------------------------------------------------------------------------

struct Layout {
  size_t jobs, begin, counters, meta_bytes, workspace_bytes;
};

// M of a layer: the orientation whose column stride is 1 (in a row of more than one element),
// else the one with rows of more than one element, so that a warp reads along a row.
bool transposed(const SnLayer& l) {
  if (l.stride1 == 1 && l.cols > 1) return false;
  if (l.stride0 == 1 && l.rows > 1) return true;
  return l.cols == 1 && l.rows > 1;
}

// The job of layer l in launch `kind` (0: A, v = W^T u; 1: B, u = W v), without its pointers
// into the metadata and workspace.
Job plan_job(const SnLayer& l, int kind, int size) {
  Job j{};
  const bool tr = transposed(l);
  j.w = l.weight;
  j.rows = tr ? l.cols : l.rows;
  j.cols = tr ? l.rows : l.cols;
  j.rs = tr ? l.stride1 : l.stride0;
  j.cs = tr ? l.stride0 : l.stride1;
  const int V = 16 / size;
  int log2g = 0;
  while (log2g < 5 && (int64_t{V} << log2g) < j.cols) ++log2g;
  const int g = 1 << log2g;
  j.log2g = log2g;
  j.vec_w = j.cs == 1 && reinterpret_cast<uintptr_t>(l.weight) % 16 == 0 &&
            (j.rows == 1 || j.rs * size % 16 == 0);
  // W^T u is the col sums of W = M, or the row dots of W^T = M; W v the other way round.
  j.mode = (kind == 0) != tr ? kColSums : kRowDots;
  j.x = kind == 0 ? l.u : l.v;
  j.y = kind == 0 ? l.v : l.u;
  j.vec_x = reinterpret_cast<uintptr_t>(j.x) % 16 == 0;
  if (j.mode == kColSums) {
    j.out = j.cols;
    j.width = int64_t{g} * V;
    j.parts = ceil_div(j.rows, int64_t{kSteps} * (kThreads / g));
  } else {
    j.out = j.rows;
    const int64_t vectors = ceil_div(j.cols, int64_t{g} * V);  // per row and lane
    j.steps = static_cast<int32_t>(std::min<int64_t>(vectors, kSteps));
    j.row_steps = kSteps / j.steps;
    j.width = int64_t{kThreads / g} * j.row_steps;
    j.parts = ceil_div(vectors, j.steps);
  }
  j.strips = ceil_div(j.out, j.width);
  return j;
}

// Larger layers first: their tiles start first and their (longer) finishing passes overlap the
// small layers' tiles instead of trailing the launch.
std::vector<int64_t> job_order(const SnLayer* layers, int64_t n) {
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), int64_t{0});
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return layers[a].rows * layers[a].cols > layers[b].rows * layers[b].cols;
  });
  return order;
}

cudaError_t plan(DType dtype, const SnLayer* layers, int64_t n, std::vector<Job>* jobs,
                 Layout* lay) {
  if (n < 1 || n > INT32_MAX || dtype == DType::kFloat64) return cudaErrorInvalidValue;
  const int size = dtype == DType::kFloat32 ? 4 : 2;  // bytes per element
  const std::vector<int64_t> order = job_order(layers, n);
  jobs->clear();
  size_t counters = 0, floats = 0;
  for (int kind = 0; kind < 2; ++kind) {
    int64_t tiles = 0;
    for (const int64_t l : order) {
      const SnLayer& s = layers[l];
      if (s.rows < 1 || s.cols < 1 || s.stride0 < 0 || s.stride1 < 0) return cudaErrorInvalidValue;
      Job j = plan_job(s, kind, size);
      j.layer = static_cast<int32_t>(l);
      tiles += j.strips * j.parts;
      counters += static_cast<size_t>(j.strips) + 1;
      floats += static_cast<size_t>(j.out * (j.parts + 1) + j.strips);
      jobs->push_back(j);
    }
    if (tiles > INT32_MAX) return cudaErrorInvalidValue;  // one block per tile, grid.x
  }
  lay->jobs = align16(sizeof(Header));
  lay->begin = lay->jobs + align16(jobs->size() * sizeof(Job));
  lay->counters = lay->begin + align16(2 * static_cast<size_t>(n + 1) * sizeof(int64_t));
  lay->meta_bytes = lay->counters + align16(counters * sizeof(unsigned));
  lay->workspace_bytes = floats * sizeof(float);
  return cudaSuccess;
}

}  // namespace

cudaError_t sn_power_iteration_sizes(DType dtype, const SnLayer* layers, int64_t num_layers,
                                     size_t* meta_bytes, size_t* workspace_bytes) {
  std::vector<Job> jobs;
  Layout lay;
  const cudaError_t err = plan(dtype, layers, num_layers, &jobs, &lay);
  if (err != cudaSuccess) return err;
  *meta_bytes = lay.meta_bytes;
  *workspace_bytes = lay.workspace_bytes;
  return cudaSuccess;
}

cudaError_t sn_power_iteration_meta(DType dtype, const SnLayer* layers, int64_t num_layers,
                                    void* device_buffer, void* host_meta) {
  std::vector<Job> jobs;
  Layout lay;
  const cudaError_t err = plan(dtype, layers, num_layers, &jobs, &lay);
  if (err != cudaSuccess) return err;
  char* const host = static_cast<char*>(host_meta);
  char* const dev = static_cast<char*>(device_buffer);
  std::fill(host, host + lay.meta_bytes, char{0});
  auto* header = reinterpret_cast<Header*>(host);
  auto* begin = reinterpret_cast<int64_t*>(host + lay.begin);
  unsigned* counter = reinterpret_cast<unsigned*>(dev + lay.counters);
  float* ws = reinterpret_cast<float*>(dev + lay.meta_bytes);
  header->num_layers = num_layers;
  header->dtype = static_cast<int64_t>(dtype);
  header->jobs = reinterpret_cast<const Job*>(dev + lay.jobs);
  header->begin = reinterpret_cast<const int64_t*>(dev + lay.begin);
  for (int kind = 0; kind < 2; ++kind) {
    int64_t tiles = 0;
    for (int64_t i = 0; i < num_layers; ++i) {
      Job& j = jobs[static_cast<size_t>(kind * num_layers + i)];
      begin[kind * (num_layers + 1) + i] = tiles;
      tiles += j.strips * j.parts;
      j.strip_count = counter;
      j.layer_count = counter + j.strips;
      counter += j.strips + 1;
      j.y_raw = ws;
      j.partials = ws + j.out;
      j.strip_sumsq = ws + j.out * (j.parts + 1);
      ws += j.out * (j.parts + 1) + j.strips;
    }
    begin[kind * (num_layers + 1) + num_layers] = tiles;
    header->tiles[kind] = tiles;
  }
  std::copy(jobs.begin(), jobs.end(), reinterpret_cast<Job*>(host + lay.jobs));
  return cudaSuccess;
}

cudaError_t sn_power_iteration(const void* host_meta, int64_t n_power_iterations, float eps,
                               float* sigmas, cudaStream_t stream) {
  const Header& h = *static_cast<const Header*>(host_meta);
  const int64_t L = h.num_layers;
  const auto launch = [&](auto type, int kind, Finish f) {
    using T = typename decltype(type)::type;
    const dim3 grid(static_cast<unsigned>(h.tiles[kind]));
    sn_matvec_kernel<T><<<grid, kThreads, 0, stream>>>(h.jobs + kind * L,
                                                       h.begin + kind * (L + 1),
                                                       static_cast<int>(L), f);
    return cudaGetLastError();
  };
  const auto run = [&](auto type) {
    if (n_power_iterations == 0) return launch(type, 1, Finish{eps, 0, 2, sigmas});
    for (int64_t it = 0; it < n_power_iterations; ++it) {
      cudaError_t err = launch(type, 0, Finish{eps, 1, 0, sigmas});
      if (err == cudaSuccess) {
        err = launch(type, 1, Finish{eps, 1, it + 1 == n_power_iterations ? 1 : 0, sigmas});
      }
      if (err != cudaSuccess) return err;
    }
    return cudaSuccess;
  };
  switch (static_cast<DType>(h.dtype)) {
    case DType::kFloat32: return run(TypeTag<float>{});
    case DType::kFloat16: return run(TypeTag<__half>{});
    case DType::kBFloat16: return run(TypeTag<__nv_bfloat16>{});
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace cuda
}  // namespace fastgan
