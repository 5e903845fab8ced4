"""BatchNormAct2d and ConditionalBatchNorm2d against the unfused modules they replace."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fastgan.nn import BatchNormAct2d, ConditionalBatchNorm2d
from tests.utils import skip_unless_runnable

BACKENDS = ["reference", "cpu"]


def _clone_leaf(x):
    return x.detach().clone().requires_grad_(True)


def _unfused_step(module, x):
    x = _clone_leaf(x)
    y = module(x)
    y.backward(torch.linspace(-1, 1, y.numel()).view_as(y))
    return y.detach(), x.grad


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("config", [
    dict(), dict(momentum=None), dict(affine=False), dict(track_running_stats=False),
    dict(momentum=None, track_running_stats=False),
], ids=["default", "momentum_none", "no_affine", "no_running_stats", "neither"])
@pytest.mark.parametrize("act", [nn.ReLU(), nn.LeakyReLU(0.1), None], ids=["relu", "leaky", "none"])
def test_batchnorm_act_equals_bn_then_act(backend, config, act):
    skip_unless_runnable(backend, "cpu", torch.float32)
    bn = nn.BatchNorm2d(6, **config)
    if bn.affine:
        with torch.no_grad():
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_()
    fused = BatchNormAct2d.from_module(bn, act, backend=backend)
    ref = nn.Sequential(bn, act or nn.Identity())
    ref_copy = __import__("copy").deepcopy(ref)  # separate running stats for the unfused path
    fused_copy = BatchNormAct2d.from_module(ref_copy[0], act, backend=backend)
    assert fused_copy.state_dict().keys() == bn.state_dict().keys()
    for mode in ("train", "train", "eval"):
        getattr(ref, mode)(), getattr(fused_copy, mode)()
        x = torch.randn(4, 6, 5, 3)
        y_ref, gx_ref = _unfused_step(ref, x)
        y, gx = _unfused_step(fused_copy, x)
        torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(gx, gx_ref, rtol=1e-5, atol=1e-5)
        for a, b in zip(fused_copy.buffers(), ref[0].buffers()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    del fused


def test_from_module_shares_tensors():
    bn = nn.BatchNorm2d(3)
    fused = BatchNormAct2d.from_module(bn, nn.LeakyReLU(0.3))
    assert fused.weight is bn.weight and fused.bias is bn.bias
    assert fused.running_mean is bn.running_mean and fused.num_batches_tracked is bn.num_batches_tracked
    assert fused.activation == "leaky_relu" and fused.negative_slope == 0.3
    with pytest.raises(TypeError, match="cannot fuse activation"):
        BatchNormAct2d.from_module(bn, nn.Tanh())
    with pytest.raises(TypeError, match="bn must be an nn.BatchNorm2d"):
        BatchNormAct2d.from_module(nn.BatchNorm1d(3))


def test_batchnorm_act_loads_batchnorm_checkpoint():
    bn = nn.BatchNorm2d(5)
    bn.train()(torch.randn(3, 5, 4, 4))
    fused = BatchNormAct2d(5, "relu")
    fused.load_state_dict(bn.state_dict())
    for a, b in zip(fused.state_dict().values(), bn.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_conditional_bn_linear_matches_biggan_formula(backend):
    skip_unless_runnable(backend, "cpu", torch.float32)
    m = ConditionalBatchNorm2d(8, cond_dim=12, activation="relu", backend=backend)
    x, cond = torch.randn(4, 8, 6, 6, requires_grad=True), torch.randn(4, 12)
    y = m(x, cond)
    bn = nn.BatchNorm2d(8, affine=False)
    expected = torch.relu(bn(x) * (1 + m.gain(cond))[:, :, None, None]
                          + m.bias(cond)[:, :, None, None])
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m.running_mean, bn.running_mean)
    torch.testing.assert_close(m.running_var, bn.running_var)
    gx, gw = torch.autograd.grad(y.square().sum(), (x, m.gain.weight))
    ex, ew = torch.autograd.grad(expected.square().sum(), (x, m.gain.weight))
    torch.testing.assert_close(gx, ex, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gw, ew, rtol=1e-4, atol=1e-5)
    m.eval()
    torch.testing.assert_close(
        m(x, cond), torch.relu(bn.eval()(x) * (1 + m.gain(cond))[:, :, None, None]
                               + m.bias(cond)[:, :, None, None]), rtol=1e-5, atol=1e-5)


def test_conditional_bn_embedding_and_spectral_norm():
    m = ConditionalBatchNorm2d(4, num_classes=10)
    assert torch.equal(m.gain.weight, torch.ones(10, 4))
    y = m(torch.randn(3, 4, 2, 2), torch.tensor([0, 3, 9]))
    assert y.shape == (3, 4, 2, 2)
    sn = ConditionalBatchNorm2d(4, cond_dim=6, spectral_norm=True)
    assert "gain.weight_orig" in sn.state_dict() and "gain.weight_u" in sn.state_dict()
    sn(torch.randn(3, 4, 2, 2), torch.randn(3, 6))
    with pytest.raises(ValueError, match="exactly one of cond_dim"):
        ConditionalBatchNorm2d(4)
    with pytest.raises(ValueError, match="x must be 4-D"):
        m(torch.randn(3, 4), torch.tensor([0, 1, 2]))


def test_compiled_training_updates_running_stats_like_eager():
    """torch.compile (inductor, fullgraph) of a training BatchNormAct2d on the cpu backend, whose
    forward op updates the running statistics in place: three steps match eager in the output,
    the gradients and the running statistics."""
    skip_unless_runnable("cpu", "cpu", torch.float32)
    torch.manual_seed(0)
    eager = BatchNormAct2d(8, activation="relu", backend="cpu")
    compiled_module = BatchNormAct2d(8, activation="relu", backend="cpu")
    compiled_module.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_module, fullgraph=True)
    x = torch.randn(4, 8, 5, 5, requires_grad=True)
    for _ in range(3):
        y_e, y_c = eager(x), compiled(x)
        torch.testing.assert_close(y_c, y_e)
        g_e = torch.autograd.grad(y_e.sum(), (x, eager.weight, eager.bias))
        g_c = torch.autograd.grad(y_c.sum(), (x, compiled_module.weight, compiled_module.bias))
        for a, b in zip(g_c, g_e):
            torch.testing.assert_close(a, b)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(compiled_module, name), getattr(eager, name))
