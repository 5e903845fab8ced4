"""SketchyGAN: the MRU's equations by hand, shapes, parameter counts from the layer formulas,
backends, a training step of G and D, every norm / spectral-norm variant."""

import pytest
import torch
import torch.nn.functional as F

import fastgan.models as models
from fastgan.models.sketchygan import MRU
from fastgan.nn import BatchNormAct2d, SNConv2d

from .zoo import assert_backends_match, n_params, optimiser_step

TINY_G = dict(image_size=16, ngf=4, dim_z=4)
TINY_D = dict(image_size=16, ndf=4, num_classes=5, num_heads=2)


def _mru_count(cin: int, cout: int, ci: int, bn: bool) -> int:
    """Parameters of one MRU from its layer formulas: 3x3 convs over [x, I] (k*k*cin*cout + bias)."""
    cat = cin + ci
    mask = 9 * cat * cin + cin
    feature = 9 * cat * cout + (2 * cout if bn else cout)  # BN gain+bias, or the conv's bias
    gate = 9 * cat * cout + cout
    shortcut = cin * cout + cout if cin != cout else 0
    return mask + feature + gate + shortcut


def _randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random BN affine and running stats (never the ones/zeros they start as)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model


@pytest.mark.parametrize("cin,cout,norm,act", [(3, 5, None, "leaky_relu"), (4, 4, None, "relu"),
                                               (3, 6, "batch", "relu")])
def test_mru_equations_by_hand(cin, cout, norm, act):
    torch.manual_seed(0)
    block = _randomise(MRU(cin, cout, image_channels=2, activation=act, norm=norm)).eval()
    x, image = torch.randn(2, cin, 6, 6), torch.randn(2, 2, 12, 12)
    with torch.no_grad():
        y = block(x, image)
        img = F.avg_pool2d(image, 2)  # area resize by 2
        def conv(layer, t):
            return F.conv2d(t, layer.weight, layer.bias, padding=layer.padding)
        m = torch.sigmoid(conv(block.mask_conv, torch.cat([x, img], 1)))
        z = conv(block.feature_conv, torch.cat([m * x, img], 1))
        if norm == "batch":
            bn = block.norm_act
            z = (z - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
            z = z * bn.weight[:, None, None] + bn.bias[:, None, None]
        z = F.relu(z) if act == "relu" else F.leaky_relu(z, 0.2)
        n = torch.sigmoid(conv(block.gate_conv, torch.cat([x, img], 1)))
        shortcut = x if cin == cout else conv(block.shortcut, x)
        expected = (1 - n) * shortcut + n * z
    assert (block.shortcut is None) == (cin == cout)
    assert y.shape == (2, cout, 6, 6)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-6)


def test_mru_spectral_norm_layers():
    block = MRU(3, 5, image_channels=1, spectral_norm=True, norm=None)
    assert all(isinstance(getattr(block, n), SNConv2d)
               for n in ("mask_conv", "feature_conv", "gate_conv", "shortcut"))
    assert isinstance(MRU(3, 5, 1, norm="batch").norm_act, BatchNormAct2d)
    with pytest.raises(ValueError):
        MRU(3, 5, 1, norm="layer")


def test_generator_count_and_shape():
    G = models.create("sketchygan_g")
    w = [64, 128, 256, 512]
    blocks = [(1, 64), (64, 128), (128, 256), (256, 512),             # encoder
              (512 + 64, 512),                                         # bottleneck (+ z, dim 64)
              (512 + 512, 256), (256 + 256, 128), (128 + 128, 64), (64 + 64, 64)]  # decoder
    expected = sum(_mru_count(a, b, 1, bn=True) for a, b in blocks) + 9 * w[0] * 3 + 3
    assert n_params(G) == expected == 31_934_742
    G.eval()
    with torch.no_grad():
        out = G(torch.randn(2, 1, 64, 64))
    assert out.shape == (2, 3, 64, 64) and out.abs().max() <= 1
    cond = models.create("sketchygan_g", num_classes=10, **TINY_G)
    assert cond(torch.randn(2, 1, 16, 16), torch.randn(2, 4), torch.tensor([1, 7])).shape == (2, 3, 16, 16)
    with pytest.raises(ValueError):
        cond(torch.randn(2, 1, 16, 16))
    with pytest.raises(ValueError):
        G(torch.randn(2, 1, 32, 32))


