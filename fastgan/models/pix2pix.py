"""pix2pix (Isola et al., 2017): the U-Net generator and the PatchGAN / PixelGAN discriminators.

The architectures are those of junyanz/pytorch-CycleGAN-and-pix2pix (``models/networks.py``:
``UnetGenerator``, ``UnetSkipConnectionBlock``, ``NLayerDiscriminator``, ``PixelDiscriminator``),
rewritten here with the same module layout, so upstream state_dict keys are ours unchanged:

- ``pix2pix_unet256_g``: x [N, input_nc, 256, 256] -> [N, output_nc, 256, 256] in [-1, 1].
  ``num_downs`` 4x4 stride-2 convs down to 1x1 and as many transposed convs back up, each level's
  encoder features concatenated onto its decoder input; Dropout(0.5) in the ``num_downs - 5``
  ngf*8 -> ngf*8 levels below the innermost (3 at num_downs=8). H and W must be divisible by
  2**num_downs. 54,414,979 parameters at ngf=64, batch norm.
- ``patchgan_d``: x [N, input_nc, H, W] -> logits [N, 1, H', W'] (30x30 at 256x256 for n_layers=3,
  each logit seeing a 70x70 patch). 2,769,601 parameters at input_nc=6 (pix2pix's conditional D
  sees input and output concatenated), ndf=64, n_layers=3, batch norm.
- ``pixelgan_d``: 1x1 convs, x [N, input_nc, H, W] -> logits [N, 1, H, W] (upstream ``--netD pixel``;
  the issue's "PixelGAN (n_layers=0)").

Fusion. Every nn.BatchNorm2d directly followed by a LeakyReLU / ReLU is a
``fastgan.nn.BatchNormAct2d`` sitting at the BatchNorm's Sequential index, and the activation's
slot holds an ``nn.Identity`` (no parameters), so the keys stay upstream's. In the U-Net the
encoder's BN (``downnorm``) is followed by the *child* block's ``downrelu`` (an in-place LeakyReLU
upstream: because it is in place, the skip connection carries the activated features too, a
quirk we reproduce explicitly); so that BN is fused with LeakyReLU(0.2) and the child's slot 0 is
an Identity. The decoder's BN (``upnorm``) is followed by a concatenation (and dropout) before the
parent's ReLU, so it stays a plain BN. Instance norm is never fused (plain nn.InstanceNorm2d).

Norms: "batch" (affine, running stats), "instance" (affine=False, no running stats, as upstream),
"none". Upstream's bias rule is kept for checkpoint compatibility: the convolutions before a norm
slot have a bias only with instance norm, so with norm="none" they have none either.

Upstream checkpoints: ``load_upstream(name, sd, **cfg)``; the converters check the keys against
the architecture inferred from the checkpoint, give a missing ``num_batches_tracked`` the value 0
and drop the running statistics old checkpoints store for instance norms.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping

import torch
from torch import nn

from ..nn import BatchNormAct2d
from ._registry import register_converter, register_model

__all__ = ["UnetGenerator", "UnetSkipConnectionBlock", "NLayerDiscriminator",
           "PixelDiscriminator", "norm_layer", "JUNYANZ"]

JUNYANZ = "junyanz pytorch-CycleGAN-and-pix2pix"
_NORMS = ("batch", "instance", "none")


def _check_norm(norm: str) -> str:
    if norm not in _NORMS:
        raise ValueError(f"fastgan.models: norm must be one of {_NORMS}, got {norm!r}")
    return norm


def norm_layer(norm: str, channels: int, activation: str | None = None,
               backend: str | None = None) -> nn.Module:
    """Upstream's ``get_norm_layer(norm)(channels)``; with ``activation`` ("relu" /
    "leaky_relu", slope 0.2) a batch norm becomes the fused BatchNormAct2d."""
    _check_norm(norm)
    if norm == "batch":
        if activation is None:
            return nn.BatchNorm2d(channels)
        return BatchNormAct2d(channels, activation, negative_slope=0.2, backend=backend)
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    return nn.Identity()


def _act_slot(norm: str, act: Callable[[], nn.Module]) -> nn.Module:
    """The activation's own Sequential slot: Identity when the preceding BN already applies it."""
    return nn.Identity() if norm == "batch" else act()


