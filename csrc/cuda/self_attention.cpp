// CUDA implementations of fastgan::self_attention_core_fwd / _bwd: checks, device guard, stream
// and output allocation; the kernels sit behind the torch-free launchers of self_attention.cuh.
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "../common/self_attention_checks.h"
#include "glue.h"
#include "self_attention.cuh"

namespace fastgan {
namespace {

constexpr const char* kOp = "fastgan.self_attention_core (cuda)";
// The kernels keep whole rows of q, k and v tiles in shared memory.
constexpr int64_t kMaxDim = 256;

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err != cudaErrorInvalidConfiguration, kOp, ": ", what,
              " kernels: these sizes do not fit this GPU (the smallest tiles need more shared "
              "memory per block than it has, or the grid is too large)");
  cuda_glue::check_launch(err, kOp, what);
}

cuda::AttentionInputs make_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  double scale) {
  check_attention_inputs(q, k, v);
  cuda::AttentionInputs in{};
  in.dtype = cuda_glue::gpu_dtype(q.scalar_type(), kOp, "q, k, v");
  TORCH_CHECK(q.size(2) <= kMaxDim && v.size(2) <= kMaxDim, kOp,
              ": the feature sizes D (q, k) and E (v) must be <= ", kMaxDim, ", got D = ",
              q.size(2), ", E = ", v.size(2));
  in.batch = q.size(0);
  in.n = q.size(1);
  in.m = k.size(1);
  in.d = q.size(2);
  in.e = v.size(2);
  in.scale = static_cast<float>(scale);
  in.q = q.data_ptr();
  in.k = k.data_ptr();
  in.v = v.data_ptr();
  for (int i = 0; i < 3; ++i) {
    in.q_strides[i] = q.stride(i);
    in.k_strides[i] = k.stride(i);
    in.v_strides[i] = v.stride(i);
  }
  return in;
}

std::tuple<at::Tensor, at::Tensor> self_attention_core_fwd_cuda(const at::Tensor& q,
                                                                const at::Tensor& k,
                                                                const at::Tensor& v,
                                                                double scale) {
  const cuda::AttentionInputs in = make_inputs(q, k, v, scale);
  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor o = at::empty({in.batch, in.n, in.e}, q.options());
  at::Tensor lse = at::empty({in.batch, in.n}, q.options().dtype(at::kFloat));
  if (in.batch == 0) return {o, lse};
  check_launch(cuda::self_attention_core_fwd(in, o.data_ptr(), lse.data_ptr<float>(),
                                             at::cuda::getCurrentCUDAStream()),
               "forward");
  return {o, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> self_attention_core_bwd_cuda(
    const at::Tensor& grad_o, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& o, const at::Tensor& lse, double scale) {
  const cuda::AttentionInputs in = make_inputs(q, k, v, scale);
  check_attention_bwd_inputs(grad_o, q, v, o, lse);
  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor grad_q = at::empty({in.batch, in.n, in.d}, q.options());
  at::Tensor grad_k = at::empty({in.batch, in.m, in.d}, q.options());
  at::Tensor grad_v = at::empty({in.batch, in.m, in.e}, q.options());
  if (in.batch == 0) return {grad_q, grad_k, grad_v};
  cuda::AttentionGradInputs g{};
  g.grad_o = grad_o.data_ptr();
  g.o = o.data_ptr();
  g.lse = lse.data_ptr<float>();
  for (int i = 0; i < 3; ++i) {
    g.grad_o_strides[i] = grad_o.stride(i);
    g.o_strides[i] = o.stride(i);
  }
  g.lse_strides[0] = lse.stride(0);
  g.lse_strides[1] = lse.stride(1);
  // delta_i = grad_o_i . o_i, from the caching allocator on the launch stream.
  at::Tensor delta = at::empty({in.batch * in.n}, q.options().dtype(at::kFloat));
  check_launch(cuda::self_attention_core_bwd(in, g, delta.data_ptr<float>(), grad_q.data_ptr(),
                                             grad_k.data_ptr(), grad_v.data_ptr(),
                                             at::cuda::getCurrentCUDAStream()),
               "backward");
  return {grad_q, grad_k, grad_v};
}

}  // namespace
}  // namespace fastgan

TORCH_LIBRARY_IMPL(fastgan, CUDA, m) {
  m.impl("self_attention_core_fwd", TORCH_FN(fastgan::self_attention_core_fwd_cuda));
  m.impl("self_attention_core_bwd", TORCH_FN(fastgan::self_attention_core_bwd_cuda));
}
