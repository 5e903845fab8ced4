// The x86-64 level the CPU kernels' arithmetic runs at, and run_isa(f), which runs f at it.
//
// The extension is compiled once, for baseline x86-64, so that one build runs on every x86-64
// CPU; there the loops run 4 floats per instruction, without FMA, and convert fp16 in integer
// code. A loop limited by its arithmetic rather than by memory runs inside run_isa(f): f is called
// from one of three copies of a small function, each compiled for its own level with f's whole
// call tree inlined into it (flatten), so f's loops exist in three builds:
//   avx512    x86-64-v4: AVX-512 F/BW/CD/DQ/VL
//   avx2      x86-64-v3: AVX2, FMA, F16C, BMI1/2
//   baseline  x86-64 (SSE2)
// The level is the highest this CPU supports, lowered by the environment variable
// FASTGAN_CPU_ISA (one of the names above; read once, at the first kernel call). Levels can differ
// in the last bits of a result (FMA skips a rounding; vector width orders some sums); one level
// gives bitwise the same results on every call. Other compilers and architectures: baseline only.
#pragma once

// FASTGAN_FLATTEN inlines every call a function makes (and theirs, recursively) into it, so that
// each per-level copy below compiles its task's whole call tree, lambdas included.
#if defined(__GNUC__) && defined(__has_attribute)
#if __has_attribute(flatten)
#define FASTGAN_FLATTEN __attribute__((flatten))
#endif
#endif
#ifndef FASTGAN_FLATTEN
#define FASTGAN_FLATTEN
#endif

// gcc 12 is the first to name the levels in __builtin_cpu_supports (clang builds run baseline).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
#define FASTGAN_X86_LEVELS 1
#endif

namespace fastgan {
namespace cpu {

enum class Isa : int { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

// This process's level (see above); a FASTGAN_CPU_ISA that names no level is a c10::Error.
Isa cpu_isa();
const char* isa_name(Isa level);

template <typename F>
FASTGAN_FLATTEN void run_baseline(const F& f) {
  f();
}

#ifdef FASTGAN_X86_LEVELS
template <typename F>
__attribute__((target("arch=x86-64-v3"), flatten)) void run_avx2(const F& f) {
  f();
}

template <typename F>
__attribute__((target("arch=x86-64-v4"), flatten)) void run_avx512(const F& f) {
  f();
}
#endif

// f() at this process's level. Call it around a whole task (a parallel_for range, a block), not
// per element: the switch is cheap, but f's body is only compiled per level when inlined here.
template <typename F>
inline void run_isa(const F& f) {
#ifdef FASTGAN_X86_LEVELS
  switch (cpu_isa()) {
    case Isa::kAvx512: return run_avx512(f);
    case Isa::kAvx2: return run_avx2(f);
    case Isa::kBaseline: break;
  }
#endif
  run_baseline(f);
}

}  // namespace cpu
}  // namespace fastgan
