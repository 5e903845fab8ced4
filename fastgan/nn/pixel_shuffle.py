"""PixelShuffle upsampling modules on the fused pixel_shuffle_act op.

Each module is an nn.Sequential holding the very modules it replaces (nn.PixelShuffle, the
activation, the conv), so indexing, repr and state_dict keys are those of the unfused Sequential,
and checkpoints load both ways; only forward is fused.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ..ops import pixel_shuffle_act

__all__ = ["ConvPixelShuffleAct", "PixelShuffleAct", "PixelShuffleUpsample", "icnr_"]

_ACTIVATION_MODULES = {nn.ReLU: "relu", nn.LeakyReLU: "leaky_relu", nn.PReLU: "prelu", nn.Tanh: "tanh"}


def _make_activation(activation: str | None, negative_slope: float, num_parameters: int,
                     init: float) -> nn.Module | None:
    if activation in (None, "none"):
        return None
    if activation == "relu":
        return nn.ReLU()
    if activation == "leaky_relu":
        return nn.LeakyReLU(negative_slope)
    if activation == "prelu":
        return nn.PReLU(num_parameters, init)
    if activation == "tanh":
        return nn.Tanh()
    raise ValueError(f"fastgan.nn: activation must be None, 'relu', 'leaky_relu', 'prelu' or 'tanh', "
                     f"got {activation!r}")


def _activation_args(act: nn.Module | None, dtype: torch.dtype) -> tuple[str, float, torch.Tensor | None]:
    """(activation name, negative_slope, prelu weight in the input's dtype) of an activation module."""
    if act is None:
        return "none", 0.2, None
    name = _ACTIVATION_MODULES.get(type(act))
    if name is None:
        raise TypeError(f"fastgan.nn: cannot fuse activation {type(act).__name__}; supported: "
                        f"{', '.join(t.__name__ for t in _ACTIVATION_MODULES)}")
    if name == "leaky_relu":
        return name, float(act.negative_slope), None
    if name == "prelu":
        return name, 0.2, act.weight.to(dtype)  # a no-op outside autocast
    return name, 0.2, None


class PixelShuffleAct(nn.Sequential):
    """Drop-in for ``nn.Sequential(nn.PixelShuffle(r), <activation>)``, fused.

    Input [N, C*r*r, H, W] -> output [N, C, H*r, W*r]. ``activation``: None, "relu",
    "leaky_relu" (``negative_slope``), "prelu" (``num_parameters`` 1 or C, ``init``) or "tanh".
    State dict keys are the Sequential's ("1.weight" for PReLU).
    """

    def __init__(self, upscale_factor: int, activation: str | None = None, negative_slope: float = 0.2,
                 num_parameters: int = 1, init: float = 0.25, backend: str | None = None) -> None:
        act = _make_activation(activation, negative_slope, num_parameters, init)
        super().__init__(nn.PixelShuffle(upscale_factor), *([act] if act is not None else []))
        self.backend = backend

    @classmethod
    def from_modules(cls, shuffle: nn.PixelShuffle, activation: nn.Module | None = None,
                     backend: str | None = None) -> PixelShuffleAct:
        """Wraps existing modules (sharing their parameters) into the fused module."""
        _activation_args(activation, torch.float32)  # rejects what cannot be fused
        module = cls.__new__(cls)
        nn.Sequential.__init__(module, shuffle, *([activation] if activation is not None else []))
        module.backend = backend
        return module

    @property
    def upscale_factor(self) -> int:
        return self[0].upscale_factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        name, slope, weight = _activation_args(self[1] if len(self) > 1 else None, x.dtype)
        return pixel_shuffle_act(x, self.upscale_factor, None, name, slope, weight, backend=self.backend)


class ConvPixelShuffleAct(nn.Sequential):
    """Drop-in for ``nn.Sequential(nn.Conv2d(cin, cout*r*r, k, padding=k//2), nn.PixelShuffle(r), act)``.

    The conv runs without its bias; the bias, the shuffle and the activation run fused. State dict
    keys: "0.weight", "0.bias" and, for PReLU, "2.weight".
    """

    def __init__(self, in_channels: int, out_channels: int, upscale_factor: int,
                 activation: str | None = None, kernel_size: int = 3, bias: bool = True,
                 negative_slope: float = 0.2, num_parameters: int = 1, init: float = 0.25,
                 backend: str | None = None) -> None:
        r = upscale_factor
        conv = nn.Conv2d(in_channels, out_channels * r * r, kernel_size, padding=kernel_size // 2,
                         bias=bias)
        act = _make_activation(activation, negative_slope, num_parameters, init)
        super().__init__(conv, nn.PixelShuffle(r), *([act] if act is not None else []))
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv: nn.Conv2d = self[0]
        y = conv._conv_forward(x, conv.weight, None)
        bias = conv.bias.to(y.dtype) if conv.bias is not None else None
        name, slope, weight = _activation_args(self[2] if len(self) > 2 else None, y.dtype)
        return pixel_shuffle_act(y, self[1].upscale_factor, bias, name, slope, weight,
                                 backend=self.backend)


class PixelShuffleUpsample(nn.Sequential):
    """Sub-pixel conv upsampler as in SRResNet/ESRGAN: conv -> PixelShuffle -> activation, fused.

    ``scale`` 2, 4, 8, ... runs as chained x2 stages, 3 as one x3 stage; each stage is a
    ConvPixelShuffleAct (the first maps in_channels, the next ones out_channels, to
    out_channels*r*r). ``icnr=True`` initialises each conv with ICNR (Aitken et al., 2017), which
    makes the freshly initialised upsampler free of checkerboard artefacts.
    Input [N, in_channels, H, W] -> output [N, out_channels, H*scale, W*scale].
    """

    def __init__(self, in_channels: int, out_channels: int, scale: int, activation: str | None = "relu",
                 kernel_size: int = 3, negative_slope: float = 0.2, num_parameters: int = 1,
                 icnr: bool = True, backend: str | None = None) -> None:
        if isinstance(scale, bool) or not isinstance(scale, int) or scale < 2:
            raise ValueError(f"fastgan.nn.PixelShuffleUpsample: scale must be an int >= 2, got {scale!r}")
        if scale == 3:
            factors = [3]
        elif scale & (scale - 1) == 0:
            factors = [2] * int(math.log2(scale))
        else:
            raise ValueError(f"fastgan.nn.PixelShuffleUpsample: scale must be 3 or a power of two, "
                             f"got {scale}")
        stages = [
            ConvPixelShuffleAct(in_channels if i == 0 else out_channels, out_channels, r, activation,
                                kernel_size, negative_slope=negative_slope,
                                num_parameters=num_parameters, backend=backend)
            for i, r in enumerate(factors)
        ]
        super().__init__(*stages)
        self.scale = scale
        if icnr:
            for stage in stages:
                icnr_(stage[0].weight, stage[1].upscale_factor)


@torch.no_grad()
def icnr_(weight: torch.Tensor, upscale_factor: int,
          init: Callable[[torch.Tensor], object] = nn.init.kaiming_normal_) -> torch.Tensor:
    """ICNR init of a sub-pixel conv weight [C*r*r, Cin, kh, kw], in place.

    Draws a [C, Cin, kh, kw] kernel with ``init`` and gives it to all r*r sub-pixel channels of each
    output channel (channel c*r*r + s feeds pixel s of channel c after the shuffle), so that
    conv + shuffle starts as conv + nearest-neighbour upsampling.
    """
    rr = upscale_factor * upscale_factor
    if weight.dim() != 4 or weight.shape[0] % rr:
        raise ValueError(f"fastgan.nn.icnr_: weight must be [C*r*r, Cin, kh, kw] with r*r = {rr}, "
                         f"got shape {tuple(weight.shape)}")
    sub = torch.empty((weight.shape[0] // rr, *weight.shape[1:]), dtype=weight.dtype, device=weight.device)
    init(sub)
    weight.copy_(sub.repeat_interleave(rr, dim=0))
    return weight
