#include "spectral_norm_checks.h"

#include <c10/util/Exception.h>

namespace fastgan {
namespace {

constexpr const char* kOp = "fastgan.sn_power_iteration";

void check_vector(const char* name, size_t l, const at::Tensor& t, int64_t size,
                  const at::Tensor& w, at::ScalarType acc) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == size, kOp, ": ", name, "[", l, "] must have shape [",
              size, "] to match weights[", l, "] of shape ", w.sizes(), ", got ", t.sizes());
  TORCH_CHECK(t.device() == w.device(), kOp, ": ", name, "[", l, "] is on ", t.device(),
              " but weights[", l, "] is on ", w.device());
  TORCH_CHECK(t.scalar_type() == acc, kOp, ": ", name, "[", l, "] must be ", acc, " for ",
              w.scalar_type(), " weights, got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), kOp, ": ", name, "[", l, "] must be contiguous");
}

}  // namespace

at::ScalarType sn_acc_type(at::ScalarType weight_dtype) {
  return weight_dtype == at::kDouble ? at::kDouble : at::kFloat;
}

void check_sn_power_iteration_args(at::TensorList weights, at::TensorList us, at::TensorList vs,
                                   int64_t n_power_iterations, double eps) {
  TORCH_CHECK(!weights.empty(), kOp, ": weights must hold at least one matrix");
  TORCH_CHECK(us.size() == weights.size() && vs.size() == weights.size(), kOp,
              ": weights, us and vs must have the same length, got ", weights.size(), ", ",
              us.size(), " and ", vs.size());
  TORCH_CHECK(n_power_iterations >= 0, kOp, ": n_power_iterations must be >= 0, got ",
              n_power_iterations);
  TORCH_CHECK(eps > 0, kOp, ": eps must be > 0, got ", eps);
  const at::Tensor& first = weights[0];
  const at::ScalarType acc = sn_acc_type(first.scalar_type());
  for (size_t l = 0; l < weights.size(); ++l) {
    const at::Tensor& w = weights[l];
    TORCH_CHECK(w.dim() == 2, kOp, ": weights[", l, "] must be 2-D [H, W], got shape ", w.sizes());
    TORCH_CHECK(w.size(0) >= 1 && w.size(1) >= 1, kOp, ": weights[", l,
                "] must not be empty, got shape ", w.sizes());
    TORCH_CHECK(at::isFloatingType(w.scalar_type()), kOp, ": weights[", l,
                "] must be floating point, got ", w.scalar_type());
    TORCH_CHECK(w.scalar_type() == first.scalar_type(), kOp, ": weights[", l, "] is ",
                w.scalar_type(), " but weights[0] is ", first.scalar_type(),
                " (a group holds one dtype)");
    TORCH_CHECK(w.device() == first.device(), kOp, ": weights[", l, "] is on ", w.device(),
                " but weights[0] is on ", first.device());
    TORCH_CHECK(w.stride(0) >= 0 && w.stride(1) >= 0, kOp, ": weights[", l,
                "] has a negative stride");
    check_vector("us", l, us[l], w.size(0), w, acc);
    check_vector("vs", l, vs[l], w.size(1), w, acc);
  }
}

}  // namespace fastgan
