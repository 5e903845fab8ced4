// Argument checks of fastgan::cond_bn_*, shared by the CPU and CUDA glue. Each throws c10::Error
// (RuntimeError in Python) naming the argument and what was expected.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>
#include <c10/util/string_view.h>

#include "activation.h"

namespace fastgan {

// float64 for float64 x, else float32: the dtype of mean, invstd, var and every reduction.
at::ScalarType cond_bn_acc_type(const at::Tensor& x);

// x: 3-D [B, C, S] floating point with B * S >= 1.
void check_cond_bn_input(const at::Tensor& x);

// x (check_cond_bn_input), gain and bias [B, C] in x's dtype on x's device, and the activation:
// returns it, one of none / relu / leaky_relu.
Activation check_cond_bn_affine_args(const at::Tensor& x, const c10::optional<at::Tensor>& gain,
                                     const c10::optional<at::Tensor>& bias,
                                     c10::string_view activation);

// Everything cond_bn_fwd / _bwd_reduce / _bwd_dx take besides grad_out and the dx terms:
// mean, invstd [C] in the accumulation dtype; gain, bias [B, C] in x's dtype; all on x's device.
// Returns the activation, one of none / relu / leaky_relu.
Activation check_cond_bn_args(const at::Tensor& x, const at::Tensor& mean, const at::Tensor& invstd,
                              const c10::optional<at::Tensor>& gain,
                              const c10::optional<at::Tensor>& bias, c10::string_view activation);

// cond_bn_train_fwd's arguments besides x, gain, bias and activation (check_cond_bn_args' rules
// for those): running_mean and running_var both None or both [C] floating point on x's device,
// any strides; eps > 0; B * S >= 2, as training needs more than one value per channel.
void check_cond_bn_train_args(const at::Tensor& x, const c10::optional<at::Tensor>& running_mean,
                              const c10::optional<at::Tensor>& running_var, double eps);

// grad_out: x's shape, dtype and device (any strides).
void check_cond_bn_grad(const at::Tensor& grad_out, const at::Tensor& x);

// mean_dxhat, mean_dxhat_xhat: both None, or both [C] in the accumulation dtype on x's device.
void check_cond_bn_dx_terms(const at::Tensor& x, const c10::optional<at::Tensor>& mean_dxhat,
                            const c10::optional<at::Tensor>& mean_dxhat_xhat);

// An uninitialised tensor with x's shape and, when x is dense, x's strides (else contiguous).
at::Tensor empty_like_cond_bn_input(const at::Tensor& x);

}  // namespace fastgan
