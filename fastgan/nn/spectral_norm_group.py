"""SpectralNormGroup: one grouped power iteration for every spectral-norm layer of a model.

PyTorch runs each layer's power iteration on its own (about ten small kernels per layer, per
forward). A group runs them all at once before the model's forward — on the GPU backends two
launches per iteration for the lot — and each layer then uses the sigma computed for it. The
numbers are those of per-layer spectral norm on the same sequence of forward calls:
- a layer called twice in one forward (shared weights) uses the grouped sigma first, then runs its
  own iteration, as it would alone;
- a layer the forward does not call gets its u and v back as they were (torch would not have
  updated them);
- training layers iterate, layers in eval mode only compute sigma, each by its own ``training``.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn

from ..ops.spectral_norm import power_iteration_sigmas
from .spectral_norm import SpectralNormState

__all__ = ["SpectralNormGroup"]


def _states(module: nn.Module) -> list[SpectralNormState]:
    states = [module._sn] if isinstance(getattr(module, "_sn", None), SpectralNormState) else []
    states += [h for h in module._forward_pre_hooks.values() if isinstance(h, SpectralNormState)]
    # BigGAN's several-sv variant and the parametrizations' iteration order run on their own.
    return [s for s in states if s.num_svs == 1 and s.order == "vu"]


class SpectralNormGroup:
    """Runs the power iteration of every fastgan spectral-norm layer in ``model`` as one grouped
    op per forward of ``model`` (layers of one device, dtype, n_power_iterations, eps and backend
    share a group op). Installs two hooks on ``model``; ``remove()`` takes them off.

    Layers are found when the group is made: apply spectral norm first.
    """

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"fastgan.nn.SpectralNormGroup: model must be an nn.Module, got "
                            f"{type(model).__name__}")
        self.layers: list[tuple[nn.Module, SpectralNormState]] = [
            (m, s) for m in model.modules() for s in _states(m)]
        if not self.layers:
            raise ValueError("fastgan.nn.SpectralNormGroup: the model has no fastgan spectral-norm "
                             "layers (use fastgan.nn.spectral_norm or the SN* classes)")
        for m, s in self.layers:
            if getattr(s, "group", None) is not None:
                raise RuntimeError(f"fastgan.nn.SpectralNormGroup: {type(m).__name__} already "
                                   "belongs to another SpectralNormGroup")
        for _, s in self.layers:
            s.group = self
        self._snapshots: list[tuple[list[int], torch.Tensor]] = []
        self._handles = [model.register_forward_pre_hook(self._before),
                         model.register_forward_hook(self._after, always_call=True)]

    def __len__(self) -> int:
        return len(self.layers)

    def remove(self) -> None:
        """Takes the hooks off the model; its layers go back to their own power iterations."""
        for handle in self._handles:
            handle.remove()
        for _, s in self.layers:
            s.group = None
            s.pending = None

    def _buckets(self) -> dict[tuple, list[int]]:
        buckets: dict[tuple, list[int]] = defaultdict(list)
        for i, (m, s) in enumerate(self.layers):
            if not m.training and s.eval_iteration == "peek":
                continue  # iterates on copies of its vectors: left to the layer itself
            w = s.weight_orig(m)
            n = s.n_power_iterations if m.training or s.eval_iteration == "update" else 0
            buckets[(w.device, w.dtype, n, s.eps, s.backend)].append(i)
        return buckets

    def _before(self, model: nn.Module, inputs) -> None:
        for (_, _, n, eps, backend), idx in self._buckets().items():
            layers = [self.layers[i] for i in idx]
            mats = [s.matrix(s.weight_orig(m)) for m, s in layers]
            us, vs = zip(*(s.vectors(m) for m, s in layers))
            if n > 0:  # to undo the update of a layer this forward turns out not to call
                with torch.no_grad():
                    self._snapshots.append((idx, torch.cat([*us, *vs])))
            sigmas = power_iteration_sigmas(mats, list(us), list(vs), n, eps, backend=backend)
            for j, (_, s) in enumerate(layers):
                s.pending = sigmas[j]

    def _after(self, model: nn.Module, inputs, output) -> None:
        for idx, snapshot in self._snapshots:
            layers = [self.layers[i] for i in idx]
            us, vs = zip(*(s.vectors(m) for m, s in layers))
            saved = snapshot.split([t.numel() for t in (*us, *vs)])
            with torch.no_grad():
                for j, (_, s) in enumerate(layers):
                    if s.pending is not None:  # not called: undo its update
                        us[j].copy_(saved[j])
                        vs[j].copy_(saved[len(layers) + j])
        self._snapshots = []
        for _, s in self.layers:
            s.pending = None
