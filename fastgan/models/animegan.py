"""The AnimeGAN / AnimeGANv2 discriminator (Chen, Liu & Chen, "AnimeGAN: A Novel Lightweight GAN
for Photo Animation", ISICA 2019; TachibanaYoshino/AnimeGAN and AnimeGANv2, TensorFlow).

Our own PyTorch implementation of upstream's ``D_net(x, ch, n_dis, sn)`` (net/discriminator.py),
with c = ch // 2 and every conv 3x3, padding 1, without bias (``use_bias=False`` upstream)::

    conv_0: 3 -> c, stride 1; LeakyReLU(0.2)
    for i in 1 .. n_dis - 1:                    (upstream's range(1, n_dis): n_dis - 1 blocks)
        conv_s2_i: c_in -> 2c, stride 2; LeakyReLU(0.2)     (c_in: c at i = 1, else 2c)
        conv_s1_i: 2c -> 4c, stride 1; norm_i; LeakyReLU(0.2)
        c = 2c
    last_conv: 2c -> 2c, stride 1; last_norm; LeakyReLU(0.2)
    D_logit: 2c -> 1, stride 1                  -> patch logits [N, 1, H/2^(n_dis-1), W/2^(n_dis-1)]

Defaults are AnimeGANv2's training config: ch=64 (so the first conv is 32 wide, as the original
AnimeGAN's 32), n_dis=3, sn=True, norm="layer". ``norm``:

- "layer": upstream's ``tf.contrib.layers.layer_norm`` on NHWC, i.e. statistics over (H, W, C)
  per sample and a per-channel gain and bias: exactly ``nn.GroupNorm(1, C)``.
- "instance": ``nn.InstanceNorm2d(C, affine=True)``.
- "batch": BN + LeakyReLU as one fused ``fastgan.nn.BatchNormAct2d`` (no separate activation).
- "group": ``nn.GroupNorm(gcd(num_groups, C), C)`` (num_groups default 32).

``sn=True`` makes every conv a ``fastgan.nn.SNConv2d`` (state_dict ``weight_orig``, ``weight_u``,
``weight_v``, as torch's spectral_norm). Module names follow upstream's TF scopes in ``self.main``.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn

from ..nn import BatchNormAct2d, SNConv2d
from ._registry import register_model

__all__ = ["AnimeGANDiscriminator"]

_NORMS = ("layer", "instance", "batch", "group")


class AnimeGANDiscriminator(nn.Module):
    """x [N, in_channels, H, W] -> patch logits [N, 1, ceil(H / 2^(n_dis-1)), ...]."""

    def __init__(self, in_channels: int = 3, ch: int = 64, n_dis: int = 3, sn: bool = True,
                 norm: str = "layer", num_groups: int = 32, backend: str | None = None) -> None:
        super().__init__()
        if norm not in _NORMS:
            raise ValueError(f"fastgan.models.AnimeGANDiscriminator: norm must be one of "
                             f"{_NORMS}, got {norm!r}")
        if n_dis < 1 or ch < 2:
            raise ValueError(f"fastgan.models.AnimeGANDiscriminator: need n_dis >= 1 and ch >= 2, "
                             f"got n_dis={n_dis}, ch={ch}")
        self.norm = norm

        def conv(cin: int, cout: int, stride: int) -> nn.Conv2d:
            cls = (lambda *a, **k: SNConv2d(*a, **k, backend=backend)) if sn else nn.Conv2d
            return cls(cin, cout, 3, stride=stride, padding=1, bias=False)

        def norm_act(name: str, width: int) -> list[tuple[str, nn.Module]]:
            # BN is followed by the activation, so the pair runs fused; the others are not fused
            if norm == "batch":
                return [(name, BatchNormAct2d(width, activation="leaky_relu", negative_slope=0.2,
                                              backend=backend))]
            if norm == "layer":
                layer = nn.GroupNorm(1, width)
            elif norm == "instance":
                layer = nn.InstanceNorm2d(width, affine=True)
            else:
                layer = nn.GroupNorm(math.gcd(num_groups, width), width)
            return [(name, layer), (f"lrelu_{name}", nn.LeakyReLU(0.2))]

        c = ch // 2
        layers: list[tuple[str, nn.Module]] = [("conv_0", conv(in_channels, c, 1)),
                                               ("lrelu_0", nn.LeakyReLU(0.2))]
        prev = c
        for i in range(1, n_dis):
            layers += [(f"conv_s2_{i}", conv(prev, 2 * c, 2)), (f"lrelu_s2_{i}", nn.LeakyReLU(0.2)),
                       (f"conv_s1_{i}", conv(2 * c, 4 * c, 1)), *norm_act(f"norm_{i}", 4 * c)]
            prev, c = 4 * c, 2 * c
        layers += [("last_conv", conv(2 * c, 2 * c, 1)), *norm_act("last_norm", 2 * c),
                   ("D_logit", conv(2 * c, 1, 1))]
        self.main = nn.Sequential(OrderedDict(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"fastgan.models.AnimeGANDiscriminator: x must be [N, C, H, W], "
                             f"got {tuple(x.shape)}")
        return self.main(x)


@register_model("animegan_d", family="animegan",
                description="AnimeGANv2 discriminator (SN convs, layer norm), 3xHxW -> patch "
                            "logits [N, 1, H/4, W/4]")
def animegan_d(in_channels: int = 3, ch: int = 64, n_dis: int = 3, sn: bool = True,
               norm: str = "layer", num_groups: int = 32,
               backend: str | None = None) -> AnimeGANDiscriminator:
    return AnimeGANDiscriminator(in_channels=in_channels, ch=ch, n_dis=n_dis, sn=sn, norm=norm,
                                 num_groups=num_groups, backend=backend)
