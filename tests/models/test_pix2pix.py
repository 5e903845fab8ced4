"""pix2pix U-Net, PatchGAN, PixelGAN and the CycleGAN ResNet generators: shapes, upstream
parameter counts, upstream checkpoints, backends, a training step."""

import functools

import pytest
import torch
from torch import nn
from torch.nn.functional import binary_cross_entropy_with_logits as bce
from torch.nn.functional import l1_loss, mse_loss

import fastgan.models as models
from fastgan.nn import BatchNormAct2d

from .zoo import assert_backends_match, n_params, optimiser_step


# --- The upstream architectures (junyanz/pytorch-CycleGAN-and-pix2pix models/networks.py),
# --- our own rewrite with upstream's layout, in-place activations and bias rule.

def _norm_layer(norm):
    return {"batch": functools.partial(nn.BatchNorm2d, affine=True, track_running_stats=True),
            "instance": functools.partial(nn.InstanceNorm2d, affine=False,
                                          track_running_stats=False),
            "none": lambda c: nn.Identity()}[norm]


def _use_bias(norm_layer):
    f = norm_layer.func if isinstance(norm_layer, functools.partial) else norm_layer
    return f is nn.InstanceNorm2d


class UpUnetBlock(nn.Module):
    def __init__(self, outer_nc, inner_nc, input_nc=None, submodule=None, outermost=False,
                 innermost=False, norm_layer=nn.BatchNorm2d, use_dropout=False):
        super().__init__()
        self.outermost = outermost
        b = _use_bias(norm_layer)
        input_nc = input_nc or outer_nc
        downconv = nn.Conv2d(input_nc, inner_nc, 4, 2, 1, bias=b)
        downrelu, uprelu = nn.LeakyReLU(0.2, True), nn.ReLU(True)
        if outermost:
            model = [downconv, submodule, uprelu, nn.ConvTranspose2d(inner_nc * 2, outer_nc, 4, 2, 1),
                     nn.Tanh()]
        elif innermost:
            model = [downrelu, downconv, uprelu,
                     nn.ConvTranspose2d(inner_nc, outer_nc, 4, 2, 1, bias=b), norm_layer(outer_nc)]
        else:
            model = [downrelu, downconv, norm_layer(inner_nc), submodule, uprelu,
                     nn.ConvTranspose2d(inner_nc * 2, outer_nc, 4, 2, 1, bias=b), norm_layer(outer_nc)]
            if use_dropout:
                model.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*model)

    def forward(self, x):
        return self.model(x) if self.outermost else torch.cat([x, self.model(x)], 1)


class UpUnetGenerator(nn.Module):
    def __init__(self, input_nc, output_nc, num_downs, ngf=64, norm_layer=nn.BatchNorm2d,
                 use_dropout=False):
        super().__init__()
        blk = UpUnetBlock(ngf * 8, ngf * 8, innermost=True, norm_layer=norm_layer)
        for _ in range(num_downs - 5):
            blk = UpUnetBlock(ngf * 8, ngf * 8, submodule=blk, norm_layer=norm_layer,
                              use_dropout=use_dropout)
        blk = UpUnetBlock(ngf * 4, ngf * 8, submodule=blk, norm_layer=norm_layer)
        blk = UpUnetBlock(ngf * 2, ngf * 4, submodule=blk, norm_layer=norm_layer)
        blk = UpUnetBlock(ngf, ngf * 2, submodule=blk, norm_layer=norm_layer)
        self.model = UpUnetBlock(output_nc, ngf, input_nc=input_nc, submodule=blk, outermost=True,
                                 norm_layer=norm_layer)

    def forward(self, x):
        return self.model(x)


