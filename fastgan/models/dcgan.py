"""DCGAN (Radford et al., 2016) and its class-conditional variant (CGAN, Mirza & Osindero, 2014).

The architecture is the one of the PyTorch DCGAN example (pytorch/examples ``dcgan/main.py``):

- G: z [N, nz] -> ConvTranspose 4x4 stride 1 (1x1 -> 4x4) -> BN+ReLU -> (ConvTranspose 4x4
  stride 2 -> BN+ReLU) x k -> ConvTranspose 4x4 stride 2 -> Tanh, widths ngf*2^k ... ngf.
- D: x [N, nc, H, W] -> Conv 4x4 stride 2 -> LeakyReLU(0.2) -> (Conv 4x4 stride 2 -> BN+LeakyReLU)
  x k -> Conv 4x4 (4x4 -> 1x1) to one logit.

with every BN + activation pair a fused ``fastgan.nn.BatchNormAct2d``. Unlike the example, D
returns logits [N] (no Sigmoid) so that training uses the numerically safe BCE-with-logits. The
convolutions have no bias (BN follows them), as upstream, so the parameter counts are upstream's:
G 3,576,704 and D 2,765,568 at nz=100, ngf=ndf=64, nc=3, 64x64.

``image_size`` (a power of two, >= 16) sets k = log2(image_size) - 3: 64 -> 3, 32 -> 2.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..nn import BatchNormAct2d
from ._registry import register_model

__all__ = ["DCGANGenerator", "DCGANDiscriminator", "CGANGenerator", "CGANDiscriminator",
           "weights_init"]


def weights_init(m: nn.Module) -> None:
    """The DCGAN paper's initialisation (as the PyTorch example's ``weights_init``): conv weights
    N(0, 0.02), batch-norm weights N(1, 0.02) and biases 0. Use with ``model.apply``."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d) and m.affine:
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def _n_blocks(image_size: int) -> int:
    """How many stride-2 blocks sit between the 4x4 map and the image."""
    if not isinstance(image_size, int) or image_size < 16 or image_size & (image_size - 1):
        raise ValueError(f"fastgan.models.dcgan: image_size must be a power of two >= 16, "
                         f"got {image_size!r}")
    return int(math.log2(image_size)) - 3


def _generator_main(in_channels: int, ngf: int, nc: int, image_size: int,
                    backend: str | None) -> nn.Sequential:
    """The generator trunk: [N, in_channels, 1, 1] -> [N, nc, image_size, image_size] in [-1, 1]."""
    k = _n_blocks(image_size)
    width = ngf * 2 ** k
    layers: list[nn.Module] = [nn.ConvTranspose2d(in_channels, width, 4, 1, 0, bias=False),
                               BatchNormAct2d(width, activation="relu", backend=backend)]
    for _ in range(k):
        layers += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False),
                   BatchNormAct2d(width // 2, activation="relu", backend=backend)]
        width //= 2
    # The output layer has no BN: the image's range is set by Tanh alone (DCGAN paper, sec. 3).
    layers += [nn.ConvTranspose2d(width, nc, 4, 2, 1, bias=False), nn.Tanh()]
    return nn.Sequential(*layers)


def _discriminator_main(in_channels: int, ndf: int, image_size: int,
                        backend: str | None) -> nn.Sequential:
    """The discriminator trunk: [N, in_channels, image_size, image_size] -> logits [N, 1, 1, 1]."""
    k = _n_blocks(image_size)
    # No BN on the input layer: normalising the raw image made training unstable (DCGAN paper).
    layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, 2, 1, bias=False),
                               nn.LeakyReLU(0.2, inplace=True)]
    width = ndf
    for _ in range(k):
        layers += [nn.Conv2d(width, width * 2, 4, 2, 1, bias=False),
                   BatchNormAct2d(width * 2, activation="leaky_relu", negative_slope=0.2,
                                  backend=backend)]
        width *= 2
    layers.append(nn.Conv2d(width, 1, 4, 1, 0, bias=False))
    return nn.Sequential(*layers)


def _as_latent(z: torch.Tensor, nz: int) -> torch.Tensor:
    """z [N, nz] or [N, nz, 1, 1] -> [N, nz, 1, 1]."""
    if z.dim() == 2 and z.shape[1] == nz:
        return z[:, :, None, None]
    if z.dim() == 4 and tuple(z.shape[1:]) == (nz, 1, 1):
        return z
    raise ValueError(f"fastgan.models.dcgan: z must be [N, {nz}] or [N, {nz}, 1, 1], "
                     f"got {list(z.shape)}")


def _check_labels(y: torch.Tensor, n: int, num_classes: int) -> None:
    if y.dim() != 1 or y.shape[0] != n or y.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"fastgan.models.cgan: y must be [{n}] integer class labels, got "
                         f"{list(y.shape)} {y.dtype}")


def _check_condition(condition: str) -> None:
    if condition not in ("embedding", "onehot"):
        raise ValueError(f"fastgan.models.cgan: condition must be 'embedding' or 'onehot', "
                         f"got {condition!r}")


class DCGANGenerator(nn.Module):
    """DCGAN generator: z [N, nz] (or [N, nz, 1, 1]) -> images [N, nc, image_size, image_size]
    in [-1, 1]. ``main`` is the upstream example's ``nn.Sequential``, BN+ReLU fused."""

    def __init__(self, nz: int = 100, ngf: int = 64, nc: int = 3, image_size: int = 64,
                 backend: str | None = None) -> None:
        super().__init__()
        self.nz = nz
        self.main = _generator_main(nz, ngf, nc, image_size, backend)
        self.apply(weights_init)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(_as_latent(z, self.nz))


