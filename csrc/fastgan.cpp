// Every fastgan op schema, in this one file. Kernels register under their dispatch keys in
// csrc/cpu/<op>.cpp and csrc/cuda/<op>.cpp; fake kernels and autograd are registered from Python
// (fastgan/ops/<op>/native.py and autograd.py).
#include <Python.h>
#include <torch/library.h>

#include "common/cpu_isa.h"

TORCH_LIBRARY(fastgan, m) {
  // y = act(pixel_shuffle(x + bias[:, None, None], upscale_factor)); activation is one of
  // "none" | "relu" | "leaky_relu" | "prelu" | "tanh". The output keeps x's memory format.
  m.def(
      "pixel_shuffle_act_fwd(Tensor x, Tensor? bias, int upscale_factor, str activation, "
      "float negative_slope, Tensor? prelu_weight) -> Tensor");
  // Returns (grad_x, grad_bias, grad_prelu_weight); grad_bias / grad_prelu_weight are empty [0]
  // tensors when bias / prelu_weight is None. grad_x keeps x's memory format.
  m.def(
      "pixel_shuffle_act_bwd(Tensor grad_out, Tensor x, Tensor? bias, int upscale_factor, "
      "str activation, float negative_slope, Tensor? prelu_weight) -> (Tensor, Tensor, Tensor)");

  // cond_batch_norm's four passes (contract: fastgan/ops/batch_norm/README.md). x, grad_out:
  // [B, C, S] with any strides; gain, bias: [B, C] in x's dtype with any strides (a per-channel
  // affine arrives as a stride-0 expand over B); mean, invstd, var and every reduction: [C] or
  // [B, C] in the accumulation dtype (float64 for float64 x, else float32). activation is one of
  // "none" | "relu" | "leaky_relu"; z = (x - mean) * invstd * gain + bias, y = act(z).
  // Per-channel mean and biased variance over B and S.
  m.def("cond_bn_stats(Tensor x) -> (Tensor mean, Tensor var)");
  // y = act(z), with x's shape and strides (contiguous when x is not dense).
  m.def(
      "cond_bn_fwd(Tensor x, Tensor mean, Tensor invstd, Tensor? gain, Tensor? bias, "
      "str activation, float negative_slope) -> Tensor");
  // dz = grad_out * act'(z); returns ([B, C] sums over S of dz, of dz * xhat).
  m.def(
      "cond_bn_bwd_reduce(Tensor grad_out, Tensor x, Tensor mean, Tensor invstd, Tensor? gain, "
      "Tensor? bias, str activation, float negative_slope) -> (Tensor sum_dz, Tensor sum_dz_xhat)");
  // grad_x = invstd * (dz * gain - mean_dxhat - xhat * mean_dxhat_xhat), the [C] means over B and
  // S of dxhat = dz * gain and of dxhat * xhat (training); both None: grad_x = invstd * dz * gain
  // (eval, fixed statistics). Same shape and strides rule as cond_bn_fwd.
  m.def(
      "cond_bn_bwd_dx(Tensor grad_out, Tensor x, Tensor mean, Tensor invstd, Tensor? gain, "
      "Tensor? bias, str activation, float negative_slope, Tensor? mean_dxhat, "
      "Tensor? mean_dxhat_xhat) -> Tensor");
  // Training without synchronized statistics, CPU only: stats, invstd = rsqrt(var + eps), the
  // running-stat update and fwd in one op; bwd_reduce, the [C] dx terms and bwd_dx in another.
  // The CPU kernels take a block of channels at a time, so that x (and grad_out) are read from
  // memory once per pair of passes. running_mean / running_var (both or neither, any float
  // dtype) are updated in place as F.batch_norm does, the variance unbiased. B * S >= 2.
  m.def(
      "cond_bn_train_fwd(Tensor x, Tensor? gain, Tensor? bias, Tensor(a!)? running_mean, "
      "Tensor(b!)? running_var, float momentum, float eps, str activation, float negative_slope) "
      "-> (Tensor y, Tensor mean, Tensor invstd)");
  // Returns (grad_x, sum_dz, sum_dz_xhat): bwd_dx's training grad_x and bwd_reduce's [B, C] sums
  // (for the gain and bias gradients).
  m.def(
      "cond_bn_train_bwd(Tensor grad_out, Tensor x, Tensor mean, Tensor invstd, Tensor? gain, "
      "Tensor? bias, str activation, float negative_slope) "
      "-> (Tensor grad_x, Tensor sum_dz, Tensor sum_dz_xhat)");

  // Spectral-norm power iteration over a group of L weight matrices (contract:
  // fastgan/ops/spectral_norm/README.md). weights[l]: [H_l, W_l], one dtype and device, any
  // strides; us[l]: [H_l], vs[l]: [W_l], contiguous, in the accumulation dtype (float64 for float64
  // weights, else float32), updated in place: n_power_iterations times v = normalize(W^T u),
  // u = normalize(W v). Returns sigmas [L] (accumulation dtype), sigma_l = u . W v.
  m.def(
      "sn_power_iteration(Tensor[] weights, Tensor(a!)[] us, Tensor(b!)[] vs, "
      "int n_power_iterations, float eps) -> Tensor");

  // The attention core of self_attention2d (contract: fastgan/ops/self_attention/README.md):
  // q [B, N, D], k [B, M, D], v [B, M, E], any strides, one dtype. o = softmax(scale q k^T) v
  // [B, N, E] in q's dtype and lse [B, N] (float32; float64 for float64), the log-sum-exp of each
  // query's scores; the [N, M] matrix is never stored.
  m.def("self_attention_core_fwd(Tensor q, Tensor k, Tensor v, float scale) -> (Tensor o, Tensor lse)");
  // Gradients of o w.r.t. q, k and v, recomputing the attention block by block from lse.
  m.def(
      "self_attention_core_bwd(Tensor grad_o, Tensor q, Tensor k, Tensor v, Tensor o, Tensor lse, "
      "float scale) -> (Tensor grad_q, Tensor grad_k, Tensor grad_v)");
}

