"""fastgan.swap's adapters: module classes of well-known GAN code, recognised by class name and
attribute signature (never by import), each turned into its fused equivalent.

An adapter is one small class: ``matches(module)`` says whether it applies, ``convert(module,
backend)`` returns the replacement (over the module's own tensors) and the state_dict key
changes as (old suffix, new suffix) pairs; it raises ``Skip(reason)`` for a variant it does not
handle, which the report shows. Add one by writing the class and listing it in ``ADAPTERS``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import nn

from .nn.pixel_shuffle import _activation_args
from .nn.self_attention import SelfAttention2d
from .nn.spectral_norm import _TRANSPOSED, SN_CLASSES, SpectralNormState
from .ops import cond_batch_norm, pixel_shuffle_act

__all__ = ["ADAPTERS", "Adapter", "Skip", "is_adapted"]

KeyChanges = list[tuple[str, str]]


class Skip(Exception):
    """A recognised module this adapter cannot convert; the message says why."""


def shallow_copy(module: nn.Module, cls: type) -> nn.Module:
    """A new module of class ``cls`` over the same tensors: the dict containers (parameters,
    buffers, children, hooks) are copied, so the original stays as it was."""
    new = cls.__new__(cls)
    new.__dict__ = {k: (v.copy() if isinstance(v, dict) else set(v) if isinstance(v, set) else v)
                    for k, v in module.__dict__.items()}
    return new


def install_spectral_norm(new: nn.Module, state: SpectralNormState, base: type) -> str:
    """Gives ``new`` (which holds <name>_orig, _u, _v) the fastgan state: the fused SN class for
    the torch layers that have one, else fastgan's forward pre-hook. Returns what it became."""
    fused = SN_CLASSES.get(base)
    expected_dim = 1 if issubclass(base, _TRANSPOSED) else 0
    if fused is not None and state.name == "weight" and state.dim == expected_dim:
        new.__dict__.pop("weight", None)
        new.__class__ = fused
        new._sn = state
        kind = fused.__name__
    else:
        new.register_forward_pre_hook(state)
        if state.name not in new.__dict__:
            setattr(new, state.name, state.weight_orig(new).detach())
        kind = f"{base.__name__} + fastgan spectral_norm"
    new._register_load_state_dict_pre_hook(state.load_hook)
    return kind


def _torch_base(module: nn.Module) -> type | None:
    """The torch layer class (one of SN_CLASSES' keys) a third-party class derives from."""
    return next((b for b in type(module).__mro__ if b in SN_CLASSES), None)


class Adapter(ABC):
    """Recognises one third-party module class and converts it."""

    name = ""

    @abstractmethod
    def matches(self, module: nn.Module) -> bool:
        """Whether ``module`` is this adapter's class (by name and attributes)."""

    @abstractmethod
    def convert(self, module: nn.Module, backend: str | None) -> tuple[nn.Module, KeyChanges]:
        """The replacement over ``module``'s own tensors, and the state_dict key changes."""


# ---------------------------------------------------------------------- BigGAN-PyTorch
class BigGANSpectralNorm(Adapter):
    """BigGAN-PyTorch's SNConv2d / SNLinear / SNEmbedding (layers.SN: buffers u0.., sv0..;
    W / sigma with sigma from a fresh iteration, in eval too, stored only in training)."""

    name = "BigGAN-PyTorch SN layer"

    def matches(self, module):
        return type(module).__name__ in ("SNConv2d", "SNLinear", "SNEmbedding") \
            and _torch_base(module) is not None and hasattr(module, "W_") \
            and all(hasattr(module, a) for a in ("num_svs", "num_itrs", "eps", "transpose")) \
            and "u0" in module._buffers and "weight" in module._parameters

    def convert(self, module, backend):
        if module.transpose:
            raise Skip("transposed SN (transpose=True) is not supported")
        base = _torch_base(module)
        k = module.num_svs
        new = shallow_copy(module, base)
        weight = new._parameters.pop("weight")
        us = [new._buffers.pop(f"u{i}") for i in range(k)]
        for i in range(k):
            new._buffers.pop(f"sv{i}", None)
        new.register_parameter("weight_orig", weight)
        state = SpectralNormState("weight", module.num_itrs, module.eps, 0, backend, k,
                                  eval_iteration="peek")
        with torch.no_grad():
            mat = state.matrix(weight).float()
            # u shares the u0 buffer's storage (a view), so unswap continues from our updates.
            u = us[0].view(-1) if k == 1 else torch.cat(us).clone()
            v = F.normalize(torch.mv(mat.t(), u.float()), dim=0, eps=module.eps).to(u.dtype) \
                if k == 1 else u.new_zeros(k, mat.shape[1])
        new.register_buffer("weight_u", u)
        new.register_buffer("weight_v", v)
        state.called = True
        install_spectral_norm(new, state, base)
        changes = [("weight", "weight_orig"), ("u0", "weight_u"), ("", "weight_v")]
        changes += [(f"sv{i}", "") for i in range(k)] + [(f"u{i}", "") for i in range(1, k)]
        return new, changes


