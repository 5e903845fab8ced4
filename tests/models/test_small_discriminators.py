"""AnimeGAN(v2) and LSGAN discriminators: shapes, parameter counts from the layer formulas,
backends, a training step, every norm / spectral-norm variant."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastgan.models as models
from fastgan.nn import BatchNormAct2d, SNConv2d, SNLinear

from .zoo import assert_backends_match, n_params, optimiser_step


def _randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random norm affines and BN running stats (never the ones/zeros they start as)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d)) and m.weight is not None:
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model


# ---------------------------------------------------------------- AnimeGAN

def test_animegan_count_and_shape():
    D = models.create("animegan_d")
    # ch=64 -> c=32; n_dis=3 -> two stride-2 blocks; 3x3 convs without bias; per-channel LN gain+bias
    convs = [(3, 32), (32, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 1)]
    norms = [128, 256, 256]
    expected = sum(9 * a * b for a, b in convs) + sum(2 * c for c in norms)
    assert n_params(D) == expected == 1_128_800
    assert sum(isinstance(m, SNConv2d) for m in D.modules()) == len(convs)
    assert D(torch.randn(2, 3, 64, 64)).shape == (2, 1, 16, 16)
    assert models.create("animegan_d", n_dis=4, ch=8)(torch.randn(1, 3, 32, 32)).shape == (1, 1, 4, 4)


def test_animegan_layer_norm_is_tf_layer_norm():
    """norm="layer": statistics over (C, H, W) per sample, per-channel gain and bias."""
    D = _randomise(models.create("animegan_d", ch=8, sn=False))
    ln, x = D.main.norm_1, torch.randn(2, 16, 5, 5)
    mu, var = x.mean(dim=(1, 2, 3), keepdim=True), x.var(dim=(1, 2, 3), unbiased=False, keepdim=True)
    expected = (x - mu) / torch.sqrt(var + ln.eps) * ln.weight[:, None, None] + ln.bias[:, None, None]
    torch.testing.assert_close(ln(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("norm", ["layer", "instance", "batch", "group"])
@pytest.mark.parametrize("sn", [True, False])
def test_animegan_variants(norm, sn):
    torch.manual_seed(0)
    D = _randomise(models.create("animegan_d", ch=16, n_dis=3, sn=sn, norm=norm))
    assert any(isinstance(m, SNConv2d) for m in D.modules()) == sn
    assert any(isinstance(m, BatchNormAct2d) for m in D.modules()) == (norm == "batch")
    x = torch.randn(3, 3, 20, 20)
    assert D(x).shape == (3, 1, 5, 5)
    assert_backends_match(D.train(), [x])
    if norm == "batch":
        assert_backends_match(D.eval(), [x])


def test_animegan_training_step():
    torch.manual_seed(0)
    D = models.create("animegan_d", ch=16)
    real, fake = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)
    optimiser_step(D, lambda d: F.relu(1 - d(real)).mean() + F.relu(1 + d(fake)).mean())


def test_animegan_bad_norm():
    with pytest.raises(ValueError):
        models.create("animegan_d", norm="weird")


# ---------------------------------------------------------------- LSGAN

def _lsgan_count(size: int, ndf: int = 64, nc: int = 3) -> int:
    """5x5 convs: k*k*cin*cout (+ cout bias on the input conv); BN gain+bias; linear to 1."""
    s = size // 16
    return (25 * nc * ndf + ndf
            + 25 * ndf * 2 * ndf + 2 * 2 * ndf
            + 25 * 2 * ndf * 4 * ndf + 2 * 4 * ndf
            + 25 * 4 * ndf * 8 * ndf + 2 * 8 * ndf
            + 8 * ndf * s * s + 1)


def test_lsgan_count_and_shape():
    D = models.create("lsgan_d")
    assert n_params(D) == _lsgan_count(64) == 4_315_649
    assert D(torch.randn(2, 3, 64, 64)).shape == (2,)
    D112 = models.create("lsgan_d", image_size=112)
    assert n_params(D112) == _lsgan_count(112) == 4_315_649 + 512 * (49 - 16)
    assert D112(torch.randn(2, 3, 112, 112)).shape == (2,)
    with pytest.raises(ValueError):
        D(torch.randn(2, 3, 32, 32))


@pytest.mark.parametrize("norm", ["batch", "spectral", "group"])
def test_lsgan_variants(norm):
    torch.manual_seed(0)
    D = _randomise(models.create("lsgan_d", ndf=8, image_size=32, norm=norm))
    assert any(isinstance(m, (SNConv2d, SNLinear)) for m in D.modules()) == (norm == "spectral")
    assert any(isinstance(m, BatchNormAct2d) for m in D.modules()) == (norm == "batch")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in D.modules()) or norm == "batch"
    x = torch.randn(3, 3, 32, 32)
    assert D(x).shape == (3,)
    assert_backends_match(D.train(), [x])
    assert_backends_match(D.eval(), [x])


def test_lsgan_training_step_least_squares():
    torch.manual_seed(0)
    D = models.create("lsgan_d", ndf=8, image_size=32)
    real, fake = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)

    def loss(d):
        r, f = d(real), d(fake)
        return F.mse_loss(r, torch.ones_like(r)) + F.mse_loss(f, torch.zeros_like(f))

    optimiser_step(D, loss)
