"""Drop-in nn.Modules built on fastgan.ops; each takes ``backend=`` (default: automatic)."""

from .batch_norm import BatchNormAct2d, ConditionalBatchNorm2d
from .pixel_shuffle import ConvPixelShuffleAct, PixelShuffleAct, PixelShuffleUpsample, icnr_

__all__ = [
    "BatchNormAct2d", "ConditionalBatchNorm2d", "ConvPixelShuffleAct", "PixelShuffleAct",
    "PixelShuffleUpsample", "icnr_",
]