def _lrelu() -> nn.Module:
    return nn.LeakyReLU(0.2)


class UnetSkipConnectionBlock(nn.Module):
    """One U-Net level: x [N, outer_nc, H, W] -> [N, 2 * outer_nc, H, W] (x concatenated with the
    level's output) or, outermost, -> [N, outer_nc, H, W].

    ``model`` is upstream's Sequential: outermost [downconv, submodule, uprelu, upconv, tanh];
    innermost [downrelu, downconv, uprelu, upconv, upnorm]; otherwise [downrelu, downconv,
    downnorm, submodule, uprelu, upconv, upnorm(, dropout)]. ``fused_input`` says the parent's
    BN already applied ``downrelu`` (then slot 0 is an Identity).
    """

    def __init__(self, outer_nc: int, inner_nc: int, input_nc: int | None = None,
                 submodule: UnetSkipConnectionBlock | None = None, outermost: bool = False,
                 innermost: bool = False, norm: str = "batch", use_dropout: bool = False,
                 fused_input: bool = False, backend: str | None = None) -> None:
        super().__init__()
        _check_norm(norm)
        self.outermost = outermost
        use_bias = norm == "instance"
        input_nc = outer_nc if input_nc is None else input_nc
        downconv = nn.Conv2d(input_nc, inner_nc, 4, 2, 1, bias=use_bias)
        downrelu = nn.Identity() if fused_input else nn.LeakyReLU(0.2)
        uprelu = nn.ReLU()
        if outermost:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, 4, 2, 1)
            layers = [downconv, submodule, uprelu, upconv, nn.Tanh()]
        elif innermost:
            upconv = nn.ConvTranspose2d(inner_nc, outer_nc, 4, 2, 1, bias=use_bias)
            layers = [downrelu, downconv, uprelu, upconv, norm_layer(norm, outer_nc)]
        else:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, 4, 2, 1, bias=use_bias)
            # The child's downrelu follows this BN: fuse them (see the module docstring).
            downnorm = norm_layer(norm, inner_nc, "leaky_relu" if norm == "batch" else None,
                                  backend)
            layers = [downrelu, downconv, downnorm, submodule, uprelu, upconv,
                      norm_layer(norm, outer_nc)]
            if use_dropout:
                layers.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outermost:
            return self.model(x)
        # Upstream's downrelu is in place, so its skip connection carries the activated x.
        x = self.model[0](x)
        y = x
        for layer in itertools.islice(self.model, 1, None):
            y = layer(y)
        return torch.cat([x, y], 1)


