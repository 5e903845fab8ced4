"""BigGAN 128 / 256 (Brock et al. 2019), laid out as ajbrock/BigGAN-PyTorch's BigGAN.py.

Generator(z [N, dim_z], y [N] long) -> images [N, 3, R, R] in [-1, 1]; Discriminator(x, y) ->
logits [N] (projection discriminator). Module names follow BigGAN-PyTorch (``shared``, ``linear``,
``blocks.<i>.<j>``, ``bn1``/``conv1``/``bn2``/``conv2``/``conv_sc``, ``output_layer``, ``embed``),
so its checkpoints map onto ours by renaming the batch-norm statistics only (our SN layers read its
``weight``/``u0``/``sv0`` layout themselves).

Spectral norm: one power iteration per training forward, and in eval one iteration on copies of u
(BigGAN-PyTorch's W_() always iterates, updating only in training) — ``eval_iteration="peek"``.
SN eps defaults to 1e-8, BigGAN-PyTorch's utils.py parser default (``--SN_eps``), which its
launch scripts keep.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import (BatchNormAct2d, ConditionalBatchNorm2d, SelfAttention2d, SNConv2d, SNEmbedding,
                  SNLinear)
from ..nn.spectral_norm import SpectralNormState
from ._registry import register_converter, register_model

__all__ = ["Generator", "Discriminator", "G_arch", "D_arch"]


def G_arch(ch: int, attention: int) -> dict[int, dict]:
    """BigGAN-PyTorch's G_arch: per resolution, channels and where self-attention sits."""
    def arch(mults_in, mults_out, res):
        return dict(in_channels=[ch * m for m in mults_in], out_channels=[ch * m for m in mults_out],
                    upsample=[True] * len(res), resolution=res,
                    attention={r: r == attention for r in res})
    return {128: arch([16, 16, 8, 4, 2], [16, 8, 4, 2, 1], [8, 16, 32, 64, 128]),
            256: arch([16, 16, 8, 8, 4, 2], [16, 8, 8, 4, 2, 1], [8, 16, 32, 64, 128, 256])}


def D_arch(ch: int, attention: int) -> dict[int, dict]:
    """BigGAN-PyTorch's D_arch (first block without preactivation, last without downsampling)."""
    def arch(mults, res):
        return dict(in_channels=[3] + [ch * m for m in mults[:-1]],
                    out_channels=[ch * m for m in mults], downsample=[True] * (len(mults) - 1) + [False],
                    resolution=res, attention={r: r == attention for r in res})
    return {128: arch([1, 2, 4, 8, 16, 16], [64, 32, 16, 8, 4, 4]),
            256: arch([1, 2, 4, 8, 8, 16, 16], [128, 64, 32, 16, 8, 4, 4])}


def _peek(module: nn.Module) -> None:
    """BigGAN-PyTorch's eval-mode SN: one power iteration on copies of u (nothing stored)."""
    for m in module.modules():
        if isinstance(getattr(m, "_sn", None), SpectralNormState):
            m._sn.eval_iteration = "peek"


def _init(module: nn.Module, init: str | None) -> None:
    """BigGAN-PyTorch's init_weights: 'ortho', 'N02' or 'xavier' on every conv/linear/embedding."""
    if init is None:
        return
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding)):
            w = m._parameters.get("weight_orig", m._parameters.get("weight"))
            if init == "ortho":
                nn.init.orthogonal_(w)
            elif init == "N02":
                nn.init.normal_(w, 0, 0.02)
            elif init in ("glorot", "xavier"):
                nn.init.xavier_uniform_(w)
            else:
                raise ValueError(f"fastgan.models.biggan: init must be 'ortho', 'N02', 'xavier' "
                                 f"or None, got {init!r}")


