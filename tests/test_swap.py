"""fastgan.swap / unswap: every pattern keeps the tensors, the outputs and the gradients."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations

import fastgan
from fastgan import backend as _backend
from fastgan.nn import BatchNormAct2d, SNConv2d, SNConvTranspose2d, SNEmbedding, SNLinear
from fastgan.swap import SwappedConvPixelShuffleAct

BACKENDS = ["reference"] + (["cpu"] if _backend.extension() else [])


def _outputs_and_grads(model: nn.Module, x: torch.Tensor, weight: torch.Tensor | None = None):
    model.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_(x.is_floating_point())
    y = model(x)
    weight = torch.randn_like(y) if weight is None else weight
    (y * weight).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return y.detach(), grads, weight, x.grad


def _assert_same(original: nn.Module, x: torch.Tensor, backend: str | None = "reference",
                 rtol: float = 1e-4, atol: float = 1e-5, **kw) -> fastgan.SwapReport:
    """Swaps a copy of ``original``; outputs, input and parameter gradients and the buffers after
    the forward equal the original's. Gradients are compared by parameter identity (the swapped
    model holds the copy's very tensors)."""
    theirs = copy.deepcopy(original)
    ours = copy.deepcopy(original)
    ids = {id(p): n for n, p in ours.named_parameters()}
    buffers = dict(ours.named_buffers())
    report = fastgan.swap(ours, backend=backend, **kw)
    y_ref, g_ref, w, gx_ref = _outputs_and_grads(theirs, x)
    y, _, _, gx = _outputs_and_grads(ours, x, w)
    torch.testing.assert_close(y, y_ref, rtol=rtol, atol=atol)
    if gx_ref is not None:
        torch.testing.assert_close(gx, gx_ref, rtol=rtol, atol=atol)
    grads = {ids[id(p)]: p.grad for p in ours.parameters() if id(p) in ids and p.grad is not None}
    assert grads.keys() == g_ref.keys()
    for k in g_ref:
        torch.testing.assert_close(grads[k], g_ref[k], rtol=rtol, atol=atol,
                                   msg=lambda m: f"{k}: {m}")
    for k, b_ref in theirs.named_buffers():  # running stats, u, v: updated alike, in place
        torch.testing.assert_close(buffers[k], b_ref, rtol=rtol, atol=atol,
                                   msg=lambda m: f"{k}: {m}")
    return report


def _sn(layer: nn.Module, form: str) -> nn.Module:
    return nn.utils.spectral_norm(layer) if form == "hook" else parametrizations.spectral_norm(layer)


# ------------------------------------------------------------------------------ spectral norm
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("form", ["hook", "parametrizations"])
@pytest.mark.parametrize("training", [True, False])
def test_spectral_norm_conv_convtranspose_linear(form, training, backend):
    model = nn.Sequential(_sn(nn.Conv2d(3, 8, 3, padding=1), form), nn.ReLU(),
                          _sn(nn.ConvTranspose2d(8, 4, 4, 2, 1), form), nn.Flatten(),
                          _sn(nn.Linear(4 * 10 * 10, 5), form)).train(training)
    with torch.no_grad():  # u, v converge a little (eval on random vectors gives sigma ~ 0) and
        for _ in range(5):  # module.weight moves; no_grad: torch's hook form cannot deepcopy a
            model.train()(torch.randn(2, 3, 5, 5))  # W / sigma with history
    model.train(training)
    report = _assert_same(model, torch.randn(3, 3, 5, 5), backend)
    assert [r.became for r in report.replaced] == ["SNConv2d", "SNConvTranspose2d", "SNLinear"]
    # parametrizations' u-first iteration stays its own, outside the group
    assert report.spectral_norm_group == (3 if form == "hook" else 0)
    if form == "parametrizations":
        assert report.changed_keys["0.parametrizations.weight.original"] == "0.weight_orig"
    else:
        assert not report.changed_keys


