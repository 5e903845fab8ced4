#include "self_attention_checks.h"

#include <c10/util/Exception.h>

namespace fastgan {
namespace {

constexpr const char* kOp = "fastgan.self_attention_core";

void check_like(const char* name, const at::Tensor& t, const at::Tensor& q) {
  TORCH_CHECK(t.device() == q.device(), kOp, ": ", name, " is on ", t.device(), " but q is on ",
              q.device());
  TORCH_CHECK(t.scalar_type() == q.scalar_type(), kOp, ": ", name, " is ", t.scalar_type(),
              " but q is ", q.scalar_type());
}

}  // namespace

at::ScalarType attention_acc_type(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

void check_attention_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3, kOp,
              ": q, k, v must be 3-D [B, N, D], [B, M, D], [B, M, E], got ", q.sizes(), ", ",
              k.sizes(), ", ", v.sizes());
  TORCH_CHECK(at::isFloatingType(q.scalar_type()), kOp, ": q must be floating point, got ",
              q.scalar_type());
  check_like("k", k, q);
  check_like("v", v, q);
  TORCH_CHECK(k.size(0) == q.size(0) && v.size(0) == q.size(0), kOp,
              ": q, k, v must have the same batch size, got ", q.size(0), ", ", k.size(0), ", ",
              v.size(0));
  TORCH_CHECK(k.size(2) == q.size(2), kOp, ": k must have q's feature size ", q.size(2), ", got ",
              k.sizes());
  TORCH_CHECK(v.size(1) == k.size(1), kOp, ": v must have k's length ", k.size(1), ", got ",
              v.sizes());
  TORCH_CHECK(q.size(1) >= 1 && k.size(1) >= 1 && q.size(2) >= 1 && v.size(2) >= 1, kOp,
              ": N, M, D and E must be >= 1, got q ", q.sizes(), ", k ", k.sizes(), ", v ",
              v.sizes());
}

void check_attention_bwd_inputs(const at::Tensor& grad_o, const at::Tensor& q, const at::Tensor& v,
                                const at::Tensor& o, const at::Tensor& lse) {
  const int64_t b = q.size(0), n = q.size(1), e = v.size(2);
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"grad_o", grad_o},
                                {"o", o}}) {
    TORCH_CHECK(t.dim() == 3 && t.size(0) == b && t.size(1) == n && t.size(2) == e, kOp, ": ",
                name, " must have shape [", b, ", ", n, ", ", e, "], got ", t.sizes());
    check_like(name, t, q);
  }
  TORCH_CHECK(lse.dim() == 2 && lse.size(0) == b && lse.size(1) == n, kOp,
              ": lse must have shape [", b, ", ", n, "], got ", lse.sizes());
  TORCH_CHECK(lse.device() == q.device(), kOp, ": lse is on ", lse.device(), " but q is on ",
              q.device());
  TORCH_CHECK(lse.scalar_type() == attention_acc_type(q.scalar_type()), kOp, ": lse must be ",
              attention_acc_type(q.scalar_type()), ", got ", lse.scalar_type());
}

}  // namespace fastgan
