"""DCGAN and conditional DCGAN: shapes, upstream parameter counts, backends, an optimiser step,
initialisation."""

import pytest
import torch
from torch import nn
from torch.nn.functional import binary_cross_entropy_with_logits as bce

import fastgan.models as models
from fastgan.nn import BatchNormAct2d

from .zoo import assert_backends_match, n_params, optimiser_step

TINY = dict(ngf=8, nc=3, image_size=32)


class UpstreamDCGANGenerator(nn.Module):
    """The PyTorch DCGAN example's generator (pytorch/examples dcgan/main.py), our own rewrite."""

    def __init__(self, nz=100, ngf=64, nc=3):
        super().__init__()
        self.main = nn.Sequential(
            nn.ConvTranspose2d(nz, ngf * 8, 4, 1, 0, bias=False),
            nn.BatchNorm2d(ngf * 8),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ngf * 4),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ngf * 2),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ngf),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False),
            nn.Tanh())

    def forward(self, z):
        return self.main(z)


class UpstreamDCGANDiscriminator(nn.Module):
    """The PyTorch DCGAN example's discriminator, Sigmoid dropped (we compare logits)."""

    def __init__(self, ndf=64, nc=3):
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(nc, ndf, 4, 2, 1, bias=False),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ndf * 2),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ndf * 4),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * 4, ndf * 8, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ndf * 8),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * 8, 1, 4, 1, 0, bias=False))

    def forward(self, x):
        return self.main(x).view(-1)


def _upstream_to_ours(upstream: nn.Module) -> dict:
    """Upstream's Sequential indices -> ours (each BN + activation pair is one fused module)."""
    ours, index, mapping = {}, 0, {}
    for i, m in enumerate(upstream.main):
        if isinstance(m, (nn.ConvTranspose2d, nn.Conv2d, nn.BatchNorm2d)):
            mapping[i] = index
            index += 1
        elif isinstance(m, nn.Tanh):
            index += 1
        elif isinstance(m, nn.LeakyReLU) and i == 1:
            index += 1  # the input layer's activation is not fused (no BN there)
    for k, v in upstream.state_dict().items():
        _, i, rest = k.split(".", 2)
        ours[f"main.{mapping[int(i)]}.{rest}"] = v
    return ours


def test_reference_parameter_counts():
    # Counted from the upstream layers: G 100*512*16 + 512*256*16 + 256*128*16 + 128*64*16 + 64*3*16
    # conv weights + 2*(512+256+128+64) BN; D 3*64*16 + 64*128*16 + 128*256*16 + 256*512*16 +
    # 512*16 + 2*(128+256+512).
    with torch.device("meta"):
        up_g, up_d = UpstreamDCGANGenerator(), UpstreamDCGANDiscriminator()
        g, d = models.create("dcgan_g"), models.create("dcgan_d")
    assert n_params(up_g) == 3_576_704 and n_params(g) == 3_576_704
    assert n_params(up_d) == 2_765_568 and n_params(d) == 2_765_568


