"""fastgan.nn.spectral_norm and the SN* layers against torch's spectral norm: u, v, sigma, outputs
and weight gradients over training steps; eval; state_dict layouts; autocast; compile; R1."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastgan
from fastgan.nn import SNConv2d, SNConvTranspose2d, SNEmbedding, SNLinear, spectral_norm
from fastgan.nn.spectral_norm import SN_CLASSES
from fastgan.ops.spectral_norm import DTYPES
from tests.utils import skip_unless_runnable

BACKENDS = ["reference", "cpu", "triton"]

# (name, layer factory, input factory): the layer types torch's spectral norm is used on, with
# odd shapes (a 3x5x3x3 conv weight, a 1000x7 linear).
LAYERS = [
    ("conv2d", lambda: nn.Conv2d(5, 3, 3, padding=1), lambda: torch.randn(2, 5, 7, 6)),
    ("conv2d_stride_groups", lambda: nn.Conv2d(4, 6, 4, stride=2, padding=1, groups=2, bias=False),
     lambda: torch.randn(3, 4, 9, 8)),
    ("conv2d_reflect", lambda: nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"),
     lambda: torch.randn(2, 3, 6, 6)),
    ("conv2d_same", lambda: nn.Conv2d(3, 4, 3, padding="same"), lambda: torch.randn(2, 3, 5, 5)),
    ("conv2d_unbatched", lambda: nn.Conv2d(3, 4, 3), lambda: torch.randn(3, 6, 5)),
    ("conv1d", lambda: nn.Conv1d(3, 4, 5, dilation=2), lambda: torch.randn(2, 3, 17)),
    ("conv3d", lambda: nn.Conv3d(2, 3, 3), lambda: torch.randn(1, 2, 5, 4, 5)),
    ("convtranspose2d", lambda: nn.ConvTranspose2d(6, 3, 4, stride=2, padding=1),
     lambda: torch.randn(2, 6, 4, 5)),
    ("convtranspose1d_groups", lambda: nn.ConvTranspose1d(4, 6, 3, stride=2, groups=2,
                                                          output_padding=1),
     lambda: torch.randn(2, 4, 7)),
    ("linear", lambda: nn.Linear(7, 1000), lambda: torch.randn(4, 7)),
    ("linear_3d_input", lambda: nn.Linear(12, 5), lambda: torch.randn(2, 3, 12)),
    ("embedding", lambda: nn.Embedding(10, 6), lambda: torch.tensor([[1, 2], [3, 3]])),
    ("embedding_padding_idx", lambda: nn.Embedding(10, 6, padding_idx=0),
     lambda: torch.tensor([0, 2, 0, 9])),
]


class ScaledLinear(nn.Linear):
    """A Linear subclass with its own forward: not one of SN_CLASSES."""

    def forward(self, x):
        return 2 * F.linear(x, self.weight, self.bias)


def _pair(factory, seed=0, **kwargs):
    """The same layer twice: torch.nn.utils.spectral_norm on one, fastgan's on the other, with the
    same u, v draws."""
    torch.manual_seed(seed)
    ours = factory()
    theirs = copy.deepcopy(ours)
    torch.manual_seed(seed + 1)
    torch.nn.utils.spectral_norm(theirs)
    torch.manual_seed(seed + 1)
    spectral_norm(ours, **kwargs)
    return ours, theirs


def _assert_same_state(ours, theirs, tol):
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=tol, atol=tol, msg=lambda m: f"{k}: {m}")


def _train_steps(ours, theirs, make_input, steps=3, tol=1e-5):
    """A few SGD steps (weights change under the optimizer), two forwards per step like a
    discriminator on real and fake, comparing outputs, grads and buffers at every step."""
    opts = [torch.optim.SGD(m.parameters(), lr=0.05) for m in (ours, theirs)]
    for _ in range(steps):
        x1, x2 = make_input(), make_input()
        outs = []
        for m in (ours, theirs):
            y1, y2 = m(x1), m(x2)
            (y1.square().mean() - y2.mean()).backward()
            outs.append((y1.detach(), y2.detach()))
        for a, b in zip(*outs):
            torch.testing.assert_close(a, b, rtol=tol, atol=tol)
        for (n, p), q in zip(ours.named_parameters(), theirs.parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=tol, atol=tol, msg=lambda m: f"{n}: {m}")
        _assert_same_state(ours, theirs, tol)
        for opt in opts:
            opt.step()
            opt.zero_grad()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,factory,make_input", LAYERS, ids=[n for n, _, _ in LAYERS])
def test_layer_matches_torch_spectral_norm(backend, name, factory, make_input):
    skip_unless_runnable(backend, "cpu", torch.float32, DTYPES)
    ours, theirs = _pair(factory, backend=backend)
    assert type(ours) is SN_CLASSES[type(theirs)] and isinstance(ours, type(theirs))
    _assert_same_state(ours, theirs, 0)
    _train_steps(ours, theirs, make_input)
    ours.eval()
    theirs.eval()
    x = make_input()
    u_before = ours.weight_u.clone()
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
    assert torch.equal(ours.weight_u, u_before), "eval must not update u"
    torch.testing.assert_close(ours.weight, theirs.weight, rtol=1e-5, atol=1e-6)


def test_generic_module_gets_torchs_hook_design():
    """A module outside SN_CLASSES (here a subclass with its own forward) is normalised through
    a forward pre-hook that sets module.weight = W / sigma, as torch's."""
    ours, theirs = _pair(lambda: ScaledLinear(6, 4))
    assert type(ours) is ScaledLinear
    _train_steps(ours, theirs, lambda: torch.randn(3, 6))


