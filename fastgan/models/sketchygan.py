"""SketchyGAN (Chen & Hays, "SketchyGAN: Towards Diverse and Realistic Sketch to Image Synthesis",
CVPR 2018): the masked residual unit (MRU), the MRU encoder-decoder generator and the
multi-depth MRU discriminator.

The authors' code is TensorFlow and has no PyTorch checkpoints; this is our own implementation
from the paper's description (Sec. 3.2 "Masked Residual Unit", Sec. 3.3 "Network Structure").
Where the paper leaves a choice open we say what we chose:

- Each MRU block receives, besides the feature map x_i, the network's input image I resized to
  x_i's resolution (area interpolation, i.e. average pooling for the power-of-two scales here).
- The encoder halves the resolution with 2x2 average pooling after every MRU (parameter-free);
  the decoder doubles it with nearest upsampling and concatenates the encoder's skip features.
- The noise z [N, dim_z] (and, in the conditional variant, a class embedding) is broadcast over
  the 4x4 bottleneck and concatenated to the features there.
- Generator MRUs use BN + ReLU (a fused ``BatchNormAct2d``) on z; the discriminator's MRUs use
  spectrally normalised convs (``spectral_norm=True``, no BN, LeakyReLU 0.2) by default, which
  suits the gradient-penalty (DRAGAN) training of the paper. Both take ``norm`` and
  ``spectral_norm``.
- "Multi-depth discriminator" (Sec. 3.3): instead of independent discriminators at several scales
  (pix2pixHD), one MRU encoder whose early layers are shared; output heads branch off after each
  of the last ``num_heads`` MRU blocks. Each head gives a real/fake patch-logit map (3x3 conv to
  1 channel) and class logits (global average pool -> linear, the auxiliary classifier).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import BatchNormAct2d, SNConv2d, SNLinear
from ._registry import register_model

__all__ = ["MRU", "SketchyGANGenerator", "SketchyGANDiscriminator"]

_NORMS = ("batch", None)
_ACTS = ("relu", "leaky_relu")


def _conv(cin: int, cout: int, k: int, bias: bool, sn: bool, backend: str | None) -> nn.Conv2d:
    if sn:
        return SNConv2d(cin, cout, k, padding=k // 2, bias=bias, backend=backend)
    return nn.Conv2d(cin, cout, k, padding=k // 2, bias=bias)


def _resize(image: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if image.shape[-2:] == like.shape[-2:]:
        return image
    return F.interpolate(image, size=like.shape[-2:], mode="area")


class MRU(nn.Module):
    """Masked residual unit (SketchyGAN Sec. 3.2). ``forward(x, image)``: x [N, C_in, H, W],
    image [N, C_img, H', W'] (resized here to H x W) -> y [N, C_out, H, W].

    With [a, b] channel concatenation, * a 3x3 convolution (padding 1), sigma the logistic
    sigmoid and (.) the elementwise product, the block computes exactly::

        I' = resize(image, H x W)                          (area interpolation)
        m  = sigma(W_m * [x, I'] + b_m)                    mask, C_in channels  (mask_conv)
        z  = act(norm(W_z * [m (.) x, I'] (+ b_z)))         new features, C_out  (feature_conv, norm_act)
        n  = sigma(W_n * [x, I'] + b_n)                    update gate, C_out   (gate_conv)
        x' = P x   (1x1 conv with bias, ``shortcut``) if C_in != C_out, else x
        y  = (1 - n) (.) x' + n (.) z

    ``norm="batch"``: norm+act is one fused BatchNormAct2d and feature_conv has no bias (BN
    cancels it); ``norm=None``: norm is the identity and feature_conv has a bias. ``act``:
    "relu" or "leaky_relu" (slope 0.2). ``spectral_norm`` puts every conv under spectral norm.
    """

    def __init__(self, in_channels: int, out_channels: int, image_channels: int,
                 activation: str = "relu", norm: str | None = "batch",
                 spectral_norm: bool = False, backend: str | None = None) -> None:
        super().__init__()
        if norm not in _NORMS:
            raise ValueError(f"fastgan.models.MRU: norm must be one of {_NORMS}, got {norm!r}")
        if activation not in _ACTS:
            raise ValueError(f"fastgan.models.MRU: activation must be one of {_ACTS}, "
                             f"got {activation!r}")
        cat = in_channels + image_channels
        self.in_channels, self.out_channels, self.activation = in_channels, out_channels, activation
        self.mask_conv = _conv(cat, in_channels, 3, True, spectral_norm, backend)
        self.feature_conv = _conv(cat, out_channels, 3, norm is None, spectral_norm, backend)
        self.gate_conv = _conv(cat, out_channels, 3, True, spectral_norm, backend)
        self.norm_act = (BatchNormAct2d(out_channels, activation=activation, negative_slope=0.2,
                                        backend=backend) if norm == "batch" else None)
        self.shortcut = (_conv(in_channels, out_channels, 1, True, spectral_norm, backend)
                         if in_channels != out_channels else None)

    def forward(self, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        image = _resize(image, x).to(x.dtype)
        xi = torch.cat([x, image], dim=1)
        m = torch.sigmoid(self.mask_conv(xi))
        z = self.feature_conv(torch.cat([m * x, image], dim=1))
        if self.norm_act is not None:
            z = self.norm_act(z)
        elif self.activation == "relu":
            z = F.relu(z)
        else:
            z = F.leaky_relu(z, 0.2)
        n = torch.sigmoid(self.gate_conv(xi))
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return (1 - n) * shortcut + n * z


def _levels(image_size: int, who: str) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 16 \
            or image_size & (image_size - 1):
        raise ValueError(f"fastgan.models.{who}: image_size must be a power of two >= 16, "
                         f"got {image_size!r}")
    return int(math.log2(image_size)) - 2


class SketchyGANGenerator(nn.Module):
    """MRU encoder-decoder: sketch [N, in_channels, S, S] (+ z [N, dim_z], + labels y [N] when
    ``num_classes > 0``) -> image [N, out_channels, S, S] in (-1, 1).

    Encoder ``encoder[i]`` (i = 0 .. L-1, L = log2(S) - 2) runs at S / 2^i with width
    ngf * min(2^i, 8); the first takes the sketch itself as x. After each, 2x2 average pooling.
    ``bottleneck``: MRU at 4x4 over [features, z, embed(y)]. Decoder ``decoder[j]`` runs at
    the resolution of encoder[L-1-j] on [upsample(h), skip] and narrows to the next encoder
    width down (ngf at the end); ``to_rgb``: 3x3 conv + tanh. Every MRU also sees the sketch.
    ``z=None`` in forward samples z ~ N(0, 1).
    """

    def __init__(self, image_size: int = 64, in_channels: int = 1, out_channels: int = 3,
                 ngf: int = 64, dim_z: int = 64, num_classes: int = 0, embed_dim: int = 64,
                 norm: str | None = "batch", spectral_norm: bool = False,
                 backend: str | None = None) -> None:
        super().__init__()
        levels = _levels(image_size, "SketchyGANGenerator")
        self.image_size, self.dim_z, self.num_classes = image_size, dim_z, num_classes
        widths = [ngf * min(2 ** i, 8) for i in range(levels)]
        mru = dict(image_channels=in_channels, activation="relu", norm=norm,
                   spectral_norm=spectral_norm, backend=backend)
        self.encoder = nn.ModuleList(
            MRU(in_channels if i == 0 else widths[i - 1], widths[i], **mru) for i in range(levels))
        self.embed = nn.Embedding(num_classes, embed_dim) if num_classes > 0 else None
        extra = dim_z + (embed_dim if num_classes > 0 else 0)
        self.bottleneck = MRU(widths[-1] + extra, widths[-1], **mru)
        self.decoder = nn.ModuleList()
        prev = widths[-1]
        for i in reversed(range(levels)):
            out = widths[max(i - 1, 0)]
            self.decoder.append(MRU(prev + widths[i], out, **mru))
            prev = out
        self.to_rgb = _conv(prev, out_channels, 3, True, spectral_norm, backend)

    def forward(self, sketch: torch.Tensor, z: torch.Tensor | None = None,
                y: torch.Tensor | None = None) -> torch.Tensor:
        if sketch.dim() != 4 or sketch.shape[-1] != self.image_size \
                or sketch.shape[-2] != self.image_size:
            raise ValueError(f"fastgan.models.SketchyGANGenerator: sketch must be [N, C, "
                             f"{self.image_size}, {self.image_size}], got {tuple(sketch.shape)}")
        if (y is None) != (self.embed is None):
            raise ValueError("fastgan.models.SketchyGANGenerator: pass labels y exactly when "
                             "num_classes > 0")
        n = sketch.shape[0]
        if z is None:
            z = torch.randn(n, self.dim_z, device=sketch.device, dtype=sketch.dtype)
        h, skips = sketch, []
        for block in self.encoder:
            h = block(h, sketch)
            skips.append(h)
            h = F.avg_pool2d(h, 2)
        cond = [z] if self.embed is None else [z, self.embed(y)]
        cond = torch.cat(cond, dim=1).to(h.dtype)[:, :, None, None].expand(-1, -1, *h.shape[-2:])
        h = self.bottleneck(torch.cat([h, cond], dim=1), sketch)
        for block, skip in zip(self.decoder, reversed(skips)):
            h = F.interpolate(h, scale_factor=2, mode="nearest")
            h = block(torch.cat([h, skip], dim=1), sketch)
        return torch.tanh(self.to_rgb(h))


class SketchyGANDiscriminator(nn.Module):
    """Multi-depth MRU discriminator: image [N, in_channels, S, S] (+ sketch [N, sketch_channels,
    S, S] when ``sketch_channels > 0``) -> (logits, class_logits).

    ``blocks[i]`` (i = 0 .. L-1, L = log2(S) - 2) is an MRU at S / 2^i, width ndf * min(2^i, 8),
    fed with the input image (concatenated with the sketch, if given) resized to its scale; 2x2
    average pooling between blocks. Heads branch off after each of the last ``num_heads`` blocks
    (so the early blocks are shared): ``heads[k]`` a 3x3 conv to 1 channel -> logits[k]
    [N, 1, h_k, w_k] (real/fake patch map), ``classifiers[k]`` global average pool -> linear ->
    class_logits[k] [N, num_classes] (omitted when num_classes == 0). Lists run shallow to deep.
    """

    def __init__(self, image_size: int = 64, in_channels: int = 3, sketch_channels: int = 0,
                 ndf: int = 64, num_classes: int = 125, num_heads: int = 3,
                 norm: str | None = None, spectral_norm: bool = True,
                 backend: str | None = None) -> None:
        super().__init__()
        levels = _levels(image_size, "SketchyGANDiscriminator")
        if not 1 <= num_heads <= levels:
            raise ValueError(f"fastgan.models.SketchyGANDiscriminator: num_heads must be in "
                             f"[1, {levels}] for image_size {image_size}, got {num_heads}")
        self.image_size, self.sketch_channels, self.num_classes = image_size, sketch_channels, num_classes
        widths = [ndf * min(2 ** i, 8) for i in range(levels)]
        self.head_at = list(range(levels - num_heads, levels))
        self.blocks = nn.ModuleList(
            MRU(in_channels if i == 0 else widths[i - 1], widths[i],
                image_channels=in_channels + sketch_channels, activation="leaky_relu", norm=norm,
                spectral_norm=spectral_norm, backend=backend) for i in range(levels))
        self.heads = nn.ModuleList(_conv(widths[i], 1, 3, True, spectral_norm, backend)
                                   for i in self.head_at)
        linear = (lambda i, o: SNLinear(i, o, backend=backend)) if spectral_norm else nn.Linear
        self.classifiers = nn.ModuleList(linear(widths[i], num_classes) for i in self.head_at) \
            if num_classes > 0 else None

    def forward(self, x: torch.Tensor, sketch: torch.Tensor | None = None):
        if x.dim() != 4 or x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            raise ValueError(f"fastgan.models.SketchyGANDiscriminator: x must be [N, C, "
                             f"{self.image_size}, {self.image_size}], got {tuple(x.shape)}")
        if (sketch is None) != (self.sketch_channels == 0):
            raise ValueError("fastgan.models.SketchyGANDiscriminator: pass sketch exactly when "
                             "sketch_channels > 0")
        side = x if sketch is None else torch.cat([x, sketch.to(x.dtype)], dim=1)
        logits, class_logits, h = [], [], x
        for i, block in enumerate(self.blocks):
            if i:
                h = F.avg_pool2d(h, 2)
            h = block(h, side)
            if i in self.head_at:
                k = self.head_at.index(i)
                logits.append(self.heads[k](h))
                if self.classifiers is not None:
                    class_logits.append(self.classifiers[k](h.mean(dim=(2, 3))))
        return logits, class_logits


@register_model("sketchygan_g", family="sketchygan",
                description="SketchyGAN MRU encoder-decoder G, sketch [N, 1, 64, 64] (+ z, + y) "
                            "-> 3x64x64")
def sketchygan_g(image_size: int = 64, in_channels: int = 1, out_channels: int = 3,
                 ngf: int = 64, dim_z: int = 64, num_classes: int = 0, embed_dim: int = 64,
                 norm: str | None = "batch", spectral_norm: bool = False,
                 backend: str | None = None) -> SketchyGANGenerator:
    return SketchyGANGenerator(image_size=image_size, in_channels=in_channels,
                               out_channels=out_channels, ngf=ngf, dim_z=dim_z,
                               num_classes=num_classes, embed_dim=embed_dim, norm=norm,
                               spectral_norm=spectral_norm, backend=backend)


@register_model("sketchygan_d", family="sketchygan",
                description="SketchyGAN multi-depth MRU D (shared early layers), 3x64x64 -> "
                            "(patch logits, class logits) per depth")
def sketchygan_d(image_size: int = 64, in_channels: int = 3, sketch_channels: int = 0,
                 ndf: int = 64, num_classes: int = 125, num_heads: int = 3,
                 norm: str | None = None, spectral_norm: bool = True,
                 backend: str | None = None) -> SketchyGANDiscriminator:
    return SketchyGANDiscriminator(image_size=image_size, in_channels=in_channels,
                                   sketch_channels=sketch_channels, ndf=ndf,
                                   num_classes=num_classes, num_heads=num_heads, norm=norm,
                                   spectral_norm=spectral_norm, backend=backend)
