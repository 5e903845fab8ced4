"""fastgan.losses and fastgan.perceptual: values against hand-written formulas, gradients."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastgan.losses as L
import fastgan.perceptual as P


# ---------------------------------------------------------------- GANLoss

def _bce(x, t):
    """-[t log sigmoid(x) + (1 - t) log(1 - sigmoid(x))], elementwise, from its definition."""
    s = torch.sigmoid(x.double())
    return -(t * s.log() + (1 - t) * (1 - s).log()).mean()


@pytest.mark.parametrize("shape", [(5, 1), (3, 1, 6, 7)])
def test_gan_loss_values(shape):
    pred = torch.randn(shape) * 2
    p64 = pred.double()
    assert math.isclose(L.GANLoss("vanilla")(pred, True), _bce(pred, 1.0), rel_tol=1e-5)
    assert math.isclose(L.GANLoss("vanilla")(pred, False), _bce(pred, 0.0), rel_tol=1e-5)
    smooth = L.GANLoss("vanilla", real_label=0.9, fake_label=0.1)
    assert math.isclose(smooth(pred, True), _bce(pred, 0.9), rel_tol=1e-5)
    assert math.isclose(smooth(pred, False), _bce(pred, 0.1), rel_tol=1e-5)
    ls = L.GANLoss("lsgan", real_label=1.0, fake_label=-1.0)
    assert math.isclose(ls(pred, True), ((p64 - 1) ** 2).mean(), rel_tol=1e-5)
    assert math.isclose(ls(pred, False), ((p64 + 1) ** 2).mean(), rel_tol=1e-5)
    hinge = L.GANLoss("hinge")
    assert math.isclose(hinge(pred, True), (1 - p64).clamp_min(0).mean(), rel_tol=1e-5)
    assert math.isclose(hinge(pred, False), (1 + p64).clamp_min(0).mean(), rel_tol=1e-5)
    assert math.isclose(hinge(pred, True, for_discriminator=False), -p64.mean(), rel_tol=1e-5)
    with pytest.raises(ValueError, match="target_is_real=True"):
        hinge(pred, False, for_discriminator=False)
    for mode in ("wgan", "wgangp"):
        w = L.GANLoss(mode)
        for for_d in (True, False):
            assert math.isclose(w(pred, True, for_d), -p64.mean(), rel_tol=1e-5)
            assert math.isclose(w(pred, False, for_d), p64.mean(), rel_tol=1e-5)


def test_gan_loss_multiscale_averages_predictions():
    preds = [torch.randn(2, 1, 8, 8), torch.randn(2, 1, 4, 4), torch.randn(2, 1, 2, 2)]
    feats = [[torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), p] for p in preds]
    for mode in ("vanilla", "lsgan", "hinge", "wgan"):
        loss = L.GANLoss(mode)
        expected = sum(loss(p, True) for p in preds) / 3
        assert torch.allclose(loss(preds, True), expected, rtol=1e-6)
        # Intermediate features are ignored: only the last of each scale is a prediction.
        assert torch.allclose(loss(feats, True), expected, rtol=1e-6)


def test_gan_loss_unknown_mode_names_choices():
    with pytest.raises(ValueError, match="vanilla, lsgan, hinge, wgan, wgangp"):
        L.GANLoss("wasserstein")


def test_gan_loss_gradient():
    pred = torch.randn(4, 1, 3, 3, requires_grad=True)
    L.GANLoss("hinge")(pred, True).backward()
    expected = -(pred.detach() < 1).float() / pred.numel()
    assert torch.allclose(pred.grad, expected)


# ---------------------------------------------------------------- penalties

class _Quadratic(nn.Module):
    """D(x) = sum(a * x^2) per sample (+ b * y for a label): grad_x D = 2 a x in closed form."""

    def __init__(self, a: torch.Tensor):
        super().__init__()
        self.a = nn.Parameter(a)

    def forward(self, x, y=None, scale=1.0):
        out = (self.a * x * x).flatten(1).sum(1, keepdim=True) * scale
        return out if y is None else out + y[:, None].float()


def test_gradient_penalty_closed_form_and_trains():
    torch.manual_seed(0)
    real, fake = torch.randn(4, 2, 3, 3), torch.randn(4, 2, 3, 3)
    D = _Quadratic(torch.rand(2, 3, 3) + 0.5)
    g = torch.Generator().manual_seed(7)
    gp = L.gradient_penalty(D, real, fake, weight=3.0, d_args=(torch.arange(4),),
                            d_kwargs={"scale": 2.0}, generator=g)
    alpha = torch.rand(4, 1, 1, 1, generator=torch.Generator().manual_seed(7))
    x_hat = alpha * real + (1 - alpha) * fake
    grad = 2 * 2.0 * D.a.detach() * x_hat
    expected = 3.0 * ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
    assert torch.allclose(gp, expected, rtol=1e-5)
    gp.backward()  # create_graph=True: the penalty reaches D's parameters
    assert D.a.grad is not None and D.a.grad.abs().sum() > 0


def test_gradient_penalty_double_backward_conv_d():
    D = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LeakyReLU(0.2), nn.Conv2d(4, 1, 3))
    gp = L.gradient_penalty(D, torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8))
    gp.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in D.parameters()
               if p.dim() > 1)


def test_r1_penalty_closed_form():
    real = torch.randn(3, 2, 4, 4, requires_grad=True)
    D = _Quadratic(torch.rand(2, 4, 4) + 0.5)
    r1 = L.r1_penalty(D(real), real, gamma=5.0)
    grad = 2 * D.a.detach() * real.detach()
    expected = 5.0 / 2 * grad.pow(2).flatten(1).sum(1).mean()
    assert torch.allclose(r1, expected, rtol=1e-5)
    r1.backward()
    assert D.a.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="require grad"):
        L.r1_penalty(D(real.detach()), real.detach())


# ---------------------------------------------------------------- RaGAN, feature matching

def test_relativistic_average_loss():
    real, fake = torch.randn(6, 1), torch.randn(6, 1)
    rr, fr = real.double() - fake.double().mean(), fake.double() - real.double().mean()
    d = L.relativistic_average_loss(real, fake, for_discriminator=True)
    assert math.isclose(d, (_bce(rr, 1.0) + _bce(fr, 0.0)) / 2, rel_tol=1e-5)
    g = L.relativistic_average_loss(real, fake, for_discriminator=False)
    assert math.isclose(g, (_bce(rr, 0.0) + _bce(fr, 1.0)) / 2, rel_tol=1e-5)
    # G's loss does not train through D's output on real data.
    real_g, fake_g = real.clone().requires_grad_(), fake.clone().requires_grad_()
    L.relativistic_average_loss(real_g, fake_g, for_discriminator=False).backward()
    assert real_g.grad is None and fake_g.grad.abs().sum() > 0


def test_feature_matching_pix2pixhd_weights():
    num_d, n_layers = 2, 3
    real = [[torch.randn(2, 4, 8 // (s + 1), 8 // (s + 1)) for _ in range(n_layers + 2)]
            for s in range(num_d)]
    fake = [[torch.randn_like(t, requires_grad=True) for t in scale] for scale in real]
    loss = L.feature_matching_loss(real, fake, weight=10.0)
    expected = 0.0
    for i in range(num_d):  # pix2pixHD's loop: D_weights * feat_weights * L1 * lambda_feat
        for j in range(len(fake[i]) - 1):
            expected += (1.0 / num_d) * (4.0 / (n_layers + 1)) * \
                (fake[i][j] - real[i][j]).abs().mean() * 10.0
    assert torch.allclose(loss, expected, rtol=1e-5)
    loss.backward()
    assert all(f.grad is not None for scale in fake for f in scale[:-1])
    assert all(scale[-1].grad is None for scale in fake)  # predictions excluded
    spade = L.feature_matching_loss(real, fake, weight=1.0, layer_weight=1.0)
    assert torch.allclose(spade, expected / 10.0 / (4.0 / (n_layers + 1)), rtol=1e-5)


# ---------------------------------------------------------------- VGG perceptual loss

_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)
_CONV_CHANNELS = (64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 512)


def _torchvision_vgg19_state_dict() -> dict[str, torch.Tensor]:
    """Tensors under torchvision's vgg19 keys and shapes, classifier included: random for the
    first three blocks, meta (shape only) after."""
    state, in_ch = {}, 3
    for idx, out_ch in zip(_CONV_INDICES, _CONV_CHANNELS):
        dev = "cpu" if idx <= 10 else "meta"
        state[f"features.{idx}.weight"] = torch.randn(out_ch, in_ch, 3, 3, device=dev) * \
            (2 / (9 * in_ch)) ** .5
        state[f"features.{idx}.bias"] = torch.randn(out_ch, device=dev) * 0.01
        in_ch = out_ch
    for idx, (o, i) in zip((0, 3, 6), ((4096, 25088), (4096, 4096), (1000, 4096))):
        state[f"classifier.{idx}.weight"] = torch.empty(o, i, device="meta")
        state[f"classifier.{idx}.bias"] = torch.empty(o, device="meta")
    return state


def _random_loss(**kw) -> P.VGGPerceptualLoss:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return P.VGGPerceptualLoss(**kw)


def test_vgg19_key_layout_matches_torchvision():
    with torch.device("meta"):
        full = P.vgg19_features()
    assert len(full) == 37
    expected = {k: tuple(v.shape) for k, v in _torchvision_vgg19_state_dict().items()
                if k.startswith("features.")}
    assert {f"features.{k}": tuple(v.shape) for k, v in full.state_dict().items()} == expected
    assert [i for i, m in enumerate(full) if isinstance(m, nn.MaxPool2d)] == [4, 9, 18, 27, 36]
    names = P.VGG19_LAYERS
    assert (names["relu1_1"], names["relu2_1"], names["relu3_1"], names["relu4_1"],
            names["relu5_1"], names["conv5_4"]) == (1, 6, 11, 20, 29, 34)


def test_random_weights_warn():
    with pytest.warns(UserWarning, match="not a perceptual loss"):
        P.VGGPerceptualLoss(layers=("relu1_1",))


def test_loading_torchvision_state_dict(tmp_path):
    state = _torchvision_vgg19_state_dict()
    # Keys past the layers the loss uses, and classifier.*, are ignored whatever their shape:
    # saved small to keep this fast.
    saved = {k: (v if k.startswith("features.") and int(k.split(".")[1]) <= 10 else torch.zeros(1))
             for k, v in state.items()}
    path = tmp_path / "vgg19.pth"
    torch.save(saved, path)
    loss = P.VGGPerceptualLoss(layers=("relu2_1", "relu3_1"), weights_path=path)
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    # The features by hand: normalise, then conv/relu/pool with the saved tensors.
    h = ((x + 1) / 2 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / \
        torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def conv(h, i):
        return F.conv2d(h, state[f"features.{i}.weight"], state[f"features.{i}.bias"], padding=1)

    h = F.max_pool2d(F.relu(conv(F.relu(conv(h, 0)), 2)), 2)
    relu2_1 = F.relu(conv(h, 5))
    relu3_1 = F.relu(conv(F.max_pool2d(F.relu(conv(relu2_1, 7)), 2), 10))
    feats = loss.extract(x)
    assert torch.allclose(feats[0], relu2_1, rtol=1e-4, atol=1e-5)
    assert torch.allclose(feats[1], relu3_1, rtol=1e-4, atol=1e-5)
    bad = dict(saved)
    bad["features.1.weight"] = torch.zeros(1)
    torch.save(bad, path)
    with pytest.raises(ValueError, match="features.1.weight"):
        P.VGGPerceptualLoss(layers=("relu2_1",), weights_path=path)


def test_perceptual_loss_value_and_gradients():
    loss = _random_loss(layers=("relu1_1", "relu2_1"), weights=(0.5, 2.0))
    x = (torch.rand(2, 3, 12, 12) * 2 - 1).requires_grad_()
    y = torch.rand(2, 3, 12, 12) * 2 - 1
    value = loss(x, y)
    fx, fy = loss.extract(x), loss.extract(y)
    expected = 0.5 * (fx[0] - fy[0]).abs().mean() + 2.0 * (fx[1] - fy[1]).abs().mean()
    assert torch.allclose(value, expected, rtol=1e-5)
    value.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in loss.parameters())
    loss.train()
    assert not loss.training and not loss.features.training
    assert loss(y, y).item() == 0.0


def test_perceptual_pre_activation_variant():
    loss = _random_loss(variant="pre")
    assert loss.layers == ("conv5_4",) and loss.layer_weights == (1.0,)
    assert len(loss.features) == 35  # stops at conv5_4, before its ReLU
    feats = loss.extract(torch.rand(1, 3, 16, 16) * 2 - 1)[0]
    assert feats.shape == (1, 512, 1, 1)
    assert (feats < 0).any()  # raw conv output, not clamped by a ReLU
    pre = _random_loss(layers=("relu1_1",), variant="pre")
    assert pre.layers == ("conv1_1",)
    x = torch.rand(1, 3, 8, 8) * 2 - 1
    assert (pre.extract(x)[0] < 0).any()
    with pytest.raises(ValueError, match="unknown layers"):
        _random_loss(layers=("relu6_1",))
