"""fastgan.init and fastgan.utils."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import fastgan.init as I
import fastgan.nn as fnn
import fastgan.utils as U


# ---------------------------------------------------------------- init

def _model() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(8, 64, 3), nn.BatchNorm2d(64), nn.ConvTranspose2d(64, 32, 4),
        fnn.SNConv2d(32, 48, 3, backend="reference"), nn.Linear(40, 96), nn.Embedding(10, 128),
        fnn.ConditionalBatchNorm2d(16, num_classes=10, backend="reference"),
        fnn.ConditionalBatchNorm2d(16, cond_dim=12, backend="reference"),
        nn.utils.spectral_norm(nn.Linear(30, 50)))


def _weights(model):
    return [model[0].weight, model[2].weight, model[3].weight_orig, model[4].weight,
            model[5].weight, model[7].gain.weight, model[8].weight_orig]


@pytest.mark.parametrize("scheme", ["normal", "xavier", "kaiming", "orthogonal"])
def test_init_weights(scheme):
    model = _model()
    for p in model.parameters():
        nn.init.uniform_(p, 3.0, 4.0)  # far from any scheme's values, so a missed tensor shows
    assert I.init_weights(model, scheme, gain=0.05) is model
    for w in _weights(model):
        w = w.detach()
        if scheme == "normal":
            assert abs(w.std().item() - 0.05) < 0.01 and abs(w.mean().item()) < 0.01
        elif scheme == "xavier":
            fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(w)
            assert math.isclose(w.std().item(), 0.05 * math.sqrt(2 / (fan_in + fan_out)),
                                rel_tol=0.2)
        elif scheme == "kaiming":
            fan_in, _ = nn.init._calculate_fan_in_and_fan_out(w)
            assert math.isclose(w.std().item(), math.sqrt(2 / fan_in), rel_tol=0.2)
        else:
            flat = w.reshape(w.shape[0], -1) / 0.05
            gram = flat @ flat.T if flat.shape[0] <= flat.shape[1] else flat.T @ flat
            assert torch.allclose(gram, torch.eye(gram.shape[0]), atol=1e-4)
    for m in (model[0], model[2], model[3], model[4], model[8]):
        assert torch.equal(m.bias, torch.zeros_like(m.bias))
    bn = model[1]
    assert abs(bn.weight.mean().item() - 1) < 0.02 and 0.02 < bn.weight.std().item() < 0.08
    assert torch.equal(bn.bias, torch.zeros(64))
    cbn = model[6]  # per-class gains/biases: the identity, not a weight draw
    assert torch.equal(cbn.gain.weight, torch.ones(10, 16))
    assert torch.equal(cbn.bias.weight, torch.zeros(10, 16))


def test_init_weights_sn_forward_uses_initialised_weight():
    conv = fnn.SNConv2d(4, 6, 3, backend="reference")
    I.init_weights(conv, "orthogonal", gain=1.0)
    x = torch.randn(2, 4, 5, 5)
    sigma = torch.linalg.matrix_norm(conv.weight_orig.detach().reshape(6, -1), ord=2)
    assert torch.allclose(sigma, torch.tensor(1.0), atol=1e-5)  # orthogonal rows: sigma = 1
    # One power iteration finds sigma = 1 exactly (all singular values are 1), so the layer
    # computes the plain convolution with the initialised weight.
    out = torch.nn.functional.conv2d(x, conv.weight_orig, conv.bias)
    assert torch.allclose(conv(x), out, atol=1e-5)


def test_init_unknown_scheme():
    with pytest.raises(ValueError, match="normal, xavier, kaiming, orthogonal"):
        I.init_weights(nn.Linear(2, 2), "uniform")


# ---------------------------------------------------------------- truncated noise

def test_truncated_noise():
    g = torch.Generator().manual_seed(3)
    z = U.truncated_noise(512, 64, threshold=0.5, generator=g, dtype=torch.float64)
    assert z.shape == (512, 64) and z.dtype == torch.float64
    assert z.abs().max() <= 0.5
    # Truncated N(0,1) on [-a, a]: var = 1 - 2 a phi(a) / (2 Phi(a) - 1).
    a = 0.5
    phi = math.exp(-a * a / 2) / math.sqrt(2 * math.pi)
    var = 1 - 2 * a * phi / math.erf(a / math.sqrt(2))
    assert abs(z.var().item() - var) < 0.005
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(U.truncated_noise(4, 8, 1.0, generator=g1),
                       U.truncated_noise(4, 8, 1.0, generator=g2))
    plain = U.truncated_noise(4000, 8, None)
    assert plain.abs().max() > 2.0
    for bad in (0, -1.0):
        with pytest.raises(ValueError, match="threshold must be > 0"):
            U.truncated_noise(2, 3, bad)


# ---------------------------------------------------------------- orthogonal regularisation

def _biggan_ortho_grad(w: torch.Tensor, strength: float) -> torch.Tensor:
    """BigGAN-PyTorch utils.ortho's gradient term, written out: 2 s ((W W^T) * (1 - I)) W."""
    flat = w.reshape(w.shape[0], -1)
    mask = 1 - torch.eye(flat.shape[0])
    return (2 * strength * ((flat @ flat.T) * mask) @ flat).view_as(w)


