"""SAGAN / SNGAN zoo models: shapes, parameter counts, backends, an optimiser step, and the
heykeetae/Self-Attention-GAN converter against a fixture of that code's modules."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastgan.models as models
from fastgan.bench.third_party import Self_Attn, SpectralNorm
from tests.models.zoo import assert_backends_match, n_params, optimiser_step

NAMES = ["sagan64_g", "sagan64_d", "sagan128_g", "sagan128_d", "sngan64_g", "sngan64_d"]
TINY = dict(conv_dim=8)  # attention widths conv_dim and 2 * conv_dim: multiples of 8


# --- heykeetae/Self-Attention-GAN's sagan_models.py Generator and Discriminator, written from
# --- their semantics on the shared SpectralNorm / Self_Attn fixtures (fastgan/bench/third_party.py)
class UpGenerator(nn.Module):
    def __init__(self, image_size=64, z_dim=128, conv_dim=64):
        super().__init__()
        repeat = int(np.log2(image_size)) - 3
        d = conv_dim * 2 ** repeat
        self.l1 = nn.Sequential(SpectralNorm(nn.ConvTranspose2d(z_dim, d, 4)), nn.BatchNorm2d(d), nn.ReLU())
        for i in (2, 3, 4):
            setattr(self, f"l{i}", nn.Sequential(SpectralNorm(nn.ConvTranspose2d(d, d // 2, 4, 2, 1)),
                                                 nn.BatchNorm2d(d // 2), nn.ReLU()))
            d //= 2
        self.last = nn.Sequential(nn.ConvTranspose2d(d, 3, 4, 2, 1), nn.Tanh())
        self.attn1, self.attn2 = Self_Attn(2 * d), Self_Attn(d)

    def forward(self, z):
        out = self.l3(self.l2(self.l1(z.view(z.size(0), z.size(1), 1, 1))))
        out, p1 = self.attn1(out)
        out, p2 = self.attn2(self.l4(out))
        return self.last(out), p1, p2


class UpDiscriminator(nn.Module):
    def __init__(self, image_size=64, conv_dim=64):
        super().__init__()
        d = conv_dim
        self.l1 = nn.Sequential(SpectralNorm(nn.Conv2d(3, d, 4, 2, 1)), nn.LeakyReLU(0.1))
        for i in (2, 3, 4):
            setattr(self, f"l{i}", nn.Sequential(SpectralNorm(nn.Conv2d(d, d * 2, 4, 2, 1)),
                                                 nn.LeakyReLU(0.1)))
            d *= 2
        self.last = nn.Sequential(nn.Conv2d(d, 1, 4))
        self.attn1, self.attn2 = Self_Attn(d // 2), Self_Attn(d)

    def forward(self, x):
        out, p1 = self.attn1(self.l3(self.l2(self.l1(x))))
        out, p2 = self.attn2(self.l4(out))
        return self.last(out).squeeze(), p1, p2


def _n_trainable(m: nn.Module) -> int:
    # heykeetae's weight_u / weight_v are nn.Parameters with requires_grad=False; ours are
    # buffers. The trainable ones (weight_bar, biases, BN affine, attention convs, gamma) match.
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


def _randomise(m: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("weight_u") or name.endswith("weight_v"):
                continue
            p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (1.0 if ".1.weight" in name else 0.0))
        for name, b in m.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
    return m


# --- tests
@pytest.mark.parametrize("name", NAMES)
def test_shapes(name):
    s = 128 if "128" in name else 64
    m = models.create(name, **TINY)
    if name.endswith("_g"):
        assert m(torch.randn(2, 128)).shape == (2, 3, s, s)
    else:
        assert m(torch.randn(2, 3, s, s)).shape == (2,)


def test_parameter_counts_match_upstream():
    with torch.device("meta"):
        g, d = UpGenerator(), UpDiscriminator()
        ours_g, ours_d = models.create("sagan64_g"), models.create("sagan64_d")
    assert n_params(ours_g) == _n_trainable(g) == 3_832_885
    assert n_params(ours_d) == _n_trainable(d) == 3_175_299
    # without attention: minus the four attention layers (3 1x1 convs with bias, gamma)
    attn = lambda c: 2 * (c * (c // 8) + c // 8) + c * c + c + 1  # noqa: E731
    assert n_params(models.create("sngan64_g")) == 3_832_885 - attn(128) - attn(64)
    assert n_params(models.create("sngan64_d")) == 3_175_299 - attn(256) - attn(512)
    assert n_params(models.create("sagan128_g")) == 13_273_141
    assert n_params(models.create("sagan128_d")) == 12_802_883


@pytest.mark.parametrize("name", NAMES)
def test_backends_match(name):
    torch.manual_seed(0)
    s = 128 if "128" in name else 64
    m = _randomise(models.create(name, conv_dim=8))
    x = torch.randn(2, 128) if name.endswith("_g") else torch.randn(2, 3, s, s)
    if name.endswith("_d"):
        assert_backends_match(m, [x])
        return
    # The G's conv biases feed training-mode BN, which cancels them: their true gradient is 0 and
    # both backends give float noise around it (up to ~4e-4 at 128x128), hence the looser atol in
    # train mode. In eval mode (BN on running stats; SN still iterates, as upstream) every
    # gradient is well defined and the default tolerances hold.
    assert_backends_match(m, [x], atol=1e-3)
    assert_backends_match(m.eval(), [x])


@pytest.mark.parametrize("pair", [("sagan64_g", "sagan64_d"), ("sngan64_g", "sngan64_d")])
def test_optimiser_step(pair):
    torch.manual_seed(0)
    g = _randomise(models.create(pair[0], **TINY))
    d = _randomise(models.create(pair[1], **TINY))
    z, real = torch.randn(4, 128), torch.rand(4, 3, 64, 64) * 2 - 1
    # hinge loss: D on real and fake, G on -D(fake)
    optimiser_step(d, lambda m: F.relu(1 - m(real)).mean() + F.relu(1 + m(g(z).detach())).mean())
    optimiser_step(g, lambda m: -d(m(z)).mean())


@pytest.mark.parametrize("which", ["g", "d"])
def test_converter_matches_upstream(which):
    torch.manual_seed(0)
    up = UpGenerator(conv_dim=8) if which == "g" else UpDiscriminator(conv_dim=8)
    _randomise(up)
    name = f"sagan64_{which}"
    ours = models.load_upstream(name, copy.deepcopy(up.state_dict()), conv_dim=8)
    x = torch.randn(3, 128) if which == "g" else torch.randn(3, 3, 64, 64)
    for mode in ("train", "eval", "train"):  # both iterate once per call, also in eval
        up.train(mode == "train")
        ours.train(mode == "train")
        ref = up(x)[0]
        out = ours(x)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    sd = ours.state_dict()
    for k, v in up.state_dict().items():  # the updated u, v and running stats agree too
        torch.testing.assert_close(sd[models.convert_upstream(name, {k: v}).popitem()[0]], v,
                                   rtol=1e-5, atol=1e-6)


def test_converter_rejects_unknown_keys():
    sd = UpDiscriminator(conv_dim=8).state_dict()
    sd["l9.extra"] = torch.zeros(1)
    with pytest.raises(ValueError, match="l9.extra"):
        models.convert_upstream("sagan64_d", sd)
