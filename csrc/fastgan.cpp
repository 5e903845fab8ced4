// Every fastgan op schema, in this one file. Kernels register under their dispatch keys in
// csrc/cpu/<op>.cpp and csrc/cuda/<op>.cpp; fake kernels and autograd are registered from Python
// (fastgan/ops/<op>/native.py and autograd.py).
#include <Python.h>
#include <torch/library.h>

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
}

// `import fastgan._C` loads this library, which runs the registrations above. The module also
// records how it was built, for `fastgan info`.
static struct PyModuleDef fastgan_c_module = {PyModuleDef_HEAD_INIT, "_C",
                                              "fastgan compiled kernels (torch.ops.fastgan)", -1,
                                              nullptr};

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
