"""ESRGAN (Wang et al., 2018): the RRDBNet generator, the VGG-style 128x128 discriminator, and
network interpolation.

- ``esrgan_g`` -> :class:`RRDBNet`, as BasicSR's ``basicsr/archs/rrdbnet_arch.py`` (and xinntao's
  original ``RRDBNet_arch.py``): conv_first, ``num_block`` RRDBs (three 5-conv residual dense
  blocks each, growth ``num_grow_ch``, residuals scaled by 0.2), conv_body with the long skip, two
  nearest x2 upsamplings each followed by a conv + LeakyReLU(0.2), conv_hr + LeakyReLU(0.2),
  conv_last. 16,697,987 parameters at num_feat=64, num_block=23, num_grow_ch=32, x4. State-dict
  keys are BasicSR's; ``load_upstream("esrgan_g", sd)`` also reads xinntao's original key names
  (RRDB_trunk.N.RDB1.conv1, trunk_conv, upconv1, upconv2, HRconv).
  The model has no BN, spectral norm, attention or pixel shuffle, so it is plain PyTorch and
  ``backend`` is accepted for a uniform zoo interface only.
- ``esrgan_d`` -> :class:`VGGStyleDiscriminator`, BasicSR's (input 128 or 256), with every
  BN + LeakyReLU(0.2) a fused ``fastgan.nn.BatchNormAct2d`` under the same names (bn0_1, ...),
  so BasicSR's keys load unchanged.
- :func:`interpolate_networks`: ESRGAN's ``net_interp.py``, (1 - alpha) * PSNR + alpha * GAN.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import BatchNormAct2d
from ._registry import register_converter, register_model
from .srgan import unwrap_basicsr

__all__ = ["RRDBNet", "RRDB", "ResidualDenseBlock", "VGGStyleDiscriminator",
           "interpolate_networks"]


class ResidualDenseBlock(nn.Module):
    """Five densely connected 3x3 convs: x + 0.2 * conv5([x, x1, x2, x3, x4]).

    [N, C, H, W] -> same.
    """

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32) -> None:
        super().__init__()
        for i in range(4):
            conv = nn.Conv2d(num_feat + i * num_grow_ch, num_grow_ch, 3, 1, 1)
            setattr(self, f"conv{i + 1}", conv)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            feats.append(self.lrelu(conv(torch.cat(feats, 1))))
        # 0.2 residual scaling keeps the very deep trunk stable without BN (ESRGAN, sec. 3.1).
        return x + 0.2 * self.conv5(torch.cat(feats, 1))


class RRDB(nn.Module):
    """Residual-in-residual dense block: x + 0.2 * rdb3(rdb2(rdb1(x))). [N, C, H, W] -> same."""

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.2 * self.rdb3(self.rdb2(self.rdb1(x)))


class RRDBNet(nn.Module):
    """ESRGAN generator: x [N, num_in_ch, H, W] -> [N, num_out_ch, H * scale, W * scale].

    ``scale`` 4 (the ESRGAN model); 2 and 1 pixel-unshuffle the input first (by 2 and 4), as
    BasicSR's Real-ESRGAN x2 / x1 models do, so the trunk always upsamples x4.
    """

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, scale: int = 4, num_feat: int = 64,
                 num_block: int = 23, num_grow_ch: int = 32, backend: str | None = None) -> None:
        super().__init__()
        if scale not in (1, 2, 4):
            raise ValueError(f"fastgan.models.RRDBNet: scale must be 1, 2 or 4, got {scale!r}")
        self.scale, self.backend = scale, backend
        unshuffle = {4: 1, 2: 2, 1: 4}[scale]
        self.conv_first = nn.Conv2d(num_in_ch * unshuffle * unshuffle, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*[RRDB(num_feat, num_grow_ch) for _ in range(num_block)])
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"fastgan.models.RRDBNet: x must be [N, C, H, W], "
                             f"got {tuple(x.shape)}")
        if self.scale != 4:
            x = F.pixel_unshuffle(x, 4 // self.scale)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        feat = self.lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")))
        feat = self.lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")))
        return self.conv_last(self.lrelu(self.conv_hr(feat)))


class VGGStyleDiscriminator(nn.Module):
    """BasicSR's VGG-style D: x [N, num_in_ch, S, S], S = input_size (128 or 256) -> logits [N, 1].

    Pairs of convs (3x3 stride 1, then 4x4 stride 2) at widths num_feat * (1, 2, 4, 8, 8[, 8]),
    each but the first followed by BN + LeakyReLU(0.2) (fused), down to 4x4; then linear1 (-> 100),
    LeakyReLU(0.2), linear2 (-> 1).
    """

    def __init__(self, num_in_ch: int = 3, num_feat: int = 64, input_size: int = 128,
                 backend: str | None = None) -> None:
        super().__init__()
        if input_size not in (128, 256):
            raise ValueError(f"fastgan.models.VGGStyleDiscriminator: input_size must be 128 or "
                             f"256, got {input_size!r}")
        self.input_size = input_size
        self.n_stages = 5 if input_size == 128 else 6
        widths = [num_feat * m for m in (1, 2, 4, 8, 8, 8)]
        self.conv0_0 = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1, bias=True)
        cin = num_feat
        for s in range(self.n_stages):
            w = widths[s]
            if s > 0:
                setattr(self, f"conv{s}_0", nn.Conv2d(cin, w, 3, 1, 1, bias=False))
                setattr(self, f"bn{s}_0", self._bn(w, backend))
            setattr(self, f"conv{s}_1", nn.Conv2d(w, w, 4, 2, 1, bias=False))
            setattr(self, f"bn{s}_1", self._bn(w, backend))
            cin = w
        self.linear1 = nn.Linear(num_feat * 8 * 4 * 4, 100)
        self.linear2 = nn.Linear(100, 1)
        self.lrelu = nn.LeakyReLU(0.2, inplace=True)

    @staticmethod
    def _bn(width: int, backend: str | None) -> BatchNormAct2d:
        return BatchNormAct2d(width, activation="leaky_relu", negative_slope=0.2, backend=backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[-2:] != (self.input_size, self.input_size):
            size = self.input_size
            raise ValueError(f"fastgan.models.VGGStyleDiscriminator: x must be [N, C, {size}, "
                             f"{size}], got {tuple(x.shape)}")
        feat = self.lrelu(self.conv0_0(x))
        for s in range(self.n_stages):
            if s > 0:
                feat = getattr(self, f"bn{s}_0")(getattr(self, f"conv{s}_0")(feat))
            feat = getattr(self, f"bn{s}_1")(getattr(self, f"conv{s}_1")(feat))
        feat = self.lrelu(self.linear1(torch.flatten(feat, 1)))
        return self.linear2(feat)


@register_model("esrgan_g", family="esrgan",
                description="ESRGAN RRDBNet x4 generator (BasicSR keys)")
def esrgan_g(num_in_ch: int = 3, num_out_ch: int = 3, scale: int = 4, num_feat: int = 64,
             num_block: int = 23, num_grow_ch: int = 32, backend: str | None = None) -> RRDBNet:
    return RRDBNet(num_in_ch, num_out_ch, scale, num_feat, num_block, num_grow_ch, backend)


@register_model("esrgan_d", family="esrgan",
                description="ESRGAN VGG-style discriminator, 128x128 input "
                            "(BasicSR VGGStyleDiscriminator)")
def esrgan_d(num_in_ch: int = 3, num_feat: int = 64, input_size: int = 128,
             backend: str | None = None) -> VGGStyleDiscriminator:
    return VGGStyleDiscriminator(num_in_ch, num_feat, input_size, backend)


_RDB = r"\.(rdb[123])\.(conv[1-5])\.(weight|bias)"
_BASICSR_G = re.compile(r"(conv_first|conv_body|conv_up1|conv_up2|conv_hr|conv_last)\.(weight|bias)"
                        r"|body\.\d+" + _RDB)
_OLD_RDB = re.compile(r"RRDB_trunk\.(\d+)\.RDB([123])\.(conv[1-5])\.(weight|bias)")
_OLD_NAMES = {"trunk_conv": "conv_body", "upconv1": "conv_up1", "upconv2": "conv_up2",
              "HRconv": "conv_hr", "conv_first": "conv_first", "conv_last": "conv_last"}


@register_converter("esrgan_g", upstream="xinntao ESRGAN RRDBNet")
def convert_esrgan_rrdbnet(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """xinntao/ESRGAN's original keys (RRDB_trunk.N.RDBk.convj, trunk_conv, upconv1, upconv2,
    HRconv) -> BasicSR's (body.N.rdbk.convj, conv_body, conv_up1, conv_up2, conv_hr); BasicSR keys
    pass unchanged. Unknown keys raise ValueError naming them."""
    state_dict = unwrap_basicsr(state_dict)
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        m = _OLD_RDB.fullmatch(key)
        if m:
            new = f"body.{m[1]}.rdb{m[2]}.{m[3]}.{m[4]}"
        elif _BASICSR_G.fullmatch(key):
            new = key
        else:
            name, _, param = key.rpartition(".")
            if name not in _OLD_NAMES or param not in ("weight", "bias"):
                unknown.append(key)
                continue
            new = f"{_OLD_NAMES[name]}.{param}"
        if new in out:
            raise ValueError(f"fastgan.models.esrgan: checkpoint has {new!r} twice "
                             f"(old and new names)")
        out[new] = value
    if unknown:
        raise ValueError(f"fastgan.models.esrgan: not ESRGAN RRDBNet keys: {', '.join(unknown)}")
    return out


_VGG_D = re.compile(r"conv0_0\.(weight|bias)|linear[12]\.(weight|bias)|conv[0-5]_[01]\.weight"
                    r"|bn[0-5]_[01]\.(weight|bias|running_mean|running_var|num_batches_tracked)")


@register_converter("esrgan_d", upstream="BasicSR VGGStyleDiscriminator")
def convert_basicsr_vgg_d(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """BasicSR's VGGStyleDiscriminator keys are ours (BatchNormAct2d keeps BatchNorm2d's state);
    this checks them (unknown keys raise ValueError)."""
    state_dict = unwrap_basicsr(state_dict)
    unknown = [k for k in state_dict if not _VGG_D.fullmatch(k)]
    if unknown:
        raise ValueError(f"fastgan.models.esrgan: not VGGStyleDiscriminator keys: "
                         f"{', '.join(unknown)}")
    return dict(state_dict)


def interpolate_networks(psnr_state_dict: Mapping[str, torch.Tensor],
                         gan_state_dict: Mapping[str, torch.Tensor],
                         alpha: float) -> dict[str, torch.Tensor]:
    """ESRGAN's network interpolation: (1 - alpha) * psnr + alpha * gan on every floating tensor.

    alpha in [0, 1] trades the PSNR-oriented model's smoothness (0) for the GAN model's texture (1).
    Non-floating tensors (e.g. BN's num_batches_tracked) are taken from ``gan_state_dict``.
    Raises ValueError naming the keys that are in one state_dict only, or whose shapes differ.
    """
    alpha = float(alpha)
    only_psnr = sorted(set(psnr_state_dict) - set(gan_state_dict))
    only_gan = sorted(set(gan_state_dict) - set(psnr_state_dict))
    if only_psnr or only_gan:
        raise ValueError(f"fastgan.models.interpolate_networks: keys differ; only in psnr: "
                         f"{only_psnr or 'none'}; only in gan: {only_gan or 'none'}")
    shapes = [f"{k} {tuple(psnr_state_dict[k].shape)} vs {tuple(v.shape)}"
              for k, v in gan_state_dict.items() if psnr_state_dict[k].shape != v.shape]
    if shapes:
        raise ValueError(f"fastgan.models.interpolate_networks: shapes differ: {'; '.join(shapes)}")
    out = {}
    for key, gan in gan_state_dict.items():
        psnr = psnr_state_dict[key]
        if gan.is_floating_point():
            out[key] = torch.lerp(psnr, gan.to(psnr.dtype), alpha)
        else:
            out[key] = gan.clone()
    return out