// `import fastgan._C` loads this library, which runs the registrations above. The module also
// records how it was built, and tells the x86-64 level the CPU kernels run at, for `fastgan info`.
static PyObject* cpu_isa(PyObject*, PyObject*) {
  try {
    return PyUnicode_FromString(fastgan::cpu::isa_name(fastgan::cpu::cpu_isa()));
  } catch (const c10::Error& e) {  // FASTGAN_CPU_ISA names no level
    PyErr_SetString(PyExc_RuntimeError, e.what_without_backtrace());
    return nullptr;
  }
}

static PyMethodDef fastgan_c_methods[] = {
    {"cpu_isa", cpu_isa, METH_NOARGS,
     "The x86-64 level the CPU kernels run at: 'avx512', 'avx2' or 'baseline' (the highest this "
     "CPU supports, lowered by the environment variable FASTGAN_CPU_ISA)."},
    {nullptr, nullptr, 0, nullptr}};

static struct PyModuleDef fastgan_c_module = {PyModuleDef_HEAD_INIT, "_C",
                                              "fastgan compiled kernels (torch.ops.fastgan)", -1,
                                              fastgan_c_methods};

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* module = PyModule_Create(&fastgan_c_module);
  if (module == nullptr) return nullptr;
#ifdef FASTGAN_WITH_CUDA
  PyModule_AddIntConstant(module, "with_cuda", 1);
  PyModule_AddStringConstant(module, "cuda_arch_list", FASTGAN_CUDA_ARCH_LIST);
#else
  PyModule_AddIntConstant(module, "with_cuda", 0);
  PyModule_AddStringConstant(module, "cuda_arch_list", "");
#endif
  PyModule_AddStringConstant(module, "torch_version", FASTGAN_TORCH_VERSION);
  return module;
}
