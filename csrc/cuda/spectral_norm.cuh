// Launchers of the CUDA kernels of fastgan::sn_power_iteration; the math is the contract in
// fastgan/ops/spectral_norm/README.md.
// Torch-free: raw pointers, sizes and strides in elements (int64), a cudaStream_t, a cudaError_t
// back. Launchers run on the current CUDA device; the caller sets it and keeps the buffers alive.
// Weight dtypes float32 / float16 / bfloat16 with fp32 vectors and arithmetic; float64 is
// rejected (cudaErrorInvalidValue).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "../common/dtype.h"

namespace fastgan {
namespace cuda {

// One layer of a group: W [rows, cols], element (i, j) at weight[i * stride0 + j * stride1]
// (any non-negative strides); u [rows] and v [cols], contiguous fp32, updated in place. No
// vector may alias another or a weight.
struct SnLayer {
  const void* weight;
  int64_t rows, cols, stride0, stride1;
  float* u;
  float* v;
};

// A call takes three steps, so that the group's metadata reaches the device in one copy:
//   1. sn_power_iteration_sizes: the bytes of the metadata and of the workspace;
//   2. sn_power_iteration_meta: writes the metadata into host memory (meta_bytes, pinned for an
//      asynchronous copy) for a device buffer of meta_bytes + workspace_bytes bytes (16-byte
//      aligned), whose addresses it holds; the caller then copies it to the first meta_bytes of
//      that buffer on `stream` (the copy also zeroes the kernels' arrival counters);
//   3. sn_power_iteration: queues the kernels on `stream` (2 per iteration, 1 for n == 0),
//      reading host_meta on the host, only during the call. sigmas: [num_layers] fp32.
// The same layers, dtype and device must be passed to all three. The metadata and workspace may
// be reused only after the kernels of the previous call have finished (stream order does that).
// Results are bitwise reproducible: the partition and the order of every sum depend only on the
// shapes and strides, never on the GPU or on timing; there are no float atomics.
cudaError_t sn_power_iteration_sizes(DType dtype, const SnLayer* layers, int64_t num_layers,
                                     size_t* meta_bytes, size_t* workspace_bytes);
cudaError_t sn_power_iteration_meta(DType dtype, const SnLayer* layers, int64_t num_layers,
                                    void* device_buffer, void* host_meta);
cudaError_t sn_power_iteration(const void* host_meta, int64_t n_power_iterations, float eps,
                               float* sigmas, cudaStream_t stream);

}  // namespace cuda
}  // namespace fastgan
