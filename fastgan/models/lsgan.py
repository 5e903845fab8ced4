"""The LSGAN discriminator (Mao et al., "Least Squares Generative Adversarial Networks", ICCV
2017, Fig. 3(b)): our own implementation from the paper.

    x [N, nc, S, S]
    conv 5x5 stride 2 (padding 2) -> ndf,   LeakyReLU(0.2)          (no norm on the input layer)
    conv 5x5 stride 2 -> 2 ndf,  norm + LeakyReLU(0.2)
    conv 5x5 stride 2 -> 4 ndf,  norm + LeakyReLU(0.2)
    conv 5x5 stride 2 -> 8 ndf,  norm + LeakyReLU(0.2)
    flatten -> linear(8 ndf * s * s, 1), s = S / 16 (ceil at each stride)   -> logits [N]

No sigmoid: the least-squares loss regresses the raw output to the targets (a, b). The paper
trains at 112x112 (s = 7); ``image_size`` defaults to 64 (s = 4). ``norm``:

- "batch" (the paper): BN + LeakyReLU as one fused ``fastgan.nn.BatchNormAct2d``; the convs
  before BN have no bias (BN cancels it), the input conv has one.
- "spectral": every conv and the linear spectrally normalised (``fastgan.nn.SNConv2d`` /
  ``SNLinear``), with biases, no BN.
- "group": ``nn.GroupNorm(gcd(num_groups, C), C)`` then LeakyReLU; convs without bias.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..nn import BatchNormAct2d, SNConv2d, SNLinear
from ._registry import register_model

__all__ = ["LSGANDiscriminator"]

_NORMS = ("batch", "spectral", "group")


class LSGANDiscriminator(nn.Module):
    """x [N, nc, image_size, image_size] -> logits [N]. Layers in ``main`` (Sequential), ``fc``."""

    def __init__(self, nc: int = 3, ndf: int = 64, image_size: int = 64, norm: str = "batch",
                 num_groups: int = 32, backend: str | None = None) -> None:
        super().__init__()
        if norm not in _NORMS:
            raise ValueError(f"fastgan.models.LSGANDiscriminator: norm must be one of {_NORMS}, "
                             f"got {norm!r}")
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 16:
            raise ValueError(f"fastgan.models.LSGANDiscriminator: image_size must be an int >= "
                             f"16, got {image_size!r}")
        self.image_size, self.norm = image_size, norm
        sn = norm == "spectral"

        def conv(cin: int, cout: int, bias: bool) -> nn.Conv2d:
            if sn:
                return SNConv2d(cin, cout, 5, stride=2, padding=2, bias=True, backend=backend)
            return nn.Conv2d(cin, cout, 5, stride=2, padding=2, bias=bias)

        layers: list[nn.Module] = [conv(nc, ndf, True), nn.LeakyReLU(0.2)]
        width, s = ndf, (image_size + 1) // 2
        for _ in range(3):
            layers.append(conv(width, 2 * width, sn))
            width, s = 2 * width, (s + 1) // 2
            if norm == "batch":
                layers.append(BatchNormAct2d(width, activation="leaky_relu", negative_slope=0.2,
                                             backend=backend))
            elif norm == "group":
                layers += [nn.GroupNorm(math.gcd(num_groups, width), width), nn.LeakyReLU(0.2)]
            else:
                layers.append(nn.LeakyReLU(0.2))
        self.main = nn.Sequential(*layers)
        features = width * s * s
        self.fc = SNLinear(features, 1, backend=backend) if sn else nn.Linear(features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"fastgan.models.LSGANDiscriminator: x must be [N, C, "
                             f"{self.image_size}, {self.image_size}], got {tuple(x.shape)}")
        return self.fc(self.main(x).flatten(1)).view(-1)


@register_model("lsgan_d", family="lsgan",
                description="LSGAN discriminator (Mao et al. 2017), 3x64x64 -> logits [N] "
                            "(no sigmoid)")
def lsgan_d(nc: int = 3, ndf: int = 64, image_size: int = 64, norm: str = "batch",
            num_groups: int = 32, backend: str | None = None) -> LSGANDiscriminator:
    return LSGANDiscriminator(nc=nc, ndf=ndf, image_size=image_size, norm=norm,
                              num_groups=num_groups, backend=backend)