class BigGANConditionalBatchNorm(nn.Module):
    """BigGAN-PyTorch's ccbn (norm_style "bn") on the fused op: batch norm with per-sample
    gain = 1 + gain(y) and bias = bias(y). The ccbn's own children and buffers, under its keys."""

    def __init__(self, source: nn.Module, backend: str | None) -> None:
        super().__init__()
        self.output_size, self.input_size = source.output_size, source.input_size
        self.eps, self.backend = source.eps, backend
        self.gain, self.bias = source.gain, source.bias
        self.register_buffer("stored_mean", source.stored_mean)
        self.register_buffer("stored_var", source.stored_var)
        self.training = source.training

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        gain = (1 + self.gain(y)).to(x.dtype)
        bias = self.bias(y).to(x.dtype)
        # BigGAN passes momentum 0.1 to F.batch_norm whatever else is configured.
        return cond_batch_norm(x, gain.view(x.shape[0], -1), bias.view(x.shape[0], -1),
                               self.stored_mean, self.stored_var, self.training, 0.1, self.eps,
                               backend=self.backend)

    def extra_repr(self) -> str:
        return f"out: {self.output_size}, in: {self.input_size} (fused)"


class BigGANCCBN(Adapter):
    name = "BigGAN-PyTorch ccbn"

    def matches(self, module):
        return type(module).__name__ == "ccbn" and all(
            hasattr(module, a) for a in ("gain", "bias", "norm_style", "cross_replica", "eps")) \
            and "stored_mean" in module._buffers

    def convert(self, module, backend):
        if module.cross_replica or getattr(module, "mybn", False):
            raise Skip("cross-replica / manual batch norm is not fused")
        if module.norm_style != "bn":
            raise Skip(f"norm_style {module.norm_style!r} is not batch norm")
        return BigGANConditionalBatchNorm(module, backend), []


class BigGANBatchNorm(nn.Module):
    """BigGAN-PyTorch's bn (gain, bias, stored_mean, stored_var) on the fused op, with the
    activation that followed it in an nn.Sequential when there was one."""

    def __init__(self, source: nn.Module, activation: str, negative_slope: float,
                 backend: str | None) -> None:
        super().__init__()
        self.output_size, self.eps = source.output_size, source.eps
        self.activation, self.negative_slope, self.backend = activation, negative_slope, backend
        self.gain, self.bias = source.gain, source.bias
        self.register_buffer("stored_mean", source.stored_mean)
        self.register_buffer("stored_var", source.stored_var)
        self.training = source.training

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return cond_batch_norm(x, self.gain.to(x.dtype), self.bias.to(x.dtype), self.stored_mean,
                               self.stored_var, self.training, 0.1, self.eps,
                               activation=self.activation, negative_slope=self.negative_slope,
                               backend=self.backend)

    def extra_repr(self) -> str:
        return f"{self.output_size}, activation={self.activation} (fused)"


class BigGANBN(Adapter):
    name = "BigGAN-PyTorch bn"

    def matches(self, module):
        return type(module).__name__ == "bn" and isinstance(module._parameters.get("gain"),
                                                            nn.Parameter) \
            and "stored_mean" in module._buffers and hasattr(module, "cross_replica")

    def check(self, module) -> None:
        if module.cross_replica or getattr(module, "mybn", False):
            raise Skip("cross-replica / manual batch norm is not fused")

    def convert(self, module, backend, act: nn.Module | None = None):
        self.check(module)
        name = "none" if act is None else ("relu" if type(act) is nn.ReLU else "leaky_relu")
        slope = float(getattr(act, "negative_slope", 0.2))
        return BigGANBatchNorm(module, name, slope, backend), []


def _attention_shell(module: nn.Module, layout: str, names: tuple, backend: str | None,
                     cls: type = SelfAttention2d) -> SelfAttention2d:
    """A SelfAttention2d over ``module``'s own convs and gamma."""
    new = cls.__new__(cls)
    nn.Module.__init__(new)
    new.channels, new.layout, new.backend = module.ch if layout == "biggan" else \
        module.chanel_in, layout, backend
    new._names = names
    new.pool = 2 if layout == "biggan" else 1
    for n in names:
        if n is not None:
            setattr(new, n, getattr(module, n))
    new.gamma = module.gamma
    new.spectral_norm = layout == "biggan"
    new.training = module.training
    return new


