"""SRResNet / SRGAN (Ledig et al., 2017) and BasicSR's MSRResNet, x4 super-resolution.

- ``srresnet_g`` -> :class:`MSRResNet`. ``variant="msrresnet"`` (default) is BasicSR's
  ``MSRResNet`` (``basicsr/archs/srresnet_arch.py``): conv_first + LeakyReLU(0.1), ``num_block``
  residual blocks without BN (conv-ReLU-conv + identity), two x2 sub-pixel stages (conv ->
  PixelShuffle(2) -> LeakyReLU(0.1)), conv_hr + LeakyReLU(0.1), conv_last, plus the bilinearly
  upsampled input. 1,517,571 parameters at num_feat=64, num_block=16, x4. Its state_dict keys are
  BasicSR's (conv_first, body.N.conv1, upconv1, upconv2, conv_hr, conv_last), so BasicSR
  checkpoints load as they are (``load_upstream("srresnet_g", sd)`` also unwraps "params_ema").
  ``variant="srresnet"`` is the paper's SRResNet: 9x9 conv_first + PReLU, residual blocks
  conv-BN-PReLU-conv-BN, conv_body + BN with the long skip, PReLU sub-pixel stages, 9x9 conv_last.
- ``srgan_d`` -> :class:`SRGANDiscriminator`, the paper's VGG-style D for 96x96 crops.

The sub-pixel stages run fused: the conv runs without its bias, and bias + shuffle + activation
are one ``fastgan.ops.pixel_shuffle_act`` call. The convs stay plain ``nn.Conv2d`` attributes of
the generator so the keys are upstream's. BN + LeakyReLU pairs are ``fastgan.nn.BatchNormAct2d``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import BatchNormAct2d
from ..ops import pixel_shuffle_act
from ._registry import register_converter, register_model

__all__ = ["MSRResNet", "ResidualBlockNoBN", "SRResNetBlock", "SRGANDiscriminator",
           "unwrap_basicsr"]


def _conv_shuffle_act(conv: nn.Conv2d, x: torch.Tensor, r: int, activation: str, slope: float,
                      prelu: nn.PReLU | None, backend: str | None) -> torch.Tensor:
    """act(PixelShuffle(r)(conv(x))) with the conv's bias folded into the fused shuffle op."""
    y = conv._conv_forward(x, conv.weight, None)
    bias = conv.bias.to(y.dtype) if conv.bias is not None else None
    weight = prelu.weight.to(y.dtype) if prelu is not None else None
    return pixel_shuffle_act(y, r, bias, activation, slope, weight, backend=backend)


class ResidualBlockNoBN(nn.Module):
    """x + res_scale * conv2(relu(conv1(x))), [N, C, H, W] -> same (BasicSR's block)."""

    def __init__(self, num_feat: int = 64, res_scale: float = 1.0) -> None:
        super().__init__()
        self.res_scale = res_scale
        self.conv1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.relu(self.conv1(x))) * self.res_scale


