"""fastgan: fused GPU (Triton, CUDA) and CPU kernels for GAN building blocks, with drop-in modules.

    import fastgan
    y = fastgan.ops.pixel_shuffle_act(x, 2, bias, "prelu", prelu_weight=a)
    fastgan.backends()                  # which backends run here, and why not
    with fastgan.use_backend("triton"): ...
"""

from ._version import __version__
from .backend import BackendUnavailableError, backends, use_backend
from . import ops, nn

__all__ = ["BackendUnavailableError", "__version__", "backends", "nn", "ops", "use_backend"]
