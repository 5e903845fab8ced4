// CUDA implementation of fastgan::sn_power_iteration: checks, device guard, stream, metadata,
// workspace and output; the kernels sit behind the torch-free launchers of spectral_norm.cuh.
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <vector>

#include "../common/spectral_norm_checks.h"
#include "glue.h"
#include "spectral_norm.cuh"

namespace fastgan {
namespace {

constexpr const char* kOp = "fastgan.sn_power_iteration (cuda)";

void check_launch(cudaError_t err, const char* what) { cuda_glue::check_launch(err, kOp, what); }

at::Tensor sn_power_iteration_cuda(at::TensorList weights, at::TensorList us, at::TensorList vs,
                                   int64_t n_power_iterations, double eps) {
  check_sn_power_iteration_args(weights, us, vs, n_power_iterations, eps);
  const DType dtype = cuda_glue::gpu_dtype(weights[0].scalar_type(), kOp, "weights");
  const c10::cuda::CUDAGuard guard(weights[0].device());
  const int64_t L = static_cast<int64_t>(weights.size());
  std::vector<cuda::SnLayer> layers(weights.size());
  for (size_t l = 0; l < weights.size(); ++l) {
    const at::Tensor& w = weights[l];
    layers[l] = {w.data_ptr(), w.size(0), w.size(1), w.stride(0), w.stride(1),
                 us[l].data_ptr<float>(), vs[l].data_ptr<float>()};
  }
  size_t meta_bytes = 0, workspace_bytes = 0;
  check_launch(cuda::sn_power_iteration_sizes(dtype, layers.data(), L, &meta_bytes,
                                              &workspace_bytes),
               "planning");
  // One pinned host block and one device block from the caching allocators; the host block is
  // not reused before the copy out of it has run (the allocator records it on the stream).
  const auto bytes = weights[0].options().dtype(at::kByte);
  at::Tensor host = at::empty({static_cast<int64_t>(meta_bytes)},
                              bytes.device(at::kCPU).pinned_memory(true));
  at::Tensor device = at::empty({static_cast<int64_t>(meta_bytes + workspace_bytes)}, bytes);
  check_launch(cuda::sn_power_iteration_meta(dtype, layers.data(), L, device.data_ptr(),
                                             host.data_ptr()),
               "metadata");
  device.narrow(0, 0, static_cast<int64_t>(meta_bytes)).copy_(host, /*non_blocking=*/true);
  at::Tensor sigmas = at::empty({L}, weights[0].options().dtype(at::kFloat));
  check_launch(cuda::sn_power_iteration(host.data_ptr(), n_power_iterations,
                                        static_cast<float>(eps), sigmas.data_ptr<float>(),
                                        at::cuda::getCurrentCUDAStream()),
               "kernels");
  return sigmas;
}

}  // namespace
}  // namespace fastgan

TORCH_LIBRARY_IMPL(fastgan, CUDA, m) {
  m.impl("sn_power_iteration", TORCH_FN(fastgan::sn_power_iteration_cuda));
}