def test_other_parameter_name_and_dim():
    ours, theirs = [nn.Bilinear(3, 4, 5) for _ in range(2)]
    theirs.load_state_dict(ours.state_dict())
    torch.manual_seed(3)
    torch.nn.utils.spectral_norm(theirs, dim=1)
    torch.manual_seed(3)
    spectral_norm(ours, dim=1)
    model_input = lambda: (torch.randn(2, 3), torch.randn(2, 4))  # noqa: E731
    for _ in range(2):
        x = model_input()
        torch.testing.assert_close(ours(*x), theirs(*x), rtol=1e-5, atol=1e-5)
    _assert_same_state(ours, theirs, 1e-5)


def test_weight_alias_before_first_forward():
    """Weight-init code run after spectral_norm() (model.apply(init)) reaches the parameter, as
    with torch's spectral norm; after a forward, module.weight is W / sigma."""
    ours, theirs = _pair(lambda: nn.Conv2d(3, 4, 3))
    for m in (ours, theirs):
        torch.manual_seed(7)
        nn.init.orthogonal_(m.weight)
    torch.testing.assert_close(ours.weight_orig, theirs.weight_orig)
    ours.reset_parameters()  # the torch layer's init, applied to weight_orig
    assert not torch.equal(ours.weight_orig, theirs.weight_orig)
    x = torch.randn(1, 3, 5, 5)
    ours(x)
    sigma = torch.dot(ours.weight_u, ours.weight_orig.flatten(1) @ ours.weight_v)
    torch.testing.assert_close(ours.weight, ours.weight_orig / sigma)


def test_sn_classes_constructed_directly():
    torch.manual_seed(0)
    conv = SNConv2d(3, 8, 3, padding=1, n_power_iterations=2, eps=1e-6)
    assert sorted(conv.state_dict()) == ["bias", "weight_orig", "weight_u", "weight_v"]
    assert isinstance(conv, nn.Conv2d) and "spectral_norm(n_power_iterations=2" in repr(conv)
    torch.manual_seed(0)
    plain = nn.Conv2d(3, 8, 3, padding=1)  # the same weight draws
    torch.testing.assert_close(conv.weight_orig, plain.weight)
    lin, emb = SNLinear(4, 5, bias=False), SNEmbedding(7, 3)
    assert lin.weight_u.shape == (5,) and emb.weight_v.shape == (3,)


# --- state_dict: the three layouts ---------------------------------------------------------------

def test_state_dict_loads_into_torch_and_back():
    ours, theirs = _pair(lambda: nn.Conv2d(3, 4, 3))
    x = torch.randn(2, 3, 6, 6)
    ours(x)
    fresh = torch.nn.utils.spectral_norm(nn.Conv2d(3, 4, 3))
    fresh.load_state_dict(ours.state_dict())
    fresh.eval()
    ours.eval()
    torch.testing.assert_close(fresh(x), ours(x), rtol=1e-5, atol=1e-6)
    back = spectral_norm(nn.Conv2d(3, 4, 3))
    back.load_state_dict(fresh.state_dict())
    back.eval()
    torch.testing.assert_close(back(x), ours(x), rtol=1e-5, atol=1e-6)


