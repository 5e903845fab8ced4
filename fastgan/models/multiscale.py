"""The pix2pixHD / SPADE multi-scale PatchGAN discriminator, returning features for matching.

Follows NVIDIA/pix2pixHD (``models/networks.py``: ``MultiscaleDiscriminator``,
``NLayerDiscriminator(getIntermFeat=True)``) and NVlabs/SPADE
(``models/networks/discriminator.py``), written anew. ``multiscale_d``:

    x [N, input_nc, H, W] -> for each scale i = 0 .. num_D - 1 (scale 0 sees x, scale i sees x
    average-pooled i times by AvgPool2d(3, stride=2, padding=1, count_include_pad=False)):
        the list of n_layers + 2 intermediate features of that scale's PatchGAN, the last
        being its patch logits [N, 1, h, w].

Each scale's PatchGAN (``NLayerDiscriminator``): 4x4 convs with padding 2, LeakyReLU(0.2):
conv(input_nc -> ndf, stride 2) ; n_layers - 1 x (conv stride 2, norm) doubling the width up to
512 ; conv stride 1 + norm ; conv to 1 channel (stride 1). Each stage ``model{j}`` is one
feature. For n_layers=3, ndf=64 the widths are 64, 128, 256, 512, 1.

Choices (both upstreams describe the same network; SPADE's ``n_layers_D`` counts the stride-1
stage, so SPADE n_layers_D=4 is our n_layers=3, and ``n_layers_D=`` is accepted with SPADE's
meaning): defaults are SPADE's (num_D=2, n_layers_D=4 i.e. n_layers=3, norm "spectralinstance",
scale 0 the full resolution, the submodules named ``discriminator_{i}.model{j}``).
pix2pixHD's default is num_D=3, n_layers=3, norm "instance". As SPADE, a conv that a norm
follows has no bias (pix2pixHD keeps it: its counts are larger by the biases of those convs).

Norms: "spectralinstance" (fastgan.nn.SNConv2d + InstanceNorm2d(affine=False), SPADE's default;
the first and last convs are plain convs, as SPADE), "instance" (InstanceNorm2d affine=False),
"batch" (BN + LeakyReLU fused into fastgan.nn.BatchNormAct2d), "spectral" (SNConv2d, no norm
layer) and "none".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import BatchNormAct2d, SNConv2d
from ._registry import register_model

__all__ = ["NLayerDiscriminator", "MultiscaleDiscriminator"]

_NORMS = ("spectralinstance", "instance", "batch", "spectral", "none")


def _stage(c_in: int, c_out: int, stride: int, norm: str, backend: str | None) -> nn.Sequential:
    """conv 4x4 (padding 2) -> norm -> LeakyReLU(0.2), one feature stage."""
    spectral = norm.startswith("spectral")
    plain = norm in ("spectral", "none")
    conv_cls = SNConv2d if spectral else nn.Conv2d
    kw = dict(backend=backend) if spectral else {}
    conv = conv_cls(c_in, c_out, 4, stride, 2, bias=plain, **kw)
    if norm == "batch":
        return nn.Sequential(conv, BatchNormAct2d(c_out, "leaky_relu", negative_slope=0.2,
                                                  backend=backend))
    layers: list[nn.Module] = [conv]
    if norm.endswith("instance"):
        layers.append(nn.InstanceNorm2d(c_out, affine=False))
    layers.append(nn.LeakyReLU(0.2))
    return nn.Sequential(*layers)


class NLayerDiscriminator(nn.Module):
    """One scale: x [N, input_nc, H, W] -> its n_layers + 2 features (``model0`` .. ``model{n+1}``),
    the last the patch logits [N, 1, h, w]; ``forward(x, features=False)`` gives only the logits."""

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3,
                 norm: str = "spectralinstance", backend: str | None = None) -> None:
        super().__init__()
        if norm not in _NORMS:
            raise ValueError(f"fastgan.models.multiscale_d: norm must be one of {_NORMS}, got {norm!r}")
        if n_layers < 1:
            raise ValueError(f"fastgan.models.multiscale_d: n_layers must be >= 1, got {n_layers}")
        self.n_layers = n_layers
        stages = [nn.Sequential(nn.Conv2d(input_nc, ndf, 4, 2, 2), nn.LeakyReLU(0.2))]
        nf = ndf
        for n in range(1, n_layers + 1):
            nf_prev, nf = nf, min(nf * 2, 512)
            stages.append(_stage(nf_prev, nf, 2 if n < n_layers else 1, norm, backend))
        stages.append(nn.Sequential(nn.Conv2d(nf, 1, 4, 1, 2)))
        for j, stage in enumerate(stages):
            self.add_module(f"model{j}", stage)

    def forward(self, x: torch.Tensor, features: bool = True) -> list[torch.Tensor] | torch.Tensor:
        out = []
        for stage in self.children():
            x = stage(x)
            out.append(x)
        return out if features else out[-1]


class MultiscaleDiscriminator(nn.Module):
    """num_D PatchGANs on x, x/2, x/4 ...: x [N, input_nc, H, W] -> [[features of scale 0], ...,
    [features of scale num_D - 1]], each list n_layers + 2 long (the last, the logits)."""

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3, num_D: int = 2,
                 norm: str = "spectralinstance", backend: str | None = None) -> None:
        super().__init__()
        if num_D < 1:
            raise ValueError(f"fastgan.models.multiscale_d: num_D must be >= 1, got {num_D}")
        self.num_D = num_D
        for i in range(num_D):
            self.add_module(f"discriminator_{i}",
                            NLayerDiscriminator(input_nc, ndf, n_layers, norm, backend))

    @staticmethod
    def downsample(x: torch.Tensor) -> torch.Tensor:
        # count_include_pad=False: the border averages only real pixels (both upstreams).
        return F.avg_pool2d(x, kernel_size=3, stride=2, padding=1, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        if x.dim() != 4:
            raise ValueError(f"fastgan.models.MultiscaleDiscriminator: x must be [N, C, H, W], "
                             f"got {tuple(x.shape)}")
        result = []
        for i, d in enumerate(self.children()):
            result.append(d(x))
            if i != self.num_D - 1:
                x = self.downsample(x)
        return result


@register_model("multiscale_d", family="multiscale",
                description="pix2pixHD / SPADE multi-scale PatchGAN D: x -> per-scale feature lists")
def multiscale_d(input_nc: int = 3, ndf: int = 64, n_layers: int = 3, num_D: int = 2,
                 norm: str = "spectralinstance", n_layers_D: int | None = None,
                 backend: str | None = None) -> MultiscaleDiscriminator:
    """``n_layers_D`` (SPADE's count, which includes the stride-1 stage) overrides ``n_layers``
    as n_layers = n_layers_D - 1."""
    if n_layers_D is not None:
        n_layers = n_layers_D - 1
    return MultiscaleDiscriminator(input_nc, ndf, n_layers, num_D, norm, backend)
