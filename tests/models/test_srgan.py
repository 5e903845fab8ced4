"""SRResNet (BasicSR MSRResNet and the paper's variant) and the SRGAN discriminator: shapes,
parameter counts, backends, a training step, and loading BasicSR MSRResNet weights."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastgan.models as models
from fastgan.models.srgan import MSRResNet

from .zoo import assert_backends_match, n_params, optimiser_step

TINY_G = dict(num_feat=8, num_block=2)
TINY_D = dict(num_feat=8)


def _randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random values in every floating parameter and buffer (BN ones/zeros included); running
    variances kept positive."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in [*module.named_parameters(), *module.named_buffers()]:
            if t.is_floating_point():
                r = torch.randn(t.shape, generator=gen) * 0.1
                t.copy_(r.abs() + 0.5 if name.endswith("running_var") else r + t)
    return module


class UpstreamMSRResNet(nn.Module):
    """BasicSR's MSRResNet (basicsr/archs/srresnet_arch.py) for x4, our own rewrite: same
    attribute names, shapes and forward (nn.PixelShuffle + LeakyReLU 0.1, bilinear base)."""

    def __init__(self, num_in_ch=3, num_out_ch=3, num_feat=64, num_block=16):
        super().__init__()
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*[_UpstreamResBlock(num_feat) for _ in range(num_block)])
        self.upconv1 = nn.Conv2d(num_feat, num_feat * 4, 3, 1, 1)
        self.upconv2 = nn.Conv2d(num_feat, num_feat * 4, 3, 1, 1)
        self.pixel_shuffle = nn.PixelShuffle(2)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(0.1)

    def forward(self, x):
        feat = self.lrelu(self.conv_first(x))
        out = self.body(feat)
        out = self.lrelu(self.pixel_shuffle(self.upconv1(out)))
        out = self.lrelu(self.pixel_shuffle(self.upconv2(out)))
        out = self.conv_last(self.lrelu(self.conv_hr(out)))
        return out + F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)


class _UpstreamResBlock(nn.Module):
    def __init__(self, num_feat):
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)

    def forward(self, x):
        return x + self.conv2(F.relu(self.conv1(x)))


class UpstreamSRGANDiscriminator(nn.Module):
    """Ledig et al. (2017) Fig. 4 discriminator, written plainly: conv k3n64s1 + LReLU, then
    k3 n(64,128,128,256,256,512,512) s(2,1,2,1,2,1,2) + BN + LReLU, dense 1024, LReLU, dense 1."""

    def __init__(self, num_feat=64, size=96):
        super().__init__()
        w = [num_feat * m for m in (1, 1, 2, 2, 4, 4, 8, 8)]
        layers = [nn.Conv2d(3, w[0], 3, 1, 1), nn.LeakyReLU(0.2)]
        for i in range(1, 8):
            layers += [nn.Conv2d(w[i - 1], w[i], 3, 2 if i % 2 else 1, 1, bias=False),
                       nn.BatchNorm2d(w[i]), nn.LeakyReLU(0.2)]
        self.features = nn.Sequential(*layers)
        self.dense1 = nn.Linear(w[-1] * (size // 16) ** 2, 1024)
        self.dense2 = nn.Linear(1024, 1)

    def forward(self, x):
        return self.dense2(F.leaky_relu(self.dense1(self.features(x).flatten(1)), 0.2))


def test_shapes_and_registry():
    g = models.create("srresnet_g", **TINY_G)
    assert isinstance(g, MSRResNet)
    assert g(torch.randn(2, 3, 7, 9)).shape == (2, 3, 28, 36)
    p = models.create("srresnet_g", variant="srresnet", **TINY_G)
    assert p(torch.randn(2, 3, 6, 5)).shape == (2, 3, 24, 20)
    x3 = models.create("srresnet_g", upscale=3, **TINY_G)
    assert x3(torch.randn(1, 3, 5, 5)).shape == (1, 3, 15, 15)
    d = models.create("srgan_d", **TINY_D)
    assert d(torch.randn(2, 3, 96, 96)).shape == (2, 1)
    with pytest.raises(ValueError, match="96"):
        d(torch.randn(2, 3, 64, 64))
    with pytest.raises(ValueError, match="variant"):
        models.create("srresnet_g", variant="edsr")
    assert models.upstream_names()["srresnet_g"] == "BasicSR MSRResNet"


def test_parameter_counts():
    with torch.device("meta"):
        g, up = models.create("srresnet_g"), UpstreamMSRResNet()
        d, up_d = models.create("srgan_d"), UpstreamSRGANDiscriminator()
        paper = models.create("srresnet_g", variant="srresnet")
    assert n_params(g) == n_params(up) == 1_517_571  # BasicSR MSRResNet x4, nf 64, nb 16
    assert n_params(d) == n_params(up_d) == 23_563_649  # SRGAN D at 96x96 (fixture count)
    # the paper's SRResNet: two 9x9 end convs, BN in blocks and after conv_body, 19 PReLUs
    conv3 = 64 * 64 * 9 + 64
    expected = (3 * 64 * 81 + 64) + 16 * (2 * conv3 + 4 * 64 + 1) + conv3 + 128 + 1 \
        + 2 * (64 * 256 * 9 + 256 + 1) + (64 * 3 * 81 + 3)
    assert n_params(paper) == expected == 1_549_462


@pytest.mark.parametrize("variant", ["msrresnet", "srresnet"])
def test_generator_backends_match(variant):
    torch.manual_seed(0)
    # The paper's variant normalises tiny batches (2 x 6 x 7) 5 times: float32 rounding grows past
    # 1e-5 through the BN backward, so it is compared in float64 (both backends support it).
    dtype = torch.float64 if variant == "srresnet" else torch.float32
    g = _randomize(models.create("srresnet_g", variant=variant, **TINY_G)).to(dtype)
    assert_backends_match(g, [torch.randn(2, 3, 6, 7, dtype=dtype)])
    g.eval()
    assert_backends_match(g, [torch.randn(2, 3, 5, 4, dtype=dtype)])


def test_discriminator_backends_match():
    torch.manual_seed(1)
    d = _randomize(models.create("srgan_d", **TINY_D))
    assert_backends_match(d, [torch.randn(3, 3, 96, 96)])


def test_optimiser_steps():
    torch.manual_seed(2)
    lr_img, hr_img = torch.rand(2, 3, 6, 6), torch.rand(2, 3, 24, 24)
    for variant in ("msrresnet", "srresnet"):
        g = models.create("srresnet_g", variant=variant, **TINY_G)
        optimiser_step(g, lambda m: F.l1_loss(m(lr_img), hr_img))
    d = models.create("srgan_d", **TINY_D)
    real, fake = torch.rand(2, 3, 96, 96), torch.rand(2, 3, 96, 96)

    def d_loss(m):
        lr, lf = m(real), m(fake)
        return (F.binary_cross_entropy_with_logits(lr, torch.ones_like(lr))
                + F.binary_cross_entropy_with_logits(lf, torch.zeros_like(lf)))

    optimiser_step(d, d_loss)


def test_load_basicsr_msrresnet():
    torch.manual_seed(3)
    up = _randomize(UpstreamMSRResNet(**TINY_G)).eval()
    x = torch.randn(2, 3, 6, 5)
    for wrap in (lambda sd: sd, lambda sd: {"params_ema": sd}):
        ours = models.load_upstream("srresnet_g", wrap(up.state_dict()), **TINY_G).eval()
        with torch.no_grad():
            torch.testing.assert_close(ours(x), up(x), rtol=1e-5, atol=1e-5)
    bad = dict(up.state_dict(), **{"body.0.conv3.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="body.0.conv3.weight"):
        models.convert_upstream("srresnet_g", bad)


def test_discriminator_matches_plain_pytorch():
    """Same weights in order -> same logits, train mode (batch statistics) and eval mode."""
    torch.manual_seed(4)
    up = _randomize(UpstreamSRGANDiscriminator(num_feat=8))
    ours = models.create("srgan_d", **TINY_D)
    theirs = list(up.state_dict().values())
    assert [t.shape for t in ours.state_dict().values()] == [t.shape for t in theirs]
    ours.load_state_dict(dict(zip(ours.state_dict(), theirs)))
    x = torch.randn(3, 3, 96, 96)
    for mode in (True, False):
        up.train(mode), ours.train(mode)
        torch.testing.assert_close(ours(x), up(x), rtol=1e-5, atol=1e-5)
