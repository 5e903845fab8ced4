"""fastgan.swap's adapters for well-known GAN code.

The fixtures (fastgan/bench/third_party.py, shared with ``fastgan bench --suite swap``) are our
own modules that reproduce the upstream classes' names, attributes, state_dict keys and forward
semantics (BigGAN-PyTorch, heykeetae Self-Attention-GAN, BasicSR, SRGAN).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import fastgan
from fastgan import backend as _backend
from fastgan.nn import SelfAttention2d, SNConv2d, SNEmbedding, SNLinear

BACKENDS = ["reference"] + (["cpu"] if _backend.extension() else [])


from fastgan.bench.third_party import (Attention, BigGANStyleD, BigGANStyleG, MSRResNet,
                                      SAGANStyleG, SRGANStyleG, ccbn)


# ------------------------------------------------------------------------------- helpers
def _first(out):
    return out[0] if isinstance(out, tuple) else out


def _run(model, inputs, weight=None):
    model.zero_grad(set_to_none=True)
    out = _first(model(*inputs))
    weight = torch.randn_like(out) if weight is None else weight
    (out * weight).sum().backward()
    return out.detach(), weight


def _compare(model: nn.Module, inputs, backend="reference", train=True, rtol=1e-4, atol=1e-5,
             zero_grads=()):
    """Swapped copy vs the original: output, every parameter's gradient (matched by tensor
    identity: the swapped copy holds its copy's tensors) and every buffer after the forward.
    ``zero_grads``: parameters whose exact gradient is 0 (a conv bias feeding training-mode batch
    norm, which subtracts it again); both sides hold rounding noise there, checked to be below
    1e-5 of the model's largest gradient instead of compared."""
    model.train(train)
    theirs, ours = copy.deepcopy(model), copy.deepcopy(model)
    names = {id(p): n for n, p in ours.named_parameters()}
    buffers = dict(ours.named_buffers())
    report = fastgan.swap(ours, backend=backend)
    y_ref, w = _run(theirs, inputs)
    y, _ = _run(ours, inputs, w)
    torch.testing.assert_close(y, y_ref, rtol=rtol, atol=atol)
    grads = {names[id(p)]: p.grad for p in ours.parameters() if p.grad is not None}
    ref = {n: p.grad for n, p in theirs.named_parameters() if p.grad is not None}
    assert grads.keys() == ref.keys()
    scale = max(g.abs().max().item() for g in ref.values())
    for k in zero_grads:
        assert grads[k].abs().max() <= 1e-5 * scale and ref[k].abs().max() <= 1e-5 * scale, k
    ref = {k: g for k, g in ref.items() if k not in zero_grads}
    for k in ref:  # deep nets with batch norm on small batches: rounding grows, so the absolute
        # tolerance scales with the gradient's largest element
        torch.testing.assert_close(grads[k], ref[k], rtol=rtol, atol=max(atol, rtol * ref[k].abs().max().item()),
                                   msg=lambda m: f"{k}: {m}")
    for k, b in theirs.named_buffers():
        # BigGAN's sv buffers only log sigma; the swap drops them (the report says so)
        if b.is_floating_point() and not k.rsplit(".", 1)[-1].startswith("sv"):
            torch.testing.assert_close(buffers[k], b, rtol=rtol, atol=atol, msg=lambda m: f"{k}: {m}")
    return ours, report


def _warm(model, inputs, steps=3):
    """A few training forwards (no grad), so u vectors and running stats are not at init."""
    with torch.no_grad():
        for _ in range(steps):
            model.train()(*inputs)


# ------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("train", [True, False])
def test_biggan_style_generator(backend, train):
    g = BigGANStyleG()
    with torch.no_grad():
        for blocklist in g.blocks:
            for block in blocklist:
                if isinstance(block, Attention):
                    block.gamma.fill_(0.7)  # so that the attention path counts
    inputs = (torch.randn(3, 8), torch.randint(0, 5, (3,)))
    _warm(g, inputs)
    ours, report = _compare(g, inputs, backend, train)
    kinds = {r.path: r.became for r in report.replaced}
    assert kinds["linear"] == "SNLinear" and kinds["blocks.0.0.conv1"] == "SNConv2d"
    assert kinds["blocks.0.0.bn1"] == "BigGANConditionalBatchNorm"
    assert kinds["blocks.0.0.bn1.gain"] == "SNLinear"
    assert kinds["blocks.1.1"] == "BigGANSelfAttention"
    assert kinds["output_layer.0"] == "BigGANBatchNorm"  # bn + ReLU, fused
    assert report.changed_keys["linear.weight"] == "linear.weight_orig"
    assert report.changed_keys["linear.sv0"] == "(dropped)"
    assert report.spectral_norm_group == sum(isinstance(m, (SNConv2d, SNLinear)) for m in ours.modules())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("train", [True, False])