def test_orthogonal_regularization_gradient_matches_biggan():
    model = nn.Sequential(nn.Conv2d(3, 5, 3), nn.ReLU(), nn.Linear(7, 4), nn.Embedding(6, 3))
    blacklist = [model[3].weight]
    loss = U.orthogonal_regularization(model, strength=1e-2, blacklist=blacklist)
    manual = sum(((w.reshape(w.shape[0], -1) @ w.reshape(w.shape[0], -1).T)
                  * (1 - torch.eye(w.shape[0]))).pow(2).sum()
                 for w in (model[0].weight, model[2].weight)) * 1e-2 / 2
    assert torch.allclose(loss, manual, rtol=1e-5)
    loss.backward()
    for w in (model[0].weight, model[2].weight):
        assert torch.allclose(w.grad, _biggan_ortho_grad(w.detach(), 1e-2), rtol=1e-4, atol=1e-8)
    assert model[3].weight.grad is None and model[0].bias.grad is None
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    U.apply_orthogonal_regularization_(model, strength=1e-2, blacklist=["3.weight"])
    for n, p in model.named_parameters():
        if n in grads:
            assert torch.allclose(p.grad, grads[n], rtol=1e-4, atol=1e-8)
        else:
            assert p.grad is None


# ---------------------------------------------------------------- EMA

def test_ema():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = U.EMA(model, decay=0.9, start_step=2)
    assert ema.model is not model and not any(p.requires_grad for p in ema.model.parameters())
    history = []
    for _ in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model(torch.randn(8, 3))  # moves BN running stats
        history.append(model[0].weight.detach().clone())
        ema.update()
    expected = history[1]  # steps 0 and 1 (< start_step) copy; then decay 0.9
    for w in history[2:]:
        expected = 0.9 * expected + 0.1 * w
    assert torch.allclose(ema.model[0].weight, expected, rtol=1e-5)
    assert torch.equal(ema.model[1].running_mean, model[1].running_mean)
    assert ema.model[1].num_batches_tracked == 5
    other = U.EMA(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)))
    other.load_state_dict(ema.state_dict())
    assert other.step == 5 and other.decay == 0.9 and other.start_step == 2
    assert torch.equal(other.model[0].weight, ema.model[0].weight)


# ---------------------------------------------------------------- receptive field

def _patchgan(n_layers: int, ndf: int = 64) -> nn.Sequential:
    """pix2pix's NLayerDiscriminator as a plain Sequential (k4, p1; strided, then two stride-1)."""
    if n_layers == 0:  # PixelDiscriminator: 1x1 convs
        return nn.Sequential(nn.Conv2d(3, ndf, 1), nn.LeakyReLU(0.2), nn.Conv2d(ndf, ndf * 2, 1),
                             nn.BatchNorm2d(ndf * 2), nn.LeakyReLU(0.2), nn.Conv2d(ndf * 2, 1, 1))
    layers: list[nn.Module] = [nn.Conv2d(3, ndf, 4, 2, 1), nn.LeakyReLU(0.2)]
    mult = 1
    for n in range(1, n_layers):
        prev, mult = mult, min(2 ** n, 8)
        layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, 2, 1), nn.BatchNorm2d(ndf * mult),
                   nn.LeakyReLU(0.2)]
    prev, mult = mult, min(2 ** n_layers, 8)
    layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, 1, 1), nn.BatchNorm2d(ndf * mult),
               nn.LeakyReLU(0.2), nn.Conv2d(ndf * mult, 1, 4, 1, 1)]
    return nn.Sequential(*layers)


def _empirical_receptive_field(model: nn.Module, size: int) -> int:
    """Backprop from the centre output pixel; the extent of nonzero input gradient."""
    model.eval()
    x = torch.randn(1, 3, size, size, dtype=torch.float64, requires_grad=True)
    out = model.double()(x)
    out[0, 0, out.shape[2] // 2, out.shape[3] // 2].backward()
    rows = (x.grad.abs().sum((0, 1, 3)) > 0).nonzero().flatten()
    cols = (x.grad.abs().sum((0, 1, 2)) > 0).nonzero().flatten()
    assert rows[0] > 0 and rows[-1] < size - 1, "input too small: the field reaches the border"
    assert int(rows[-1] - rows[0] + 1) == int(cols[-1] - cols[0] + 1)
    return int(rows[-1] - rows[0] + 1)


@pytest.mark.parametrize("n_layers, expected", [(3, 70), (1, 16), (0, 1)])
def test_receptive_field_patchgan(n_layers, expected):
    assert U.receptive_field(_patchgan(n_layers)) == expected
    small = _patchgan(n_layers, ndf=4)
    assert U.receptive_field(small) == expected
    assert _empirical_receptive_field(small, 96) == expected


def test_receptive_field_pools_dilation_and_layer_list():
    layers = [nn.Conv2d(3, 4, 3, dilation=2), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3),
              nn.AvgPool2d(3, stride=1), nn.Conv2d(4, 1, 1)]
    # 1 + 2*2 = 5 (jump 1); pool k2: +1 -> 6 (jump 2); conv k3: +4 -> 10; avg k3 s1: +4 -> 14.
    assert U.receptive_field(layers) == 14
    # Max pooling passes gradient to one pixel per window only: measure with an average pool of
    # the same kernel and stride.
    measured = nn.Sequential(*layers[:1], nn.AvgPool2d(2), *layers[2:])
    assert _empirical_receptive_field(measured, 48) == 14
    with pytest.raises(ValueError, match="transposed"):
        U.receptive_field(nn.Sequential(nn.ConvTranspose2d(3, 3, 4)))
    with pytest.raises(ValueError, match="non-square"):
        U.receptive_field(nn.Sequential(nn.Conv2d(3, 3, (3, 5))))