def test_spectral_norm_updates_the_original_vectors():
    """u, v are the original's buffers: after swap + forward + unswap the original model
    continues from where the swapped one left off, exactly as if it had run itself."""
    model = nn.Sequential(_sn(nn.Conv2d(3, 8, 3), "hook"), _sn(nn.Conv2d(8, 4, 3), "hook"))
    twin = copy.deepcopy(model)
    x = torch.randn(2, 3, 9, 9)
    fastgan.swap(model, backend="reference")
    model(x), twin(x)
    fastgan.unswap(model)
    torch.testing.assert_close(model(x), twin(x), rtol=1e-5, atol=1e-6)
    for (k, a), b in zip(model.state_dict().items(), twin.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m: f"{k}: {m}")


def test_spectral_norm_embedding_and_generic_module():
    class Bilinear(nn.Module):  # a layer fastgan has no SN class for: the pre-hook form
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(6, 4))

        def forward(self, x):
            return x @ self.weight.t()

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.utils.spectral_norm(nn.Embedding(10, 4))
            self.proj = nn.utils.spectral_norm(Bilinear())

        def forward(self, y):
            return self.proj(self.embed(y))

    net = Net()
    report = _assert_same(net, torch.randint(0, 10, (7,)))
    kinds = {r.path: r.became for r in report.replaced}
    assert kinds == {"embed": "SNEmbedding", "proj": "Bilinear + fastgan spectral_norm"}


def test_spectral_norm_before_first_forward_aliases_weight():
    conv = nn.utils.spectral_norm(nn.Conv2d(3, 4, 3))
    model = nn.Sequential(conv)
    fastgan.swap(model)
    with torch.no_grad():
        model[0].weight.fill_(0.5)  # init code run after swap reaches the parameter, as torch's
    assert torch.all(model[0].weight_orig == 0.5)


# -------------------------------------------------------------------- Sequential chains
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("act", [nn.ReLU(), nn.LeakyReLU(0.1), nn.ReLU(inplace=True)])
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_activation(act, training, backend):
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), act).train(training)
    with torch.no_grad():
        model[1].running_mean.normal_(), model[1].running_var.uniform_(0.5, 2)
        model[1].weight.normal_(), model[1].bias.normal_()
    report = _assert_same(model, torch.randn(4, 3, 7, 7), backend)
    assert [r.became for r in report.replaced] == ["BatchNormAct2d"]


