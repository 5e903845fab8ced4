// Argument checks of fastgan::self_attention_core_{fwd,bwd}, shared by the CPU and CUDA glue. Each
// throws c10::Error (RuntimeError in Python) naming the argument and what was expected.
#pragma once

#include <ATen/core/Tensor.h>

namespace fastgan {

// float64 for float64 inputs, else float32: the dtype of lse and every accumulation.
at::ScalarType attention_acc_type(at::ScalarType dtype);

// q [B, N, D], k [B, M, D], v [B, M, E]: 3-D, one floating dtype and device, N, M, D, E >= 1.
void check_attention_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);

// The backward's extra inputs: grad_o and o [B, N, E] in q's dtype, lse [B, N] in the
// accumulation dtype, all on q's device (any strides).
void check_attention_bwd_inputs(const at::Tensor& grad_o, const at::Tensor& q, const at::Tensor& v,
                                const at::Tensor& o, const at::Tensor& lse);

}  // namespace fastgan
