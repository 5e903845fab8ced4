"""BigGAN 128/256: shapes, BigGAN-PyTorch parameter counts, backends, optimiser steps, and the
upstream converter against our own rewrite of BigGAN-PyTorch's G and D (its key names, its SN)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastgan.models as models

from .zoo import assert_backends_match, n_params, optimiser_step

TINY_G = dict(G_ch=4, dim_z=20, shared_dim=8, n_classes=5)
TINY_D = dict(D_ch=8, n_classes=5)


# ---- BigGAN-PyTorch (layers.py, BigGAN.py) as a fixture: upstream names and forward semantics
class _SN:
    """BigGAN's SN mixin: u0 [1, out] and sv0 [1] buffers; W_() runs one power iteration from u0
    (storing it in training) and returns W / sigma."""

    def _sn_init(self, eps=1e-8):
        self.sn_eps = eps
        self.register_buffer("u0", torch.randn(1, self.weight.shape[0]))
        self.register_buffer("sv0", torch.ones(1))

    def W_(self):
        w = self.weight.view(self.weight.shape[0], -1)
        with torch.no_grad():
            v = F.normalize(self.u0 @ w, dim=1, eps=self.sn_eps)
            u = F.normalize(v @ w.t(), dim=1, eps=self.sn_eps)
            if self.training:
                self.u0.copy_(u)
        sv = ((v @ w.t()) @ u.t()).squeeze()
        if self.training:
            self.sv0.copy_(sv.detach().view(1))
        return self.weight / sv


class UConv(nn.Conv2d, _SN):
    def __init__(self, cin, cout, k=3, bias=True):
        nn.Conv2d.__init__(self, cin, cout, k, padding=k // 2, bias=bias)
        self._sn_init()

    def forward(self, x):
        return F.conv2d(x, self.W_(), self.bias, padding=self.padding)


class ULinear(nn.Linear, _SN):
    def __init__(self, cin, cout, bias=True):
        nn.Linear.__init__(self, cin, cout, bias=bias)
        self._sn_init()

    def forward(self, x):
        return F.linear(x, self.W_(), self.bias)


class UEmbedding(nn.Embedding, _SN):
    def __init__(self, n, d):
        nn.Embedding.__init__(self, n, d)
        self._sn_init()

    def forward(self, y):
        return F.embedding(y, self.W_())


class Uccbn(nn.Module):
    def __init__(self, c, d):
        super().__init__()
        self.gain, self.bias = ULinear(d, c, bias=False), ULinear(d, c, bias=False)
        self.register_buffer("stored_mean", torch.zeros(c))
        self.register_buffer("stored_var", torch.ones(c))

    def forward(self, x, y):
        g = (1 + self.gain(y)).view(y.shape[0], -1, 1, 1)
        b = self.bias(y).view(y.shape[0], -1, 1, 1)
        return F.batch_norm(x, self.stored_mean, self.stored_var, None, None, self.training,
                            0.1, 1e-5) * g + b


class Ubn(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.gain, self.bias = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c))
        self.register_buffer("stored_mean", torch.zeros(c))
        self.register_buffer("stored_var", torch.ones(c))

    def forward(self, x):
        return F.batch_norm(x, self.stored_mean, self.stored_var, self.gain, self.bias,
                            self.training, 0.1, 1e-5)


class UAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.ch = c
        self.theta, self.phi = UConv(c, c // 8, 1, False), UConv(c, c // 8, 1, False)
        self.g, self.o = UConv(c, c // 2, 1, False), UConv(c // 2, c, 1, False)
        self.gamma = nn.Parameter(torch.tensor(0.))

    def forward(self, x):
        n, c, h, w = x.shape
        theta = self.theta(x).view(n, c // 8, h * w)
        phi = F.max_pool2d(self.phi(x), 2).view(n, c // 8, h * w // 4)
        g = F.max_pool2d(self.g(x), 2).view(n, c // 2, h * w // 4)
        beta = F.softmax(torch.bmm(theta.transpose(1, 2), phi), -1)
        o = self.o(torch.bmm(g, beta.transpose(1, 2)).view(n, c // 2, h, w))
        return self.gamma * o + x


class UGBlock(nn.Module):
    def __init__(self, cin, cout, d):
        super().__init__()
        self.conv1, self.conv2, self.conv_sc = UConv(cin, cout), UConv(cout, cout), UConv(cin, cout, 1)
        self.bn1, self.bn2 = Uccbn(cin, d), Uccbn(cout, d)

    def forward(self, x, y):
        h = F.interpolate(F.relu(self.bn1(x, y)), scale_factor=2)
        x = F.interpolate(x, scale_factor=2)
        h = self.conv2(F.relu(self.bn2(self.conv1(h), y)))
        return h + self.conv_sc(x)


G_MULTS = {128: ([16, 16, 8, 4, 2], [16, 8, 4, 2, 1]), 256: ([16, 16, 8, 8, 4, 2], [16, 8, 8, 4, 2, 1])}


class UpstreamG(nn.Module):
    def __init__(self, ch, dim_z, shared_dim, n_classes, resolution=128):
        super().__init__()
        cin, cout = ([ch * m for m in ms] for ms in G_MULTS[resolution])
        slots = len(cin) + 1
        self.chunk = dim_z // slots
        self.shared = nn.Embedding(n_classes, shared_dim)
        self.linear = ULinear(self.chunk, cin[0] * 16)
        self.blocks = nn.ModuleList()
        for i in range(len(cin)):
            b = [UGBlock(cin[i], cout[i], shared_dim + self.chunk)]
            if 2 ** (i + 3) == 64:
                b.append(UAttention(cout[i]))
            self.blocks.append(nn.ModuleList(b))
        self.output_layer = nn.Sequential(Ubn(cout[-1]), nn.ReLU(), UConv(cout[-1], 3))

    def forward(self, z, y):  # y: the shared embedding, as upstream
        zs = torch.split(z, self.chunk, 1)
        ys = [torch.cat([y, c], 1) for c in zs[1:]]
        h = self.linear(zs[0]).view(z.shape[0], -1, 4, 4)
        for blocks, yi in zip(self.blocks, ys):
            h = blocks[0](h, yi)
            for b in blocks[1:]:
                h = b(h)
        return torch.tanh(self.output_layer(h))


class UDBlock(nn.Module):
    def __init__(self, cin, cout, pre, down):
        super().__init__()
        self.pre, self.down = pre, down
        self.conv1, self.conv2 = UConv(cin, cout), UConv(cout, cout)
        self.learnable = cin != cout or down
        if self.learnable:
            self.conv_sc = UConv(cin, cout, 1)

    def forward(self, x):
        h = F.relu(x) if self.pre else x
        h = self.conv2(F.relu(self.conv1(h)))
        if self.down:
            h = F.avg_pool2d(h, 2)
        if self.pre:
            x = self.conv_sc(x) if self.learnable else x
            x = F.avg_pool2d(x, 2) if self.down else x
        else:
            x = F.avg_pool2d(x, 2) if self.down else x
            x = self.conv_sc(x) if self.learnable else x
        return h + x


D_MULTS = {128: ([1, 2, 4, 8, 16, 16], [64, 32, 16, 8, 4, 4]),
           256: ([1, 2, 4, 8, 8, 16, 16], [128, 64, 32, 16, 8, 4, 4])}


class UpstreamD(nn.Module):
    def __init__(self, ch, n_classes, resolution=128):
        super().__init__()
        mults, res = D_MULTS[resolution]
        cout = [ch * m for m in mults]
        cin = [3] + cout[:-1]
        self.blocks = nn.ModuleList()
        for i in range(len(cout)):
            b = [UDBlock(cin[i], cout[i], i > 0, i < len(cout) - 1)]
            if res[i] == 64:
                b.append(UAttention(cout[i]))
            self.blocks.append(nn.ModuleList(b))
        self.linear = ULinear(cout[-1], 1)
        self.embed = UEmbedding(n_classes, cout[-1])

    def forward(self, x, y):
        h = x
        for blocks in self.blocks:
            for b in blocks:
                h = b(h)
        h = F.relu(h).sum([2, 3])
        return (self.linear(h) + (self.embed(y) * h).sum(1, keepdim=True)).squeeze(1)


def _randomise(module):
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.randn_like(p) * (0.3 if p.dim() > 1 else 0.2))
        for name, b in module.named_buffers():
            if name.endswith("stored_var"):
                b.uniform_(0.5, 1.5)
            elif b.is_floating_point():
                b.normal_()


# ---- tests
def _tiny_g(**kw):
    torch.manual_seed(0)
    return models.create("biggan128_g", **TINY_G, **kw)


def _tiny_d(**kw):
    torch.manual_seed(0)
    return models.create("biggan128_d", **TINY_D, **kw)


def _inputs(n=2, dim_z=18):
    torch.manual_seed(2)
    return torch.randn(n, dim_z), torch.tensor([1, 4, 0, 2][:n])


def test_shapes():
    G, D = _tiny_g(), _tiny_d()
    z, y = _inputs()
    assert G.dim_z == 18  # 20 // 6 chunks * 6, as BigGAN-PyTorch
    x = G(z, y)
    assert x.shape == (2, 3, 128, 128) and x.abs().max() <= 1
    G.eval()
    torch.testing.assert_close(G(z, shared=G.shared(y)), G(z, y))
    assert D(x, y).shape == (2,)


@pytest.mark.parametrize("res", [128, 256])
def test_parameter_counts(res):
    # The upstream counts at the reference config (ch 96, dim_z 120, shared 128, 1000 classes):
    # our BigGAN-PyTorch rewrite, built on meta. 128: G 70,433,988 and D 87,982,370 (the paper's
    # 70.4 M / 88.0 M).
    with torch.device("meta"):
        ug, ud = UpstreamG(96, 120, 128, 1000, res), UpstreamD(96, 1000, res)
    G = models.create(f"biggan{res}_g", init=None)
    D = models.create(f"biggan{res}_d", init=None)
    assert n_params(G) == n_params(ug)
    assert n_params(D) == n_params(ud)
    if res == 128:
        assert (n_params(G), n_params(D)) == (70_433_988, 87_982_370)


def test_backends_match():
    # float64: train-mode BN over batch 2 at 4x4..16x16 amplifies float32 rounding in the weight
    # gradients to ~1e-2 relative on either backend; in float64 the two agree to ~1e-14.
    z, y = _inputs()
    assert_backends_match(_tiny_g().double(), (z.double(), y))
    torch.manual_seed(3)
    assert_backends_match(_tiny_d().double(), (torch.randn(2, 3, 128, 128, dtype=torch.float64), y))


def test_optimiser_steps():
    G, D = _tiny_g(), _tiny_d()
    z, y = _inputs()
    real = torch.randn(2, 3, 128, 128)
    optimiser_step(D, lambda d: F.relu(1 - d(real, y)).mean() + F.relu(1 + d(G(z, y).detach(), y)).mean())
    optimiser_step(G, lambda g: -D(g(z, y), y).mean())


@pytest.mark.parametrize("train", [False, True])
def test_upstream_converter(train):
    ug, ud = UpstreamG(4, 20, 8, 5), UpstreamD(8, 5)
    _randomise(ug)
    _randomise(ud)
    G = models.load_upstream("biggan128_g", ug.state_dict(), **TINY_G)
    D = models.load_upstream("biggan128_d", ud.state_dict(), **TINY_D)
    for m in (ug, ud, G, D):
        m.train(train)
    z, y = _inputs()
    torch.testing.assert_close(G(z, y), ug(z, ug.shared(y)), rtol=1e-4, atol=1e-5)
    torch.manual_seed(4)
    x = torch.randn(2, 3, 128, 128)
    torch.testing.assert_close(D(x, y), ud(x, y), rtol=1e-4, atol=1e-4)
    if train:  # the stored statistics and u moved alike
        torch.testing.assert_close(G.blocks[0][0].bn1.running_var, ug.blocks[0][0].bn1.stored_var)
        torch.testing.assert_close(G.linear.weight_u, ug.linear.u0[0])
    with pytest.raises(ValueError, match="unknown"):
        models.convert_upstream("biggan128_g", {"foo.bar": torch.zeros(1)})
