"""CycleGAN (Zhu et al., 2017): the ResNet generators; the discriminator is ``patchgan_d``.

The architecture is junyanz/pytorch-CycleGAN-and-pix2pix's ``ResnetGenerator`` / ``ResnetBlock``
(``models/networks.py``, Johnson et al.'s network), rewritten with upstream's module layout so
upstream state_dict keys are ours unchanged:

    x [N, input_nc, H, W] -> ReflectionPad(3), 7x7 conv ngf, norm, ReLU
      -> 2 x (3x3 conv stride 2, norm, ReLU)            ngf*2, ngf*4 at H/4
      -> n_blocks x ResnetBlock(ngf*4)                   x + (pad, conv3x3, norm, ReLU, [dropout],
                                                              pad, conv3x3, norm)
      -> 2 x (3x3 transposed conv stride 2, norm, ReLU)  ngf*2, ngf
      -> ReflectionPad(3), 7x7 conv output_nc, Tanh      -> [N, output_nc, H, W] in [-1, 1]

H and W must be divisible by 4. ``cyclegan_resnet9_g`` (256x256 training) has 11,378,179 and
``cyclegan_resnet6_g`` (128x128) 7,837,699 parameters at ngf=64, instance norm (CycleGAN's
default; then every conv has a bias, as upstream). With norm="batch" each BN + ReLU pair is a
fused ``fastgan.nn.BatchNormAct2d`` at the BN's index, an nn.Identity in the ReLU's slot.
The discriminator CycleGAN trains with is ``patchgan_d(input_nc=3, norm="instance")``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ._registry import register_converter, register_model
from .pix2pix import JUNYANZ, _act_slot, _check_norm, _infer_norm, _key, convert_checked, norm_layer

__all__ = ["ResnetBlock", "ResnetGenerator"]

_PADS = {"reflect": nn.ReflectionPad2d, "replicate": nn.ReplicationPad2d}


def _pad(padding_type: str) -> tuple[list[nn.Module], int]:
    """The explicit padding layer(s) and the conv's own padding, as upstream's build_conv_block."""
    if padding_type == "zero":
        return [], 1
    if padding_type not in _PADS:
        raise ValueError(f"fastgan.models: padding_type must be 'reflect', 'replicate' or "
                         f"'zero', got {padding_type!r}")
    return [_PADS[padding_type](1)], 0


class ResnetBlock(nn.Module):
    """x [N, dim, H, W] -> x + conv_block(x); ``conv_block`` is upstream's Sequential."""

    def __init__(self, dim: int, padding_type: str = "reflect", norm: str = "instance",
                 use_dropout: bool = False, backend: str | None = None) -> None:
        super().__init__()
        _check_norm(norm)
        use_bias = norm == "instance"
        act = "relu" if norm == "batch" else None
        pad, p = _pad(padding_type)
        layers = [*pad, nn.Conv2d(dim, dim, 3, padding=p, bias=use_bias),
                  norm_layer(norm, dim, act, backend), _act_slot(norm, nn.ReLU)]
        if use_dropout:
            layers.append(nn.Dropout(0.5))
        pad, p = _pad(padding_type)
        layers += [*pad, nn.Conv2d(dim, dim, 3, padding=p, bias=use_bias), norm_layer(norm, dim)]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """CycleGAN's generator: x [N, input_nc, H, W] -> [N, output_nc, H, W], H, W divisible by 4."""

    def __init__(self, input_nc: int = 3, output_nc: int = 3, ngf: int = 64, norm: str = "instance",
                 use_dropout: bool = False, n_blocks: int = 9, padding_type: str = "reflect",
                 backend: str | None = None) -> None:
        super().__init__()
        _check_norm(norm)
        if n_blocks < 0:
            raise ValueError(f"fastgan.models.ResnetGenerator: n_blocks must be >= 0, got {n_blocks}")
        use_bias = norm == "instance"
        act = "relu" if norm == "batch" else None

        def norm_relu(c: int) -> list[nn.Module]:
            return [norm_layer(norm, c, act, backend), _act_slot(norm, nn.ReLU)]

        model: list[nn.Module] = [nn.ReflectionPad2d(3),
                                  nn.Conv2d(input_nc, ngf, 7, padding=0, bias=use_bias),
                                  *norm_relu(ngf)]
        for i in range(2):  # downsampling
            c = ngf * 2 ** i
            model += [nn.Conv2d(c, c * 2, 3, stride=2, padding=1, bias=use_bias), *norm_relu(c * 2)]
        model += [ResnetBlock(ngf * 4, padding_type, norm, use_dropout, backend)
                  for _ in range(n_blocks)]
        for i in range(2):  # upsampling
            c = ngf * 2 ** (2 - i)
            model += [nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1,
                                         bias=use_bias), *norm_relu(c // 2)]
        model += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7, padding=0), nn.Tanh()]
        self.model = nn.Sequential(*model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[-1] % 4 or x.shape[-2] % 4:
            raise ValueError(f"fastgan.models.ResnetGenerator: x must be [N, C, H, W] with H and "
                             f"W divisible by 4, got {tuple(x.shape)}")
        return self.model(x)


@register_model("cyclegan_resnet9_g", family="cyclegan",
                description="CycleGAN ResNet generator, 9 blocks (256x256), x -> same-size image")
def cyclegan_resnet9_g(input_nc: int = 3, output_nc: int = 3, ngf: int = 64,
                       norm: str = "instance", use_dropout: bool = False,
                       padding_type: str = "reflect", backend: str | None = None) -> ResnetGenerator:
    return ResnetGenerator(input_nc, output_nc, ngf, norm, use_dropout, 9, padding_type, backend)


@register_model("cyclegan_resnet6_g", family="cyclegan",
                description="CycleGAN ResNet generator, 6 blocks (128x128), x -> same-size image")
def cyclegan_resnet6_g(input_nc: int = 3, output_nc: int = 3, ngf: int = 64,
                       norm: str = "instance", use_dropout: bool = False,
                       padding_type: str = "reflect", backend: str | None = None) -> ResnetGenerator:
    return ResnetGenerator(input_nc, output_nc, ngf, norm, use_dropout, 6, padding_type, backend)


def _convert_resnet(name: str, n_blocks: int, sd: Mapping[str, torch.Tensor]) -> dict:
    first = _key(sd, name, "model.1.weight")
    blocks = {int(k.split(".")[1]) for k in sd if ".conv_block." in k}
    if len(blocks) != n_blocks:
        raise ValueError(f"fastgan.models.convert_upstream({name!r}): the checkpoint has "
                         f"{len(blocks)} ResnetBlocks, {name} has {n_blocks}")
    # Zero padding puts the block's first conv at conv_block.0, reflect/replicate at .1; the
    # two pad types hold the same keys (reflect assumed; pass padding_type= to load_upstream).
    zero = any(k.endswith(".conv_block.0.weight") for k in sd)
    # Dropout shifts the second conv one slot on (reflect: .5 -> .6; zero: .3 -> .4).
    b = min(blocks)
    second = sd.get(f"model.{b}.conv_block.{4 if zero else 6}.weight")
    dropout = second is not None and second.dim() == 4
    last = max(int(k.split(".")[1]) for k in sd)
    norm = _infer_norm(sd, "model.1.bias")
    with torch.device("meta"):
        expected = ResnetGenerator(first.shape[1], sd[f"model.{last}.weight"].shape[0],
                                   first.shape[0], norm, dropout, n_blocks,
                                   "zero" if zero else "reflect")
    return convert_checked(name, sd, expected)


@register_converter("cyclegan_resnet9_g", upstream=JUNYANZ + " ResnetGenerator (netG resnet_9blocks)")
def _convert_resnet9(sd: Mapping[str, torch.Tensor]) -> dict:
    return _convert_resnet("cyclegan_resnet9_g", 9, sd)


@register_converter("cyclegan_resnet6_g", upstream=JUNYANZ + " ResnetGenerator (netG resnet_6blocks)")
def _convert_resnet6(sd: Mapping[str, torch.Tensor]) -> dict:
    return _convert_resnet("cyclegan_resnet6_g", 6, sd)
