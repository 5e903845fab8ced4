"""Synchronized statistics: two CPU processes on the gloo backend against one process that sees
the whole batch.

nn.SyncBatchNorm runs on GPUs only, and by definition it equals batch norm over the concatenated
batch of all ranks, so that is the oracle here: every rank's output, input gradient and the
running statistics must equal the single-process reference on the full batch, and the per-channel
parameter gradients summed over ranks (as DDP does) its gradients. Ranks hold different batch
sizes, one of them none.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fastgan.nn import BatchNormAct2d
from fastgan.ops import cond_batch_norm
from fastgan.ops.batch_norm import cond_batch_norm_reference

C = 6


def _full_batch(sizes):
    g = torch.Generator().manual_seed(1234)
    n = sum(sizes)
    x = torch.randn(n, C, 5, 3, generator=g, dtype=torch.float64) * 2 + 3
    gain = 1 + 0.3 * torch.randn(n, C, generator=g, dtype=torch.float64)
    bias = torch.randn(C, generator=g, dtype=torch.float64)
    dy = torch.randn(n, C, 5, 3, generator=g, dtype=torch.float64)
    return x, gain, bias, dy


def _expected(sizes):
    x, gain, bias, dy = (t.clone() for t in _full_batch(sizes))
    x.requires_grad_(True), gain.requires_grad_(True), bias.requires_grad_(True)
    rm, rv = torch.zeros(C, dtype=torch.float64), torch.ones(C, dtype=torch.float64)
    y = cond_batch_norm_reference(x, gain, bias, rm, rv, True, 0.1, 1e-5, "leaky_relu", 0.2)
    y.backward(dy)
    return y.detach(), x.grad, gain.grad, bias.grad, rm, rv


def _worker(rank, world, port, sizes, backend, dtype):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        start, n = sum(sizes[:rank]), sizes[rank]
        x, gain, bias, dy = (t[start:start + n] if t.dim() > 1 else t for t in _full_batch(sizes))
        y_full, gx_full, gg_full, gb_full, rm_full, rv_full = _expected(sizes)
        tol = dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)

        x, gain, bias, dy = (t.to(dtype) for t in (x, gain, bias, dy))
        x.requires_grad_(True), gain.requires_grad_(True), bias.requires_grad_(True)
        rm, rv = torch.zeros(C), torch.ones(C)
        y = cond_batch_norm(x, gain, bias, rm, rv, True, 0.1, 1e-5, "leaky_relu", 0.2,
                            process_group=dist.group.WORLD, backend=backend)
        y.backward(dy)
        grad_bias = bias.grad.clone()
        dist.all_reduce(grad_bias)  # what DDP does with a shared parameter's gradient
        sl = slice(start, start + n)
        torch.testing.assert_close(y.double(), y_full[sl], **tol)
        torch.testing.assert_close(x.grad.double(), gx_full[sl], **tol)
        torch.testing.assert_close(gain.grad.double(), gg_full[sl], **tol)
        torch.testing.assert_close(grad_bias.double(), gb_full, **tol)
        torch.testing.assert_close(rm.double(), rm_full, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(rv.double(), rv_full, rtol=1e-5, atol=1e-6)

        # The module form: sync=True picks up the default group.
        m = BatchNormAct2d(C, "relu", sync=True, backend=backend).to(dtype)
        xs = x.detach().requires_grad_(True)
        m(xs).sum().backward()
        bn = torch.nn.BatchNorm2d(C).double()
        full = _full_batch(sizes)[0].requires_grad_(True)
        torch.relu(bn(full)).sum().backward()
        torch.testing.assert_close(m.running_var.double(), bn.running_var, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(xs.grad.double(), full.grad[sl], **tol)
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="needs torch.distributed with gloo")
@pytest.mark.parametrize("backend,dtype", [("reference", torch.float64), ("cpu", torch.float64),
                                           ("cpu", torch.float32)])
@pytest.mark.parametrize("sizes", [(3, 5), (0, 4)], ids=["3+5", "0+4"])
def test_two_process_gloo_matches_full_batch(backend, dtype, sizes):
    if backend == "cpu":
        from tests.utils import skip_unless_runnable
        skip_unless_runnable("cpu", "cpu", dtype)
    mp.spawn(_worker, args=(2, _free_port(), sizes, backend, dtype), nprocs=2, join=True)