def test_biggan_style_discriminator(backend, train):
    d = BigGANStyleD()
    with torch.no_grad():
        d.attention.gamma.fill_(0.5)
    inputs = (torch.randn(2, 3, 8, 8), torch.randint(0, 5, (2,)))
    _warm(d, inputs)
    _, report = _compare(d, inputs, backend, train)
    assert {r.path: r.became for r in report.replaced}["embed"] == "SNEmbedding"


def test_biggan_checkpoint_loads_after_swap_and_training_step():
    g = BigGANStyleG()
    inputs = (torch.randn(2, 8), torch.randint(0, 5, (2,)))
    _warm(g, inputs)
    ckpt = copy.deepcopy(g.state_dict())
    ours = copy.deepcopy(g)
    opt = torch.optim.Adam(ours.parameters(), 1e-3)  # built before the swap
    fastgan.swap(ours)
    ours.load_state_dict(ckpt)  # BigGAN's own layout (weight, u0, sv0) loads into the swap
    for _ in range(2):
        opt.zero_grad()
        ours(*inputs).square().mean().backward()
        opt.step()
    fastgan.unswap(ours)
    assert type(ours.linear).__name__ == "SNLinear" and "u0" in ours.linear._buffers
    ours(*inputs)  # the original modules run again, on the trained tensors


def test_biggan_variants_the_adapters_skip():
    block = ccbn(8, 4, nn.Linear, norm_style="in")
    report = fastgan.swap(nn.Sequential(block))
    assert any("norm_style 'in'" in r.note for r in report.skipped)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("train", [True, False])
def test_heykeetae_style_generator(backend, train):
    g = SAGANStyleG()
    with torch.no_grad():
        g.attn1.gamma.fill_(0.6)
    z = torch.randn(2, 8)
    _warm(g, (z,))
    # In training the SN transposed convs' biases feed batch norm: exact gradient 0.
    zero = ("l1.0.module.bias", "ups.0.0.module.bias") if train else ()
    ours, report = _compare(g, (z,), backend, train, zero_grads=zero)
    out, p1 = ours(z)
    assert p1 is None and out.shape == (2, 3, 16, 16)
    kinds = {r.path: r.became for r in report.replaced}
    assert kinds["attn1"] == "SAGANSelfAttention" and kinds["l1.1"] == "BatchNormAct2d"
    assert report.changed_keys["l1.0.module.weight_bar"] == "l1.0.weight_orig"
    ours.attn1.keep_attention_maps = True
    _, p1 = ours(z)
    assert p1.shape == (2, 64, 64)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("upscale", [2, 3, 4])
def test_basicsr_msrresnet(backend, upscale):
    model = MSRResNet(upscale=upscale)
    ours, report = _compare(model, (torch.randn(2, 3, 5, 6),), backend)
    assert type(ours).__name__ == "SwappedMSRResNet" and report.replaced[0].path == ""
    assert list(ours.state_dict()) == list(model.state_dict())
    fastgan.unswap(ours)
    assert type(ours) is MSRResNet


@pytest.mark.parametrize("backend", BACKENDS)
def test_srgan_style_generator_and_training_step(backend):
    g = SRGANStyleG()
    x = torch.randn(2, 3, 6, 6)
    ours, report = _compare(g, (x,), backend)
    assert [r.became for r in report.replaced] == ["SwappedUpsampleBLock"] * 2
    keys = list(g.state_dict())
    assert list(ours.state_dict()) == keys
    target = torch.rand(2, 3, 24, 24)
    mine, theirs = copy.deepcopy(g), copy.deepcopy(g)
    optimisers = [torch.optim.Adam(m.parameters(), 1e-3) for m in (mine, theirs)]  # pre-swap
    fastgan.swap(mine, backend=backend)
    for model, opt in zip((mine, theirs), optimisers):
        (model(x) - target).square().mean().backward()
        opt.step()
    torch.testing.assert_close(mine(x), theirs(x), rtol=1e-4, atol=1e-5)


def test_adapted_model_swaps_twice_as_a_no_op():
    for model in (BigGANStyleG(), SAGANStyleG(), MSRResNet(), SRGANStyleG()):
        fastgan.swap(model)
        structure = [(n, type(m)) for n, m in model.named_modules()]
        assert len(fastgan.swap(model)) == 0
        assert [(n, type(m)) for n, m in model.named_modules()] == structure


def test_fastgan_attention_is_not_adapted():
    report = fastgan.swap(nn.Sequential(SelfAttention2d(16), SNEmbedding(3, 4)))
    assert len(report) == 0
