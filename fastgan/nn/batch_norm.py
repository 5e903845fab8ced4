"""Batch-norm modules on the fused cond_batch_norm op.

- ``BatchNormAct2d``: nn.BatchNorm2d followed by ReLU / LeakyReLU, in one fused op; an
  nn.BatchNorm2d subclass, so its state_dict, buffers and semantics are nn.BatchNorm2d's.
- ``ConditionalBatchNorm2d``: BigGAN's class-conditional batch norm (gain = 1 + Linear(cond),
  bias = Linear(cond)) or per-class embedded gains and biases, + activation.

Both synchronize their batch statistics across processes, like nn.SyncBatchNorm, with
``sync=True`` (the default group, when torch.distributed is initialised with more than one rank)
or an explicit ``process_group``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..ops import cond_batch_norm
from .spectral_norm import spectral_norm as _spectral_norm

__all__ = ["BatchNormAct2d", "ConditionalBatchNorm2d"]

_ACTIVATIONS = {nn.ReLU: "relu", nn.LeakyReLU: "leaky_relu", nn.Identity: "none"}


def _sync_group(sync: bool, process_group):
    """The process group to synchronize over, or None for per-process statistics."""
    if process_group is not None:
        return process_group
    if not sync:
        return None
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.group.WORLD
    return None


def _check_activation(activation: str | None) -> str:
    activation = "none" if activation is None else activation
    if activation not in ("none", "relu", "leaky_relu"):
        raise ValueError(f"fastgan.nn: activation must be None, 'relu' or 'leaky_relu', got "
                         f"{activation!r}")
    return activation


class _RunningStats:
    """nn.BatchNorm's running-statistics bookkeeping, shared by both modules."""

    momentum: float | None
    track_running_stats: bool
    training: bool
    running_mean: torch.Tensor | None
    running_var: torch.Tensor | None
    num_batches_tracked: torch.Tensor | None

    def _norm_args(self) -> dict:
        """The statistics arguments of cond_batch_norm for this call, as nn.BatchNorm decides
        them: batch statistics in training (or without running stats), the update factor
        (1 / num_batches_tracked for momentum=None)."""
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        use_batch = self.training or self.running_mean is None
        keep = not self.training or self.track_running_stats
        return dict(running_mean=self.running_mean if keep else None,
                    running_var=self.running_var if keep else None,
                    training=use_batch, momentum=factor)


class BatchNormAct2d(_RunningStats, nn.BatchNorm2d):
    """Drop-in for ``nn.BatchNorm2d(num_features)`` followed by ReLU / LeakyReLU, fused.

    Input and output [N, C, H, W]. Every nn.BatchNorm2d argument means what it means there
    (affine=False, track_running_stats=False, momentum=None included) and the state_dict is
    nn.BatchNorm2d's. ``activation``: None, "relu" or "leaky_relu" (``negative_slope``).
    ``sync`` / ``process_group``: synchronized statistics, as nn.SyncBatchNorm.
    """

    def __init__(self, num_features: int, activation: str | None = "relu",
                 negative_slope: float = 0.2, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, sync: bool = False,
                 process_group=None, backend: str | None = None, device=None, dtype=None) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum, affine=affine,
                         track_running_stats=track_running_stats, device=device, dtype=dtype)
        self.activation = _check_activation(activation)
        self.negative_slope = float(negative_slope)
        self.sync, self.process_group, self.backend = sync, process_group, backend

    @classmethod
    def from_module(cls, bn: nn.BatchNorm2d | nn.SyncBatchNorm, act: nn.Module | None = None,
                    backend: str | None = None) -> BatchNormAct2d:
        """The fused equivalent of ``bn`` followed by ``act`` (nn.ReLU, nn.LeakyReLU,
        nn.Identity or None), holding bn's very parameter and buffer tensors."""
        if not isinstance(bn, (nn.BatchNorm2d, nn.SyncBatchNorm)):
            raise TypeError(f"fastgan.nn.BatchNormAct2d.from_module: bn must be an nn.BatchNorm2d "
                            f"or nn.SyncBatchNorm, got {type(bn).__name__}")
        name = "none" if act is None else _ACTIVATIONS.get(type(act))
        if name is None:
            raise TypeError(f"fastgan.nn.BatchNormAct2d.from_module: cannot fuse activation "
                            f"{type(act).__name__}; supported: ReLU, LeakyReLU, Identity")
        slope = float(act.negative_slope) if name == "leaky_relu" else 0.2
        sync = isinstance(bn, nn.SyncBatchNorm)
        new = cls(bn.num_features, name, slope, bn.eps, bn.momentum, bn.affine,
                  bn.track_running_stats, sync=sync,
                  process_group=getattr(bn, "process_group", None), backend=backend,
                  device="meta")
        for key in ("weight", "bias"):
            setattr(new, key, getattr(bn, key))
        for key in ("running_mean", "running_var", "num_batches_tracked"):
            new._buffers[key] = bn._buffers[key]
        new.train(bn.training)
        return new

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        weight, bias = (None if t is None else t.to(input.dtype) for t in (self.weight, self.bias))
        args = self._norm_args()
        return cond_batch_norm(input, weight, bias, **args, eps=self.eps,
                               activation=self.activation, negative_slope=self.negative_slope,
                               process_group=_sync_group(self.sync, self.process_group)
                               if args["training"] else None, backend=self.backend)

    def extra_repr(self) -> str:
        act = self.activation
        if act == "leaky_relu":
            act = f"leaky_relu({self.negative_slope:g})"
        return f"{super().extra_repr()}, activation={act}"


