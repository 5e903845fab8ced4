// Argument checks and shape rules of fastgan::pixel_shuffle_act_*, shared by the CPU and CUDA glue.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>
#include <c10/util/string_view.h>

#include <tuple>

#include "activation.h"

namespace fastgan {

// "none" | "relu" | "leaky_relu" | "prelu" | "tanh" -> Activation; anything else throws.
Activation parse_activation(c10::string_view name);

// Channels-last when x is channels-last dense and not also NCHW-contiguous, else contiguous.
at::MemoryFormat output_memory_format(const at::Tensor& x);

// Validates the arguments of the forward op (the backward op checks grad_out on top) and returns
// the parsed activation. Throws c10::Error (RuntimeError in Python) naming the argument and what
// was expected.
Activation check_pixel_shuffle_act_args(const at::Tensor& x, const c10::optional<at::Tensor>& bias,
                                        int64_t upscale_factor, c10::string_view activation,
                                        const c10::optional<at::Tensor>& prelu_weight);

// grad_out must have the forward output's shape, device and dtype.
void check_pixel_shuffle_act_grad(const at::Tensor& grad_out, const at::Tensor& x,
                                  int64_t upscale_factor);

// The backward op's outputs, uninitialised: grad_x with x's shape in output_memory_format(x),
// grad_bias [Cin] and grad_prelu like prelu_weight, each [0] when its input is absent.
std::tuple<at::Tensor, at::Tensor, at::Tensor> empty_pixel_shuffle_act_grads(
    const at::Tensor& x, const c10::optional<at::Tensor>& bias,
    const c10::optional<at::Tensor>& prelu_weight);

}  // namespace fastgan
