"""fastgan: fused GPU (Triton, CUDA) and CPU kernels for GAN building blocks, with drop-in modules.

    import fastgan
    y = fastgan.ops.pixel_shuffle_act(x, 2, bias, "prelu", prelu_weight=a)
    fastgan.backends()                  # which backends run here, and why not
    with fastgan.use_backend("triton"): ...
    report = fastgan.swap(model)        # fused layers into a model someone else wrote
    G = fastgan.models.create("biggan128_g")   # the zoo; fastgan.losses, .init, .utils, .metrics
"""

from ._version import __version__
from .backend import BackendUnavailableError, backends, use_backend
from . import ops, nn
from . import init, losses, metrics, models, perceptual, utils
from .swap import SwapReport, swap, unswap

__all__ = ["BackendUnavailableError", "__version__", "SwapReport", "backends", "init", "losses",
           "metrics", "models", "nn", "ops", "perceptual", "swap", "unswap", "use_backend",
           "utils"]
