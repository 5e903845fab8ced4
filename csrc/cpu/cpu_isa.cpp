// cpu_isa(): the level run_isa picks (common/cpu_isa.h).
#include "common/cpu_isa.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

namespace fastgan {
namespace cpu {
namespace {

Isa detected() {
#ifdef FASTGAN_X86_LEVELS
  __builtin_cpu_init();
  if (__builtin_cpu_supports("x86-64-v4")) return Isa::kAvx512;
  if (__builtin_cpu_supports("x86-64-v3")) return Isa::kAvx2;
#endif
  return Isa::kBaseline;
}

Isa from_environment(Isa highest) {
  const char* requested = std::getenv("FASTGAN_CPU_ISA");
  if (requested == nullptr || *requested == '\0') return highest;
  for (Isa level : {Isa::kAvx512, Isa::kAvx2, Isa::kBaseline}) {
    if (std::strcmp(requested, isa_name(level)) == 0) return std::min(level, highest);
  }
  TORCH_CHECK(false, "fastgan: FASTGAN_CPU_ISA must be avx512, avx2 or baseline (or unset), got '",
              requested, "'");
}

}  // namespace

const char* isa_name(Isa level) {
  switch (level) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    case Isa::kBaseline: break;
  }
  return "baseline";
}

Isa cpu_isa() {
  static const Isa level = from_environment(detected());
  return level;
}

}  // namespace cpu
}  // namespace fastgan
