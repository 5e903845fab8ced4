"""SelfAttention2d against re-implementations of the upstream modules it replaces (BigGAN-PyTorch's
Attention with its SN layers, SAGAN's Self_Attn): checkpoints load, outputs and grads agree."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastgan.bench.third_party import Self_Attn
from fastgan.nn import SelfAttention2d
from fastgan.ops.self_attention import DTYPES
from tests.utils import skip_unless_runnable

BACKENDS = ["reference", "cpu", "triton"]


class UpstreamSNConv2d(nn.Conv2d):
    """BigGAN-PyTorch's SNConv2d (num_svs=1, num_itrs=1): buffers u0 [1, out] and sv0 [1], W / sv
    from one power iteration per forward, u0 updated in training."""

    def __init__(self, *args, eps=1e-12, **kwargs):
        super().__init__(*args, **kwargs)
        self.eps = eps
        self.register_buffer("u0", torch.randn(1, self.out_channels))
        self.register_buffer("sv0", torch.ones(1))

    def forward(self, x):
        w = self.weight.view(self.weight.size(0), -1)
        with torch.no_grad():
            v = F.normalize(self.u0 @ w, eps=self.eps)
            u = F.normalize(v @ w.t(), eps=self.eps)
            if self.training:
                self.u0[:] = u
        sv = torch.squeeze((v @ w.t()) @ u.t())
        if self.training:
            self.sv0[:] = sv.detach()
        return F.conv2d(x, self.weight / sv, self.bias, self.stride, self.padding)


class UpstreamBigGANAttention(nn.Module):
    """BigGAN-PyTorch's layers.Attention, as its forward computes."""

    def __init__(self, ch):
        super().__init__()
        self.ch = ch
        self.theta = UpstreamSNConv2d(ch, ch // 8, 1, bias=False)
        self.phi = UpstreamSNConv2d(ch, ch // 8, 1, bias=False)
        self.g = UpstreamSNConv2d(ch, ch // 2, 1, bias=False)
        self.o = UpstreamSNConv2d(ch // 2, ch, 1, bias=False)
        self.gamma = nn.Parameter(torch.tensor(0.0))

    def forward(self, x):
        theta = self.theta(x)
        phi = F.max_pool2d(self.phi(x), [2, 2])
        g = F.max_pool2d(self.g(x), [2, 2])
        theta = theta.view(-1, self.ch // 8, x.shape[2] * x.shape[3])
        phi = phi.view(-1, self.ch // 8, x.shape[2] * x.shape[3] // 4)
        g = g.view(-1, self.ch // 2, x.shape[2] * x.shape[3] // 4)
        beta = F.softmax(torch.bmm(theta.transpose(1, 2), phi), -1)
        o = self.o(torch.bmm(g, beta.transpose(1, 2)).view(-1, self.ch // 2, x.shape[2],
                                                            x.shape[3]))
        return self.gamma * o + x


@pytest.mark.parametrize("backend", BACKENDS)
def test_biggan_layout_loads_upstream_and_matches(backend):
    skip_unless_runnable(backend, "cpu", torch.float32, DTYPES)
    torch.manual_seed(0)
    upstream = UpstreamBigGANAttention(32)
    with torch.no_grad():
        upstream.gamma.fill_(0.7)
    ours = SelfAttention2d(32, "biggan", backend=backend)
    ours.load_state_dict(upstream.state_dict())
    for step in range(2):  # training forwards: both update u the same way
        x = torch.randn(2, 32, 8, 6)
        y_up, y = upstream(x), ours(x)
        torch.testing.assert_close(y, y_up, rtol=1e-4, atol=1e-5)
        y_up.square().mean().backward()
        y.square().mean().backward()
        torch.testing.assert_close(ours.gamma.grad, upstream.gamma.grad, rtol=1e-4, atol=1e-5)
        for name in ("theta", "phi", "g", "o"):
            torch.testing.assert_close(getattr(ours, name).weight_orig.grad,
                                       getattr(upstream, name).weight.grad, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(getattr(ours, name).weight_u,
                                       getattr(upstream, name).u0[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sagan_layout_loads_upstream_and_matches(backend):
    skip_unless_runnable(backend, "cpu", torch.float32, DTYPES)
    torch.manual_seed(0)
    upstream = Self_Attn(16)
    with torch.no_grad():
        upstream.gamma.fill_(0.5)
    ours = SelfAttention2d(16, "sagan", backend=backend)
    assert sorted(ours.state_dict()) == sorted(upstream.state_dict())
    ours.load_state_dict(upstream.state_dict())
    x = torch.randn(2, 16, 7, 5).requires_grad_(True)
    x2 = x.detach().clone().requires_grad_(True)
    y_up, attn_up = upstream(x)
    y = ours(x2)
    torch.testing.assert_close(y, y_up, rtol=1e-5, atol=1e-5)
    y_up.sum().backward()
    y.sum().backward()
    torch.testing.assert_close(x2.grad, x.grad, rtol=1e-4, atol=1e-5)
    for p, q in zip(ours.parameters(), upstream.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5)
    y_ref, attn = ours(x2, return_attention=True)
    torch.testing.assert_close(attn, attn_up, rtol=1e-5, atol=1e-6)


def test_plain_convs_and_bad_input():
    m = SelfAttention2d(64, "biggan", spectral_norm=False)
    assert sorted(m.state_dict()) == ["g.weight", "gamma", "o.weight", "phi.weight",
                                      "theta.weight"]
    assert m.theta.weight.shape == (8, 64, 1, 1) and m.g.weight.shape == (32, 64, 1, 1)
    with pytest.raises(ValueError, match="channels must be a positive multiple of 8"):
        SelfAttention2d(12)
    with pytest.raises(ValueError, match="layout must be one of"):
        SelfAttention2d(16, "nonlocal")


@pytest.mark.parametrize("eval_iteration", ["none", "peek", "update"])
def test_eval_iteration_reaches_every_sn_conv(eval_iteration):
    """The setting reaches the four SN convs; in eval, after W moved, "update" iterates and
    stores u while "none" and "peek" (which iterates on copies) leave it as it is."""
    torch.manual_seed(0)
    m = SelfAttention2d(16, "biggan", eval_iteration=eval_iteration, backend="reference")
    with torch.no_grad():
        m.gamma.fill_(0.5)
    x = torch.randn(2, 16, 6, 6)
    m(x)  # one training forward: every conv has its vectors
    with torch.no_grad():
        for name in ("theta", "phi", "g", "o"):
            getattr(m, name).weight_orig.mul_(1.5).add_(0.1)
    before = {n: b.clone() for n, b in m.named_buffers()}
    m.eval()
    m(x)
    for name in ("theta", "phi", "g", "o"):
        assert getattr(m, name)._sn.eval_iteration == eval_iteration
        u = getattr(m, name).weight_u
        assert torch.equal(u, before[f"{name}.weight_u"]) == (eval_iteration != "update"), name


def test_eval_iteration_needs_spectral_norm():
    with pytest.raises(ValueError, match="eval_iteration='peek' needs spectral_norm=True"):
        SelfAttention2d(16, "sagan", eval_iteration="peek")
    with pytest.raises(ValueError, match="eval_iteration must be"):
        SelfAttention2d(16, "biggan", eval_iteration="always")