def test_same_function_as_the_upstream_architecture():
    torch.manual_seed(0)
    up_g, up_d = UpstreamDCGANGenerator(nz=16, ngf=8, nc=3), UpstreamDCGANDiscriminator(ndf=8, nc=3)
    for m in (*up_g.modules(), *up_d.modules()):
        if isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.3)
            nn.init.normal_(m.bias, 0.0, 0.3)
    g = models.create("dcgan_g", nz=16, ngf=8, backend="reference")
    d = models.create("dcgan_d", ndf=8, backend="reference")
    g.load_state_dict(_upstream_to_ours(up_g), strict=True)
    d.load_state_dict(_upstream_to_ours(up_d), strict=True)
    z = torch.randn(4, 16, 1, 1)
    for train in (True, False):
        for m in (g, d, up_g, up_d):
            m.train(train)
        x = up_g(z)
        torch.testing.assert_close(g(z), x, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(d(x), up_d(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("image_size", [32, 64])
def test_shapes(image_size):
    torch.manual_seed(0)
    g = models.create("dcgan_g", nz=16, ngf=4, nc=3, image_size=image_size)
    d = models.create("dcgan_d", ndf=4, nc=3, image_size=image_size)
    z = torch.randn(3, 16)
    x = g(z)
    assert x.shape == (3, 3, image_size, image_size)
    assert x.abs().max() <= 1
    torch.testing.assert_close(g.eval()(z[:, :, None, None]), g(z))
    assert d(x).shape == (3,)
    # One fewer up/down block at 32x32.
    assert len(g.main) == (10 if image_size == 64 else 8)
    with pytest.raises(ValueError, match="z must be"):
        g(torch.randn(3, 15))


@pytest.mark.parametrize("condition", ["embedding", "onehot"])
def test_cgan_shapes_and_label_dependence(condition):
    torch.manual_seed(0)
    g = models.create("cgan_g", nz=16, condition=condition, **TINY)
    d = models.create("cgan_d", ndf=8, nc=3, image_size=32, condition=condition)
    z, y = torch.randn(4, 16), torch.tensor([0, 3, 7, 9])
    x = g.eval()(z, y)
    assert x.shape == (4, 3, 32, 32)
    assert d(x, y).shape == (4,)
    # The label changes both networks' outputs.
    assert not torch.allclose(g(z, (y + 1) % 10), x)
    assert not torch.allclose(d.eval()(x, (y + 1) % 10), d(x, y))
    with pytest.raises(ValueError, match="y must be"):
        g(z, y[:3])
    with pytest.raises(ValueError, match="condition must be"):
        models.create("cgan_g", condition="film")


def test_cgan_parameter_counts():
    with torch.device("meta"):
        g, d = models.create("cgan_g"), models.create("cgan_d")
        g1 = models.create("cgan_g", condition="onehot")
        d1 = models.create("cgan_d", condition="onehot")
    # The conditioning adds input channels (embed_dim=50 or 10 one-hot to G; 1 map or 10 maps to D)
    # and the embedding tables.
    assert n_params(g) == 3_576_704 + 50 * 512 * 16 + 10 * 50
    assert n_params(d) == 2_765_568 + 1 * 64 * 16 + 10 * 64 * 64
    assert n_params(g1) == 3_576_704 + 10 * 512 * 16
    assert n_params(d1) == 2_765_568 + 10 * 64 * 16


def _randomise_bn(model):
    # Init gives BN weights ~1 and biases 0; spread them so the backends are compared off the
    # easy point.
    for m in model.modules():
        if isinstance(m, BatchNormAct2d):
            nn.init.normal_(m.weight, 1.0, 0.3)
            nn.init.normal_(m.bias, 0.0, 0.3)
    return model


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("name", ["dcgan", "cgan"])
def test_backends_match(name, train):
    torch.manual_seed(1)
    g = _randomise_bn(models.create(f"{name}_g", nz=16, **TINY)).train(train)
    d = _randomise_bn(models.create(f"{name}_d", ndf=8, nc=3, image_size=32)).train(train)
    if not train:  # eval mode uses the running statistics; make them not the defaults
        for m in (*g.modules(), *d.modules()):
            if isinstance(m, BatchNormAct2d):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    z, y = torch.randn(6, 16), torch.randint(0, 10, (6,))
    x = torch.randn(6, 3, 32, 32)
    if name == "dcgan":
        assert_backends_match(g, [z])
        assert_backends_match(d, [x])
    else:
        assert_backends_match(g, [z, y])
        assert_backends_match(d, [x, y])


@pytest.mark.parametrize("name", ["dcgan", "cgan"])
def test_optimiser_step(name):
    torch.manual_seed(2)
    g = models.create(f"{name}_g", nz=16, **TINY)
    d = models.create(f"{name}_d", ndf=8, nc=3, image_size=32)
    z, y = torch.randn(8, 16), torch.randint(0, 10, (8,))
    real = torch.rand(8, 3, 32, 32) * 2 - 1
    cond = (y,) if name == "cgan" else ()

    def d_loss(d):
        fake, real_logits = g(z, *cond).detach(), d(real, *cond)
        fake_logits = d(fake, *cond)
        return (bce(real_logits, torch.ones_like(real_logits))
                + bce(fake_logits, torch.zeros_like(fake_logits)))

    def g_loss(g):
        logits = d(g(z, *cond), *cond)
        return bce(logits, torch.ones_like(logits))

    optimiser_step(d, d_loss)
    optimiser_step(g, g_loss)


@pytest.mark.parametrize("name", ["dcgan_g", "dcgan_d", "cgan_g", "cgan_d"])
def test_init_statistics(name):
    torch.manual_seed(3)
    model = models.create(name)
    convs = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    bns = [m for m in model.modules() if isinstance(m, BatchNormAct2d)]
    w = torch.cat([c.flatten() for c in convs])
    assert abs(w.mean().item()) < 1e-3 and abs(w.std().item() - 0.02) < 1e-3
    gamma = torch.cat([b.weight for b in bns])
    assert abs(gamma.mean().item() - 1) < 5e-3 and abs(gamma.std().item() - 0.02) < 5e-3
    assert all(torch.equal(b.bias, torch.zeros_like(b.bias)) for b in bns)
    # Each layer on its own is N(0, 0.02), not just the pool of them.
    for c in convs:
        if c.numel() > 10_000:
            assert abs(c.std().item() - 0.02) < 1e-3
