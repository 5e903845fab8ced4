"""Training utilities: truncated noise, BigGAN's orthogonal regularisation, generator EMA, and a
receptive-field calculator for convolutional discriminators."""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["EMA", "apply_orthogonal_regularization_", "orthogonal_regularization",
           "receptive_field", "truncated_noise"]


def truncated_noise(n: int, dim: int, threshold: float | None = None,
                    generator: torch.Generator | None = None,
                    device: torch.device | str | None = None,
                    dtype: torch.dtype | None = None) -> torch.Tensor:
    """z [n, dim] ~ N(0, 1) truncated to |z| <= threshold (BigGAN's truncation trick).

    Entries outside the threshold are redrawn until none is left (rejection sampling, so each
    entry is exactly the truncated normal). ``threshold=None``: plain N(0, 1).
    """
    if threshold is not None and threshold <= 0:
        raise ValueError(f"fastgan.utils.truncated_noise: threshold must be > 0 (or None), got "
                         f"{threshold}")
    z = torch.randn(n, dim, generator=generator, device=device, dtype=dtype)
    if threshold is None:
        return z
    outside = z.abs() > threshold
    while outside.any():
        k = int(outside.sum())
        z[outside] = torch.randn(k, generator=generator, device=z.device, dtype=z.dtype)
        outside = z.abs() > threshold
    return z


def _ortho_params(model: nn.Module, blacklist: Iterable) -> list[torch.Tensor]:
    banned = list(blacklist)
    banned_ids = {id(p) for p in banned if isinstance(p, torch.Tensor)}
    banned_names = {p for p in banned if isinstance(p, str)}
    return [p for name, p in model.named_parameters()
            if p.dim() >= 2 and p.requires_grad and id(p) not in banned_ids
            and name not in banned_names]


def _off_diagonal_gram(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w = w.reshape(w.shape[0], -1)
    gram = w @ w.t()
    return w, gram * (1 - torch.eye(w.shape[0], device=w.device, dtype=w.dtype))


def orthogonal_regularization(model: nn.Module, strength: float = 1e-4,
                              blacklist: Iterable = ()) -> torch.Tensor:
    """BigGAN's orthogonal regularisation (Brock et al. 2019, eq. 3) as a loss term.

    strength / 2 * sum_W ||W W^T ⊙ (1 - I)||_F^2 over every trainable parameter W with ndim >= 2
    (flattened to [out, -1]), except those in ``blacklist`` (parameters or their names). Its
    gradient, 2 * strength * ((W W^T) ⊙ (1 - I)) W, is exactly what BigGAN-PyTorch's
    ``utils.ortho`` adds to ``W.grad``; add the value to G's loss before backward, or call
    :func:`apply_orthogonal_regularization_` after backward as BigGAN does. Returns a scalar.
    """
    terms = [_off_diagonal_gram(p)[1].pow(2).sum() for p in _ortho_params(model, blacklist)]
    if not terms:
        return torch.zeros(())
    return strength / 2 * torch.stack(terms).sum()


@torch.no_grad()
def apply_orthogonal_regularization_(model: nn.Module, strength: float = 1e-4,
                                     blacklist: Iterable = ()) -> None:
    """BigGAN's in-place form: ``W.grad += 2 * strength * ((W W^T) ⊙ (1 - I)) W`` for the same
    parameters as :func:`orthogonal_regularization`; run after backward, before the step."""
    for p in _ortho_params(model, blacklist):
        w, off = _off_diagonal_gram(p)
        grad = (2 * strength * (off @ w)).view_as(p)
        if p.grad is None:
            p.grad = grad
        else:
            p.grad.add_(grad)


class EMA:
    """Exponential moving average of a model's weights (BigGAN's G_ema, ProGAN/StyleGAN's Gs).

    ``ema = EMA(G, decay=0.999, start_step=0)`` keeps a frozen deep copy, ``ema.model``, for
    sampling. Call ``ema.update()`` after every optimiser step: before ``start_step`` updates the
    copy is set equal to the model (BigGAN's ``ema_start``), from then on
    p_ema = decay * p_ema + (1 - decay) * p. Buffers (BN running stats, SN u/v) are copied, not
    averaged (BigGAN averages its whole state_dict, integer counters included).
    ``state_dict()`` / ``load_state_dict()`` save the copy and the step count.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, start_step: int = 0) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"fastgan.utils.EMA: decay must be in [0, 1], got {decay}")
        self.source, self.decay, self.start_step = model, float(decay), int(start_step)
        self.model = copy.deepcopy(model)
        self.model.requires_grad_(False)
        self.step = 0

    @torch.no_grad()
    def update(self) -> None:
        decay = self.decay if self.step >= self.start_step else 0.0
        src = dict(self.source.named_parameters())
        for name, p_ema in self.model.named_parameters():
            p_ema.lerp_(src[name].detach().to(p_ema.dtype), 1.0 - decay)
        src_buffers = dict(self.source.named_buffers())
        for name, b_ema in self.model.named_buffers():
            b_ema.copy_(src_buffers[name])
        self.step += 1

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "step": self.step, "decay": self.decay,
                "start_step": self.start_step}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.step = int(state["step"])
        self.decay = float(state.get("decay", self.decay))
        self.start_step = int(state.get("start_step", self.start_step))


def _square(value, what: str, module: nn.Module) -> int:
    values = value if isinstance(value, tuple) else (value,)
    if len(set(values)) != 1:
        raise ValueError(f"fastgan.utils.receptive_field: non-square {what} {value} in {module}; "
                         f"only square kernels are supported")
    return int(values[0])


def receptive_field(layers: nn.Module | Iterable[nn.Module]) -> int:
    """Receptive field (pixels, per side) of one output unit of a chain of conv / pool layers.

    Walks ``module.modules()`` (or the given layers) in order, taking the kernel, stride and
    dilation of each Conv (1/2/3-d) and Max/Avg pool, and applies rf += (k - 1) * d * jump,
    jump *= stride. Other layers (activations, norms) do not change it. The chain is assumed
    sequential (no skip connections); transposed convolutions are refused. A pix2pix PatchGAN
    with 3 layers gives 70.
    """
    modules = layers.modules() if isinstance(layers, nn.Module) else \
        (m for layer in layers for m in layer.modules())
    rf, jump = 1, 1
    for m in modules:
        if isinstance(m, nn.modules.conv._ConvTransposeNd):
            raise ValueError(f"fastgan.utils.receptive_field: transposed convolution {m} "
                             f"is not supported")
        if isinstance(m, nn.modules.conv._ConvNd):
            k, s, d = m.kernel_size, m.stride, m.dilation
        elif isinstance(m, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)):
            k, s, d = m.kernel_size, m.stride, m.dilation
        elif isinstance(m, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)):
            k, s, d = m.kernel_size, m.stride, 1
        else:
            continue
        k, s, d = _square(k, "kernel", m), _square(s, "stride", m), _square(d, "dilation", m)
        rf += (k - 1) * d * jump
        jump *= s
    return rf
