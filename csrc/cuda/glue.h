// What the CUDA torch glue files share: the launcher dtype of a tensor and the check of a launch.
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>
#include <cuda_runtime_api.h>

#include "../common/dtype.h"

namespace fastgan {
namespace cuda_glue {

// float32 / float16 / bfloat16 -> the launchers' DType; anything else raises, naming the op and
// the argument (float64 runs on the cpu and reference backends).
inline DType gpu_dtype(at::ScalarType t, const char* op, const char* arg) {
  switch (t) {
    case at::kFloat: return DType::kFloat32;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default:
      TORCH_CHECK(false, op, ": ", arg, " must be float32, float16 or bfloat16 on CUDA, got ", t,
                  " (float64 runs on the cpu and reference backends)");
  }
}

inline void check_launch(cudaError_t err, const char* op, const char* what) {
  TORCH_CHECK(err == cudaSuccess, op, ": ", what, " failed: ", cudaGetErrorString(err));
}

}  // namespace cuda_glue
}  // namespace fastgan
