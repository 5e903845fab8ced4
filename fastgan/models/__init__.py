"""The model zoo: GAN generators and discriminators built on fastgan.nn.

    G = fastgan.models.create("biggan128_g", backend="auto")
    fastgan.models.list_models()
    G = fastgan.models.load_upstream("biggan128_g", torch.load("G.pth"))

Every model takes ``backend=`` and otherwise follows the upstream code its users know.
"""

from ._registry import (create, convert_upstream, list_models, load_upstream, register_converter,
                        register_model, set_backend, upstream_names)

# Each family module registers its models (and upstream converters) on import.
from . import (animegan, biggan, cyclegan, dcgan, esrgan, lsgan, multiscale, pix2pix,  # noqa: F401
               sagan, sketchygan, srgan)

__all__ = ["create", "convert_upstream", "list_models", "load_upstream", "register_converter",
           "register_model", "set_backend", "upstream_names"]
