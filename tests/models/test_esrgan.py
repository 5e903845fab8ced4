"""ESRGAN: RRDBNet and the VGG-style 128 discriminator: shapes, parameter counts, backends, a
training step, loading xinntao (old keys) and BasicSR (new keys) weights, network interpolation."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastgan.models as models
from fastgan.models.esrgan import interpolate_networks

from .test_srgan import _randomize
from .zoo import assert_backends_match, n_params, optimiser_step

TINY_G = dict(num_feat=8, num_block=2, num_grow_ch=4)
TINY_D = dict(num_feat=8)


class _UpstreamRDB(nn.Module):
    def __init__(self, nf, gc):
        super().__init__()
        self.conv1 = nn.Conv2d(nf, gc, 3, 1, 1)
        self.conv2 = nn.Conv2d(nf + gc, gc, 3, 1, 1)
        self.conv3 = nn.Conv2d(nf + 2 * gc, gc, 3, 1, 1)
        self.conv4 = nn.Conv2d(nf + 3 * gc, gc, 3, 1, 1)
        self.conv5 = nn.Conv2d(nf + 4 * gc, nf, 3, 1, 1)

    def forward(self, x):
        lrelu = lambda t: F.leaky_relu(t, 0.2)  # noqa: E731
        x1 = lrelu(self.conv1(x))
        x2 = lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        return self.conv5(torch.cat((x, x1, x2, x3, x4), 1)) * 0.2 + x


class _UpstreamRRDB(nn.Module):
    def __init__(self, nf, gc, old):
        super().__init__()
        self.names = ("RDB1", "RDB2", "RDB3") if old else ("rdb1", "rdb2", "rdb3")
        for n in self.names:
            setattr(self, n, _UpstreamRDB(nf, gc))

    def forward(self, x):
        out = x
        for n in self.names:
            out = getattr(self, n)(out)
        return out * 0.2 + x


class UpstreamRRDBNet(nn.Module):
    """RRDBNet x4, our own rewrite; ``old=True``: xinntao/ESRGAN RRDBNet_arch.py's attribute names
    (RRDB_trunk, RDB1, trunk_conv, upconv1, upconv2, HRconv), else BasicSR rrdbnet_arch.py's."""

    def __init__(self, nf=64, nb=23, gc=32, old=True):
        super().__init__()
        self.old = old
        n = (dict(trunk="RRDB_trunk", body="trunk_conv", up1="upconv1", up2="upconv2", hr="HRconv")
             if old else
             dict(trunk="body", body="conv_body", up1="conv_up1", up2="conv_up2", hr="conv_hr"))
        self.n = n
        self.conv_first = nn.Conv2d(3, nf, 3, 1, 1)
        setattr(self, n["trunk"], nn.Sequential(*[_UpstreamRRDB(nf, gc, old) for _ in range(nb)]))
        for key in ("body", "up1", "up2", "hr"):
            setattr(self, n[key], nn.Conv2d(nf, nf, 3, 1, 1))
        self.conv_last = nn.Conv2d(nf, 3, 3, 1, 1)

    def forward(self, x):
        m = lambda k: getattr(self, self.n[k])  # noqa: E731
        fea = self.conv_first(x)
        fea = fea + m("body")(m("trunk")(fea))
        fea = F.leaky_relu(m("up1")(F.interpolate(fea, scale_factor=2, mode="nearest")), 0.2)
        fea = F.leaky_relu(m("up2")(F.interpolate(fea, scale_factor=2, mode="nearest")), 0.2)
        return self.conv_last(F.leaky_relu(m("hr")(fea), 0.2))


