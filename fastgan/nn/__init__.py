"""Drop-in nn.Modules built on fastgan.ops; each takes ``backend=`` (default: automatic)."""

from .pixel_shuffle import ConvPixelShuffleAct, PixelShuffleAct, PixelShuffleUpsample, icnr_

__all__ = ["ConvPixelShuffleAct", "PixelShuffleAct", "PixelShuffleUpsample", "icnr_"]
