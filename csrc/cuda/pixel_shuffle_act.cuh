// Launchers of the CUDA kernels of fastgan::pixel_shuffle_act; the math is the contract in
// fastgan/ops/pixel_shuffle/README.md.
// Torch-free: raw pointers, sizes and strides in elements (int64), a cudaStream_t, a cudaError_t
// back. Launchers run on the current CUDA device; the caller sets it and keeps the buffers alive.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../common/activation.h"
#include "../common/dtype.h"

namespace fastgan {
namespace cuda {

// What the forward reads, which the backward reads too. x is [batch, in_channels, height, width]
// with any non-negative strides; in_channels = C * upscale^2.
struct PixelShuffleActInputs {
  DType dtype;
  int64_t batch, in_channels, height, width, upscale;
  Activation act;
  double negative_slope;        // leaky_relu only
  const void* x;
  int64_t x_strides[4];
  const void* bias;             // [in_channels], contiguous, or nullptr
  const void* prelu_weight;     // [prelu_numel] (1 or C), contiguous; nullptr unless act is kPrelu
  int64_t prelu_numel;
};

// y [batch, C, height * upscale, width * upscale] = act(pixel_shuffle(x + bias)). y may have any
// non-overlapping strides; writes are coalesced when y is NCHW-contiguous or channels-last.
cudaError_t pixel_shuffle_act_fwd(const PixelShuffleActInputs& in, void* y,
                                  const int64_t y_strides[4], cudaStream_t stream);

struct PixelShuffleActGrads {
  const void* grad_out;         // y's shape, any non-negative strides
  int64_t grad_out_strides[4];
  void* grad_x;                 // x's shape, any non-overlapping strides
  int64_t grad_x_strides[4];
  void* grad_bias;              // [in_channels], contiguous, or nullptr when not wanted
  void* grad_prelu;             // [prelu_numel], contiguous, or nullptr when not wanted
};

// Bytes of scratch memory pixel_shuffle_act_bwd needs for these arguments (0 without grad_bias
// and grad_prelu); call it with the same arguments, on the same device, as the launch.
cudaError_t pixel_shuffle_act_bwd_workspace_bytes(const PixelShuffleActInputs& in,
                                                  const PixelShuffleActGrads& grads,
                                                  size_t* bytes);

// Writes grad_x, and grad_bias / grad_prelu when given, with fp32 accumulation (fp64 for fp64).
// The sums are deterministic: per-block partial sums go to `workspace` (8-byte aligned, as any
// fresh allocation is), then a second kernel adds them up in a fixed order.
cudaError_t pixel_shuffle_act_bwd(const PixelShuffleActInputs& in,
                                  const PixelShuffleActGrads& grads, void* workspace,
                                  size_t workspace_bytes, cudaStream_t stream);

}  // namespace cuda
}  // namespace fastgan
