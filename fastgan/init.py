"""Weight-initialisation schemes of the GAN literature, applied to a whole model.

``init_weights(model, "normal", gain=0.02)`` is pix2pix/CycleGAN's ``init_weights`` (DCGAN's
N(0, 0.02)); "xavier", "kaiming" and "orthogonal" are the other schemes those repositories and
BigGAN offer. Spectrally normalised layers are initialised through their raw weight
(``weight_orig`` of fastgan's SN layers and of ``torch.nn.utils.spectral_norm``, or
``parametrizations.weight.original`` of the parametrization form), as upstream init code that
runs before the first forward does.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["INIT_SCHEMES", "init_weights", "kaiming_init_", "normal_init_", "orthogonal_init_",
           "raw_weight", "xavier_init_"]


def normal_init_(weight: torch.Tensor, gain: float = 0.02) -> torch.Tensor:
    """N(0, gain^2) in place (DCGAN, pix2pix ``init_type='normal'``)."""
    return nn.init.normal_(weight, 0.0, gain)


def xavier_init_(weight: torch.Tensor, gain: float = 0.02) -> torch.Tensor:
    """Glorot normal with ``gain`` in place (pix2pix ``init_type='xavier'``; its default gain
    is 0.02 too; BigGAN's "glorot" is xavier_uniform with gain 1)."""
    return nn.init.xavier_normal_(weight, gain=gain)


def kaiming_init_(weight: torch.Tensor, gain: float = 0.02) -> torch.Tensor:
    """He normal, fan_in, for ReLU (pix2pix ``init_type='kaiming'``); ``gain`` is unused there
    too."""
    return nn.init.kaiming_normal_(weight, a=0.0, mode="fan_in")


def orthogonal_init_(weight: torch.Tensor, gain: float = 0.02) -> torch.Tensor:
    """(Semi-)orthogonal times ``gain`` in place, weight flattened to [out, -1] (BigGAN 'ortho',
    pix2pix 'orthogonal')."""
    return nn.init.orthogonal_(weight, gain=gain)


#: Scheme name -> in-place initialiser ``fn(weight, gain)``.
INIT_SCHEMES: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "normal": normal_init_, "xavier": xavier_init_, "kaiming": kaiming_init_,
    "orthogonal": orthogonal_init_,
}

_WEIGHTED = (nn.modules.conv._ConvNd, nn.Linear, nn.Embedding)
_BATCH_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm)


def raw_weight(module: nn.Module) -> torch.Tensor | None:
    """The trainable weight tensor behind ``module.weight``: ``weight_orig`` under spectral norm,
    the parametrization's ``original``, else ``weight`` (None when there is none)."""
    params = module._parameters
    if params.get("weight_orig") is not None:
        return params["weight_orig"]
    parametrizations = getattr(module, "parametrizations", None)
    if parametrizations is not None and "weight" in parametrizations:
        return parametrizations["weight"].original
    return params.get("weight")


@torch.no_grad()
def init_weights(model: nn.Module, scheme: str = "normal", gain: float = 0.02) -> nn.Module:
    """Initialise ``model`` in place and return it.

    - Conv / ConvTranspose / Linear / Embedding weights (the raw weight under spectral norm):
      ``INIT_SCHEMES[scheme](weight, gain)``; their biases zero.
    - BatchNorm (and other affine norm) layers: weight ~ N(1, gain^2), bias 0, for every scheme
      as pix2pix's ``init_weights`` does (its BatchNorm branch ignores ``init_type``).
    - The per-class embedding tables of ``fastgan.nn.ConditionalBatchNorm2d(num_classes=...)``
      are gains and biases, not weights: they are reset to ones and zeros rather than drawn, so
      every class starts as the identity (as the layer's own init, SNGAN's categorical BN).
    """
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"fastgan.init.init_weights: unknown scheme {scheme!r}; choose one of "
                         f"{', '.join(INIT_SCHEMES)}")
    from .nn import ConditionalBatchNorm2d

    init_ = INIT_SCHEMES[scheme]
    skip: set[int] = set()
    for module in model.modules():
        if isinstance(module, ConditionalBatchNorm2d) and not module.conditional_linear:
            nn.init.ones_(module.gain.weight)
            nn.init.zeros_(module.bias.weight)
            skip.update((id(module.gain), id(module.bias)))
    for module in model.modules():
        if id(module) in skip:
            continue
        if isinstance(module, _WEIGHTED):
            weight = raw_weight(module)
            if weight is not None:
                init_(weight, gain)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, _BATCH_NORMS) and getattr(module, "affine", False):
            nn.init.normal_(module.weight, 1.0, gain)
            nn.init.zeros_(module.bias)
    return model