class UnetGenerator(nn.Module):
    """The pix2pix U-Net: x [N, input_nc, H, W] -> [N, output_nc, H, W], H, W divisible by
    2**num_downs (num_downs=8: U-Net-256, 7: U-Net-128)."""

    def __init__(self, input_nc: int = 3, output_nc: int = 3, num_downs: int = 8, ngf: int = 64,
                 norm: str = "batch", use_dropout: bool = True,
                 backend: str | None = None) -> None:
        super().__init__()
        if num_downs < 5:
            raise ValueError(f"fastgan.models.UnetGenerator: num_downs must be >= 5, got {num_downs}")
        self.num_downs = num_downs
        fused = norm == "batch"
        kw = dict(norm=norm, backend=backend)
        block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, innermost=True, fused_input=fused, **kw)
        for _ in range(num_downs - 5):
            block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, submodule=block,
                                            use_dropout=use_dropout, fused_input=fused, **kw)
        block = UnetSkipConnectionBlock(ngf * 4, ngf * 8, submodule=block, fused_input=fused, **kw)
        block = UnetSkipConnectionBlock(ngf * 2, ngf * 4, submodule=block, fused_input=fused, **kw)
        # Its input is the outermost conv's output (no BN): a real LeakyReLU.
        block = UnetSkipConnectionBlock(ngf, ngf * 2, submodule=block, **kw)
        self.model = UnetSkipConnectionBlock(output_nc, ngf, input_nc=input_nc, submodule=block,
                                             outermost=True, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        step = 2 ** self.num_downs
        if x.dim() != 4 or x.shape[-1] % step or x.shape[-2] % step:
            raise ValueError(f"fastgan.models.UnetGenerator: x must be [N, C, H, W] with H and W "
                             f"divisible by 2**num_downs = {step}, got {tuple(x.shape)}")
        return self.model(x)


class NLayerDiscriminator(nn.Module):
    """PatchGAN: x [N, input_nc, H, W] -> logits [N, 1, H', W']. n_layers stride-2 4x4 convs
    (the first without norm), a stride-1 4x4 conv, then a 4x4 conv to one channel; widths
    ndf * min(2**n, 8). n_layers=3: a 70x70 receptive field, 30x30 logits at 256x256."""

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3, norm: str = "batch",
                 backend: str | None = None) -> None:
        super().__init__()
        _check_norm(norm)
        use_bias = norm == "instance"
        act = "leaky_relu" if norm == "batch" else None
        seq: list[nn.Module] = [nn.Conv2d(input_nc, ndf, 4, 2, 1), nn.LeakyReLU(0.2)]
        mult = 1
        # n_layers - 1 stride-2 levels, then one stride-1 level (upstream's loop and tail).
        for n, stride in [*((n, 2) for n in range(1, n_layers)), (n_layers, 1)]:
            prev, mult = mult, min(2 ** n, 8)
            seq += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1, bias=use_bias),
                    norm_layer(norm, ndf * mult, act, backend), _act_slot(norm, _lrelu)]
        seq.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        self.model = nn.Sequential(*seq)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class PixelDiscriminator(nn.Module):
    """PixelGAN (1x1 PatchGAN): x [N, input_nc, H, W] -> logits [N, 1, H, W]."""

    def __init__(self, input_nc: int = 3, ndf: int = 64, norm: str = "batch",
                 backend: str | None = None) -> None:
        super().__init__()
        _check_norm(norm)
        use_bias = norm == "instance"
        act = "leaky_relu" if norm == "batch" else None
        self.net = nn.Sequential(
            nn.Conv2d(input_nc, ndf, 1, 1, 0), nn.LeakyReLU(0.2),
            nn.Conv2d(ndf, ndf * 2, 1, 1, 0, bias=use_bias),
            norm_layer(norm, ndf * 2, act, backend), _act_slot(norm, _lrelu),
            nn.Conv2d(ndf * 2, 1, 1, 1, 0, bias=use_bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@register_model("pix2pix_unet256_g", family="pix2pix",
                description="pix2pix U-Net-256 generator (junyanz), x [N,3,256,256] -> [N,3,256,256]")
def pix2pix_unet256_g(input_nc: int = 3, output_nc: int = 3, ngf: int = 64, num_downs: int = 8,
                      norm: str = "batch", use_dropout: bool = True,
                      backend: str | None = None) -> UnetGenerator:
    return UnetGenerator(input_nc, output_nc, num_downs, ngf, norm, use_dropout, backend)


@register_model("patchgan_d", family="pix2pix",
                description="PatchGAN discriminator (70x70 at n_layers=3), x -> [N,1,H',W'] logits")
def patchgan_d(input_nc: int = 6, ndf: int = 64, n_layers: int = 3, norm: str = "batch",
               backend: str | None = None) -> NLayerDiscriminator:
    # input_nc=6: pix2pix's conditional D sees (input, output) concatenated; CycleGAN uses 3.
    return NLayerDiscriminator(input_nc, ndf, n_layers, norm, backend)


@register_model("pixelgan_d", family="pix2pix",
                description="PixelGAN (1x1 PatchGAN) discriminator, x -> [N,1,H,W] logits")
def pixelgan_d(input_nc: int = 6, ndf: int = 64, norm: str = "batch",
               backend: str | None = None) -> PixelDiscriminator:
    return PixelDiscriminator(input_nc, ndf, norm, backend)


# ---------------------------------------------------------------------------------------------
# Upstream checkpoints: same keys; infer the architecture, patch the norm buffers, check strictly.

_STATS = ("running_mean", "running_var", "num_batches_tracked")


def _infer_norm(sd: Mapping[str, torch.Tensor], conv_bias_key: str) -> str:
    if any(k.endswith(".running_var") and k[:-len("running_var")] + "weight" in sd for k in sd):
        return "batch"
    return "instance" if conv_bias_key in sd else "none"


def convert_checked(name: str, sd: Mapping[str, torch.Tensor], expected: nn.Module) -> dict:
    """``sd`` checked against ``expected``'s keys and shapes (built on the meta device), with a
    missing BN ``num_batches_tracked`` set to 0 and instance-norm running statistics of old
    checkpoints dropped; anything else that does not fit raises a ValueError naming it."""
    want = expected.state_dict()
    modules = dict(expected.named_modules())
    out, unknown = {}, []
    for k, v in sd.items():
        prefix, _, leaf = k.rpartition(".")
        if k not in want:
            if leaf in _STATS and isinstance(modules.get(prefix), nn.InstanceNorm2d):
                continue  # upstream's __patch_instance_norm_state_dict does the same
            unknown.append(k)
            continue
        if tuple(v.shape) != tuple(want[k].shape):
            raise ValueError(f"fastgan.models.convert_upstream({name!r}): {k} has shape "
                             f"{tuple(v.shape)}, the architecture needs {tuple(want[k].shape)}")
        out[k] = v
    if unknown:
        raise ValueError(f"fastgan.models.convert_upstream({name!r}): unknown keys {unknown}")
    missing = []
    for k in want:
        if k not in out:
            if k.endswith(".num_batches_tracked"):
                out[k] = torch.tensor(0, dtype=torch.long)  # saved before torch 0.4.1
            else:
                missing.append(k)
    if missing:
        raise ValueError(f"fastgan.models.convert_upstream({name!r}): missing keys {missing}")
    return out


def _key(sd: Mapping[str, torch.Tensor], name: str, key: str) -> torch.Tensor:
    if key not in sd:
        raise ValueError(f"fastgan.models.convert_upstream({name!r}): no {key!r} in the "
                         f"checkpoint; is it a {JUNYANZ} {name} state_dict?")
    return sd[key]


@register_converter("pix2pix_unet256_g", upstream=JUNYANZ + " UnetGenerator (netG unet_256)")
def _convert_unet(sd: Mapping[str, torch.Tensor]) -> dict:
    name = "pix2pix_unet256_g"
    first = _key(sd, name, "model.model.0.weight")
    last = _key(sd, name, "model.model.3.weight")  # ConvTranspose2d: [in, out, k, k]
    num_downs = max(k.count("model.") for k in sd) - 1
    norm = _infer_norm(sd, "model.model.1.model.1.bias")
    with torch.device("meta"):
        expected = UnetGenerator(first.shape[1], last.shape[1], num_downs, first.shape[0], norm)
    return convert_checked(name, sd, expected)


@register_converter("patchgan_d", upstream=JUNYANZ + " NLayerDiscriminator (netD basic / n_layers)")
def _convert_patchgan(sd: Mapping[str, torch.Tensor]) -> dict:
    name = "patchgan_d"
    first = _key(sd, name, "model.0.weight")
    convs = [k for k in sd if k.endswith(".weight") and sd[k].dim() == 4]
    norm = _infer_norm(sd, "model.2.bias")
    with torch.device("meta"):
        expected = NLayerDiscriminator(first.shape[1], first.shape[0], len(convs) - 2, norm)
    return convert_checked(name, sd, expected)


@register_converter("pixelgan_d", upstream=JUNYANZ + " PixelDiscriminator (netD pixel)")
def _convert_pixelgan(sd: Mapping[str, torch.Tensor]) -> dict:
    name = "pixelgan_d"
    first = _key(sd, name, "net.0.weight")
    norm = _infer_norm(sd, "net.2.bias")
    with torch.device("meta"):
        expected = PixelDiscriminator(first.shape[1], first.shape[0], norm)
    return convert_checked(name, sd, expected)
