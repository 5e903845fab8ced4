"""PixelShuffleAct / ConvPixelShuffleAct / PixelShuffleUpsample: drop-in for the unfused Sequentials."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastgan.nn import ConvPixelShuffleAct, PixelShuffleAct, PixelShuffleUpsample, icnr_

ACTS = {
    None: lambda c: None,
    "relu": lambda c: nn.ReLU(),
    "leaky_relu": lambda c: nn.LeakyReLU(0.1),
    "prelu": lambda c: nn.PReLU(c),
    "tanh": lambda c: nn.Tanh(),
}


def _grads(module, x):
    module.zero_grad()
    x = x.clone().requires_grad_(True)
    y = module(x)
    y.backward(torch.randn_like(y, generator=torch.Generator().manual_seed(0)))
    return [y.detach(), x.grad] + [p.grad.clone() for p in module.parameters()]


@pytest.mark.parametrize("activation", list(ACTS), ids=str)
@pytest.mark.parametrize("backend", ["reference", None])
def test_pixel_shuffle_act_is_a_drop_in(activation, backend):
    act = ACTS[activation](3)
    plain = nn.Sequential(nn.PixelShuffle(2), *([act] if act is not None else []))
    kwargs = dict(negative_slope=0.1, num_parameters=3) if activation else {}
    fused = PixelShuffleAct(2, activation, backend=backend, **kwargs)
    assert list(fused.state_dict()) == list(plain.state_dict())
    fused.load_state_dict(plain.state_dict())
    x = torch.randn(2, 12, 5, 3)
    # Wiring, not kernel precision (tests/ops covers that): fp32 tanh may differ by an ulp or two.
    for g, e in zip(_grads(fused, x), _grads(plain, x)):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-4)


def test_from_modules_shares_parameters():
    prelu = nn.PReLU()
    fused = PixelShuffleAct.from_modules(nn.PixelShuffle(2), prelu)
    assert fused[1].weight is prelu.weight
    with pytest.raises(TypeError, match="cannot fuse activation GELU"):
        PixelShuffleAct.from_modules(nn.PixelShuffle(2), nn.GELU())


@pytest.mark.parametrize("activation", ["prelu", "leaky_relu"])
def test_conv_pixel_shuffle_act_matches_the_sequential(activation):
    fused = ConvPixelShuffleAct(6, 4, 2, activation, negative_slope=0.1, num_parameters=4)
    plain = nn.Sequential(nn.Conv2d(6, 16, 3, padding=1), nn.PixelShuffle(2), ACTS[activation](4))
    plain.load_state_dict(fused.state_dict())
    x = torch.randn(2, 6, 7, 5)
    for g, e in zip(_grads(fused, x), _grads(plain, x)):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scale,stages", [(2, 1), (3, 1), (4, 2), (8, 3)])
def test_upsample_scales(scale, stages):
    up = PixelShuffleUpsample(5, 4, scale, "prelu")
    assert len(up) == stages
    assert up(torch.randn(1, 5, 3, 2)).shape == (1, 4, 3 * scale, 2 * scale)


@pytest.mark.parametrize("scale", [1, 5, 6, 2.0])
def test_upsample_bad_scale(scale):
    with pytest.raises(ValueError, match="scale must be"):
        PixelShuffleUpsample(4, 4, scale)


def test_icnr_starts_as_nearest_neighbour_upsampling():
    """With ICNR, conv + shuffle equals nearest-upsampling the sub-kernel conv: no checkerboard."""
    up = PixelShuffleUpsample(3, 2, 2, activation=None)
    conv = up[0][0]
    nn.init.zeros_(conv.bias)
    x = torch.randn(1, 3, 4, 5)
    sub = conv.weight[::4]  # every r*r-th output channel carries the shared sub-kernel
    expected = F.interpolate(F.conv2d(x, sub, padding=1), scale_factor=2, mode="nearest")
    torch.testing.assert_close(up(x), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="icnr_"):
        icnr_(torch.empty(6, 3, 3, 3), 2)


def test_autocast_bfloat16_cpu():
    up = PixelShuffleUpsample(4, 4, 2, "prelu")
    x = torch.randn(2, 4, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = up(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert up[0][0].bias.grad is not None and up[0][2].weight.grad is not None