class UpNLayerDiscriminator(nn.Module):
    def __init__(self, input_nc, ndf=64, n_layers=3, norm_layer=nn.BatchNorm2d):
        super().__init__()
        b = _use_bias(norm_layer)
        seq = [nn.Conv2d(input_nc, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        nf_mult = 1
        for n in range(1, n_layers):
            prev, nf_mult = nf_mult, min(2 ** n, 8)
            seq += [nn.Conv2d(ndf * prev, ndf * nf_mult, 4, 2, 1, bias=b), norm_layer(ndf * nf_mult),
                    nn.LeakyReLU(0.2, True)]
        prev, nf_mult = nf_mult, min(2 ** n_layers, 8)
        seq += [nn.Conv2d(ndf * prev, ndf * nf_mult, 4, 1, 1, bias=b), norm_layer(ndf * nf_mult),
                nn.LeakyReLU(0.2, True), nn.Conv2d(ndf * nf_mult, 1, 4, 1, 1)]
        self.model = nn.Sequential(*seq)

    def forward(self, x):
        return self.model(x)


class UpPixelDiscriminator(nn.Module):
    def __init__(self, input_nc, ndf=64, norm_layer=nn.BatchNorm2d):
        super().__init__()
        b = _use_bias(norm_layer)
        self.net = nn.Sequential(
            nn.Conv2d(input_nc, ndf, 1, 1, 0), nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf, ndf * 2, 1, 1, 0, bias=b), norm_layer(ndf * 2), nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * 2, 1, 1, 1, 0, bias=b))

    def forward(self, x):
        return self.net(x)


class UpResnetBlock(nn.Module):
    def __init__(self, dim, norm_layer, use_dropout, use_bias):
        super().__init__()
        blk = [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=use_bias), norm_layer(dim),
               nn.ReLU(True)]
        if use_dropout:
            blk.append(nn.Dropout(0.5))
        blk += [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=use_bias), norm_layer(dim)]
        self.conv_block = nn.Sequential(*blk)

    def forward(self, x):
        return x + self.conv_block(x)


