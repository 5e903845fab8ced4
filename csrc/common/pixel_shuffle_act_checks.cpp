#include "pixel_shuffle_act_checks.h"

#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

namespace fastgan {

Activation parse_activation(c10::string_view name) {
  if (name == "none") return Activation::kNone;
  if (name == "relu") return Activation::kRelu;
  if (name == "leaky_relu") return Activation::kLeakyRelu;
  if (name == "prelu") return Activation::kPrelu;
  if (name == "tanh") return Activation::kTanh;
  TORCH_CHECK(false, "fastgan: activation must be one of 'none', 'relu', 'leaky_relu', 'prelu', "
                     "'tanh', got '", std::string(name.data(), name.size()), "'");
}

at::MemoryFormat output_memory_format(const at::Tensor& x) {
  if (x.dim() == 4 && !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    return at::MemoryFormat::ChannelsLast;
  }
  return at::MemoryFormat::Contiguous;
}

Activation check_pixel_shuffle_act_args(const at::Tensor& x, const c10::optional<at::Tensor>& bias,
                                        int64_t upscale_factor, c10::string_view activation,
                                        const c10::optional<at::Tensor>& prelu_weight) {
  const Activation act = parse_activation(activation);
  TORCH_CHECK(x.dim() == 4, "fastgan.pixel_shuffle_act: x must be 4-D [N, C*r*r, H, W], got ",
              x.dim(), "-D with shape ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()),
              "fastgan.pixel_shuffle_act: x must be a floating-point tensor, got ",
              x.scalar_type());
  TORCH_CHECK(upscale_factor >= 1,
              "fastgan.pixel_shuffle_act: upscale_factor must be >= 1, got ", upscale_factor);
  const int64_t rr = upscale_factor * upscale_factor;
  const int64_t cin = x.size(1);
  TORCH_CHECK(cin % rr == 0, "fastgan.pixel_shuffle_act: x.shape[1] (", cin,
              ") must be divisible by upscale_factor**2 (", rr, ")");
  if (bias.has_value()) {
    const at::Tensor& b = *bias;
    TORCH_CHECK(b.dim() == 1 && b.size(0) == cin,
                "fastgan.pixel_shuffle_act: bias must have shape [", cin,
                "] (one per input channel), got ", b.sizes());
    TORCH_CHECK(b.device() == x.device(), "fastgan.pixel_shuffle_act: bias is on ", b.device(),
                " but x is on ", x.device());
    TORCH_CHECK(b.scalar_type() == x.scalar_type(), "fastgan.pixel_shuffle_act: bias dtype ",
                b.scalar_type(), " does not match x dtype ", x.scalar_type());
  }
  if (act == Activation::kPrelu) {
    TORCH_CHECK(prelu_weight.has_value(),
                "fastgan.pixel_shuffle_act: activation 'prelu' needs prelu_weight");
    const at::Tensor& w = *prelu_weight;
    const int64_t cout = cin / rr;
    TORCH_CHECK(w.dim() == 1 && (w.size(0) == 1 || w.size(0) == cout),
                "fastgan.pixel_shuffle_act: prelu_weight must have shape [1] or [", cout,
                "] (output channels), got ", w.sizes());
    TORCH_CHECK(w.device() == x.device(), "fastgan.pixel_shuffle_act: prelu_weight is on ",
                w.device(), " but x is on ", x.device());
    TORCH_CHECK(w.scalar_type() == x.scalar_type(),
                "fastgan.pixel_shuffle_act: prelu_weight dtype ", w.scalar_type(),
                " does not match x dtype ", x.scalar_type());
  } else {
    TORCH_CHECK(!prelu_weight.has_value(),
                "fastgan.pixel_shuffle_act: prelu_weight is only used with activation 'prelu'");
  }
  return act;
}

void check_pixel_shuffle_act_grad(const at::Tensor& grad_out, const at::Tensor& x,
                                  int64_t upscale_factor) {
  const int64_t r = upscale_factor;
  const std::vector<int64_t> expected{x.size(0), x.size(1) / (r * r), x.size(2) * r, x.size(3) * r};
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef(expected),
              "fastgan.pixel_shuffle_act: grad_out must have shape ", at::IntArrayRef(expected),
              ", got ", grad_out.sizes());
  TORCH_CHECK(grad_out.device() == x.device() && grad_out.scalar_type() == x.scalar_type(),
              "fastgan.pixel_shuffle_act: grad_out must be ", x.scalar_type(), " on ", x.device(),
              ", got ", grad_out.scalar_type(), " on ", grad_out.device());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> empty_pixel_shuffle_act_grads(
    const at::Tensor& x, const c10::optional<at::Tensor>& bias,
    const c10::optional<at::Tensor>& prelu_weight) {
  return {at::empty(x.sizes(), x.options().memory_format(output_memory_format(x))),
          at::empty({bias.has_value() ? x.size(1) : 0}, x.options()),
          at::empty({prelu_weight.has_value() ? prelu_weight->numel() : 0}, x.options())};
}

}  // namespace fastgan
