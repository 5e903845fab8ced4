"""VGG19 perceptual loss (Johnson et al. 2016; pix2pixHD's VGGLoss; ESRGAN's conv5_4 loss).

The feature extractor is VGG19's convolutional part laid out as torchvision's ``vgg19().features``
(an nn.Sequential whose conv layers sit at indices 0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28,
30, 32, 34), so a torchvision checkpoint (``vgg19-dcbb9e9d.pth``) loads by its ``features.N.*``
keys. It is built here, so torchvision is not needed, and nothing is ever downloaded: pass the
path of a local file, or ``weights_path=None`` for random weights (tests; the loss is then not
perceptual, and a warning says so).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["VGG19_LAYERS", "VGGPerceptualLoss", "vgg19_features"]

# VGG19 configuration "E": channels per conv, "M" a 2x2 max pool.
_VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
              512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


def _layer_names() -> dict[str, int]:
    names, index, block, conv = {}, 0, 1, 1
    for c in _VGG19_CFG:
        if c == "M":
            names[f"pool{block}"] = index
            index, block, conv = index + 1, block + 1, 1
        else:
            names[f"conv{block}_{conv}"] = index
            names[f"relu{block}_{conv}"] = index + 1
            index, conv = index + 2, conv + 1
    return names


#: Layer name ("conv3_1", "relu3_1", "pool3", ...) -> index in torchvision's ``vgg19().features``.
VGG19_LAYERS: dict[str, int] = _layer_names()

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def vgg19_features(num_layers: int = len(VGG19_LAYERS)) -> nn.Sequential:
    """The first ``num_layers`` modules of torchvision's ``vgg19().features`` (random init).

    ReLUs are not in-place: pre-activation features (ESRGAN's conv5_4) must survive the ReLU.
    """
    layers: list[nn.Module] = []
    in_ch = 3
    for c in _VGG19_CFG:
        if c == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_ch, c, kernel_size=3, padding=1), nn.ReLU()]
            in_ch = c
    return nn.Sequential(*layers[:num_layers])


class VGGPerceptualLoss(nn.Module):
    """sum_i w_i * criterion(phi_i(x), phi_i(y).detach()) over VGG19 feature layers phi_i.

    ``forward(x, y)``: x, y [N, 3, H, W] images in [-1, 1] (a generator's tanh range); they are
    mapped to [0, 1] and normalised by the ImageNet mean / std, as torchvision's VGG expects.
    Returns a scalar. Gradient flows to x only; VGG is frozen (requires_grad False) and stays in
    eval mode whatever ``train()`` is called with.

    - ``variant="post"`` (default): layers after their ReLU; defaults are pix2pixHD's
      relu1_1 ... relu5_1 with weights 1/32, 1/16, 1/8, 1/4, 1 and L1.
    - ``variant="pre"``: ESRGAN's features before the activation: "reluX_Y" names are read at
      convX_Y; the default layers become ("conv5_4",) with weight 1.
    ``criterion``: "l1" or "mse". ``weights_path``: a torchvision-format state_dict file
    (``features.N.weight`` / ``.bias``; ``classifier.*`` ignored) or None for random weights.
    """

    def __init__(self, layers: Sequence[str] | None = None, weights: Sequence[float] | None = None,
                 criterion: str = "l1", weights_path: str | os.PathLike | None = None,
                 variant: str = "post") -> None:
        super().__init__()
        if variant not in ("post", "pre"):
            raise ValueError(f"fastgan.perceptual.VGGPerceptualLoss: variant must be 'post' or "
                             f"'pre', got {variant!r}")
        if layers is None:
            layers = ("conv5_4",) if variant == "pre" else (
                "relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
            if weights is None:
                weights = (1.0,) if variant == "pre" else (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
        if weights is None:
            weights = (1.0,) * len(layers)
        if len(weights) != len(layers) or not layers:
            raise ValueError(f"fastgan.perceptual.VGGPerceptualLoss: need one weight per layer, "
                             f"got {len(layers)} layers and {len(weights)} weights")
        if variant == "pre":
            layers = tuple(n.replace("relu", "conv") for n in layers)
        unknown = [n for n in layers if n not in VGG19_LAYERS]
        if unknown:
            raise ValueError(f"fastgan.perceptual.VGGPerceptualLoss: unknown layers {unknown}; "
                             f"choose from {', '.join(VGG19_LAYERS)}")
        if criterion not in ("l1", "mse"):
            raise ValueError(f"fastgan.perceptual.VGGPerceptualLoss: criterion must be 'l1' or "
                             f"'mse', got {criterion!r}")
        self.layers, self.layer_weights = tuple(layers), tuple(float(w) for w in weights)
        self.criterion, self.variant = criterion, variant
        self._indices = tuple(VGG19_LAYERS[n] for n in self.layers)
        self.features = vgg19_features(max(self._indices) + 1)
        if weights_path is None:
            warnings.warn("fastgan.perceptual.VGGPerceptualLoss: weights_path=None, VGG19 has "
                          "random weights, so this loss is not a perceptual loss", stacklevel=2)
        else:
            self.load_vgg_weights(weights_path)
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1),
                             persistent=False)
        self.features.requires_grad_(False)
        self.train(False)

    def load_vgg_weights(self, path: str | os.PathLike) -> None:
        """Load ``features.N.*`` tensors from a torchvision-format VGG19 state_dict file.

        Keys past the layers this loss uses and ``classifier.*`` are ignored; a missing key, any
        other key, or a shape mismatch raises.
        """
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        own = self.features.state_dict()
        kept, unexpected = {}, []
        for key, value in state.items():
            if key.startswith("classifier."):
                continue
            if not key.startswith("features.") or key.count(".") != 2:
                unexpected.append(key)
                continue
            sub = key[len("features."):]
            if sub in own:
                kept[sub] = value
            elif int(sub.split(".")[0]) < len(self.features) or sub.split(".")[1] not in (
                    "weight", "bias"):
                unexpected.append(key)
        if unexpected:
            raise ValueError(f"fastgan.perceptual.VGGPerceptualLoss: {path} is not a "
                             f"torchvision-format VGG19 state_dict; unexpected keys {unexpected}")
        self.features.load_state_dict(kept, strict=True)

    def train(self, mode: bool = True) -> VGGPerceptualLoss:
        # The extractor is a fixed function: keep it (and so the module) in eval mode.
        return super().train(False)

    def extract(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The selected layers' features of x [N, 3, H, W] in [-1, 1], in ``self.layers`` order."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"fastgan.perceptual.VGGPerceptualLoss: input must be [N, 3, H, W], "
                             f"got shape {tuple(x.shape)}")
        h = ((x + 1) / 2 - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        wanted = set(self._indices)
        found: dict[int, torch.Tensor] = {}
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in wanted:
                found[i] = h
        return [found[i] for i in self._indices]

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = self.extract(y)
        dist = F.l1_loss if self.criterion == "l1" else F.mse_loss
        return sum(w * dist(f, t) for w, f, t in zip(self.layer_weights, self.extract(x), target))

    def extra_repr(self) -> str:
        return (f"layers={self.layers}, weights={self.layer_weights}, "
                f"criterion={self.criterion!r}, variant={self.variant!r}")
