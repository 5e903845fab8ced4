"""Spectral-norm power iteration in plain PyTorch: the oracle of every backend, and the fallback.

``sn_power_iteration_reference`` is the op of README.md beside this file, written as
torch.nn.utils.spectral_norm writes its iteration (F.normalize, torch.mv), in the accumulation
dtype (float64 for float64 weights, else float32) whatever the weight dtype.
``multi_sv_power_iteration_reference`` is BigGAN-PyTorch's variant that tracks several singular
values with Gram-Schmidt.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of u, v, sigma and every reduction for weights of ``dtype``."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.no_grad()
def sn_power_iteration_reference(weights: Sequence[torch.Tensor], us: Sequence[torch.Tensor],
                                 vs: Sequence[torch.Tensor], n_power_iterations: int,
                                 eps: float) -> torch.Tensor:
    """Updates each us[l], vs[l] in place and returns sigmas [L] (see README.md)."""
    sigmas = []
    for w, u, v in zip(weights, us, vs):
        w = w.to(u.dtype)
        for _ in range(n_power_iterations):
            v.copy_(F.normalize(torch.mv(w.t(), u), dim=0, eps=eps))
            u.copy_(F.normalize(torch.mv(w, v), dim=0, eps=eps))
        sigmas.append(torch.dot(u, torch.mv(w, v)))
    if not sigmas:
        return torch.empty(0)
    return torch.stack(sigmas)


def _gram_schmidt(x: torch.Tensor, ys: Sequence[torch.Tensor]) -> torch.Tensor:
    """x minus its projections (y . x) / (y . y) * y on each y."""
    for y in ys:
        x = x - torch.dot(y, x) / torch.dot(y, y) * y
    return x


@torch.no_grad()
def multi_sv_power_iteration_reference(weight_mat: torch.Tensor, us: torch.Tensor,
                                       n_power_iterations: int, eps: float,
                                       update: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """BigGAN-PyTorch's power iteration over ``k = us.shape[0]`` singular vectors.

    Each iteration starts from the stored us [k, H] and, for i = 0 .. k-1, computes
    v_i = normalize(gs(W^T u_i; v_0..v_{i-1})), u_i = normalize(gs(W v_i; u_0..u_{i-1})) (gs: the
    Gram-Schmidt step against the vectors found before it) and sigma_i = u_i . (W v_i); it stores
    the new u_i only when ``update`` (training), so without it every iteration repeats the first.

    Returns (sigmas [k], vs [k, W]), in us's dtype.
    """
    w = weight_mat.to(us.dtype)
    sigmas: list[torch.Tensor] = []
    vs: list[torch.Tensor] = []
    for _ in range(max(n_power_iterations, 1)):
        new_us: list[torch.Tensor] = []
        vs, sigmas = [], []
        for u in us.unbind(0):
            v = F.normalize(_gram_schmidt(torch.mv(w.t(), u), vs), dim=0, eps=eps)
            vs.append(v)
            wv = torch.mv(w, v)
            u = F.normalize(_gram_schmidt(wv, new_us), dim=0, eps=eps)
            new_us.append(u)
            sigmas.append(torch.dot(u, wv))
        if update:
            us.copy_(torch.stack(new_us))
    return torch.stack(sigmas), torch.stack(vs)
