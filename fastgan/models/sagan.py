"""SAGAN (Zhang et al., 2019) and SNGAN-style (Miyato et al., 2018) DCGAN-layout nets with
spectral norm everywhere, in the layout of heykeetae/Self-Attention-GAN (``sagan_models.py``).

- G: z [N, z_dim] -> view [N, z_dim, 1, 1] -> l1: SN ConvTranspose 4x4 (1 -> 4) + BN+ReLU ->
  l2..lK: SN ConvTranspose 4x4 stride 2 + BN+ReLU (halving the width) -> ``last``: ConvTranspose
  4x4 stride 2 to 3 channels + Tanh. SAGAN puts ``attn1`` / ``attn2`` after the last two blocks.
- D: x [N, 3, S, S] -> l1..lK: SN Conv 4x4 stride 2 + LeakyReLU(0.1) (doubling the width) ->
  ``last``: Conv 4x4 (4 -> 1) -> logits [N]. SAGAN's ``attn1`` / ``attn2`` again after the last
  two blocks.

K = log2(S) - 2 (4 at 64x64, as upstream; 5 at 128x128, one more block). The attention layers
are ``fastgan.nn.SelfAttention2d(layout="sagan")`` (query_conv / key_conv / value_conv, gamma; no
spectral norm, as upstream). Every BN + ReLU is one fused ``BatchNormAct2d``.

Spectral norm follows heykeetae's ``SpectralNorm`` wrapper, which differs from torch's in two ways
we keep so that its checkpoints give the same numbers: the weight is viewed as
``w.view(w.shape[0], -1)`` for every layer (dim 0, so in_channels first for ConvTranspose, where
torch uses dim 1), and it runs its power iteration on every call, eval included
(``eval_iteration="update"``). ``last`` has no spectral norm, as upstream.

Parameter counts at the reference config (z_dim=128, conv_dim=64): sagan64_g 3,832,885,
sagan64_d 3,175,299 (equal to heykeetae's trainable parameters; tests/models/test_sagan.py checks
them against a fixture of the upstream modules); sngan64_g 3,807,043, sngan64_d 2,764,737;
sagan128_g 13,273,141, sagan128_d 12,802,883.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch
from torch import nn

from ..nn import BatchNormAct2d, SelfAttention2d, SNConv2d, SNConvTranspose2d
from ._registry import register_converter, register_model

__all__ = ["Generator", "Discriminator"]


# heykeetae's SpectralNorm: matrix w.view(w.size(0), -1) (dim 0, ConvTranspose too) and the power
# iteration on every call, eval included.
_HEYKEETAE_SN = dict(sn_dim=0, eval_iteration="update")


def _n_blocks(image_size: int) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 16 \
            or image_size & (image_size - 1):
        raise ValueError(f"fastgan.models.sagan: image_size must be a power of two >= 16, "
                         f"got {image_size!r}")
    return int(math.log2(image_size)) - 2


class Generator(nn.Module):
    """SAGAN / SNGAN generator: z [N, z_dim] -> images [N, 3, image_size, image_size] in [-1, 1].

    Submodules ``l1`` .. ``lK`` (each Sequential(SNConvTranspose2d, BatchNormAct2d)), ``attn1``,
    ``attn2`` (if ``attention``), ``last`` (Sequential(ConvTranspose2d, Tanh)), as heykeetae's.
    """

    def __init__(self, image_size: int = 64, z_dim: int = 128, conv_dim: int = 64,
                 attention: bool = True, backend: str | None = None) -> None:
        super().__init__()
        self.image_size, self.z_dim, self.attention = image_size, z_dim, attention
        k = _n_blocks(image_size)
        self.n_blocks = k
        width = conv_dim * 2 ** (k - 1)
        in_ch = z_dim
        for i in range(k):
            stride_args = (1, 0) if i == 0 else (2, 1)  # l1 maps 1x1 to 4x4; the rest double
            conv = SNConvTranspose2d(in_ch, width, 4, *stride_args, backend=backend, **_HEYKEETAE_SN)
            setattr(self, f"l{i + 1}", nn.Sequential(
                conv, BatchNormAct2d(width, activation="relu", backend=backend)))
            if attention and i == k - 2:
                self.attn1 = SelfAttention2d(width, layout="sagan", backend=backend)
            if attention and i == k - 1:
                self.attn2 = SelfAttention2d(width, layout="sagan", backend=backend)
            in_ch, width = width, width // 2
        # No SN and no BN on the output layer, as upstream: Tanh alone sets the image range.
        self.last = nn.Sequential(nn.ConvTranspose2d(in_ch, 3, 4, 2, 1), nn.Tanh())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = z.view(z.size(0), z.size(1), 1, 1)
        for i in range(self.n_blocks):
            out = getattr(self, f"l{i + 1}")(out)
            if self.attention and i == self.n_blocks - 2:
                out = self.attn1(out)
            if self.attention and i == self.n_blocks - 1:
                out = self.attn2(out)
        return self.last(out)


class Discriminator(nn.Module):
    """SAGAN / SNGAN discriminator: images [N, 3, image_size, image_size] -> logits [N].

    Submodules ``l1`` .. ``lK`` (each Sequential(SNConv2d, LeakyReLU(0.1))), ``attn1``, ``attn2``
    (if ``attention``), ``last`` (Sequential(Conv2d 4x4 -> 1)), as heykeetae's. Upstream also
    returns the attention maps; this returns the logits only.
    """

    def __init__(self, image_size: int = 64, conv_dim: int = 64, attention: bool = True,
                 backend: str | None = None) -> None:
        super().__init__()
        self.image_size, self.attention = image_size, attention
        k = _n_blocks(image_size)
        self.n_blocks = k
        in_ch, width = 3, conv_dim
        for i in range(k):
            conv = SNConv2d(in_ch, width, 4, 2, 1, backend=backend, **_HEYKEETAE_SN)
            setattr(self, f"l{i + 1}", nn.Sequential(conv, nn.LeakyReLU(0.1)))
            if attention and i == k - 2:
                self.attn1 = SelfAttention2d(width, layout="sagan", backend=backend)
            if attention and i == k - 1:
                self.attn2 = SelfAttention2d(width, layout="sagan", backend=backend)
            in_ch, width = width, width * 2
        self.last = nn.Sequential(nn.Conv2d(in_ch, 1, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for i in range(self.n_blocks):
            out = getattr(self, f"l{i + 1}")(out)
            if self.attention and i == self.n_blocks - 2:
                out = self.attn1(out)
            if self.attention and i == self.n_blocks - 1:
                out = self.attn2(out)
        return self.last(out).view(-1)


_FAMILY = "sagan"


@register_model("sagan64_g", family=_FAMILY, description="SAGAN generator, 64x64 (heykeetae)")
def sagan64_g(image_size: int = 64, z_dim: int = 128, conv_dim: int = 64,
              backend: str | None = None) -> Generator:
    return Generator(image_size, z_dim, conv_dim, attention=True, backend=backend)


@register_model("sagan64_d", family=_FAMILY, description="SAGAN discriminator, 64x64 (heykeetae)")
def sagan64_d(image_size: int = 64, conv_dim: int = 64,
              backend: str | None = None) -> Discriminator:
    return Discriminator(image_size, conv_dim, attention=True, backend=backend)


@register_model("sagan128_g", family=_FAMILY, description="SAGAN generator, 128x128")
def sagan128_g(image_size: int = 128, z_dim: int = 128, conv_dim: int = 64,
               backend: str | None = None) -> Generator:
    return Generator(image_size, z_dim, conv_dim, attention=True, backend=backend)


@register_model("sagan128_d", family=_FAMILY, description="SAGAN discriminator, 128x128")
def sagan128_d(image_size: int = 128, conv_dim: int = 64,
               backend: str | None = None) -> Discriminator:
    return Discriminator(image_size, conv_dim, attention=True, backend=backend)


@register_model("sngan64_g", family=_FAMILY, description="SNGAN generator, 64x64 (SAGAN G "
                "without attention)")
def sngan64_g(image_size: int = 64, z_dim: int = 128, conv_dim: int = 64,
              backend: str | None = None) -> Generator:
    return Generator(image_size, z_dim, conv_dim, attention=False, backend=backend)


@register_model("sngan64_d", family=_FAMILY, description="SNGAN discriminator, 64x64 (SAGAN D "
                "without attention)")
def sngan64_d(image_size: int = 64, conv_dim: int = 64,
              backend: str | None = None) -> Discriminator:
    return Discriminator(image_size, conv_dim, attention=False, backend=backend)


# heykeetae's SpectralNorm wraps the layer: <layer>.module.{weight_bar, weight_u, weight_v, bias}.
_SN_KEY = re.compile(r"^(l\d+\.0)\.module\.(weight_bar|weight_u|weight_v|bias)$")
_SN_RENAME = {"weight_bar": "weight_orig", "weight_u": "weight_u", "weight_v": "weight_v",
              "bias": "bias"}
_BN_KEY = re.compile(r"^l\d+\.1\.(weight|bias|running_mean|running_var|num_batches_tracked)$")
_SAME_KEY = re.compile(r"^(attn[12]\.((query_conv|key_conv|value_conv)\.(weight|bias)|gamma)"
                       r"|last\.0\.(weight|bias))$")


def _convert(state_dict: Mapping[str, torch.Tensor], with_bn: bool) -> dict[str, torch.Tensor]:
    out, unknown = {}, []
    for key, value in state_dict.items():
        m = _SN_KEY.match(key)
        if m:
            out[f"{m.group(1)}.{_SN_RENAME[m.group(2)]}"] = value
        elif (with_bn and _BN_KEY.match(key)) or _SAME_KEY.match(key):
            out[key] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"fastgan.models.sagan: unknown heykeetae Self-Attention-GAN keys: "
                         f"{unknown}")
    return out


@register_converter("sagan64_g", upstream="heykeetae Self-Attention-GAN")
def convert_sagan64_g(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """heykeetae's Generator state_dict -> sagan64_g's (the BN at l*.1 and the attention and last
    layers keep their keys; the SN wrapper's module.weight_bar becomes weight_orig)."""
    return _convert(state_dict, with_bn=True)


@register_converter("sagan64_d", upstream="heykeetae Self-Attention-GAN")
def convert_sagan64_d(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """heykeetae's Discriminator state_dict -> sagan64_d's."""
    return _convert(state_dict, with_bn=False)