class SRResNetBlock(nn.Module):
    """The paper's block: x + bn2(conv2(prelu(bn1(conv1(x))))), [N, C, H, W] -> same.

    BN runs on fastgan's BatchNormAct2d (no activation: the fused op has no PReLU), PReLU after it.
    """

    def __init__(self, num_feat: int = 64, backend: str | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.bn1 = BatchNormAct2d(num_feat, activation=None, backend=backend)
        self.prelu = nn.PReLU()
        self.conv2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.bn2 = BatchNormAct2d(num_feat, activation=None, backend=backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bn2(self.conv2(self.prelu(self.bn1(self.conv1(x)))))


class MSRResNet(nn.Module):
    """SRResNet generator: x [N, num_in_ch, H, W] -> [N, num_out_ch, H*upscale, W*upscale].

    ``variant``: "msrresnet" (BasicSR's modified SRResNet, no BN, LeakyReLU 0.1, bilinear skip)
    or "srresnet" (the paper's, BN + PReLU). ``upscale``: 2, 3 or 4.
    """

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64,
                 num_block: int = 16, upscale: int = 4, variant: str = "msrresnet",
                 backend: str | None = None) -> None:
        super().__init__()
        if upscale not in (2, 3, 4):
            raise ValueError(f"fastgan.models.MSRResNet: upscale must be 2, 3 or 4, "
                             f"got {upscale!r}")
        if variant not in ("msrresnet", "srresnet"):
            raise ValueError(f"fastgan.models.MSRResNet: variant must be 'msrresnet' or "
                             f"'srresnet', got {variant!r}")
        self.upscale, self.variant, self.backend = upscale, variant, backend
        paper = variant == "srresnet"
        # The paper uses 9x9 convs at both ends; BasicSR 3x3.
        k_end = 9 if paper else 3
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, k_end, 1, k_end // 2)
        if paper:
            self.prelu = nn.PReLU()
            self.body = nn.Sequential(*[SRResNetBlock(num_feat, backend) for _ in range(num_block)])
            self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            self.bn_body = BatchNormAct2d(num_feat, activation=None, backend=backend)
        else:
            self.body = nn.Sequential(*[ResidualBlockNoBN(num_feat) for _ in range(num_block)])
        # x4 is two x2 stages; x2 and x3 one stage of that factor.
        r = 3 if upscale == 3 else 2
        self.upconv1 = nn.Conv2d(num_feat, num_feat * r * r, 3, 1, 1)
        if upscale == 4:
            self.upconv2 = nn.Conv2d(num_feat, num_feat * 4, 3, 1, 1)
        if paper:
            self.prelu_up1 = nn.PReLU()
            if upscale == 4:
                self.prelu_up2 = nn.PReLU()
        else:
            self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, k_end, 1, k_end // 2)
        self.lrelu = nn.LeakyReLU(0.1, inplace=True)

    def _up(self, conv: nn.Conv2d, x: torch.Tensor, r: int, prelu: nn.PReLU | None) -> torch.Tensor:
        if self.variant == "srresnet":
            return _conv_shuffle_act(conv, x, r, "prelu", 0.2, prelu, self.backend)
        return _conv_shuffle_act(conv, x, r, "leaky_relu", 0.1, None, self.backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"fastgan.models.MSRResNet: x must be [N, C, H, W], "
                             f"got {tuple(x.shape)}")
        r = 3 if self.upscale == 3 else 2
        if self.variant == "srresnet":
            feat = self.prelu(self.conv_first(x))
            out = feat + self.bn_body(self.conv_body(self.body(feat)))
            out = self._up(self.upconv1, out, r, self.prelu_up1)
            if self.upscale == 4:
                out = self._up(self.upconv2, out, 2, self.prelu_up2)
            return self.conv_last(out)
        feat = self.lrelu(self.conv_first(x))
        out = self._up(self.upconv1, self.body(feat), r, None)
        if self.upscale == 4:
            out = self._up(self.upconv2, out, 2, None)
        out = self.conv_last(self.lrelu(self.conv_hr(out)))
        # BasicSR learns the residual over the bilinearly upsampled input.
        base = F.interpolate(x, scale_factor=self.upscale, mode="bilinear", align_corners=False)
        return out + base


class SRGANDiscriminator(nn.Module):
    """Ledig et al.'s VGG-style D: x [N, num_in_ch, S, S] (S = 96; a multiple of 16) -> [N, 1].

    8 3x3 convs (64, 64, 128, 128, 256, 256, 512, 512; strides 1, 2, 1, 2, ...), the first with a
    bias and LeakyReLU(0.2), the others bias-free with BN + LeakyReLU(0.2) (fused); then
    Linear(512*(S/16)^2, 1024), LeakyReLU(0.2), Linear(1024, 1). No Sigmoid: use BCE with logits.
    """

    def __init__(self, num_in_ch: int = 3, num_feat: int = 64, image_size: int = 96,
                 backend: str | None = None) -> None:
        super().__init__()
        if image_size % 16:
            raise ValueError(f"fastgan.models.SRGANDiscriminator: image_size must be a multiple "
                             f"of 16, got {image_size!r}")
        self.image_size = image_size
        widths = [num_feat, num_feat, num_feat * 2, num_feat * 2, num_feat * 4, num_feat * 4,
                  num_feat * 8, num_feat * 8]
        layers: list[nn.Module] = [nn.Conv2d(num_in_ch, widths[0], 3, 1, 1),
                                   nn.LeakyReLU(0.2, True)]
        for i in range(1, 8):
            layers += [nn.Conv2d(widths[i - 1], widths[i], 3, 2 if i % 2 else 1, 1, bias=False),
                       BatchNormAct2d(widths[i], activation="leaky_relu", negative_slope=0.2,
                                      backend=backend)]
        self.features = nn.Sequential(*layers)
        side = image_size // 16
        self.classifier = nn.Sequential(nn.Linear(widths[-1] * side * side, 1024),
                                        nn.LeakyReLU(0.2, True), nn.Linear(1024, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            size = self.image_size
            raise ValueError(f"fastgan.models.SRGANDiscriminator: x must be [N, C, {size}, "
                             f"{size}], got {tuple(x.shape)}")
        return self.classifier(torch.flatten(self.features(x), 1))


@register_model("srresnet_g", family="srgan",
                description="SRResNet x4 generator (BasicSR MSRResNet; variant='srresnet': "
                            "the paper's)")
def srresnet_g(num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64, num_block: int = 16,
               upscale: int = 4, variant: str = "msrresnet",
               backend: str | None = None) -> MSRResNet:
    return MSRResNet(num_in_ch, num_out_ch, num_feat, num_block, upscale, variant, backend)


@register_model("srgan_d", family="srgan", description="SRGAN VGG-style discriminator, 96x96 input")
def srgan_d(num_in_ch: int = 3, num_feat: int = 64, image_size: int = 96,
            backend: str | None = None) -> SRGANDiscriminator:
    return SRGANDiscriminator(num_in_ch, num_feat, image_size, backend)


def unwrap_basicsr(state_dict: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    """A BasicSR checkpoint file holds {"params": sd} and/or {"params_ema": sd}: the EMA weights
    if there, else the params; a plain state_dict is returned as it is."""
    for key in ("params_ema", "params"):
        if isinstance(state_dict.get(key), Mapping):
            return state_dict[key]
    return state_dict


_MSRRESNET_KEY = re.compile(r"(conv_first|upconv1|upconv2|conv_hr|conv_last|body\.\d+\.conv[12])"
                            r"\.(weight|bias)")


@register_converter("srresnet_g", upstream="BasicSR MSRResNet")
def convert_basicsr_msrresnet(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """BasicSR's MSRResNet keys are ours; this checks them (unknown keys raise ValueError)."""
    state_dict = unwrap_basicsr(state_dict)
    unknown = [k for k in state_dict if not _MSRRESNET_KEY.fullmatch(k)]
    if unknown:
        raise ValueError(f"fastgan.models.srgan: not BasicSR MSRResNet keys: {', '.join(unknown)}")
    return dict(state_dict)