class BigGANSelfAttention(SelfAttention2d):
    """BigGAN-PyTorch's Attention, fused; called as upstream, ``forward(x, y=None)`` (BigGAN's
    generator passes every block the class vector)."""

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(x)


class BigGANAttention(Adapter):
    """BigGAN-PyTorch's Attention (theta, phi, g, o; max-pooled phi and g; scalar gamma)."""

    name = "BigGAN-PyTorch Attention"
    _sn = BigGANSpectralNorm()

    def matches(self, module):
        return type(module).__name__ == "Attention" and hasattr(module, "ch") and all(
            isinstance(getattr(module, n, None), nn.Conv2d) for n in ("theta", "phi", "g", "o")) \
            and isinstance(module._parameters.get("gamma"), nn.Parameter)

    def convert(self, module, backend):
        if module.ch % 8:
            raise Skip(f"ch={module.ch} is not a multiple of 8")
        changes: KeyChanges = []
        shell = shallow_copy(module, type(module))
        for n in ("theta", "phi", "g", "o"):
            conv = getattr(module, n)
            if self._sn.matches(conv):
                conv, sub = self._sn.convert(conv, backend)
                changes += [(f"{n}.{a}" if a else "", f"{n}.{b}" if b else "") for a, b in sub]
            elif type(conv) is not nn.Conv2d:
                raise Skip(f"{n} is a {type(conv).__name__}, neither a plain nor a BigGAN SN conv")
            shell._modules[n] = conv
        return _attention_shell(shell, "biggan", ("theta", "phi", "g", "o"), backend,
                                BigGANSelfAttention), changes


# ---------------------------------------------------------- heykeetae Self-Attention-GAN
class SAGANSelfAttention(SelfAttention2d):
    """heykeetae's Self_Attn, fused: returns (out, attention) as upstream. The attention map is
    [B, N, N]; building it is what the fused kernel avoids, so it is None unless
    ``keep_attention_maps`` is set (then it comes from the reference)."""

    keep_attention_maps = False

    def forward(self, x: torch.Tensor):
        if self.keep_attention_maps:
            return super().forward(x, return_attention=True)
        return super().forward(x), None


class HeykeetaeSelfAttn(Adapter):
    name = "heykeetae Self_Attn"

    def matches(self, module):
        return type(module).__name__ == "Self_Attn" and hasattr(module, "chanel_in") and all(
            type(getattr(module, n, None)) is nn.Conv2d
            for n in ("query_conv", "key_conv", "value_conv"))

    def convert(self, module, backend):
        if module.chanel_in % 8:
            raise Skip(f"chanel_in={module.chanel_in} is not a multiple of 8")
        new = _attention_shell(module, "sagan", ("query_conv", "key_conv", "value_conv", None),
                               backend, SAGANSelfAttention)
        return new, []


class HeykeetaeSpectralNorm(Adapter):
    """heykeetae's SpectralNorm wrapper (module.weight_bar, weight_u, weight_v as parameters;
    iterates on every call, eval included): becomes the wrapped layer with fastgan SN."""

    name = "heykeetae SpectralNorm"

    def matches(self, module):
        inner = getattr(module, "module", None)
        return type(module).__name__ == "SpectralNorm" and isinstance(inner, nn.Module) \
            and hasattr(module, "power_iterations") \
            and f"{getattr(module, 'name', 'weight')}_bar" in inner._parameters

    def convert(self, module, backend):
        inner, name = module.module, module.name
        base = _torch_base(inner) or type(inner)
        new = shallow_copy(inner, base if base in SN_CLASSES else type(inner))
        weight = new._parameters.pop(name + "_bar")
        u, v = new._parameters.pop(name + "_u"), new._parameters.pop(name + "_v")
        new.__dict__.pop(name, None)
        new.register_parameter(name + "_orig", weight)
        new.register_buffer(name + "_u", u.data)  # .data: the same storage, as a plain buffer
        new.register_buffer(name + "_v", v.data)
        # heykeetae flattens dim 0 of every weight (ConvTranspose too) and l2-normalises with
        # v / (|v| + eps), eps 1e-12.
        state = SpectralNormState(name, module.power_iterations, 1e-12, 0, backend,
                                  eval_iteration="update")
        state.called = True
        install_spectral_norm(new, state, base)
        changes = [(f"module.{name}_bar", f"{name}_orig"), (f"module.{name}_u", f"{name}_u"),
                   (f"module.{name}_v", f"{name}_v")]
        changes += [(f"module.{k}", k) for k in inner._parameters if not k.startswith(name)]
        changes += [(f"module.{k}", k) for k in inner._buffers]
        return new, changes