class DCGANDiscriminator(nn.Module):
    """DCGAN discriminator: images [N, nc, image_size, image_size] -> logits [N] (no Sigmoid)."""

    def __init__(self, ndf: int = 64, nc: int = 3, image_size: int = 64,
                 backend: str | None = None) -> None:
        super().__init__()
        self.main = _discriminator_main(nc, ndf, image_size, backend)
        self.apply(weights_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x).view(-1)


class CGANGenerator(nn.Module):
    """Conditional DCGAN generator: z [N, nz] (or [N, nz, 1, 1]), y [N] class labels -> images
    [N, nc, image_size, image_size] in [-1, 1].

    The label enters at the input only, concatenated to z: ``condition="embedding"`` a learned
    ``label_embedding`` = nn.Embedding(num_classes, embed_dim), ``"onehot"`` the one-hot vector.
    """

    def __init__(self, nz: int = 100, ngf: int = 64, nc: int = 3, image_size: int = 64,
                 num_classes: int = 10, condition: str = "embedding", embed_dim: int = 50,
                 backend: str | None = None) -> None:
        super().__init__()
        _check_condition(condition)
        self.nz, self.num_classes, self.condition = nz, num_classes, condition
        cond_dim = embed_dim if condition == "embedding" else num_classes
        if condition == "embedding":
            self.label_embedding = nn.Embedding(num_classes, embed_dim)
        self.main = _generator_main(nz + cond_dim, ngf, nc, image_size, backend)
        self.apply(weights_init)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z = _as_latent(z, self.nz)
        _check_labels(y, z.shape[0], self.num_classes)
        if self.condition == "embedding":
            c = self.label_embedding(y)
        else:
            c = nn.functional.one_hot(y.long(), self.num_classes).to(z.dtype)
        return self.main(torch.cat([z, c[:, :, None, None]], dim=1))


class CGANDiscriminator(nn.Module):
    """Conditional DCGAN discriminator: images [N, nc, image_size, image_size], y [N] class labels
    -> logits [N] (no Sigmoid).

    The label enters at the input as extra image channels: ``condition="embedding"`` a learned
    ``label_embedding`` = nn.Embedding(num_classes, image_size**2) reshaped to one
    [N, 1, image_size, image_size] map (one extra channel, the common cDCGAN design: every
    position of the first conv sees the label, at the cost of image_size**2 weights per class);
    ``"onehot"`` the one-hot vector broadcast to num_classes constant maps.
    """

    def __init__(self, ndf: int = 64, nc: int = 3, image_size: int = 64, num_classes: int = 10,
                 condition: str = "embedding", backend: str | None = None) -> None:
        super().__init__()
        _check_condition(condition)
        self.num_classes, self.condition, self.image_size = num_classes, condition, image_size
        if condition == "embedding":
            self.label_embedding = nn.Embedding(num_classes, image_size * image_size)
            extra = 1
        else:
            extra = num_classes
        self.main = _discriminator_main(nc + extra, ndf, image_size, backend)
        self.apply(weights_init)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        if (h, w) != (self.image_size, self.image_size):
            raise ValueError(f"fastgan.models.cgan: x must be [N, C, {self.image_size}, "
                             f"{self.image_size}], got {list(x.shape)}")
        _check_labels(y, n, self.num_classes)
        if self.condition == "embedding":
            c = self.label_embedding(y).view(n, 1, h, w).to(x.dtype)
        else:
            c = nn.functional.one_hot(y.long(), self.num_classes).to(x.dtype)
            c = c[:, :, None, None].expand(n, self.num_classes, h, w)
        return self.main(torch.cat([x, c], dim=1)).view(-1)


@register_model("dcgan_g", family="dcgan",
                description="DCGAN generator (PyTorch DCGAN example), z [N, 100] -> 3x64x64")
def dcgan_g(nz: int = 100, ngf: int = 64, nc: int = 3, image_size: int = 64,
            backend: str | None = None) -> DCGANGenerator:
    return DCGANGenerator(nz=nz, ngf=ngf, nc=nc, image_size=image_size, backend=backend)


@register_model("dcgan_d", family="dcgan",
                description="DCGAN discriminator (PyTorch DCGAN example), 3x64x64 -> logits [N]")
def dcgan_d(ndf: int = 64, nc: int = 3, image_size: int = 64,
            backend: str | None = None) -> DCGANDiscriminator:
    return DCGANDiscriminator(ndf=ndf, nc=nc, image_size=image_size, backend=backend)


@register_model("cgan_g", family="dcgan",
                description="conditional DCGAN generator, z [N, 100] + labels [N] -> 3x64x64")
def cgan_g(nz: int = 100, ngf: int = 64, nc: int = 3, image_size: int = 64,
           num_classes: int = 10, condition: str = "embedding", embed_dim: int = 50,
           backend: str | None = None) -> CGANGenerator:
    return CGANGenerator(nz=nz, ngf=ngf, nc=nc, image_size=image_size, num_classes=num_classes,
                         condition=condition, embed_dim=embed_dim, backend=backend)


@register_model("cgan_d", family="dcgan",
                description="conditional DCGAN discriminator, 3x64x64 + labels [N] -> logits [N]")
def cgan_d(ndf: int = 64, nc: int = 3, image_size: int = 64, num_classes: int = 10,
           condition: str = "embedding", backend: str | None = None) -> CGANDiscriminator:
    return CGANDiscriminator(ndf=ndf, nc=nc, image_size=image_size, num_classes=num_classes,
                             condition=condition, backend=backend)
