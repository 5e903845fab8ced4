"""What every zoo test checks: shapes, backends against the reference, an optimiser step."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import nn

from fastgan import backend as _backend
from fastgan.models import set_backend

# The fused backends a zoo test compares on CPU. The Triton interpreter is too slow for whole
# models; the triton kernels are compared op by op in tests/ops.
CPU_FUSED = ("cpu",)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _flat(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    return [t for o in out for t in _flat(o)]


def _run(model: nn.Module, inputs: Sequence, weights: Sequence[torch.Tensor]):
    model.zero_grad(set_to_none=True)
    outs = _flat(model(*inputs))
    loss = sum((o.float() * w).sum() for o, w in zip(outs, weights))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return [o.detach() for o in outs], grads


def assert_backends_match(model: nn.Module, inputs: Sequence, backends: Sequence[str] = CPU_FUSED,
                          rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """The model on each fused backend equals its reference-backend self on the same weights,
    state and inputs: every output, every parameter gradient, the updated buffers (running stats,
    spectral-norm u, v)."""
    inputs = list(inputs)
    ran = 0
    for name in backends:
        ok, _ = _backend.runnable(name, torch.device("cpu"), torch.float32)
        if not ok:
            continue
        ref = set_backend(copy.deepcopy(model), "reference")
        fused = set_backend(copy.deepcopy(model), name)
        outs = _flat(ref(*inputs))
        weights = [torch.randn_like(o, dtype=torch.float32) for o in outs]
        ref = set_backend(copy.deepcopy(model), "reference")
        ref_out, ref_grads = _run(ref, inputs, weights)
        out, grads = _run(fused, inputs, weights)
        for i, (a, b) in enumerate(zip(out, ref_out)):
            torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m: f"{name} output {i}: {m}")
        assert grads.keys() == ref_grads.keys(), f"{name}: gradients of different parameters"
        for k in ref_grads:
            # Two fp32 computations differ by rounding relative to the tensor's scale, not to each
            # element: a small element of a gradient whose largest is ~80 (SAGAN-128 G's last
            # bias) carries ~1e-5 of it on either side (both within 1e-6 of float64 there).
            scaled = max(atol, rtol * ref_grads[k].abs().max().item())
            torch.testing.assert_close(grads[k], ref_grads[k], rtol=rtol, atol=scaled,
                                       msg=lambda m: f"{name} grad {k}: {m}")
        ref_buffers, fused_buffers = dict(ref.named_buffers()), dict(fused.named_buffers())
        for k, b in ref_buffers.items():
            if b.is_floating_point():
                torch.testing.assert_close(fused_buffers[k], b, rtol=rtol, atol=atol,
                                           msg=lambda m: f"{name} buffer {k}: {m}")
        ran += 1
    assert ran or not _backend.extension(), "no fused backend ran although fastgan._C is built"


def optimiser_step(model: nn.Module, loss_fn: Callable[[nn.Module], torch.Tensor],
                   lr: float = 1e-3) -> torch.Tensor:
    """One Adam step on ``loss_fn(model)``; asserts the loss is finite, every trainable parameter
    got a finite gradient and the parameters moved. Returns the loss."""
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.0, 0.999))
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(model)
    assert torch.isfinite(loss), f"loss {loss}"
    loss.backward()
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"no gradient for {n}"
            assert torch.isfinite(p.grad).all(), f"non-finite gradient for {n}"
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters())), "nothing moved"
    return loss.detach()
