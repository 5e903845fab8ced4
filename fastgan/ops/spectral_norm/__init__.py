"""Spectral-norm power iteration, for one weight or a whole model's worth in one go.

``spectral_norm_power_iteration(W, u, v)`` updates u and v in place exactly as
torch.nn.utils.spectral_norm does (v = normalize(W^T u), u = normalize(W v), repeated) and returns
sigma = u . W v, differentiable w.r.t. W with the gradient PyTorch's spectral norm has (u v^T, u and
v held at their new values). The iteration runs in float32 (float64 for float64 weights) whatever
the weight dtype, so it works under autocast. ``spectral_norm_power_iteration_grouped`` does the
same for many weights of different shapes in one op: on the GPU backends two kernel launches per
iteration for all of them. README.md beside this file is the contract of the backends.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ... import backend as _backend
from .._common import CPU_DTYPES, GPU_DTYPES, check_float, check_int, check_tensor
from . import native
from .reference import acc_dtype, multi_sv_power_iteration_reference, sn_power_iteration_reference

__all__ = [
    "multi_sv_power_iteration_reference",
    "power_iteration_sigmas",
    "sn_power_iteration_reference",
    "spectral_norm_power_iteration",
    "spectral_norm_power_iteration_grouped",
]

_OP = "spectral_norm_power_iteration"
DTYPES = {"cpu": CPU_DTYPES, "cuda": GPU_DTYPES, "triton": GPU_DTYPES}

_KERNELS: dict[str, object] = {"reference": sn_power_iteration_reference}
if native.AVAILABLE:
    _KERNELS["cpu"] = _KERNELS["cuda"] = native.op
if _backend.triton_importable():
    from . import triton as _triton

    _KERNELS["triton"] = _triton.sn_power_iteration_triton


class _Sigma(torch.autograd.Function):
    """Attaches d sigma / d W = u v^T to a sigma computed without a graph. u and v are the
    post-iteration vectors, frozen (copied) so that a later in-place update cannot change this
    gradient. One node per layer, so that a layer whose sigma goes unused gets no gradient (None,
    as with torch), not a zero one. The backward is plain differentiable torch: double backward
    works."""

    @staticmethod
    def forward(ctx, sigma, u, v, weight):
        ctx.save_for_backward(u, v)
        ctx.dtype = weight.dtype
        return sigma

    @staticmethod
    def backward(ctx, grad_sigma):
        u, v = ctx.saved_tensors
        # The scale goes on the short vector: one weight-sized write (in fp32, then rounded once
        # to a reduced-precision weight's dtype).
        return None, None, None, torch.outer(grad_sigma * u, v).to(ctx.dtype)


def _check_args(weights, us, vs, n_power_iterations, eps) -> None:
    op = _OP
    if isinstance(weights, torch.Tensor) or not isinstance(weights, Sequence) or not weights:
        raise TypeError(f"fastgan.{op}: weights must be a non-empty list of 2-D tensors")
    for name, seq in (("us", us), ("vs", vs)):
        if isinstance(seq, torch.Tensor) or not isinstance(seq, Sequence) or len(seq) != len(weights):
            raise TypeError(f"fastgan.{op}: {name} must be a list of {len(weights)} tensors, one per "
                            "weight")
    first = check_tensor("weights[0]", weights[0], op=op)
    for l, (w, u, v) in enumerate(zip(weights, us, vs)):
        check_tensor(f"weights[{l}]", w, op=op)
        if w.dim() != 2:
            raise ValueError(f"fastgan.{op}: weights[{l}] must be a 2-D matrix [H, W] (reshape the "
                             f"weight first), got shape {tuple(w.shape)}")
        if w.numel() == 0:
            raise ValueError(f"fastgan.{op}: weights[{l}] has no elements (shape "
                             f"{tuple(w.shape)}); spectral norm needs a non-empty matrix")
        check_float(f"weights[{l}]", w, op=op)
        if w.dtype != first.dtype or w.device != first.device:
            raise ValueError(f"fastgan.{op}: weights[{l}] is {w.dtype} on {w.device} but "
                             f"weights[0] is {first.dtype} on {first.device}; a group holds one "
                             "dtype and device")
        for name, t, size in ((f"us[{l}]", u, w.shape[0]), (f"vs[{l}]", v, w.shape[1])):
            check_tensor(name, t, op=op)
            if t.shape != (size,):
                raise ValueError(f"fastgan.{op}: {name} must have shape ({size},) to match "
                                 f"weights[{l}] of shape {tuple(w.shape)}, got {tuple(t.shape)}")
            check_float(name, t, op=op)
            if t.device != w.device:
                raise ValueError(f"fastgan.{op}: {name} is on {t.device} but weights[{l}] is on "
                                 f"{w.device}")
    check_int("n_power_iterations", n_power_iterations, op=op, minimum=0)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"fastgan.{op}: eps must be a float, got {type(eps).__name__}")
    if eps <= 0:
        raise ValueError(f"fastgan.{op}: eps must be > 0, got {eps}")


def _in_place(t: torch.Tensor, acc: torch.dtype) -> bool:
    """Whether the kernels can update t itself (else they get an acc-dtype contiguous copy)."""
    return t.dtype == acc and t.is_contiguous()


def power_iteration_sigmas(
    weights: Sequence[torch.Tensor], us: Sequence[torch.Tensor], vs: Sequence[torch.Tensor],
    n_power_iterations: int = 1, eps: float = 1e-12, backend: str | None = None,
) -> list[torch.Tensor]:
    """spectral_norm_power_iteration_grouped, returning one 0-dim sigma per weight, each
    differentiable w.r.t. its own weight only (SpectralNormGroup hands them to the layers)."""
    _check_args(weights, us, vs, n_power_iterations, eps)
    name = _backend.resolve(_OP, weights[0], backend, DTYPES)
    acc = acc_dtype(weights[0].dtype)
    with torch.no_grad():
        work_us = [u.detach() if _in_place(u, acc) else u.to(acc).contiguous() for u in us]
        work_vs = [v.detach() if _in_place(v, acc) else v.to(acc).contiguous() for v in vs]
        sigmas = _KERNELS[name]([w.detach() for w in weights], work_us, work_vs,
                                int(n_power_iterations), float(eps)).unbind(0)
        for t, work in (*zip(us, work_us), *zip(vs, work_vs)):
            if not _in_place(t, acc):
                t.copy_(work)
    if not (torch.is_grad_enabled() and any(w.requires_grad for w in weights)):
        return list(sigmas)
    # One copy of every vector (torch.cat is one kernel for the lot), then views of it.
    frozen = torch.cat([*work_us, *work_vs]).split([*(u.numel() for u in us),
                                                    *(v.numel() for v in vs)])
    L = len(weights)
    return [_Sigma.apply(sigmas[l], frozen[l], frozen[L + l], w) if w.requires_grad else sigmas[l]
            for l, w in enumerate(weights)]


def spectral_norm_power_iteration_grouped(
    weights: Sequence[torch.Tensor], us: Sequence[torch.Tensor], vs: Sequence[torch.Tensor],
    n_power_iterations: int = 1, eps: float = 1e-12, backend: str | None = None,
) -> torch.Tensor:
    """The power iteration of spectral_norm_power_iteration for many weights in one op.

    Args:
        weights: L matrices W_l [H_l, W_l] of one dtype and device (float32/float16/bfloat16;
            float64 on the reference and cpu backends), any strides.
        us, vs: the L vectors u_l [H_l] and v_l [W_l], updated in place.
        n_power_iterations: iterations per call (>= 0; 0 only computes sigma, as in eval).
        eps: the norm floor of each normalisation.
        backend: "reference", "triton", "cuda", "cpu", "auto" or None (see fastgan.use_backend).

    Returns:
        sigmas [L], float32 (float64 for float64 weights); sigma_l differentiable w.r.t. W_l.
    """
    return torch.stack(power_iteration_sigmas(weights, us, vs, n_power_iterations, eps, backend))


def spectral_norm_power_iteration(
    weight_mat: torch.Tensor, u: torch.Tensor, v: torch.Tensor, n_power_iterations: int = 1,
    eps: float = 1e-12, backend: str | None = None,
) -> torch.Tensor:
    """Updates u and v in place as torch.nn.utils.spectral_norm does and returns sigma.

    ``n_power_iterations`` times: v = normalize(W^T u), u = normalize(W v), normalize(t) =
    t / max(||t||, eps); then sigma = u . (W v), computed in float32 (float64 for float64 W).

    Args:
        weight_mat: W [H, W] (a weight reshaped to a matrix, e.g. ``conv.weight.flatten(1)``),
            float32/float16/bfloat16 (float64 on reference and cpu), any strides.
        u: [H], v: [W], any float dtype (kept), updated in place.
        n_power_iterations: >= 0; 0 computes sigma from the stored u and v (eval).
        eps: the norm floor.
        backend: "reference", "triton", "cuda", "cpu", "auto" or None.

    Returns:
        sigma, a 0-dim float32 (float64) tensor; its gradient w.r.t. W is u v^T.
    """
    return power_iteration_sigmas([weight_mat], [u], [v], n_power_iterations, eps, backend)[0]