class UpstreamVGGStyleDiscriminator(nn.Module):
    """BasicSR's VGGStyleDiscriminator for 128x128 (basicsr/archs/discriminator_arch.py), our own
    rewrite with its attribute names: conv0_0, conv0_1, bn0_1, ..., conv4_1, bn4_1, linear1,
    linear2."""

    def __init__(self, num_in_ch=3, num_feat=64):
        super().__init__()
        nf = num_feat
        self.conv0_0 = nn.Conv2d(num_in_ch, nf, 3, 1, 1, bias=True)
        self.conv0_1 = nn.Conv2d(nf, nf, 4, 2, 1, bias=False)
        self.bn0_1 = nn.BatchNorm2d(nf)
        cin = nf
        for s, w in enumerate((2 * nf, 4 * nf, 8 * nf, 8 * nf), start=1):
            setattr(self, f"conv{s}_0", nn.Conv2d(cin, w, 3, 1, 1, bias=False))
            setattr(self, f"bn{s}_0", nn.BatchNorm2d(w))
            setattr(self, f"conv{s}_1", nn.Conv2d(w, w, 4, 2, 1, bias=False))
            setattr(self, f"bn{s}_1", nn.BatchNorm2d(w))
            cin = w
        self.linear1 = nn.Linear(nf * 8 * 4 * 4, 100)
        self.linear2 = nn.Linear(100, 1)

    def forward(self, x):
        lrelu = lambda t: F.leaky_relu(t, 0.2)  # noqa: E731
        feat = lrelu(self.conv0_0(x))
        feat = lrelu(self.bn0_1(self.conv0_1(feat)))
        for s in range(1, 5):
            feat = lrelu(getattr(self, f"bn{s}_0")(getattr(self, f"conv{s}_0")(feat)))
            feat = lrelu(getattr(self, f"bn{s}_1")(getattr(self, f"conv{s}_1")(feat)))
        return self.linear2(lrelu(self.linear1(feat.flatten(1))))


def test_shapes():
    g = models.create("esrgan_g", **TINY_G)
    assert g(torch.randn(2, 3, 5, 7)).shape == (2, 3, 20, 28)
    x2 = models.create("esrgan_g", scale=2, **TINY_G)
    assert x2(torch.randn(1, 3, 8, 6)).shape == (1, 3, 16, 12)
    d = models.create("esrgan_d", **TINY_D)
    assert d(torch.randn(2, 3, 128, 128)).shape == (2, 1)
    d256 = models.create("esrgan_d", input_size=256, **TINY_D)
    assert d256(torch.randn(2, 3, 256, 256)).shape == (2, 1)
    with pytest.raises(ValueError, match="128"):
        d(torch.randn(2, 3, 96, 96))


def test_parameter_counts():
    with torch.device("meta"):
        g = models.create("esrgan_g")
        up_old, up_new = UpstreamRRDBNet(old=True), UpstreamRRDBNet(old=False)
        d, up_d = models.create("esrgan_d"), UpstreamVGGStyleDiscriminator(3, 64)
    assert n_params(g) == n_params(up_old) == n_params(up_new) == 16_697_987  # ESRGAN x4
    assert n_params(d) == n_params(up_d) == 14_499_401  # BasicSR VGGStyleDiscriminator(3, 64), 128
    assert list(d.state_dict()) == list(up_d.state_dict())  # BasicSR's keys, in BasicSR's order


def test_backends_match():
    torch.manual_seed(0)
    g = _randomize(models.create("esrgan_g", **TINY_G))
    assert_backends_match(g, [torch.randn(2, 3, 5, 6)])
    # Nine BNs over small batches amplify float32 rounding in the backward past 1e-5: float64.
    d = _randomize(models.create("esrgan_d", **TINY_D)).double()
    assert_backends_match(d, [torch.randn(3, 3, 128, 128, dtype=torch.float64)])
    d.eval()
    assert_backends_match(d, [torch.randn(2, 3, 128, 128, dtype=torch.float64)])


