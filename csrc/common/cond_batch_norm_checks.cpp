#include "cond_batch_norm_checks.h"

#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>

#include <string>
#include <utility>

namespace fastgan {
namespace {

constexpr const char* kOp = "fastgan.cond_batch_norm";

void check_vector(const char* name, const at::Tensor& t, const at::Tensor& x) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == x.size(1), kOp, ": ", name, " must have shape [",
              x.size(1), "], got ", t.sizes());
  TORCH_CHECK(t.device() == x.device(), kOp, ": ", name, " is on ", t.device(), " but x is on ",
              x.device());
  TORCH_CHECK(t.scalar_type() == cond_bn_acc_type(x), kOp, ": ", name, " must be ",
              cond_bn_acc_type(x), " for ", x.scalar_type(), " x, got ", t.scalar_type());
}

void check_affine(const char* name, const c10::optional<at::Tensor>& t, const at::Tensor& x) {
  if (!t.has_value()) return;
  TORCH_CHECK(t->dim() == 2 && t->size(0) == x.size(0) && t->size(1) == x.size(1), kOp, ": ", name,
              " must have shape [", x.size(0), ", ", x.size(1), "], got ", t->sizes());
  TORCH_CHECK(t->device() == x.device(), kOp, ": ", name, " is on ", t->device(),
              " but x is on ", x.device());
  TORCH_CHECK(t->scalar_type() == x.scalar_type(), kOp, ": ", name, " dtype ", t->scalar_type(),
              " does not match x dtype ", x.scalar_type());
}

}  // namespace

at::ScalarType cond_bn_acc_type(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

void check_cond_bn_input(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 3, kOp, ": x must be 3-D [B, C, S], got shape ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), kOp, ": x must be floating point, got ",
              x.scalar_type());
  TORCH_CHECK(x.size(0) * x.size(2) >= 1, kOp,
              ": x needs at least one value per channel (B * S >= 1), got shape ", x.sizes());
}

Activation check_cond_bn_affine_args(const at::Tensor& x, const c10::optional<at::Tensor>& gain,
                                     const c10::optional<at::Tensor>& bias,
                                     c10::string_view activation) {
  check_cond_bn_input(x);
  check_affine("gain", gain, x);
  check_affine("bias", bias, x);
  if (activation == "none") return Activation::kNone;
  if (activation == "relu") return Activation::kRelu;
  if (activation == "leaky_relu") return Activation::kLeakyRelu;
  TORCH_CHECK(false, kOp, ": activation must be one of 'none', 'relu', 'leaky_relu', got '",
              std::string(activation.data(), activation.size()), "'");
}

Activation check_cond_bn_args(const at::Tensor& x, const at::Tensor& mean, const at::Tensor& invstd,
                              const c10::optional<at::Tensor>& gain,
                              const c10::optional<at::Tensor>& bias, c10::string_view activation) {
  const Activation act = check_cond_bn_affine_args(x, gain, bias, activation);
  check_vector("mean", mean, x);
  check_vector("invstd", invstd, x);
  return act;
}

void check_cond_bn_train_args(const at::Tensor& x, const c10::optional<at::Tensor>& running_mean,
                              const c10::optional<at::Tensor>& running_var, double eps) {
  TORCH_CHECK(x.size(0) * x.size(2) >= 2, kOp,
              ": expected more than 1 value per channel when training, got x of shape ", x.sizes());
  TORCH_CHECK(running_mean.has_value() == running_var.has_value(), kOp,
              ": running_mean and running_var must both be given or both be None");
  for (const auto& [name, t] : {std::pair<const char*, const c10::optional<at::Tensor>*>{
                                    "running_mean", &running_mean},
                                {"running_var", &running_var}}) {
    if (!t->has_value()) continue;
    const at::Tensor& r = **t;
    TORCH_CHECK(r.dim() == 1 && r.size(0) == x.size(1), kOp, ": ", name, " must have shape [",
                x.size(1), "], got ", r.sizes());
    TORCH_CHECK(at::isFloatingType(r.scalar_type()), kOp, ": ", name,
                " must be floating point, got ", r.scalar_type());
    TORCH_CHECK(r.device() == x.device(), kOp, ": ", name, " is on ", r.device(),
                " but x is on ", x.device());
  }
  TORCH_CHECK(eps > 0, kOp, ": eps must be > 0, got ", eps);
}

void check_cond_bn_grad(const at::Tensor& grad_out, const at::Tensor& x) {
  TORCH_CHECK(grad_out.sizes() == x.sizes(), kOp, ": grad_out must have x's shape ", x.sizes(),
              ", got ", grad_out.sizes());
  TORCH_CHECK(grad_out.device() == x.device() && grad_out.scalar_type() == x.scalar_type(), kOp,
              ": grad_out must be ", x.scalar_type(), " on ", x.device(), ", got ",
              grad_out.scalar_type(), " on ", grad_out.device());
}

void check_cond_bn_dx_terms(const at::Tensor& x, const c10::optional<at::Tensor>& mean_dxhat,
                            const c10::optional<at::Tensor>& mean_dxhat_xhat) {
  TORCH_CHECK(mean_dxhat.has_value() == mean_dxhat_xhat.has_value(), kOp,
              ": mean_dxhat and mean_dxhat_xhat must both be given (training) or both be None "
              "(eval)");
  if (!mean_dxhat.has_value()) return;
  check_vector("mean_dxhat", *mean_dxhat, x);
  check_vector("mean_dxhat_xhat", *mean_dxhat_xhat, x);
}

at::Tensor empty_like_cond_bn_input(const at::Tensor& x) {
  // Preserve keeps the strides of a dense (non-overlapping, gap-free) tensor, so a channels-last
  // activation viewed as [B, C, H*W] stays channels-last; anything else comes out contiguous.
  return at::empty_like(x, at::MemoryFormat::Preserve);
}

}  // namespace fastgan
