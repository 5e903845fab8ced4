"""Drop-in nn.Modules built on fastgan.ops; each takes ``backend=`` (default: automatic)."""

from .batch_norm import BatchNormAct2d, ConditionalBatchNorm2d
from .pixel_shuffle import ConvPixelShuffleAct, PixelShuffleAct, PixelShuffleUpsample, icnr_
from .self_attention import SelfAttention2d
from .spectral_norm import (
    SNConv1d,
    SNConv2d,
    SNConv3d,
    SNConvTranspose1d,
    SNConvTranspose2d,
    SNConvTranspose3d,
    SNEmbedding,
    SNLinear,
    spectral_norm,
)
from .spectral_norm_group import SpectralNormGroup

__all__ = [
    "BatchNormAct2d", "ConditionalBatchNorm2d", "ConvPixelShuffleAct", "PixelShuffleAct",
    "PixelShuffleUpsample", "SelfAttention2d", "SNConv1d", "SNConv2d", "SNConv3d", "SNConvTranspose1d",
    "SNConvTranspose2d", "SNConvTranspose3d", "SNEmbedding", "SNLinear", "SpectralNormGroup",
    "icnr_", "spectral_norm",
]