def test_pickle_and_deepcopy(tmp_path):
    """Whole models (torch.save without weights_only) keep the SN state, and the fused layers
    deep-copy after a forward (torch's hook design cannot: its module.weight is not a leaf)."""
    torch.manual_seed(0)
    model = nn.Sequential(spectral_norm(nn.Conv2d(3, 4, 3)), nn.Flatten(),
                          spectral_norm(ScaledLinear(4 * 3 * 3, 2)))
    x = torch.randn(2, 3, 5, 5)
    model(x)
    torch.save(model, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    _assert_same_state(loaded, model, 0)
    torch.testing.assert_close(loaded(x), model(x))  # both update u, v the same way
    _assert_same_state(loaded, model, 0)
    conv = copy.deepcopy(model[0])
    _assert_same_state(conv, model[0], 0)
    torch.testing.assert_close(conv(x), model[0](x))


def test_loads_parametrizations_layout():
    torch.manual_seed(0)
    param = torch.nn.utils.parametrizations.spectral_norm(nn.Linear(6, 9))
    ours = spectral_norm(nn.Linear(6, 9))
    ours.load_state_dict(param.state_dict())
    x = torch.randn(3, 6)
    for mode in ("eval", "train"):
        for m in (param, ours):
            getattr(m, mode)()
        for _ in range(2):
            torch.testing.assert_close(ours(x), param(x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.weight_u, param.parametrizations.weight[0]._u)


def _biggan_forward(weight, u, x, eps=1e-12):
    """BigGAN-PyTorch's SNLinear forward (num_svs=1, num_itrs=1, training): v from u, then u, the
    singular value, W / sv."""
    w = weight.view(weight.shape[0], -1)
    v = F.normalize(u @ w, eps=eps)
    u_new = F.normalize(v @ w.t(), eps=eps)
    sv = (v @ w.t() @ u_new.t()).squeeze()
    return F.linear(x, weight / sv), u_new


def test_loads_biggan_layout():
    torch.manual_seed(0)
    weight, u0 = torch.randn(9, 6), torch.randn(1, 9)
    state = {"weight": weight, "bias": torch.zeros(9), "u0": u0, "sv0": torch.ones(1)}
    ours = SNLinear(6, 9)
    ours.load_state_dict(state)
    x = torch.randn(4, 6)
    expected, u_new = _biggan_forward(weight, u0, x)
    torch.testing.assert_close(ours(x), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.weight_u, u_new[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match="holds 1 singular vectors but this layer has num_svs=2"):
        SNLinear(6, 9, num_svs=2).load_state_dict(
            {"weight": weight, "bias": torch.zeros(9), "u0": u0, "sv0": torch.ones(1)})


def test_biggan_multi_singular_values():
    """num_svs > 1 (BigGAN's Gram-Schmidt variant, reference backend): sigma is the first
    singular value, and many iterations find the top singular values in order."""
    torch.manual_seed(0)
    layer = SNLinear(20, 12, num_svs=3, n_power_iterations=1)
    u = layer.weight_u
    assert u.shape == (3, 12)
    with torch.no_grad():
        layer.weight_orig.copy_(torch.randn(12, 20))
    for _ in range(300):
        layer(torch.randn(2, 20))
    svals = torch.linalg.svdvals(layer.weight_orig.detach())
    x = torch.randn(2, 20)
    layer.eval()
    expected = F.linear(x, layer.weight_orig / svals[0], layer.bias)
    torch.testing.assert_close(layer(x), expected, rtol=1e-4, atol=1e-4)
    gram = layer.weight_u @ layer.weight_u.t()
    torch.testing.assert_close(gram, torch.eye(3), rtol=1e-4, atol=1e-4)
    state = {"weight": layer.weight_orig.detach().clone(), "bias": layer.bias.detach().clone()}
    for i in range(3):
        state[f"u{i}"], state[f"sv{i}"] = layer.weight_u[i][None].clone(), svals[i:i + 1]
    again = SNLinear(20, 12, num_svs=3)
    again.load_state_dict(state)
    again.eval()
    torch.testing.assert_close(again(x), expected, rtol=1e-4, atol=1e-4)


# --- bad input -----------------------------------------------------------------------------------

def test_bad_input():
    with pytest.raises(ValueError, match="has no parameter named 'kernel'"):
        spectral_norm(nn.Linear(3, 4), name="kernel")
    with pytest.raises(RuntimeError, match="already has spectral norm"):
        spectral_norm(spectral_norm(nn.Linear(3, 4)))
    with pytest.raises(RuntimeError, match="already has spectral norm"):
        spectral_norm(torch.nn.utils.spectral_norm(nn.Linear(3, 4)))
    with pytest.raises(RuntimeError, match="already has spectral norm"):
        spectral_norm(torch.nn.utils.parametrizations.spectral_norm(nn.Linear(3, 4)))
    with pytest.raises(ValueError, match="is empty"):
        spectral_norm(nn.Linear(0, 4))
    with pytest.raises(ValueError, match="n_power_iterations must be an int >= 0"):
        spectral_norm(nn.Linear(3, 4), n_power_iterations=-1)
    with pytest.raises(ValueError, match="eps must be a float > 0"):
        SNConv2d(3, 4, 3, eps=0)
    with pytest.raises(ValueError, match="dim must be in"):
        spectral_norm(nn.Linear(3, 4), dim=2)
    with pytest.raises(TypeError, match="module must be an nn.Module"):
        spectral_norm(torch.randn(3, 3))


# --- autocast, compile, double backward, float64 gradcheck ---------------------------------------

@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_autocast_bfloat16(backend):
    """Under autocast the power iteration stays float32 (u, v, sigma); the conv runs in bf16."""
    skip_unless_runnable(backend, "cpu", torch.float32, DTYPES)
    ours, theirs = _pair(lambda: nn.Conv2d(4, 8, 3, padding=1), backend=backend)
    x = torch.randn(2, 4, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ours(x)
        y_ref = theirs(x)
    assert y.dtype == torch.bfloat16 and ours.weight_u.dtype == torch.float32
    torch.testing.assert_close(ours.weight_u, theirs.weight_u, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(y.float(), y_ref.float(), rtol=2e-2, atol=2e-2)
    y.float().square().mean().backward()
    assert ours.weight_orig.grad.dtype == torch.float32


@pytest.mark.parametrize("factory,make_input", [
    (lambda: SNConv2d(3, 6, 3, padding=1, backend="cpu"), lambda: torch.randn(2, 3, 8, 8)),
    (lambda: SNLinear(10, 4, backend="cpu"), lambda: torch.randn(5, 10)),
    (lambda: SNEmbedding(12, 4, backend="cpu"), lambda: torch.tensor([1, 5, 5])),
], ids=["conv", "linear", "embedding"])
def test_torch_compile_fullgraph(factory, make_input):
    skip_unless_runnable("cpu", "cpu", torch.float32, DTYPES)
    torch.manual_seed(0)
    eager = factory()
    compiled_module = copy.deepcopy(eager)
    compiled = torch.compile(compiled_module, fullgraph=True)
    for _ in range(2):
        x = make_input()
        ys = []
        for fn, m in ((eager, eager), (compiled, compiled_module)):
            y = fn(x)
            y.square().sum().backward()
            ys.append(y.detach())
        torch.testing.assert_close(ys[1], ys[0], rtol=1e-5, atol=1e-5)
        # Inductor's kernels sum in their own order; an element that cancels to near 0 keeps an
        # error the size of the terms, so atol scales with the gradient's largest element.
        grad = eager.weight_orig.grad
        torch.testing.assert_close(compiled_module.weight_orig.grad, grad, rtol=1e-5,
                                   atol=1e-6 * grad.abs().max().item())
        torch.testing.assert_close(compiled_module.weight_u, eager.weight_u)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("name,factory,make_input", [LAYERS[0], LAYERS[7], LAYERS[9]],
                         ids=["conv2d", "convtranspose2d", "linear"])
def test_r1_double_backward_matches_torch(backend, name, factory, make_input):
    """R1 penalty: the gradient of the output w.r.t. the input, with create_graph, then its norm
    backpropagated to the weights."""
    skip_unless_runnable(backend, "cpu", torch.float32, DTYPES)
    ours, theirs = _pair(factory, backend=backend)
    x = make_input()
    grads = []
    for m in (ours, theirs):
        xi = x.clone().requires_grad_(True)
        (gx,) = torch.autograd.grad(m(xi).sum(), xi, create_graph=True)
        gx.square().sum().backward()
        grads.append([p.grad for p in m.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("factory,make_input", [
    (lambda b: SNConv2d(2, 3, 3, padding=1, backend=b), lambda: torch.randn(2, 2, 4, 5)),
    (lambda b: fastgan.nn.SNConvTranspose2d(3, 2, 3, stride=2, backend=b),
     lambda: torch.randn(1, 3, 3, 3)),
    (lambda b: SNLinear(5, 4, backend=b), lambda: torch.randn(3, 5)),
], ids=["conv", "convtranspose", "linear"])
def test_gradcheck_float64_eval(backend, factory, make_input):
    """In eval (u, v fixed) W / sigma is an exact function of W: gradcheck and gradgradcheck the
    output-scaled layer w.r.t. input, weight and bias."""
    skip_unless_runnable(backend, "cpu", torch.float64, DTYPES)
    layer = factory(backend).double().eval()
    x = make_input().double().requires_grad_(True)

    def fn(x, w, b):
        return torch.func.functional_call(layer, {"weight_orig": w, "bias": b}, (x,))

    args = (x, *(p.detach().clone().requires_grad_(True) for p in (layer.weight_orig, layer.bias)))
    assert torch.autograd.gradcheck(fn, args)
    assert torch.autograd.gradgradcheck(fn, args)


# --- GPU -----------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("name,factory,make_input", [LAYERS[0], LAYERS[7], LAYERS[9], LAYERS[11]],
                         ids=["conv2d", "convtranspose2d", "linear", "embedding"])
def test_gpu_layer_matches_torch(backend, name, factory, make_input):
    skip_unless_runnable(backend, "cuda", torch.float32, DTYPES)
    ours, theirs = _pair(factory, backend=backend)
    ours.cuda()
    theirs.cuda()
    _train_steps(ours, theirs, lambda: make_input().cuda())


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_gpu_autocast(backend, dtype):
    """The case pytorch#125544 breaks (parametrized spectral norm under CUDA autocast): the
    power iteration stays float32 and matches torch's float32 iteration."""
    skip_unless_runnable(backend, "cuda", torch.float32, DTYPES)
    ours, theirs = _pair(lambda: nn.Conv2d(16, 32, 3, padding=1), backend=backend)
    ours.cuda()
    theirs.cuda()
    x = torch.randn(4, 16, 16, 16, device="cuda")
    with torch.autocast("cuda", dtype=dtype):
        y = ours(x)
    y_ref = theirs(x)  # float32, outside autocast
    assert y.dtype == dtype and ours.weight_u.dtype == torch.float32
    torch.testing.assert_close(ours.weight_u, theirs.weight_u, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(y.float(), y_ref, rtol=3e-2, atol=3e-2)
    y.float().square().mean().backward()
    assert ours.weight_orig.grad.dtype == torch.float32


def test_sn_dim_and_eval_iteration_constructor_arguments():
    """sn_dim=0 on a ConvTranspose normalises the [in, out*k*k] matrix (the SAGAN reference's
    choice); eval_iteration='update' iterates in eval too; a bad sn_dim names the argument."""
    layer = SNConvTranspose2d(6, 4, 3, sn_dim=0, eval_iteration="update").eval()
    assert layer.weight_u.shape == (6,) and layer.weight_v.shape == (4 * 9,)
    u = layer.weight_u.clone()
    layer(torch.randn(1, 6, 5, 5))
    assert not torch.equal(u, layer.weight_u)
    sigma = torch.linalg.matrix_norm(layer.weight_orig.detach().reshape(6, -1), 2)
    for _ in range(200):
        layer(torch.randn(1, 6, 5, 5))
    torch.testing.assert_close(layer._sn.sigma(layer).detach(), sigma, rtol=1e-4, atol=0)
    with pytest.raises(ValueError, match="sn_dim must be in \\[0, 3\\]"):
        SNConvTranspose2d(6, 4, 3, sn_dim=4)
