"""SpectralNormGroup: one grouped power iteration per model forward, equal to per-layer spectral
norm (torch's) on the same sequence of calls."""

from __future__ import annotations

import copy
import importlib

import pytest
import torch
from torch import nn

import fastgan.nn.spectral_norm_group as group_module
from fastgan.nn import SNConv2d, SNLinear, SpectralNormGroup, spectral_norm
from fastgan.ops.spectral_norm import DTYPES
from tests.utils import skip_unless_runnable


class Discriminator(nn.Module):
    """A small SNGAN-style D: convs, a linear head, a class embedding (projection), and a layer
    that only some calls use."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.LeakyReLU(0.2),
                                  nn.Conv2d(8, 16, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
                                  nn.ConvTranspose2d(16, 8, 1), nn.LeakyReLU(0.2))
        self.head = nn.Linear(8 * 4 * 4, 1)
        self.embed = nn.Embedding(5, 8 * 4 * 4)
        self.aux = nn.Linear(8 * 4 * 4, 3)

    def forward(self, x, y, aux=False):
        h = self.body(x).flatten(1)
        out = self.head(h) + (self.embed(y) * h).sum(1, keepdim=True)
        return out + self.aux(h).sum(1, keepdim=True) if aux else out


def _sn_all(model, fn, **kwargs):
    for m in list(model.modules()):
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)):
            fn(m, **kwargs)
    return model


def _models(backend="reference"):
    torch.manual_seed(0)
    base = Discriminator()
    theirs, ours, grouped = (copy.deepcopy(base) for _ in range(3))
    for model, fn, kw in ((theirs, torch.nn.utils.spectral_norm, {}),
                          (ours, spectral_norm, dict(backend=backend)),
                          (grouped, spectral_norm, dict(backend=backend))):
        torch.manual_seed(1)
        _sn_all(model, fn, **kw)
    return theirs, ours, grouped


def _assert_same(a, b, tol=1e-5):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=tol, atol=tol, msg=lambda m: f"{k}: {m}")


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_group_equals_per_layer_torch(backend):
    """Training steps with two D calls each (real, fake), a layer used only by some calls, then
    eval: the grouped model matches torch's per-layer spectral norm in outputs, grads, u and v."""
    skip_unless_runnable(backend, "cpu", torch.float32, DTYPES)
    theirs, ours, grouped = _models(backend)
    group = SpectralNormGroup(grouped)
    assert len(group) == 6
    models = (theirs, ours, grouped)
    opts = [torch.optim.Adam(m.parameters(), lr=1e-2) for m in models]
    for step in range(4):
        x, x2 = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
        y = torch.tensor([1, 4])
        outs = []
        for m in models:
            real, fake = m(x, y, aux=step % 2 == 1), m(x2, y)
            (real.mean() - fake.mean()).backward()
            outs.append(torch.cat([real, fake]).detach())
        for o in outs[1:]:
            torch.testing.assert_close(o, outs[0], rtol=1e-5, atol=1e-5)
        for m in models[1:]:
            for (n, p), q in zip(m.named_parameters(), theirs.parameters()):
                torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-5,
                                           msg=lambda s: f"{n}: {s}")
            _assert_same(m, theirs)
        for opt in opts:
            opt.step()
            opt.zero_grad()
    for m in models:
        m.eval()
    x = torch.randn(3, 3, 8, 8)
    y = torch.tensor([0, 2, 3])
    torch.testing.assert_close(grouped(x, y, aux=True), theirs(x, y, aux=True), rtol=1e-5,
                               atol=1e-5)
    _assert_same(grouped, theirs)


def test_one_grouped_op_per_forward(monkeypatch):
    """Every SN layer of the model is updated by one grouped call per forward (per dtype), and no
    layer runs its own power iteration."""
    _, _, grouped = _models()
    SpectralNormGroup(grouped)
    calls = []
    real = group_module.power_iteration_sigmas

    def counting(weights, *args, **kwargs):
        calls.append(len(weights))
        return real(weights, *args, **kwargs)

    monkeypatch.setattr(group_module, "power_iteration_sigmas", counting)
    own = []
    # (fastgan.nn.spectral_norm, the attribute, is the function; the module is in sys.modules)
    monkeypatch.setattr(importlib.import_module("fastgan.nn.spectral_norm"),
                        "spectral_norm_power_iteration", lambda *a, **k: own.append(1))
    grouped(torch.randn(2, 3, 8, 8), torch.tensor([0, 1]), aux=True)
    assert calls == [6] and not own