class _SN:
    """Factories of BigGAN's SN layers with one model's settings."""

    def __init__(self, eps: float, backend: str | None) -> None:
        self.kw = dict(n_power_iterations=1, eps=eps, backend=backend)

    def conv(self, c_in: int, c_out: int, k: int = 3) -> SNConv2d:
        return SNConv2d(c_in, c_out, k, padding=k // 2, **self.kw)

    def linear(self, c_in: int, c_out: int, bias: bool = True) -> SNLinear:
        return SNLinear(c_in, c_out, bias=bias, **self.kw)


class ccbn(ConditionalBatchNorm2d):
    """BigGAN's ccbn + ReLU: BN(x) * (1 + gain(cond)) + bias(cond), gain/bias bias-free SNLinear."""

    def __init__(self, channels: int, cond_dim: int, sn: _SN, bn_eps: float, backend: str | None):
        super().__init__(channels, cond_dim=cond_dim, activation="relu", eps=bn_eps, backend=backend)
        self.gain = sn.linear(cond_dim, channels, bias=False)
        self.bias = sn.linear(cond_dim, channels, bias=False)


class GBlock(nn.Module):
    """ccbn-ReLU -> up 2x -> conv3x3 -> ccbn-ReLU -> conv3x3, plus conv1x1(up(x)). [N,Cin,H,W] -> [N,Cout,2H,2W]."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int, sn: _SN, bn_eps: float,
                 backend: str | None) -> None:
        super().__init__()
        self.conv1, self.conv2 = sn.conv(c_in, c_out), sn.conv(c_out, c_out)
        self.conv_sc = sn.conv(c_in, c_out, 1)  # in != out or upsample: always learnable in G
        self.bn1 = ccbn(c_in, cond_dim, sn, bn_eps, backend)
        self.bn2 = ccbn(c_out, cond_dim, sn, bn_eps, backend)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(self.bn1(x, y), scale_factor=2)
        x = F.interpolate(x, scale_factor=2)
        h = self.conv2(self.bn2(self.conv1(h), y))
        return h + self.conv_sc(x)


class Generator(nn.Module):
    """BigGAN's G: hierarchical z (one chunk for ``linear``, one per block), shared class
    embedding. forward(z [N, dim_z], y [N] long, shared=None) -> [N, 3, R, R]. With hier,
    dim_z is rounded down to a multiple of the number of chunks, as upstream (256: 119)."""

    def __init__(self, G_ch: int = 96, dim_z: int = 120, bottom_width: int = 4,
                 resolution: int = 128, G_attn: int = 64, n_classes: int = 1000,
                 shared_dim: int = 128, hier: bool = True, SN_eps: float = 1e-8,
                 BN_eps: float = 1e-5, init: str | None = "ortho", backend: str | None = None) -> None:
        super().__init__()
        arch = G_arch(G_ch, G_attn)[resolution]
        self.resolution, self.bottom_width, self.hier, self.backend = resolution, bottom_width, hier, backend
        n_blocks = len(arch["in_channels"])
        self.z_chunk_size = dim_z // (n_blocks + 1) if hier else 0
        self.dim_z = self.z_chunk_size * (n_blocks + 1) if hier else dim_z
        sn = _SN(SN_eps, backend)
        self.shared = nn.Embedding(n_classes, shared_dim)
        cond_dim = shared_dim + self.z_chunk_size
        self.linear = sn.linear(self.dim_z // (n_blocks + 1) if hier else dim_z,
                                arch["in_channels"][0] * bottom_width ** 2)
        blocks = []
        for i in range(n_blocks):
            block = [GBlock(arch["in_channels"][i], arch["out_channels"][i], cond_dim, sn, BN_eps, backend)]
            if arch["attention"][arch["resolution"][i]]:
                block.append(SelfAttention2d(arch["out_channels"][i], layout="biggan", eps=SN_eps,
                                             backend=backend))
            blocks.append(nn.ModuleList(block))
        self.blocks = nn.ModuleList(blocks)
        # BigGAN's plain `bn` (gain, bias, stored stats) + ReLU, then conv to RGB.
        self.output_layer = nn.Sequential(BatchNormAct2d(arch["out_channels"][-1], "relu", eps=BN_eps,
                                                         backend=backend),
                                          nn.Identity(), sn.conv(arch["out_channels"][-1], 3))
        _init(self, init)
        _peek(self)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None,
                shared: torch.Tensor | None = None) -> torch.Tensor:
        if shared is None:
            shared = self.shared(y)
        if self.hier:
            zs = torch.split(z, self.z_chunk_size, 1)
            z, ys = zs[0], [torch.cat([shared, c], 1) for c in zs[1:]]
        else:
            ys = [shared] * len(self.blocks)
        h = self.linear(z).view(z.shape[0], -1, self.bottom_width, self.bottom_width)
        for block, yi in zip(self.blocks, ys):
            h = block[0](h, yi)
            for attn in block[1:]:
                h = attn(h)
        return torch.tanh(self.output_layer(h))


class DBlock(nn.Module):
    """(ReLU) -> conv3x3 -> ReLU -> conv3x3 -> (avgpool 2), plus the shortcut (conv1x1, pool)."""

    def __init__(self, c_in: int, c_out: int, sn: _SN, preactivation: bool, downsample: bool) -> None:
        super().__init__()
        self.preactivation, self.downsample = preactivation, downsample
        self.conv1, self.conv2 = sn.conv(c_in, c_out), sn.conv(c_out, c_out)  # D_wide
        self.learnable_sc = c_in != c_out or downsample
        if self.learnable_sc:
            self.conv_sc = sn.conv(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(x) if self.preactivation else x
        h = self.conv2(F.relu(self.conv1(h)))
        if self.downsample:
            h = F.avg_pool2d(h, 2)
        if self.preactivation:  # BigGAN: conv before pooling after preactivation, after otherwise
            if self.learnable_sc:
                x = self.conv_sc(x)
            if self.downsample:
                x = F.avg_pool2d(x, 2)
        else:
            if self.downsample:
                x = F.avg_pool2d(x, 2)
            if self.learnable_sc:
                x = self.conv_sc(x)
        return h + x


class Discriminator(nn.Module):
    """BigGAN's projection D. forward(x [N, 3, R, R], y [N] long) -> logits [N]."""

    def __init__(self, D_ch: int = 96, resolution: int = 128, D_attn: int = 64,
                 n_classes: int = 1000, SN_eps: float = 1e-8, init: str | None = "ortho",
                 backend: str | None = None) -> None:
        super().__init__()
        arch = D_arch(D_ch, D_attn)[resolution]
        self.backend = backend
        sn = _SN(SN_eps, backend)
        blocks = []
        for i in range(len(arch["out_channels"])):
            block = [DBlock(arch["in_channels"][i], arch["out_channels"][i], sn, i > 0,
                            arch["downsample"][i])]
            if arch["attention"][arch["resolution"][i]]:
                block.append(SelfAttention2d(arch["out_channels"][i], layout="biggan", eps=SN_eps,
                                             backend=backend))
            blocks.append(nn.ModuleList(block))
        self.blocks = nn.ModuleList(blocks)
        self.linear = sn.linear(arch["out_channels"][-1], 1)
        self.embed = SNEmbedding(n_classes, arch["out_channels"][-1], **sn.kw)
        _init(self, init)
        _peek(self)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = x
        for block in self.blocks:
            for layer in block:
                h = layer(h)
        h = F.relu(h).sum([2, 3])
        out = self.linear(h) + (self.embed(y) * h).sum(1, keepdim=True)
        return out.squeeze(1)


@register_model("biggan128_g", family="biggan", description="BigGAN generator, 128x128, ch 96")
def biggan128_g(G_ch: int = 96, dim_z: int = 120, shared_dim: int = 128, n_classes: int = 1000,
                resolution: int = 128, G_attn: int = 64, hier: bool = True, init: str | None = "ortho",
                SN_eps: float = 1e-8, backend: str | None = None) -> Generator:
    return Generator(G_ch=G_ch, dim_z=dim_z, shared_dim=shared_dim, n_classes=n_classes,
                     resolution=resolution, G_attn=G_attn, hier=hier, init=init, SN_eps=SN_eps,
                     backend=backend)


@register_model("biggan256_g", family="biggan", description="BigGAN generator, 256x256, ch 96")
def biggan256_g(G_ch: int = 96, dim_z: int = 120, shared_dim: int = 128, n_classes: int = 1000,
                resolution: int = 256, G_attn: int = 64, hier: bool = True, init: str | None = "ortho",
                SN_eps: float = 1e-8, backend: str | None = None) -> Generator:
    return Generator(G_ch=G_ch, dim_z=dim_z, shared_dim=shared_dim, n_classes=n_classes,
                     resolution=resolution, G_attn=G_attn, hier=hier, init=init, SN_eps=SN_eps,
                     backend=backend)


@register_model("biggan128_d", family="biggan", description="BigGAN projection discriminator, 128x128")
def biggan128_d(D_ch: int = 96, n_classes: int = 1000, resolution: int = 128, D_attn: int = 64,
                init: str | None = "ortho", SN_eps: float = 1e-8,
                backend: str | None = None) -> Discriminator:
    return Discriminator(D_ch=D_ch, resolution=resolution, D_attn=D_attn, n_classes=n_classes,
                         init=init, SN_eps=SN_eps, backend=backend)


@register_model("biggan256_d", family="biggan", description="BigGAN projection discriminator, 256x256")
def biggan256_d(D_ch: int = 96, n_classes: int = 1000, resolution: int = 256, D_attn: int = 64,
                init: str | None = "ortho", SN_eps: float = 1e-8,
                backend: str | None = None) -> Discriminator:
    return Discriminator(D_ch=D_ch, resolution=resolution, D_attn=D_attn, n_classes=n_classes,
                         init=init, SN_eps=SN_eps, backend=backend)


def _convert(state_dict) -> dict[str, torch.Tensor]:
    """BigGAN-PyTorch keys -> ours: SN layers keep weight/u0/sv0 (our load hook reads them);
    ccbn/bn stored_mean/stored_var -> running_mean/running_var (+ num_batches_tracked); bn gain
    -> weight. Unknown keys raise."""
    out: dict[str, torch.Tensor] = {}
    bad = []
    for k, v in state_dict.items():
        head, _, leaf = k.rpartition(".")
        if leaf in ("stored_mean", "stored_var"):
            out[f"{head}.running_{leaf[7:]}"] = v
            out[f"{head}.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
        elif k.startswith("output_layer.0.") and leaf == "gain":
            out[f"{head}.weight"] = v
        elif leaf in ("weight", "bias", "gamma") or re.fullmatch(r"(u|sv)\d+", leaf):
            out[k] = v
        else:
            bad.append(k)
    if bad:
        raise ValueError(f"fastgan.models.biggan: unknown BigGAN-PyTorch keys: {', '.join(bad)}")
    return out


for _name, _who in (("biggan128_g", "G"), ("biggan256_g", "G"), ("biggan128_d", "D"), ("biggan256_d", "D")):
    register_converter(_name, upstream=f"BigGAN-PyTorch {_who}")(_convert)