class UpResnetGenerator(nn.Module):
    def __init__(self, input_nc, output_nc, ngf=64, norm_layer=nn.BatchNorm2d, use_dropout=False,
                 n_blocks=6):
        super().__init__()
        b = _use_bias(norm_layer)
        m = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, 7, bias=b), norm_layer(ngf), nn.ReLU(True)]
        for i in range(2):
            c = ngf * 2 ** i
            m += [nn.Conv2d(c, c * 2, 3, 2, 1, bias=b), norm_layer(c * 2), nn.ReLU(True)]
        m += [UpResnetBlock(ngf * 4, norm_layer, use_dropout, b) for _ in range(n_blocks)]
        for i in range(2):
            c = ngf * 2 ** (2 - i)
            m += [nn.ConvTranspose2d(c, c // 2, 3, 2, 1, output_padding=1, bias=b),
                  norm_layer(c // 2), nn.ReLU(True)]
        m += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7), nn.Tanh()]
        self.model = nn.Sequential(*m)

    def forward(self, x):
        return self.model(x)


def _randomise(*nets):
    """Random BN affine parameters and running statistics, so the comparison can fail."""
    for net in nets:
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.3)
                nn.init.normal_(m.bias, 0.0, 0.3)
                m.running_mean.normal_(0, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(7)


# --- Parameter counts of the reference configs.

def test_reference_parameter_counts():
    bn, inorm = _norm_layer("batch"), _norm_layer("instance")
    with torch.device("meta"):
        pairs = [
            (UpUnetGenerator(3, 3, 8, 64, bn, True), models.create("pix2pix_unet256_g"), 54_413_955),
            (UpNLayerDiscriminator(6, 64, 3, bn), models.create("patchgan_d"), 2_768_705),
            (UpResnetGenerator(3, 3, 64, inorm, False, 9), models.create("cyclegan_resnet9_g"),
             11_378_179),
            (UpResnetGenerator(3, 3, 64, inorm, False, 6), models.create("cyclegan_resnet6_g"),
             7_837_699),
            (UpPixelDiscriminator(6, 64, bn), models.create("pixelgan_d"), 9_024),
        ]
    for up, ours, count in pairs:
        assert n_params(up) == count and n_params(ours) == count
        assert {k: v.shape for k, v in up.state_dict().items()} == \
               {k: v.shape for k, v in ours.state_dict().items()}


# --- Upstream checkpoints load and give upstream's function.

CASES = {
    "pix2pix_unet256_g": (lambda norm: UpUnetGenerator(3, 2, 5, 4, _norm_layer(norm), True),
                          dict(output_nc=2, num_downs=5, ngf=4), (2, 3, 32, 32)),
    "patchgan_d": (lambda norm: UpNLayerDiscriminator(6, 4, 3, _norm_layer(norm)),
                   dict(input_nc=6, ndf=4), (2, 6, 40, 40)),
    "pixelgan_d": (lambda norm: UpPixelDiscriminator(6, 4, _norm_layer(norm)),
                   dict(input_nc=6, ndf=4), (2, 6, 9, 11)),
    "cyclegan_resnet6_g": (lambda norm: UpResnetGenerator(3, 3, 4, _norm_layer(norm), True, 6),
                           dict(ngf=4, use_dropout=True), (2, 3, 16, 20)),
    "cyclegan_resnet9_g": (lambda norm: UpResnetGenerator(3, 3, 4, _norm_layer(norm), False, 9),
                           dict(ngf=4), (2, 3, 16, 16)),
}


@pytest.mark.parametrize("name,norm", [(n, norm) for n in CASES for norm in ("batch", "instance", "none")
                                       if n != "cyclegan_resnet9_g" or norm == "instance"])
def test_upstream_checkpoint(name, norm):
    torch.manual_seed(0)
    build, cfg, shape = CASES[name]
    up = build(norm)
    _randomise(up)
    sd = up.state_dict()
    ours = models.load_upstream(name, sd, norm=norm, backend="reference", **cfg)
    if norm == "batch":
        assert any(isinstance(m, BatchNormAct2d) for m in ours.modules())
    x = torch.randn(shape)
    for train in (False, True):
        up.train(train)
        ours.train(train)
        torch.manual_seed(1)
        want = up(x.clone())
        torch.manual_seed(1)
        got = ours(x.clone())
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    if norm == "batch":  # the running statistics moved the same way
        for k, v in up.state_dict().items():
            torch.testing.assert_close(ours.state_dict()[k], v)


def test_converter_patches_old_checkpoints_and_is_strict():
    torch.manual_seed(0)
    # BN checkpoints saved before num_batches_tracked existed.
    up = UpNLayerDiscriminator(6, 4, 3, _norm_layer("batch"))
    sd = {k: v for k, v in up.state_dict().items() if not k.endswith("num_batches_tracked")}
    out = models.convert_upstream("patchgan_d", sd)
    assert int(out["model.3.num_batches_tracked"]) == 0
    # Old instance-norm checkpoints (track_running_stats=True) hold running statistics: dropped.
    up = UpResnetGenerator(3, 3, 4, functools.partial(nn.InstanceNorm2d, track_running_stats=True),
                           False, 6)
    sd = up.state_dict()
    assert "model.2.running_mean" in sd
    out = models.convert_upstream("cyclegan_resnet6_g", sd)
    assert not any(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in out)
    models.load_upstream("cyclegan_resnet6_g", sd, ngf=4)
    # Unknown keys, wrong shapes and the wrong model raise, naming the problem.
    sd = dict(UpPixelDiscriminator(6, 4, _norm_layer("batch")).state_dict())
    with pytest.raises(ValueError, match="unknown keys.*net.9.weight"):
        models.convert_upstream("pixelgan_d", {**sd, "net.9.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="net.2.weight has shape"):
        models.convert_upstream("pixelgan_d", {**sd, "net.2.weight": torch.zeros(8, 4, 3, 3)})
    with pytest.raises(ValueError, match="model.1.weight"):
        models.convert_upstream("cyclegan_resnet9_g", sd)
    sd6 = UpResnetGenerator(3, 3, 4, _norm_layer("instance"), False, 6).state_dict()
    with pytest.raises(ValueError, match="6 ResnetBlocks"):
        models.convert_upstream("cyclegan_resnet9_g", sd6)


# --- Shapes, backends, training.

def test_shapes():
    torch.manual_seed(0)
    g = models.create("pix2pix_unet256_g", ngf=2)
    x = torch.randn(1, 3, 256, 256)
    y = g.eval()(x)
    assert y.shape == (1, 3, 256, 256) and y.abs().max() <= 1
    assert models.create("patchgan_d", ndf=2)(torch.cat([x, y], 1)).shape == (1, 1, 30, 30)
    assert models.create("pixelgan_d", ndf=2)(torch.randn(2, 6, 7, 5)).shape == (2, 1, 7, 5)
    for n_layers, size in [(1, 62), (2, 30), (4, 6)]:
        d = models.create("patchgan_d", input_nc=3, ndf=2, n_layers=n_layers)
        assert d(torch.randn(1, 3, 128, 128)).shape == (1, 1, size, size)
    for name in ("cyclegan_resnet6_g", "cyclegan_resnet9_g"):
        assert models.create(name, ngf=2)(torch.randn(2, 3, 12, 16)).shape == (2, 3, 12, 16)
    # The three dropout levels of U-Net-256.
    assert sum(isinstance(m, nn.Dropout) for m in g.modules()) == 3
    with pytest.raises(ValueError, match="divisible"):
        g(torch.randn(1, 3, 128, 128))
    with pytest.raises(ValueError, match="norm"):
        models.create("patchgan_d", norm="group")


@pytest.mark.parametrize("name,cfg,shape", [
    ("pix2pix_unet256_g", dict(ngf=4, num_downs=5, use_dropout=False), (2, 3, 32, 32)),
    ("patchgan_d", dict(ndf=4), (2, 6, 32, 32)),
    ("pixelgan_d", dict(ndf=4), (2, 6, 8, 8)),
    ("cyclegan_resnet6_g", dict(ngf=4, norm="batch"), (2, 3, 12, 12)),
])
def test_backends_match(name, cfg, shape):
    torch.manual_seed(0)
    model = models.create(name, **cfg)
    _randomise(model)
    # Train-mode BN backward through the deep ResNet sums to gradients of ~100 in the first conv;
    # float32 rounding is ~1e-4 there (the reference differs from itself in float64 as much),
    # so float32 gets an absolute tolerance on that scale and float64 checks tightly.
    atol = 1e-3 if name.startswith("cyclegan") else 1e-5
    assert_backends_match(model, [torch.randn(shape)], atol=atol)
    assert_backends_match(model.eval(), [torch.randn(shape)], atol=atol)
    assert_backends_match(model.double().train(), [torch.randn(shape, dtype=torch.float64)],
                          rtol=1e-9, atol=1e-9)


def test_pix2pix_training_step():
    torch.manual_seed(0)
    g = models.create("pix2pix_unet256_g", ngf=4, num_downs=5)
    d = models.create("patchgan_d", ndf=4)
    a, b = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)

    def g_loss(g):
        fake = g(a)
        logits = d(torch.cat([a, fake], 1))
        return bce(logits, torch.ones_like(logits)) + 100 * l1_loss(fake, b)

    def d_loss(d):
        real, fake = d(torch.cat([a, b], 1)), d(torch.cat([a, g(a).detach()], 1))
        return 0.5 * (bce(real, torch.ones_like(real)) + bce(fake, torch.zeros_like(fake)))

    optimiser_step(g, g_loss)
    optimiser_step(d, d_loss)


def test_cyclegan_training_step():
    torch.manual_seed(0)
    g = models.create("cyclegan_resnet6_g", ngf=4)
    f = models.create("cyclegan_resnet6_g", ngf=4)
    d = models.create("patchgan_d", input_nc=3, ndf=4, norm="instance")
    a = torch.randn(2, 3, 32, 32)

    def g_loss(g):  # LSGAN + cycle consistency
        fake = g(a)
        logits = d(fake)
        return mse_loss(logits, torch.ones_like(logits)) + 10 * l1_loss(f(fake), a)

    def d_loss(d):
        real, fake = d(a), d(g(a).detach())
        return 0.5 * (mse_loss(real, torch.ones_like(real)) + mse_loss(fake, torch.zeros_like(fake)))

    optimiser_step(g, g_loss)
    optimiser_step(d, d_loss)