def test_shared_layer_called_twice_updates_twice():
    """A layer applied twice in one forward updates twice, as with torch (the second call runs its
    own iteration)."""

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            return self.lin(torch.tanh(self.lin(x)))

    torch.manual_seed(0)
    theirs = Twice()
    ours = copy.deepcopy(theirs)
    torch.manual_seed(1)
    torch.nn.utils.spectral_norm(theirs.lin)
    torch.manual_seed(1)
    spectral_norm(ours.lin)
    SpectralNormGroup(ours)
    x = torch.randn(3, 4)
    for _ in range(2):
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-6)
        _assert_same(ours, theirs)


class Mixed(nn.Module):
    """Layers that cannot share one grouped op: another dtype, another n_power_iterations."""

    def __init__(self):
        super().__init__()
        self.a, self.b = SNLinear(4, 6), SNLinear(6, 6)
        self.c = SNLinear(6, 6, n_power_iterations=2)
        self.d = SNLinear(6, 3).double()

    def forward(self, x):
        return self.d(self.c(self.b(self.a(x))).double())


def test_layers_of_several_dtypes_and_settings(monkeypatch):
    torch.manual_seed(0)
    model = Mixed()
    ref = copy.deepcopy(model)
    SpectralNormGroup(model)
    calls = []
    real = group_module.power_iteration_sigmas
    monkeypatch.setattr(group_module, "power_iteration_sigmas",
                        lambda w, *a, **k: calls.append(len(w)) or real(w, *a, **k))
    for _ in range(2):
        x = torch.randn(2, 4)
        torch.testing.assert_close(model(x), ref(x), rtol=1e-6, atol=1e-6)
        _assert_same(model, ref, 1e-6)
    assert sorted(calls) == [1, 1, 1, 1, 2, 2]  # per forward: {a, b}, {c}, {d}


def test_exception_in_forward_leaves_no_pending_sigma():
    torch.manual_seed(0)
    model = nn.Sequential(SNConv2d(3, 4, 3), nn.Flatten(), SNLinear(4, 2))
    ref = copy.deepcopy(model)
    group = SpectralNormGroup(model)
    x = torch.randn(1, 3, 5, 5)
    for m in (model, ref):  # 4*3*3 features do not fit SNLinear(4, ...), after its iteration
        with pytest.raises(RuntimeError):
            m(x)
    assert all(s.pending is None for _, s in group.layers)
    _assert_same(model, ref)
    torch.testing.assert_close(model[0](x), ref[0](x))  # its own iteration, not a stale sigma
    _assert_same(model, ref)


def test_remove_and_errors():
    model = nn.Sequential(SNLinear(4, 4), nn.ReLU(), SNLinear(4, 2))
    group = SpectralNormGroup(model)
    with pytest.raises(RuntimeError, match="already belongs to another SpectralNormGroup"):
        SpectralNormGroup(model)
    group.remove()
    SpectralNormGroup(model)
    with pytest.raises(ValueError, match="no fastgan spectral-norm layers"):
        SpectralNormGroup(nn.Sequential(nn.Linear(3, 3)))
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        SpectralNormGroup([SNLinear(3, 3)])


def test_torch_compile_fullgraph_with_group():
    """The model's hooks, the grouped op and the layers' use of its sigmas compile as one graph."""
    skip_unless_runnable("cpu", "cpu", torch.float32, DTYPES)
    torch.manual_seed(0)
    model = nn.Sequential(SNConv2d(3, 8, 3, padding=1, backend="cpu"), nn.LeakyReLU(0.2),
                          nn.Flatten(), SNLinear(8 * 6 * 6, 1, backend="cpu"))
    ref = copy.deepcopy(model)
    SpectralNormGroup(model)
    compiled = torch.compile(model, fullgraph=True)
    for _ in range(3):
        x = torch.randn(2, 3, 6, 6)
        y, y_ref = compiled(x), ref(x)
        y.sum().backward()
        y_ref.sum().backward()
        torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
        for p, q in zip(model.parameters(), ref.parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-5)
        _assert_same(model, ref)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_group_equals_per_layer_torch(backend):
    skip_unless_runnable(backend, "cuda", torch.float32, DTYPES)
    theirs, _, grouped = _models(backend)
    theirs.cuda()
    grouped.cuda()
    SpectralNormGroup(grouped)
    for step in range(3):
        x = torch.randn(2, 3, 8, 8, device="cuda")
        y = torch.tensor([1, 4], device="cuda")
        outs = [m(x, y, aux=step == 1) for m in (theirs, grouped)]
        for o in outs:
            o.sum().backward()
        torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
        for p, q in zip(grouped.parameters(), theirs.parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-5)
        _assert_same(grouped, theirs)
