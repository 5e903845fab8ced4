// Activation codes shared by every fused op (CPU kernels, CUDA kernels, torch glue).
// Torch-free on purpose: the CUDA kernel files include only CUDA toolkit headers.
#pragma once

namespace fastgan {

enum class Activation : int {
  kNone = 0,
  kRelu = 1,
  kLeakyRelu = 2,
  kPrelu = 3,
  kTanh = 4,
};

}  // namespace fastgan
