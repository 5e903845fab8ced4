// CUDA implementations of fastgan::pixel_shuffle_act_fwd / _bwd: checks, device guard, stream and
// output allocation; the kernels sit behind the torch-free launchers of pixel_shuffle_act.cuh.
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "../common/pixel_shuffle_act_checks.h"
#include "pixel_shuffle_act.cuh"

namespace fastgan {
namespace {

DType to_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::kFloat32;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kDouble: return DType::kFloat64;
    default:
      TORCH_CHECK(false, "fastgan.pixel_shuffle_act (cuda): x must be float32, float16, bfloat16 "
                         "or float64, got ", t);
  }
}

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "fastgan.pixel_shuffle_act (cuda): ", what,
              " kernel failed: ", cudaGetErrorString(err));
}

// Launcher arguments, holding contiguous bias / prelu_weight alive until the launch is queued.
struct Inputs {
  at::Tensor bias, prelu_weight;
  cuda::PixelShuffleActInputs args;
};

Inputs make_inputs(const at::Tensor& x, const c10::optional<at::Tensor>& bias,
                   int64_t upscale_factor, Activation act, double negative_slope,
                   const c10::optional<at::Tensor>& prelu_weight) {
  Inputs in;
  if (bias.has_value()) in.bias = bias->contiguous();
  if (prelu_weight.has_value()) in.prelu_weight = prelu_weight->contiguous();
  cuda::PixelShuffleActInputs& a = in.args;
  a.dtype = to_dtype(x.scalar_type());
  a.batch = x.size(0);
  a.in_channels = x.size(1);
  a.height = x.size(2);
  a.width = x.size(3);
  a.upscale = upscale_factor;
  a.act = act;
  a.negative_slope = negative_slope;
  a.x = x.data_ptr();
  for (int d = 0; d < 4; ++d) a.x_strides[d] = x.stride(d);
  a.bias = in.bias.defined() ? in.bias.data_ptr() : nullptr;
  a.prelu_weight = in.prelu_weight.defined() ? in.prelu_weight.data_ptr() : nullptr;
  a.prelu_numel = in.prelu_weight.defined() ? in.prelu_weight.numel() : 0;
  return in;
}

at::Tensor pixel_shuffle_act_fwd_cuda(const at::Tensor& x, const c10::optional<at::Tensor>& bias,
                                      int64_t upscale_factor, c10::string_view activation,
                                      double negative_slope,
                                      const c10::optional<at::Tensor>& prelu_weight) {
  const Activation act =
      check_pixel_shuffle_act_args(x, bias, upscale_factor, activation, prelu_weight);
  const c10::cuda::CUDAGuard guard(x.device());
  const Inputs in = make_inputs(x, bias, upscale_factor, act, negative_slope, prelu_weight);
  const int64_t r = upscale_factor;
  at::Tensor y = at::empty({x.size(0), x.size(1) / (r * r), x.size(2) * r, x.size(3) * r},
                           x.options().memory_format(output_memory_format(x)));
  check_launch(cuda::pixel_shuffle_act_fwd(in.args, y.data_ptr(), y.strides().data(),
                                           at::cuda::getCurrentCUDAStream()),
               "forward");
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pixel_shuffle_act_bwd_cuda(
    const at::Tensor& grad_out, const at::Tensor& x, const c10::optional<at::Tensor>& bias,
    int64_t upscale_factor, c10::string_view activation, double negative_slope,
    const c10::optional<at::Tensor>& prelu_weight) {
  const Activation act =
      check_pixel_shuffle_act_args(x, bias, upscale_factor, activation, prelu_weight);
  check_pixel_shuffle_act_grad(grad_out, x, upscale_factor);
  const c10::cuda::CUDAGuard guard(x.device());
  const Inputs in = make_inputs(x, bias, upscale_factor, act, negative_slope, prelu_weight);
  at::Tensor grad_x, grad_bias, grad_prelu;  // not structured bindings: lambdas capture these
  std::tie(grad_x, grad_bias, grad_prelu) = empty_pixel_shuffle_act_grads(x, bias, prelu_weight);

  cuda::PixelShuffleActGrads g;
  g.grad_out = grad_out.data_ptr();
  g.grad_x = grad_x.data_ptr();
  for (int d = 0; d < 4; ++d) {
    g.grad_out_strides[d] = grad_out.stride(d);
    g.grad_x_strides[d] = grad_x.stride(d);
  }
  g.grad_bias = bias.has_value() ? grad_bias.data_ptr() : nullptr;
  g.grad_prelu = prelu_weight.has_value() ? grad_prelu.data_ptr() : nullptr;

  // Partial sums of grad_bias / grad_prelu, from the caching allocator on the launch stream.
  size_t bytes = 0;
  check_launch(cuda::pixel_shuffle_act_bwd_workspace_bytes(in.args, g, &bytes), "backward sizing");
  const at::Tensor workspace =
      bytes > 0 ? at::empty({static_cast<int64_t>(bytes)}, x.options().dtype(at::kByte))
                : at::Tensor();
  check_launch(cuda::pixel_shuffle_act_bwd(in.args, g, bytes > 0 ? workspace.data_ptr() : nullptr,
                                           bytes, at::cuda::getCurrentCUDAStream()),
               "backward");
  return {grad_x, grad_bias, grad_prelu};
}

}  // namespace
}  // namespace fastgan

TORCH_LIBRARY_IMPL(fastgan, CUDA, m) {
  m.impl("pixel_shuffle_act_fwd", TORCH_FN(fastgan::pixel_shuffle_act_fwd_cuda));
  m.impl("pixel_shuffle_act_bwd", TORCH_FN(fastgan::pixel_shuffle_act_bwd_cuda));
}