def test_generator_noise_matters():
    torch.manual_seed(0)
    G = models.create("sketchygan_g", **TINY_G).eval()
    s = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert not torch.allclose(G(s, torch.randn(2, 4)), G(s, torch.randn(2, 4)))


def test_discriminator_count_and_shape():
    D = models.create("sketchygan_d")
    blocks = [(3, 64), (64, 128), (128, 256), (256, 512)]
    heads = [128, 256, 512]  # after the last three blocks
    expected = (sum(_mru_count(a, b, 3, bn=False) for a, b in blocks)
                + sum(9 * c * 1 + 1 for c in heads) + sum(c * 125 + 125 for c in heads))
    assert n_params(D) == expected == 4_234_271
    logits, classes = D(torch.randn(2, 3, 64, 64))
    assert [t.shape for t in logits] == [(2, 1, 32, 32), (2, 1, 16, 16), (2, 1, 8, 8)]
    assert [t.shape for t in classes] == [(2, 125)] * 3
    Ds = models.create("sketchygan_d", sketch_channels=1, **TINY_D)
    logits, classes = Ds(torch.randn(2, 3, 16, 16), torch.randn(2, 1, 16, 16))
    assert [t.shape for t in logits] == [(2, 1, 16, 16), (2, 1, 8, 8)] and len(classes) == 2
    with pytest.raises(ValueError):
        Ds(torch.randn(2, 3, 16, 16))


def test_shared_early_layers():
    """The heads branch off one trunk: the shallow head's output does not depend on the last block."""
    torch.manual_seed(0)
    D = models.create("sketchygan_d", **TINY_D).eval()
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    logits, _ = D(x)
    logits[0].sum().backward()
    assert all(p.grad is None for p in D.blocks[-1].parameters())
    assert D.blocks[0].mask_conv.weight_orig.grad is not None


@pytest.mark.parametrize("cfg", [dict(), dict(num_classes=3), dict(spectral_norm=True),
                                 dict(norm=None)])
def test_generator_backends_match(cfg):
    torch.manual_seed(0)
    G = _randomise(models.create("sketchygan_g", **TINY_G, **cfg))
    inputs = [torch.randn(3, 1, 16, 16), torch.randn(3, 4)]
    if cfg.get("num_classes"):
        inputs.append(torch.tensor([0, 2, 1]))
    assert_backends_match(G.train(), inputs)
    assert_backends_match(G.eval(), inputs)


@pytest.mark.parametrize("cfg", [dict(), dict(norm="batch"), dict(spectral_norm=False, norm="batch"),
                                 dict(sketch_channels=1)])
def test_discriminator_backends_match(cfg):
    torch.manual_seed(0)
    D = _randomise(models.create("sketchygan_d", **TINY_D, **cfg))
    inputs = [torch.randn(3, 3, 16, 16)]
    if cfg.get("sketch_channels"):
        inputs.append(torch.randn(3, 1, 16, 16))
    assert_backends_match(D.train(), inputs)


def test_training_step_hinge_and_auxiliary_classifier():
    torch.manual_seed(0)
    G = models.create("sketchygan_g", num_classes=5, **TINY_G)
    D = models.create("sketchygan_d", **TINY_D)
    sketch, real, y = torch.randn(4, 1, 16, 16), torch.rand(4, 3, 16, 16) * 2 - 1, torch.randint(0, 5, (4,))

    def g_loss(g):
        logits, classes = D(g(sketch, torch.randn(4, 4), y))
        return sum(-t.mean() for t in logits) + sum(F.cross_entropy(c, y) for c in classes)

    def d_loss(d):
        with torch.no_grad():
            fake = G(sketch, torch.randn(4, 4), y)
        (lr, cr), (lf, _) = d(real), d(fake)
        return (sum(F.relu(1 - t).mean() for t in lr) + sum(F.relu(1 + t).mean() for t in lf)
                + sum(F.cross_entropy(c, y) for c in cr))

    optimiser_step(G, g_loss)
    optimiser_step(D, d_loss)
