"""The pix2pixHD / SPADE multi-scale discriminator: per-scale feature lists, the norms, SPADE's
structure and parameter count, backends, a training step with feature matching."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastgan.models as models
from fastgan.nn import BatchNormAct2d, SNConv2d

from .zoo import assert_backends_match, n_params, optimiser_step


def _conv_out(size: int, stride: int) -> int:
    return (size + 2 * 2 - 4) // stride + 1  # 4x4, padding 2


def _pool_out(size: int) -> int:
    return (size + 2 - 3) // 2 + 1


@pytest.mark.parametrize("norm", ["spectralinstance", "instance", "batch", "spectral", "none"])
def test_feature_lists(norm):
    torch.manual_seed(0)
    num_d, n_layers, ndf, size = 3, 3, 4, 40
    d = models.create("multiscale_d", input_nc=5, ndf=ndf, n_layers=n_layers, num_D=num_d, norm=norm)
    x = torch.randn(2, 5, size, size)
    d(x)  # a training step (spectral norm's power iteration, BN statistics), then compare in eval
    out = d.eval()(x)
    assert len(out) == num_d
    widths = [ndf, 2 * ndf, 4 * ndf, 8 * ndf, 1]
    strides = [2, 2, 2, 1, 1]
    s = size
    for i, feats in enumerate(out):
        assert len(feats) == n_layers + 2
        h = s
        for f, c, st in zip(feats, widths, strides):
            h = _conv_out(h, st)
            assert f.shape == (2, c, h, h), (i, f.shape)
        s = _pool_out(s)
    # Scale 0 is the full-resolution input; scale 1 sees it average-pooled (borders excluded).
    torch.testing.assert_close(out[0][-1], d.discriminator_0(x)[-1])
    pooled = F.avg_pool2d(x, 3, 2, 1, count_include_pad=False)
    torch.testing.assert_close(out[1][-1], d.discriminator_1(pooled, features=False))
    # Features feed each other: the logits are the last stage of the previous feature.
    torch.testing.assert_close(out[0][-1], d.discriminator_0.model4(out[0][-2]))


def test_norm_layers_and_spade_defaults():
    d = models.create("multiscale_d")  # SPADE: num_D=2, n_layers_D=4, spectralinstance, ndf=64
    assert d.num_D == 2 and len(list(d.discriminator_0.children())) == 5
    inner = [d.discriminator_0.get_submodule(f"model{j}") for j in range(1, 4)]
    assert all(isinstance(s[0], SNConv2d) and s[0].bias is None for s in inner)
    assert all(isinstance(s[1], nn.InstanceNorm2d) and not s[1].affine for s in inner)
    assert type(d.discriminator_0.model0[0]) is nn.Conv2d and type(d.discriminator_0.model4[0]) is nn.Conv2d
    # SPADE's count at input_nc=3: per scale 3*64*16+64 + 64*128*16 + 128*256*16 + 256*512*16
    # + 512*16+1 (the normed convs have no bias; spectral norm adds buffers, not parameters).
    per_scale = 3 * 64 * 16 + 64 + 64 * 128 * 16 + 128 * 256 * 16 + 256 * 512 * 16 + 512 * 16 + 1
    with torch.device("meta"):
        assert n_params(models.create("multiscale_d")) == 2 * per_scale == 5_527_682
        assert n_params(models.create("multiscale_d", n_layers_D=4, num_D=3, norm="instance")) \
            == 3 * per_scale
    b = models.create("multiscale_d", ndf=4, norm="batch")
    assert isinstance(b.discriminator_1.model2[1], BatchNormAct2d)
    with pytest.raises(ValueError, match="norm"):
        models.create("multiscale_d", norm="group")


@pytest.mark.parametrize("norm", ["spectralinstance", "batch"])
def test_backends_match(norm):
    torch.manual_seed(0)
    d = models.create("multiscale_d", input_nc=3, ndf=4, num_D=2, norm=norm)
    # The first conv's gradient sums to ~100 over both scales: float32 rounding is ~5e-5 there
    # (the reference's own float32 error against float64), so float64 is the tight check.
    assert_backends_match(d, [torch.randn(2, 3, 24, 24)], atol=5e-4)
    assert_backends_match(d.double(), [torch.randn(2, 3, 24, 24, dtype=torch.float64)],
                          rtol=1e-9, atol=1e-9)


def test_training_step_with_feature_matching():
    torch.manual_seed(0)
    d = models.create("multiscale_d", input_nc=6, ndf=4, num_D=2)
    g = models.create("pix2pix_unet256_g", ngf=4, num_downs=5)
    label, real = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)

    def d_loss(d):  # hinge loss (SPADE)
        r = d(torch.cat([label, real], 1))
        f = d(torch.cat([label, g(label).detach()], 1))
        return sum(F.relu(1 - a[-1]).mean() + F.relu(1 + b[-1]).mean() for a, b in zip(r, f))

    def g_loss(g):  # adversarial + pix2pixHD's feature matching
        fake = d(torch.cat([label, g(label)], 1))
        with torch.no_grad():
            ref = d(torch.cat([label, real], 1))
        fm = sum(F.l1_loss(a, b) for fs, rs in zip(fake, ref) for a, b in zip(fs[:-1], rs[:-1]))
        return -sum(fs[-1].mean() for fs in fake) + 10 * fm

    optimiser_step(d, d_loss)
    optimiser_step(g, g_loss)
