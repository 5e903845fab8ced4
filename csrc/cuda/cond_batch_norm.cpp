// CUDA implementations of fastgan::cond_bn_stats / _fwd / _bwd_reduce / _bwd_dx: checks, device
// guard, stream, output and workspace allocation; the kernels sit behind the torch-free launchers
// of cond_batch_norm.cuh.
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "../common/cond_batch_norm_checks.h"
#include "cond_batch_norm.cuh"
#include "glue.h"

namespace fastgan {
namespace {

constexpr const char* kOp = "fastgan.cond_batch_norm (cuda)";

DType to_dtype(at::ScalarType t) { return cuda_glue::gpu_dtype(t, kOp, "x"); }

void check_launch(cudaError_t err, const char* what) { cuda_glue::check_launch(err, kOp, what); }

// Launcher arguments, holding contiguous mean / invstd alive until the launch is queued.
struct Inputs {
  at::Tensor mean, invstd;
  cuda::CondBnInputs args{};
};

Inputs make_inputs(const at::Tensor& x) {
  Inputs in;
  cuda::CondBnInputs& a = in.args;
  a.dtype = to_dtype(x.scalar_type());
  a.batch = x.size(0);
  a.channels = x.size(1);
  a.size = x.size(2);
  a.x = x.data_ptr();
  for (int d = 0; d < 3; ++d) a.x_strides[d] = x.stride(d);
  a.act = Activation::kNone;
  return in;
}

void set_affine(const c10::optional<at::Tensor>& t, const void** data, int64_t strides[2]) {
  *data = t.has_value() ? t->data_ptr() : nullptr;
  for (int d = 0; d < 2; ++d) strides[d] = t.has_value() ? t->stride(d) : 0;
}

Inputs make_inputs(const at::Tensor& x, const at::Tensor& mean, const at::Tensor& invstd,
                   const c10::optional<at::Tensor>& gain, const c10::optional<at::Tensor>& bias,
                   Activation act, double negative_slope) {
  Inputs in = make_inputs(x);
  in.mean = mean.contiguous();
  in.invstd = invstd.contiguous();
  cuda::CondBnInputs& a = in.args;
  a.mean = in.mean.data_ptr<float>();
  a.invstd = in.invstd.data_ptr<float>();
  set_affine(gain, &a.gain, a.gain_strides);
  set_affine(bias, &a.bias, a.bias_strides);
  a.act = act;
  a.negative_slope = negative_slope;
  return in;
}

cuda::CondBnGradOut grad_out_of(const at::Tensor& grad_out) {
  cuda::CondBnGradOut g{};
  g.data = grad_out.data_ptr();
  for (int d = 0; d < 3; ++d) g.strides[d] = grad_out.stride(d);
  return g;
}

// Scratch bytes from the caching allocator, which ties them to the current stream.
at::Tensor workspace(const at::Tensor& x, size_t bytes) {
  return bytes > 0 ? at::empty({static_cast<int64_t>(bytes)}, x.options().dtype(at::kByte))
                   : at::Tensor();
}

void* data_or_null(const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

std::tuple<at::Tensor, at::Tensor> cond_bn_stats_cuda(const at::Tensor& x) {
  check_cond_bn_input(x);
  const c10::cuda::CUDAGuard guard(x.device());
  const Inputs in = make_inputs(x);
  const auto acc = x.options().dtype(at::kFloat);
  at::Tensor mean = at::empty({x.size(1)}, acc), var = at::empty({x.size(1)}, acc);
  size_t bytes = 0;
  check_launch(cuda::cond_bn_stats_workspace_bytes(in.args, &bytes), "stats sizing");
  const at::Tensor scratch = workspace(x, bytes);
  check_launch(cuda::cond_bn_stats(in.args, mean.data_ptr<float>(), var.data_ptr<float>(),
                                   data_or_null(scratch), bytes,
                                   at::cuda::getCurrentCUDAStream()),
               "stats kernel");
  return {mean, var};
}

at::Tensor cond_bn_fwd_cuda(const at::Tensor& x, const at::Tensor& mean, const at::Tensor& invstd,
                            const c10::optional<at::Tensor>& gain,
                            const c10::optional<at::Tensor>& bias, c10::string_view activation,
                            double negative_slope) {
  const Activation act = check_cond_bn_args(x, mean, invstd, gain, bias, activation);
  const c10::cuda::CUDAGuard guard(x.device());
  const Inputs in = make_inputs(x, mean, invstd, gain, bias, act, negative_slope);
  at::Tensor y = empty_like_cond_bn_input(x);
  check_launch(cuda::cond_bn_fwd(in.args, y.data_ptr(), y.strides().data(),
                                 at::cuda::getCurrentCUDAStream()),
               "forward kernel");
  return y;
}

std::tuple<at::Tensor, at::Tensor> cond_bn_bwd_reduce_cuda(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& mean,
    const at::Tensor& invstd, const c10::optional<at::Tensor>& gain,
    const c10::optional<at::Tensor>& bias, c10::string_view activation, double negative_slope) {
  const Activation act = check_cond_bn_args(x, mean, invstd, gain, bias, activation);
  check_cond_bn_grad(grad_out, x);
  const c10::cuda::CUDAGuard guard(x.device());
  const Inputs in = make_inputs(x, mean, invstd, gain, bias, act, negative_slope);
  const cuda::CondBnGradOut dy = grad_out_of(grad_out);
  const auto acc = x.options().dtype(at::kFloat);
  at::Tensor sum_dz = at::empty({x.size(0), x.size(1)}, acc);
  at::Tensor sum_dz_xhat = at::empty({x.size(0), x.size(1)}, acc);
  size_t bytes = 0;
  check_launch(cuda::cond_bn_bwd_reduce_workspace_bytes(in.args, dy, &bytes),
               "backward reduction sizing");
  const at::Tensor scratch = workspace(x, bytes);
  check_launch(cuda::cond_bn_bwd_reduce(in.args, dy, sum_dz.data_ptr<float>(),
                                        sum_dz_xhat.data_ptr<float>(), data_or_null(scratch),
                                        bytes, at::cuda::getCurrentCUDAStream()),
               "backward reduction kernel");
  return {sum_dz, sum_dz_xhat};
}

at::Tensor cond_bn_bwd_dx_cuda(const at::Tensor& grad_out, const at::Tensor& x,
                               const at::Tensor& mean, const at::Tensor& invstd,
                               const c10::optional<at::Tensor>& gain,
                               const c10::optional<at::Tensor>& bias, c10::string_view activation,
                               double negative_slope, const c10::optional<at::Tensor>& mean_dxhat,
                               const c10::optional<at::Tensor>& mean_dxhat_xhat) {
  const Activation act = check_cond_bn_args(x, mean, invstd, gain, bias, activation);
  check_cond_bn_grad(grad_out, x);
  check_cond_bn_dx_terms(x, mean_dxhat, mean_dxhat_xhat);
  const c10::cuda::CUDAGuard guard(x.device());
  const Inputs in = make_inputs(x, mean, invstd, gain, bias, act, negative_slope);
  const at::Tensor m1 = mean_dxhat.has_value() ? mean_dxhat->contiguous() : at::Tensor();
  const at::Tensor m2 = mean_dxhat_xhat.has_value() ? mean_dxhat_xhat->contiguous() : at::Tensor();
  at::Tensor grad_x = empty_like_cond_bn_input(x);
  check_launch(cuda::cond_bn_bwd_dx(in.args, grad_out_of(grad_out),
                                    m1.defined() ? m1.data_ptr<float>() : nullptr,
                                    m2.defined() ? m2.data_ptr<float>() : nullptr,
                                    grad_x.data_ptr(), grad_x.strides().data(),
                                    at::cuda::getCurrentCUDAStream()),
               "backward dx kernel");
  return grad_x;
}

}  // namespace
}  // namespace fastgan

TORCH_LIBRARY_IMPL(fastgan, CUDA, m) {
  m.impl("cond_bn_stats", TORCH_FN(fastgan::cond_bn_stats_cuda));
  m.impl("cond_bn_fwd", TORCH_FN(fastgan::cond_bn_fwd_cuda));
  m.impl("cond_bn_bwd_reduce", TORCH_FN(fastgan::cond_bn_bwd_reduce_cuda));
  m.impl("cond_bn_bwd_dx", TORCH_FN(fastgan::cond_bn_bwd_dx_cuda));
}