# -------------------------------------------------------------------- SR upsamplers
def _fused_upsample(conv: nn.Conv2d, shuffle: nn.PixelShuffle, act: nn.Module,
                    x: torch.Tensor, backend: str | None) -> torch.Tensor:
    y = conv._conv_forward(x, conv.weight, None)
    bias = None if conv.bias is None else conv.bias.to(y.dtype)
    name, slope, weight = _activation_args(act, y.dtype)
    return pixel_shuffle_act(y, shuffle.upscale_factor, bias, name, slope, weight, backend=backend)


_SUBCLASSES: dict[tuple[type, str], type] = {}


def _subclass(cls: type, forward, doc: str) -> type:
    """One fused subclass per third-party class: the instance keeps its class's attributes and
    keys; only forward changes (unswap puts the instance's old class back)."""
    key = (cls, forward.__name__)
    if key not in _SUBCLASSES:
        _SUBCLASSES[key] = type(f"Swapped{cls.__name__}", (cls,),
                                {"forward": forward, "__doc__": doc, "__module__": __name__})
    return _SUBCLASSES[key]


def _msrresnet_forward(self, x: torch.Tensor) -> torch.Tensor:
    feat = self.lrelu(self.conv_first(x))
    out = self.body(feat)
    for conv in (self.upconv1, self.upconv2) if self.upscale == 4 else (self.upconv1,):
        out = _fused_upsample(conv, self.pixel_shuffle, self.lrelu, out, self._fastgan_backend)
    out = self.conv_last(self.lrelu(self.conv_hr(out)))
    return out + F.interpolate(x, scale_factor=self.upscale, mode="bilinear", align_corners=False)


class BasicSRMSRResNet(Adapter):
    """BasicSR's MSRResNet: its conv -> PixelShuffle -> LeakyReLU upsampler steps, fused."""

    name = "BasicSR MSRResNet"

    def matches(self, module):
        return type(module).__name__ == "MSRResNet" and all(hasattr(module, a) for a in (
            "upscale", "conv_first", "body", "upconv1", "pixel_shuffle", "lrelu", "conv_hr",
            "conv_last")) and type(module.lrelu) is nn.LeakyReLU

    def convert(self, module, backend):
        if module.upscale not in (2, 3, 4):
            raise Skip(f"upscale {module.upscale} is not one MSRResNet builds")
        cls = _subclass(type(module), _msrresnet_forward, "MSRResNet with fused upsampling.")
        new = shallow_copy(module, cls)
        new._fastgan_backend = backend
        return new, []


def _upsample_block_forward(self, x: torch.Tensor) -> torch.Tensor:
    return _fused_upsample(self.conv, self.pixel_shuffle, self._modules[self._fastgan_act],
                           x, self._fastgan_backend)


class SRGANUpsampleBlock(Adapter):
    """SRGAN code's UpsampleBLock / UpsampleBlock: prelu(pixel_shuffle(conv(x))) (children conv,
    pixel_shuffle and prelu or act), fused."""

    name = "SRGAN UpsampleBlock"
    _acts = ("prelu", "act", "activation", "relu", "lrelu")

    def _act_name(self, module) -> str | None:
        return next((n for n in self._acts if isinstance(module._modules.get(n), (
            nn.PReLU, nn.ReLU, nn.LeakyReLU))), None)

    def matches(self, module):
        return type(module).__name__ in ("UpsampleBLock", "UpsampleBlock") \
            and type(module._modules.get("conv")) is nn.Conv2d \
            and type(module._modules.get("pixel_shuffle")) is nn.PixelShuffle \
            and self._act_name(module) is not None and len(module._modules) == 3

    def convert(self, module, backend):
        act_name = self._act_name(module)
        cls = _subclass(type(module), _upsample_block_forward, "Fused conv + PixelShuffle + act.")
        new = shallow_copy(module, cls)
        new._fastgan_backend, new._fastgan_act = backend, act_name
        return new, []


ADAPTERS: list[Adapter] = [BigGANSpectralNorm(), BigGANCCBN(), BigGANBN(), BigGANAttention(),
                           HeykeetaeSelfAttn(), HeykeetaeSpectralNorm(), BasicSRMSRResNet(),
                           SRGANUpsampleBlock()]


def is_adapted(module: nn.Module) -> bool:
    """Whether ``module`` is what an adapter made (swap reports it as already fused)."""
    return isinstance(module, (BigGANConditionalBatchNorm, BigGANBatchNorm, BigGANSelfAttention,
                               SAGANSelfAttention)) or type(module) in _SUBCLASSES.values()
