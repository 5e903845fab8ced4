// Launchers of the CUDA kernels of fastgan::self_attention_core_{fwd,bwd}; the math is the
// contract in fastgan/ops/self_attention/README.md.
// Torch-free: raw pointers, sizes and strides in elements (int64), a cudaStream_t, a cudaError_t
// back. Launchers run on the current CUDA device; the caller sets it and keeps the buffers alive.
// Dtypes float32 / float16 / bfloat16 with fp32 accumulation and an fp32 softmax; float64 is
// rejected (cudaErrorInvalidValue). D and E up to 256 (cudaErrorInvalidValue beyond). The
// tiles take 64, 32 or 16 rows, whichever fits the device's shared memory per block;
// cudaErrorInvalidConfiguration where even 16 do not (fp32 with D and E near 256 on GPUs with
// ~100 KiB per block, e.g. sm_86) or the grid would pass 2^31 - 1 blocks.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../common/dtype.h"

namespace fastgan {
namespace cuda {

// q [batch, n, d], k [batch, m, d], v [batch, m, e], element (b, i, c) of q at
// q[b * q_strides[0] + i * q_strides[1] + c * q_strides[2]] (any non-negative strides).
struct AttentionInputs {
  DType dtype;
  int64_t batch, n, m, d, e;
  float scale;
  const void* q;
  const void* k;
  const void* v;
  int64_t q_strides[3], k_strides[3], v_strides[3];
};

// o [batch, n, e] in the inputs' dtype and lse [batch, n] fp32, both contiguous and new (no
// aliasing of an input).
cudaError_t self_attention_core_fwd(const AttentionInputs& in, void* o, float* lse,
                                    cudaStream_t stream);

// grad_o and o [batch, n, e] in the inputs' dtype, lse [batch, n] fp32, any non-negative strides.
struct AttentionGradInputs {
  const void* grad_o;
  const void* o;
  const float* lse;
  int64_t grad_o_strides[3], o_strides[3], lse_strides[2];
};

// grad_q [batch, n, d], grad_k [batch, m, d], grad_v [batch, m, e], contiguous, in the inputs'
// dtype. `delta` is scratch for batch * n floats (delta_i = grad_o_i . o_i). Every output element
// is a sum in a fixed order written by one thread block: bitwise reproducible, no float atomics.
cudaError_t self_attention_core_bwd(const AttentionInputs& in, const AttentionGradInputs& g,
                                    float* delta, void* grad_q, void* grad_k, void* grad_v,
                                    cudaStream_t stream);

}  // namespace cuda
}  // namespace fastgan
