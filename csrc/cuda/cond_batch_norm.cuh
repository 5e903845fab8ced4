// Launchers of the CUDA kernels of fastgan::cond_bn_*; the math is the contract in
// fastgan/ops/batch_norm/README.md.
// Torch-free: raw pointers, sizes and strides in elements (int64), a cudaStream_t, a cudaError_t
// back. Launchers run on the current CUDA device; the caller sets it and keeps the buffers alive.
// Storage dtypes float32 / float16 / bfloat16 (fp32 arithmetic); float64 is rejected.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "../common/activation.h"
#include "../common/dtype.h"

namespace fastgan {
namespace cuda {

// What every pass reads. x is [batch, channels, size] with any non-negative strides.
struct CondBnInputs {
  DType dtype;
  int64_t batch, channels, size;  // B, C, S with B * S >= 1
  const void* x;
  int64_t x_strides[3];
  // Everything below is read by cond_bn_fwd and the backward passes only.
  const float* mean;    // [C], contiguous
  const float* invstd;  // [C], contiguous
  const void* gain;     // [B, C] in x's dtype, any strides (0 over B: per channel); nullptr: 1
  int64_t gain_strides[2];
  const void* bias;     // likewise; nullptr: 0
  int64_t bias_strides[2];
  Activation act;       // kNone, kRelu or kLeakyRelu
  double negative_slope;
};

// grad_out of the backward passes: x's shape, any non-negative strides.
struct CondBnGradOut {
  const void* data;
  int64_t strides[3];
};

// The reductions are deterministic: per-block partial results go to `workspace` (4-byte aligned,
// as any fresh allocation is), then a second kernel merges them in a fixed order. The partition
// depends on the sizes, strides, alignment and the GPU model (its SM count and the kernels'
// occupancy), never on timing: results are bitwise the same on every call on one GPU model. Size
// the workspace with the *_workspace_bytes function, the same arguments and the same current
// device (0 bytes: none needed).

// mean, var: [C], contiguous; the biased variance over B and S.
cudaError_t cond_bn_stats_workspace_bytes(const CondBnInputs& in, size_t* bytes);
cudaError_t cond_bn_stats(const CondBnInputs& in, float* mean, float* var, void* workspace,
                          size_t workspace_bytes, cudaStream_t stream);

// y = act(xhat * gain + bias), x's shape, any non-overlapping strides.
cudaError_t cond_bn_fwd(const CondBnInputs& in, void* y, const int64_t y_strides[3],
                        cudaStream_t stream);

// sum_dz, sum_dz_xhat: [B, C], contiguous; sums over S of dz and of dz * xhat.
cudaError_t cond_bn_bwd_reduce_workspace_bytes(const CondBnInputs& in, const CondBnGradOut& dy,
                                               size_t* bytes);
cudaError_t cond_bn_bwd_reduce(const CondBnInputs& in, const CondBnGradOut& dy, float* sum_dz,
                               float* sum_dz_xhat, void* workspace, size_t workspace_bytes,
                               cudaStream_t stream);

// grad_x = invstd * (dz * gain - mean_dxhat - xhat * mean_dxhat_xhat) with mean_dxhat and
// mean_dxhat_xhat [C], contiguous (training); both nullptr: invstd * dz * gain (eval). grad_x has
// x's shape and any non-overlapping strides.
cudaError_t cond_bn_bwd_dx(const CondBnInputs& in, const CondBnGradOut& dy,
                           const float* mean_dxhat, const float* mean_dxhat_xhat, void* grad_x,
                           const int64_t grad_x_strides[3], cudaStream_t stream);

}  // namespace cuda
}  // namespace fastgan