def test_optimiser_steps():
    torch.manual_seed(1)
    g = models.create("esrgan_g", **TINY_G)
    lr_img, hr_img = torch.rand(2, 3, 6, 6), torch.rand(2, 3, 24, 24)
    optimiser_step(g, lambda m: F.l1_loss(m(lr_img), hr_img))
    d = models.create("esrgan_d", **TINY_D)
    real, fake = torch.rand(2, 3, 128, 128), torch.rand(2, 3, 128, 128)

    def d_loss(m):
        lr, lf = m(real), m(fake)
        return (F.binary_cross_entropy_with_logits(lr, torch.ones_like(lr))
                + F.binary_cross_entropy_with_logits(lf, torch.zeros_like(lf)))

    optimiser_step(d, d_loss)


@pytest.mark.parametrize("old", [True, False], ids=["xinntao_keys", "basicsr_keys"])
def test_load_upstream_rrdbnet(old):
    torch.manual_seed(2)
    up = _randomize(UpstreamRRDBNet(nf=8, nb=2, gc=4, old=old)).eval()
    sd = up.state_dict()
    assert any(k.startswith("RRDB_trunk.1.RDB3.") for k in sd) == old
    ours = models.load_upstream("esrgan_g", sd, **TINY_G).eval()
    x = torch.randn(2, 3, 6, 5)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), up(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="RRDB_trunk.0.RDB4.conv1.weight"):
        models.convert_upstream("esrgan_g",
                                dict(sd, **{"RRDB_trunk.0.RDB4.conv1.weight": torch.ones(1)}))


def test_load_basicsr_discriminator():
    torch.manual_seed(3)
    # float64: nine train-mode BNs over a batch of 3 put float32 rounding near 1e-5.
    up = _randomize(UpstreamVGGStyleDiscriminator(3, 8)).double()
    ours = models.load_upstream("esrgan_d", {"params": up.state_dict()}, **TINY_D).double()
    x = torch.randn(3, 3, 128, 128, dtype=torch.float64)
    for mode in (True, False):
        up.train(mode), ours.train(mode)
        torch.testing.assert_close(ours(x), up(x), rtol=1e-5, atol=1e-5)
    # train-mode forwards updated both sets of running stats alike
    torch.testing.assert_close(ours.bn3_1.running_var, up.bn3_1.running_var)
    with pytest.raises(ValueError, match="conv9_0.weight"):
        models.convert_upstream("esrgan_d",
                                dict(up.state_dict(), **{"conv9_0.weight": torch.ones(1)}))


def test_interpolate_networks():
    torch.manual_seed(4)
    psnr = _randomize(models.create("esrgan_d", **TINY_D), seed=5).state_dict()
    gan = _randomize(models.create("esrgan_d", **TINY_D), seed=6).state_dict()
    gan["bn0_1.num_batches_tracked"].fill_(7)
    for alpha, expect in ((0.0, psnr), (1.0, gan)):
        out = interpolate_networks(psnr, gan, alpha)
        for k in psnr:
            if psnr[k].is_floating_point():
                torch.testing.assert_close(out[k], expect[k], rtol=0, atol=0)
    mid = interpolate_networks(psnr, gan, 0.5)
    for k in ("conv2_0.weight", "linear1.bias", "bn1_0.running_var"):
        torch.testing.assert_close(mid[k], (psnr[k] + gan[k]) / 2)
    assert mid["bn0_1.num_batches_tracked"].item() == 7
    assert not torch.equal(mid["conv2_0.weight"], psnr["conv2_0.weight"])
    # the result loads into the model
    models.create("esrgan_d", **TINY_D).load_state_dict(mid)
    missing = {k: v for k, v in gan.items() if k != "linear2.bias"}
    with pytest.raises(ValueError, match="linear2.bias"):
        interpolate_networks(psnr, missing, 0.5)
    wrong = dict(gan, **{"linear2.weight": torch.ones(1, 3)})
    with pytest.raises(ValueError, match="linear2.weight"):
        interpolate_networks(psnr, wrong, 0.5)
