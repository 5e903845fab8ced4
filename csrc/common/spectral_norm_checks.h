// Argument checks of fastgan::sn_power_iteration, shared by the CPU and CUDA glue. Each throws
// c10::Error (RuntimeError in Python) naming the argument and what was expected.
#pragma once

#include <ATen/core/Tensor.h>

namespace fastgan {

// float64 for float64 weights, else float32: the dtype of u, v, sigma and every reduction.
at::ScalarType sn_acc_type(at::ScalarType weight_dtype);

// weights: L >= 1 2-D non-empty matrices of one floating dtype and one device (any strides);
// us[l] [H_l] and vs[l] [W_l] contiguous in the accumulation dtype on that device;
// n_power_iterations >= 0; eps > 0.
void check_sn_power_iteration_args(at::TensorList weights, at::TensorList us, at::TensorList vs,
                                   int64_t n_power_iterations, double eps);

}  // namespace fastgan