class ConditionalBatchNorm2d(_RunningStats, nn.Module):
    """Class-conditional batch norm + activation, fused (BigGAN's ``ccbn``, SNGAN's categorical BN).

    ``forward(x, cond)``, x [N, C, H, W]:
    - ``cond_dim=D``: cond is [N, D] (BigGAN: the shared class embedding concatenated with a z
      chunk); gain = 1 + gain(cond), bias = bias(cond), with ``gain``/``bias`` bias-free
      nn.Linear(D, C) layers (spectrally normalised with ``spectral_norm=True``).
    - ``num_classes=K``: cond is [N] class indices; gain = gain(cond), bias = bias(cond) with
      nn.Embedding(K, C) tables initialised to ones and zeros.
    Batch statistics and running stats (running_mean, running_var, num_batches_tracked) as
    nn.BatchNorm2d without affine; ``activation``: None, "relu" or "leaky_relu".
    """

    def __init__(self, num_features: int, cond_dim: int | None = None,
                 num_classes: int | None = None, activation: str | None = None,
                 negative_slope: float = 0.2, eps: float = 1e-5, momentum: float | None = 0.1,
                 track_running_stats: bool = True, spectral_norm: bool = False,
                 sync: bool = False, process_group=None, backend: str | None = None,
                 device=None, dtype=None) -> None:
        super().__init__()
        if (cond_dim is None) == (num_classes is None):
            raise ValueError("fastgan.nn.ConditionalBatchNorm2d: give exactly one of cond_dim "
                             "(a linear gain/bias of a conditioning vector) and num_classes "
                             "(per-class embedded gain/bias)")
        factory = dict(device=device, dtype=dtype)
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.track_running_stats = track_running_stats
        self.activation = _check_activation(activation)
        self.negative_slope = float(negative_slope)
        self.sync, self.process_group, self.backend = sync, process_group, backend
        self.conditional_linear = cond_dim is not None
        if cond_dim is not None:
            self.gain = nn.Linear(cond_dim, num_features, bias=False, **factory)
            self.bias = nn.Linear(cond_dim, num_features, bias=False, **factory)
            if spectral_norm:  # fastgan's, so that the power iteration runs fused too
                self.gain = _spectral_norm(self.gain, backend=backend)
                self.bias = _spectral_norm(self.bias, backend=backend)
        else:
            if spectral_norm:
                raise ValueError("fastgan.nn.ConditionalBatchNorm2d: spectral_norm applies to the "
                                 "linear (cond_dim) form only")
            self.gain = nn.Embedding(num_classes, num_features, **factory)
            self.bias = nn.Embedding(num_classes, num_features, **factory)
            nn.init.ones_(self.gain.weight)
            nn.init.zeros_(self.bias.weight)
        if track_running_stats:
            stats = dict(device=device, dtype=torch.float32 if dtype is None else dtype)
            self.register_buffer("running_mean", torch.zeros(num_features, **stats))
            self.register_buffer("running_var", torch.ones(num_features, **stats))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long,
                                                                     device=device))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"fastgan.nn.ConditionalBatchNorm2d: x must be 4-D [N, C, H, W], got "
                             f"shape {tuple(x.shape)}")
        gain, bias = self.gain(cond), self.bias(cond)
        if self.conditional_linear:
            gain = 1 + gain
        gain, bias = gain.to(x.dtype), bias.to(x.dtype)
        args = self._norm_args()
        return cond_batch_norm(x, gain, bias, **args, eps=self.eps, activation=self.activation,
                               negative_slope=self.negative_slope,
                               process_group=_sync_group(self.sync, self.process_group)
                               if args["training"] else None, backend=self.backend)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"activation={self.activation}, track_running_stats={self.track_running_stats}")
