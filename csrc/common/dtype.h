// Element types of the torch-free kernel launchers; the torch glue maps at::ScalarType onto these.
#pragma once

namespace fastgan {

enum class DType : int {
  kFloat32 = 0,
  kFloat16 = 1,
  kBFloat16 = 2,
  kFloat64 = 3,
};

}  // namespace fastgan