def test_sync_batchnorm_becomes_the_synchronized_variant():
    model = nn.Sequential(nn.SyncBatchNorm(4), nn.ReLU()).eval()  # one process: eval statistics
    with torch.no_grad():
        model[0].running_mean.normal_(), model[0].running_var.uniform_(0.5, 2)
    _assert_same(model, torch.randn(2, 4, 5, 5))
    fastgan.swap(model)
    assert isinstance(model[0], BatchNormAct2d) and model[0].sync


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("act", [nn.ReLU(), nn.LeakyReLU(0.3), nn.PReLU(), nn.PReLU(3), nn.Tanh()])
def test_pixel_shuffle_activation(act, backend):
    if isinstance(act, nn.PReLU):
        with torch.no_grad():
            act.weight.uniform_(-0.5, 0.5)
    model = nn.Sequential(nn.Conv2d(4, 12, 1, bias=False), nn.PixelShuffle(2), act)
    model[0].register_forward_hook(lambda *_: None)  # keeps the conv out of the conv chain
    report = _assert_same(model, torch.randn(2, 4, 5, 3), backend)
    assert [r.became for r in report.replaced] == ["SwappedPixelShuffleAct"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("act", [None, nn.LeakyReLU(0.1), nn.PReLU(16)])
def test_conv_pixel_shuffle_activation(act, backend):
    model = nn.Sequential(nn.Conv2d(8, 64, 3, padding=1), nn.PixelShuffle(2),
                          *([act] if act is not None else []), nn.Conv2d(16, 3, 3, padding=1))
    with torch.no_grad():
        model[0].bias.normal_()
    report = _assert_same(model, torch.randn(2, 8, 6, 5), backend)
    assert [r.became for r in report.replaced] == ["SwappedConvPixelShuffleAct"]
    assert isinstance(model, nn.Sequential)


def test_state_dict_keys_are_kept_and_round_trip():
    model = nn.Sequential(nn.Conv2d(4, 32, 3, padding=1), nn.PixelShuffle(2), nn.PReLU(8),
                          nn.BatchNorm2d(8), nn.ReLU(), nn.utils.spectral_norm(nn.Conv2d(8, 3, 1)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fastgan.swap(model)
    after = model.state_dict()
    assert list(after) == list(before)
    for k in before:
        assert torch.equal(after[k], before[k]), k
    fresh = nn.Sequential(nn.Conv2d(4, 32, 3, padding=1), nn.PixelShuffle(2), nn.PReLU(8),
                          nn.BatchNorm2d(8), nn.ReLU(), nn.utils.spectral_norm(nn.Conv2d(8, 3, 1)))
    fresh.load_state_dict(after)  # into the unswapped architecture ...
    model.load_state_dict(fresh.state_dict())  # ... and back


def test_parametrizations_vectors_are_shared():
    model = nn.Sequential(parametrizations.spectral_norm(nn.Conv2d(3, 8, 3)))
    u = model[0].parametrizations.weight[0]._u
    fastgan.swap(model)
    assert model[0].weight_u is u
    before = u.clone()
    model(torch.randn(2, 3, 6, 6))
    assert not torch.equal(u, before)  # iterated in place, in the original's buffer


def test_parametrizations_checkpoint_loads_after_swap():
    model = nn.Sequential(parametrizations.spectral_norm(nn.Conv2d(3, 4, 3)))
    model(torch.randn(1, 3, 5, 5))
    old = copy.deepcopy(model.state_dict())
    fastgan.swap(model)
    model.load_state_dict(old)
    torch.testing.assert_close(model[0].weight_orig, old["0.parametrizations.weight.original"])


# ---------------------------------------------------------------------- the API's promises
def _third_party_generator() -> nn.Module:
    """An SRGAN/SNGAN-style generator as third-party code writes it (Sequentials, torch SN)."""

    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.body = nn.Sequential(nn.utils.spectral_norm(nn.Conv2d(c, c, 3, padding=1)),
                                      nn.BatchNorm2d(c), nn.PReLU(),
                                      nn.utils.spectral_norm(nn.Conv2d(c, c, 3, padding=1)),
                                      nn.BatchNorm2d(c))

        def forward(self, x):
            return x + self.body(x)

    class Generator(nn.Module):
        def __init__(self, c=8):
            super().__init__()
            self.head = nn.Sequential(nn.Conv2d(3, c, 9, padding=4), nn.PReLU())
            self.blocks = nn.Sequential(Block(c), Block(c))
            self.up = nn.Sequential(nn.Conv2d(c, 4 * c, 3, padding=1), nn.PixelShuffle(2),
                                    nn.PReLU(), nn.Conv2d(c, 4 * c, 3, padding=1),
                                    nn.PixelShuffle(2), nn.PReLU())
            self.tail = nn.Sequential(nn.Conv2d(c, 3, 9, padding=4), nn.Tanh())
            self.norm_act = nn.Sequential(nn.BatchNorm2d(c), nn.LeakyReLU(0.2))

        def forward(self, x):
            h = self.head(x)
            return self.tail(self.up(self.norm_act(self.blocks(h))))

    return Generator()


@pytest.mark.parametrize("backend", BACKENDS)
def test_whole_model_outputs_grads_and_training_step(backend):
    g = _third_party_generator()
    x = torch.randn(2, 3, 6, 6)
    report = _assert_same(g, x, backend)
    assert len(report) == 4 + 2 + 1  # 4 SN convs, 2 conv-shuffle-act chains, 1 BN+act
    ours, theirs = copy.deepcopy(g), copy.deepcopy(g)
    # Built before the swap, with state (momentum). SGD, not Adam: Adam turns the rounding noise
    # of near-zero gradients into full-size steps, so two exact-in-math runs drift apart.
    opt_ours = torch.optim.SGD(ours.parameters(), 1e-2, momentum=0.9)
    opt_theirs = torch.optim.SGD(theirs.parameters(), 1e-2, momentum=0.9)
    fastgan.swap(ours, backend=backend)
    for _ in range(3):
        for model, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-5)
    fastgan.unswap(ours)
    for (k, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m: f"{k}: {m}")


def test_swap_twice_is_a_no_op_and_unswap_restores():
    g = _third_party_generator()
    original = {n: type(m) for n, m in g.named_modules()}
    first = fastgan.swap(g)
    structure = {n: type(m) for n, m in g.named_modules()}
    second = fastgan.swap(g)
    assert len(first) == 7 and len(second) == 0
    assert {n: type(m) for n, m in g.named_modules()} == structure
    assert {r.status for r in second.rows} <= {"fused", "untouched"}
    assert second.spectral_norm_group == first.spectral_norm_group == 4
    fastgan.unswap(g)
    assert {n: type(m) for n, m in g.named_modules()} == original
    assert not g._forward_pre_hooks  # the spectral-norm group is gone
    assert fastgan.unswap(g) is g  # unswapping an unswapped model changes nothing


def test_report_lists_every_replacement_and_skip():
    g = _third_party_generator()
    report = fastgan.swap(g, exclude="blocks.1.*")
    paths = {r.path: r.status for r in report.rows}
    assert paths["blocks.0.body.0"] == "replaced" and paths["blocks.1.body.0"] == "skipped"
    assert paths["head.0"] == "untouched" and paths["tail.1"] == "untouched"
    assert any(r.note == "excluded by include/exclude" for r in report.skipped)
    text = str(report)
    for path in ("blocks.0.body.0", "blocks.1.body.0", "up.0", "up.3", "norm_act.0"):
        assert path in text
    assert "replaced" in text and "skipped" in text


def test_include_selects_modules():
    g = _third_party_generator()
    report = fastgan.swap(g, include=["up.*"])
    assert {r.path for r in report.replaced} == {"up.0", "up.3"}
    assert isinstance(g.up[0], SwappedConvPixelShuffleAct)
    assert not isinstance(g.norm_act[0], BatchNormAct2d)


def test_group_spectral_norm_off_and_not_for_subclasses_or_hooked_modules():
    class MyBN(nn.BatchNorm2d):  # a subclass may compute something else: left alone
        pass

    model = nn.Sequential(nn.utils.spectral_norm(nn.Conv2d(3, 4, 3)), MyBN(4), nn.ReLU(),
                          nn.BatchNorm2d(4), nn.ReLU())
    model[3].register_forward_hook(lambda *_: None)
    report = fastgan.swap(model, group_spectral_norm=False)
    assert report.spectral_norm_group == 0 and not model._forward_pre_hooks
    assert [r.path for r in report.replaced] == ["0"]
    assert type(model[1]) is MyBN and type(model[3]) is nn.BatchNorm2d


def test_fastgan_layers_are_reported_as_fused():
    model = nn.Sequential(SNConv2d(3, 4, 3), SNLinear(2, 2), SNEmbedding(3, 2),
                          SNConvTranspose2d(2, 2, 2))
    report = fastgan.swap(model)
    assert len(report) == 0 and {r.status for r in report.rows} == {"fused"}


def test_bad_arguments():
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        fastgan.swap("model")
    with pytest.raises(TypeError, match="include must be a glob pattern"):
        fastgan.swap(nn.Linear(2, 2), include=[3])
    with pytest.raises(ValueError, match="backend must be one of"):
        fastgan.swap(nn.Linear(2, 2), backend="gpu")
    with pytest.raises(TypeError, match="unswap: model must be an nn.Module"):
        fastgan.unswap(None)
