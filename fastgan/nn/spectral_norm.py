"""Spectral normalization on the fused power iteration: a drop-in for torch's spectral_norm.

- ``spectral_norm(module)``: the call of torch.nn.utils.spectral_norm (and, for the layers in
  ``SN_CLASSES``, a replacement for torch.nn.utils.parametrizations.spectral_norm): the same
  parameters and buffers (``weight_orig``, ``weight_u``, ``weight_v``), the same initialisation,
  the same numerics (u, v updated once per training forward, eval uses the stored vectors).
  Conv / ConvTranspose / Linear / Embedding become their ``SN*`` subclass here, which divides the
  layer's *output* by sigma instead of materialising W / sigma (fastgan/nn/_scaled.py); any other
  module gets a forward pre-hook that sets ``module.<name> = W / sigma``, as torch does.
- ``SNConv2d``, ``SNLinear``, ``SNEmbedding`` (and the 1d/3d/transposed convs): the layers built
  spectrally normalised, as BigGAN-PyTorch's classes are, with ``num_svs`` > 1 for its
  several-singular-value variant (Gram-Schmidt; reference backend).
- state_dict: saves torch.nn.utils.spectral_norm's layout and loads it, the parametrizations
  layout (``parametrizations.weight.original`` / ``.0._u`` / ``.0._v``) and BigGAN-PyTorch's
  (``weight``, ``u0``.., ``sv0``..).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.spectral_norm import SpectralNorm as TorchSpectralNorm

from ..ops.spectral_norm import multi_sv_power_iteration_reference, spectral_norm_power_iteration
from ._scaled import ScaledConvolution, ScaledLinear

__all__ = [
    "SN_CLASSES", "SNConv1d", "SNConv2d", "SNConv3d", "SNConvTranspose1d", "SNConvTranspose2d",
    "SNConvTranspose3d", "SNEmbedding", "SNLinear", "SpectralNormState", "spectral_norm",
]

_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


class SpectralNormState:
    """The spectral norm of one parameter of one module: its settings and the logic every SN layer
    shares (the fused layers keep it as ``module._sn``; other modules as a forward pre-hook).

    ``pending`` is a sigma computed ahead by a SpectralNormGroup for the next call of the layer.
    ``order``: "vu" iterates as torch.nn.utils.spectral_norm (v = normalize(W^T u), then
    u = normalize(W v), on the fused op); "uv" as torch.nn.utils.parametrizations.spectral_norm
    (u first, then v; sigma = u . W v), which fastgan.swap keeps for layers it takes over from
    parametrizations, so that their numbers stay theirs (the u-first steps run as plain matrix-
    vector products, the sigma and its gradient on the op; such layers are not grouped).
    ``eval_iteration``: what eval mode does. "none" (torch): sigma from the stored u, v; "peek"
    (BigGAN-PyTorch): one iteration on copies of u, v, which stay as they are; "update" (the
    SAGAN reference code): iterates and stores as in training.
    """

    def __init__(self, name: str, n_power_iterations: int, eps: float, dim: int,
                 backend: str | None, num_svs: int = 1, order: str = "vu",
                 eval_iteration: str = "none") -> None:
        if isinstance(n_power_iterations, bool) or not isinstance(n_power_iterations, int) \
                or n_power_iterations < 0:
            raise ValueError(f"fastgan.nn.spectral_norm: n_power_iterations must be an int >= 0, "
                             f"got {n_power_iterations!r}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps <= 0:
            raise ValueError(f"fastgan.nn.spectral_norm: eps must be a float > 0, got {eps!r}")
        if isinstance(num_svs, bool) or not isinstance(num_svs, int) or num_svs < 1:
            raise ValueError(f"fastgan.nn.spectral_norm: num_svs must be an int >= 1, got "
                             f"{num_svs!r}")
        self.name, self.n_power_iterations, self.eps = name, n_power_iterations, float(eps)
        if order not in ("vu", "uv") or (order == "uv" and num_svs != 1):
            raise ValueError(f"fastgan.nn.spectral_norm: order must be 'vu' or 'uv' (one singular "
                             f"value), got {order!r}")
        if eval_iteration not in ("none", "peek", "update"):
            raise ValueError(f"fastgan.nn.spectral_norm: eval_iteration must be 'none', 'peek' or "
                             f"'update', got {eval_iteration!r}")
        self.dim, self.backend, self.num_svs, self.order = dim, backend, num_svs, order
        self.eval_iteration = eval_iteration
        self.pending: torch.Tensor | None = None
        # torch's module.<name> is an alias of <name>_orig until the first forward (so weight
        # init code run after spectral_norm() still reaches the parameter), then W / sigma.
        self.called = False

    # -- the state's tensors on its module
    def weight_orig(self, module: nn.Module) -> torch.Tensor:
        return module._parameters[self.name + "_orig"]

    def vectors(self, module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        return module._buffers[self.name + "_u"], module._buffers[self.name + "_v"]

    def matrix(self, weight: torch.Tensor) -> torch.Tensor:
        """The weight as torch's spectral norm sees it: dim ``dim`` first, the rest flattened.
        A view for dim 0 (contiguous weights); a copy otherwise (ConvTranspose)."""
        if self.dim != 0:
            weight = weight.movedim(self.dim, 0)
        return weight.reshape(weight.shape[0], -1)

    def register(self, module: nn.Module) -> None:
        """Moves ``name`` to ``name_orig`` and adds the u, v buffers, initialised as torch does."""
        weight = module._parameters.get(self.name)
        if weight.numel() == 0:
            raise ValueError(f"fastgan.nn.spectral_norm: {type(module).__name__}.{self.name} is "
                             f"empty (shape {tuple(weight.shape)})")
        with torch.no_grad():
            mat = self.matrix(weight)
            h, w = mat.shape
            if self.num_svs == 1:
                u = F.normalize(mat.new_empty(h).normal_(0, 1), dim=0, eps=self.eps)
                v = F.normalize(mat.new_empty(w).normal_(0, 1), dim=0, eps=self.eps)
            else:  # BigGAN-PyTorch: unnormalised u; v is recomputed from u on every call
                u = mat.new_empty(self.num_svs, h).normal_(0, 1)
                v = mat.new_zeros(self.num_svs, w)
        del module._parameters[self.name]
        module.register_parameter(self.name + "_orig", weight)
        module.register_buffer(self.name + "_u", u)
        module.register_buffer(self.name + "_v", v)

    # -- sigma
    def sigma(self, module: nn.Module) -> torch.Tensor:
        """This call's sigma: the group's, if it computed one ahead; else the layer's own power
        iteration (n_power_iterations steps in training, none in eval)."""
        self.called = True
        pending, self.pending = self.pending, None
        if pending is not None:
            return pending
        weight = self.weight_orig(module)
        u, v = self.vectors(module)
        if self.num_svs > 1:
            return self._multi_sv_sigma(module.training, weight, u, v)
        n = self.n_power_iterations
        if not module.training and self.eval_iteration == "peek":
            u, v, n = u.clone(), v.clone(), min(n, 1)  # BigGAN restarts from u on every step
        elif not module.training and self.eval_iteration == "none":
            n = 0
        mat = self.matrix(weight)
        if self.order == "uv" and n:
            with torch.no_grad():
                for _ in range(n):
                    u.copy_(F.normalize(torch.mv(mat, v.to(mat.dtype)), dim=0, eps=self.eps))
                    v.copy_(F.normalize(torch.mv(mat.t(), u.to(mat.dtype)), dim=0, eps=self.eps))
            n = 0
        return spectral_norm_power_iteration(mat, u, v, n, self.eps, backend=self.backend)

    def _multi_sv_sigma(self, training: bool, weight: torch.Tensor, u: torch.Tensor,
                        v: torch.Tensor) -> torch.Tensor:
        mat = self.matrix(weight)
        _, vs = multi_sv_power_iteration_reference(mat, u, self.n_power_iterations, self.eps,
                                                   update=training)
        with torch.no_grad():
            v.copy_(vs.to(v.dtype))
        # The first singular value, differentiable with u and v held constant, as BigGAN's.
        u0 = F.normalize(torch.mv(mat.detach().to(vs.dtype), vs[0]), dim=0, eps=self.eps)
        return torch.dot(u0, torch.mv(mat.to(vs.dtype), vs[0]))

    def normalized(self, module: nn.Module, sigma: torch.Tensor) -> torch.Tensor:
        weight = self.weight_orig(module)
        return weight / sigma.to(weight.dtype)

    # -- state_dict conversion
    def convert_state_dict(self, state_dict: dict, prefix: str) -> None:
        """Rewrites, in place, the parametrizations' or BigGAN-PyTorch's keys of this parameter
        into torch.nn.utils.spectral_norm's (``<name>_orig``, ``<name>_u``, ``<name>_v``)."""
        name = self.name
        orig, u_key, v_key = (prefix + name + s for s in ("_orig", "_u", "_v"))
        par = f"{prefix}parametrizations.{name}."
        for source in (par + "original", par + "original0"):
            if source in state_dict:
                state_dict[orig] = state_dict.pop(source)
        for source, target in ((par + "0._u", u_key), (par + "0._v", v_key)):
            if source in state_dict:
                state_dict[target] = state_dict.pop(source)
        if prefix + "u0" in state_dict and prefix + name in state_dict and orig not in state_dict:
            self._convert_biggan(state_dict, prefix, orig, u_key, v_key)

    def _convert_biggan(self, state_dict: dict, prefix: str, orig: str, u_key: str,
                        v_key: str) -> None:
        weight = state_dict.pop(prefix + self.name)
        us = []
        i = 0
        while prefix + f"u{i}" in state_dict:
            us.append(state_dict.pop(prefix + f"u{i}").reshape(-1))
            state_dict.pop(prefix + f"sv{i}", None)
            i += 1
        if len(us) != self.num_svs:
            raise RuntimeError(f"fastgan.nn.spectral_norm: the BigGAN checkpoint at {prefix!r} "
                               f"holds {len(us)} singular vectors but this layer has "
                               f"num_svs={self.num_svs}")
        u = torch.stack(us)
        with torch.no_grad():
            mat = self.matrix(weight).to(u.dtype)
            if self.num_svs == 1:
                # BigGAN stores no v: it derives v = normalize(W^T u) on every call, which is
                # the v torch's iteration pairs with this u.
                v = F.normalize(torch.mv(mat.t(), u[0]), dim=0, eps=self.eps)
                u = u[0]
            else:
                _, v = multi_sv_power_iteration_reference(mat, u.clone(), 1, self.eps,
                                                          update=False)
        state_dict[orig], state_dict[u_key], state_dict[v_key] = weight, u, v

    def load_hook(self, state_dict: dict, prefix: str, *args) -> None:
        """The module's load_state_dict pre-hook (a method, so that the module pickles)."""
        self.convert_state_dict(state_dict, prefix)

    # -- the forward pre-hook of modules without a fused SN class
    def __call__(self, module: nn.Module, inputs) -> None:
        setattr(module, self.name, self.normalized(module, self.sigma(module)))


def _applied(module: nn.Module, name: str) -> bool:
    if isinstance(getattr(module, "_sn", None), SpectralNormState) and name == "weight":
        return True
    if any(isinstance(h, (SpectralNormState, TorchSpectralNorm)) and h.name == name
           for h in module._forward_pre_hooks.values()):
        return True
    parametrizations = getattr(module, "parametrizations", None)
    return parametrizations is not None and name in parametrizations


class _SpectralNormLayer:
    """What the fused SN classes share; mixed in before the torch layer class."""

    _sn: SpectralNormState
    _sn_raw: bool = False

    def _sn_setup(self, n_power_iterations: int, eps: float, dim: int, backend: str | None,
                  num_svs: int = 1, eval_iteration: str = "none") -> None:
        self._sn = SpectralNormState("weight", n_power_iterations, eps, dim, backend, num_svs,
                                     eval_iteration=eval_iteration)
        self._sn.register(self)
        self._register_load_state_dict_pre_hook(self._sn.load_hook)

    @property
    def weight(self) -> torch.Tensor:
        """As torch's spectral norm: before the first forward an alias of ``weight_orig`` (so
        in-place init reaches the parameter), after it W / sigma with the stored u, v."""
        params = self._parameters
        if "weight" in params:  # inside the torch layer's __init__, before _sn_setup
            return params["weight"]
        sn = self._sn
        if self._sn_raw:
            return params["weight_orig"]
        if not sn.called:
            return params["weight_orig"].detach()
        u, v = sn.vectors(self)
        if sn.num_svs > 1:
            return sn.normalized(self, sn._multi_sv_sigma(False, params["weight_orig"], u, v))
        sigma = spectral_norm_power_iteration(sn.matrix(params["weight_orig"]), u, v, 0, sn.eps,
                                              backend=sn.backend)
        return sn.normalized(self, sigma)

    def reset_parameters(self) -> None:
        """The torch layer's initialisation, applied to ``weight_orig``."""
        self._sn_raw = True
        try:
            super().reset_parameters()
        finally:
            self._sn_raw = False

    def _sn_fused(self, x: torch.Tensor) -> bool:
        """Whether 1/sigma can go on the output. Under autocast the layer runs as torch's, on
        W / sigma, so that autocast picks the precision of the matmul or conv."""
        return self._sn.num_svs == 1 and not torch.is_autocast_enabled(x.device.type)

    def extra_repr(self) -> str:
        sn = self._sn
        extra = f", num_svs={sn.num_svs}" if sn.num_svs > 1 else ""
        return (f"{super().extra_repr()}, spectral_norm(n_power_iterations="
                f"{sn.n_power_iterations}, eps={sn.eps:g}{extra})")


def _sn_init(torch_cls, dim: int):
    """An __init__ taking torch_cls's arguments plus the spectral-norm ones."""

    def __init__(self, *args, n_power_iterations: int = 1, eps: float = 1e-12,
                 num_svs: int = 1, backend: str | None = None, eval_iteration: str = "none",
                 sn_dim: int | None = None, **kwargs) -> None:
        torch_cls.__init__(self, *args, **kwargs)
        ndim = self._parameters["weight"].dim()
        if sn_dim is not None and not 0 <= sn_dim < ndim:
            raise ValueError(f"fastgan.nn.{type(self).__name__}: sn_dim must be in [0, {ndim - 1}] "
                             f"for its {ndim}-D weight, got {sn_dim!r}")
        self._sn_setup(n_power_iterations, eps, dim if sn_dim is None else sn_dim, backend,
                       num_svs, eval_iteration)

    __init__.__doc__ = (f"{torch_cls.__name__}'s arguments, then n_power_iterations, eps, "
                        "num_svs (BigGAN's several singular values), backend, eval_iteration "
                        "(SpectralNormState: 'none' as torch, 'peek' as BigGAN-PyTorch, 'update' "
                        f"as the SAGAN reference code) and sn_dim (the weight dimension that "
                        f"becomes the matrix's rows; default {dim}, as torch).")
    return __init__


class _SNConvNd(_SpectralNormLayer):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        sigma = self._sn.sigma(self)
        if not self._sn_fused(input) or isinstance(self.padding, str):
            return self._conv_forward(input, self._sn.normalized(self, sigma), self.bias)
        nd = len(self.kernel_size)
        padding = self.padding
        if self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = (0,) * nd
        return _batched(input, nd, lambda x: ScaledConvolution.apply(
            x, self.weight_orig, self.bias, sigma, self.stride, padding, self.dilation, False,
            (0,) * nd, self.groups))


class _SNConvTransposeNd(_SpectralNormLayer):
    def forward(self, input: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        nd = len(self.kernel_size)
        output_padding = self._output_padding(input, output_size, self.stride, self.padding,
                                              self.kernel_size, nd, self.dilation)
        sigma = self._sn.sigma(self)
        weight = self.weight_orig
        if not self._sn_fused(input):
            conv = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[nd - 1]
            return conv(input, self._sn.normalized(self, sigma), self.bias, self.stride,
                        self.padding, output_padding, self.groups, self.dilation)
        return _batched(input, nd, lambda x: ScaledConvolution.apply(
            x, weight, self.bias, sigma, self.stride, self.padding, self.dilation, True,
            output_padding, self.groups))


def _batched(x: torch.Tensor, nd: int, fn) -> torch.Tensor:
    """fn on a batched x (aten.convolution takes no unbatched input; the torch layers do)."""
    if x.dim() == nd + 1:
        return fn(x.unsqueeze(0)).squeeze(0)
    return fn(x)


def _sn_class(torch_cls, base, dim: int, doc: str):
    cls = type(f"SN{torch_cls.__name__}", (base, torch_cls), {"__doc__": doc, "__module__": __name__})
    cls.__init__ = _sn_init(torch_cls, dim)
    cls.__init__.__qualname__ = f"{cls.__name__}.__init__"
    return cls


_CONV_DOC = ("nn.{0} with spectral normalization of its weight: conv(x, weight_orig) / sigma + "
             "bias (no W / sigma copy). Takes nn.{0}'s arguments plus n_power_iterations=1, "
             "eps=1e-12, num_svs=1, backend=None.")
SNConv1d = _sn_class(nn.Conv1d, _SNConvNd, 0, _CONV_DOC.format("Conv1d"))
SNConv2d = _sn_class(nn.Conv2d, _SNConvNd, 0, _CONV_DOC.format("Conv2d"))
SNConv3d = _sn_class(nn.Conv3d, _SNConvNd, 0, _CONV_DOC.format("Conv3d"))
SNConvTranspose1d = _sn_class(nn.ConvTranspose1d, _SNConvTransposeNd, 1,
                              _CONV_DOC.format("ConvTranspose1d"))
SNConvTranspose2d = _sn_class(nn.ConvTranspose2d, _SNConvTransposeNd, 1,
                              _CONV_DOC.format("ConvTranspose2d"))
SNConvTranspose3d = _sn_class(nn.ConvTranspose3d, _SNConvTransposeNd, 1,
                              _CONV_DOC.format("ConvTranspose3d"))


class _SNLinear(_SpectralNormLayer):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        sigma = self._sn.sigma(self)
        if not self._sn_fused(input):
            return F.linear(input, self._sn.normalized(self, sigma), self.bias)
        return ScaledLinear.apply(input, self.weight_orig, self.bias, sigma)


class _SNEmbedding(_SpectralNormLayer):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        sigma = self._sn.sigma(self)
        if self.max_norm is not None or self._sn.num_svs > 1:
            # max_norm renormalises the rows it looks up in place; torch does that on W / sigma.
            weight = self._sn.normalized(self, sigma)
            return F.embedding(input, weight, self.padding_idx, self.max_norm, self.norm_type,
                               self.scale_grad_by_freq, self.sparse)
        rows = F.embedding(input, self.weight_orig, self.padding_idx, None, self.norm_type,
                           self.scale_grad_by_freq, self.sparse)
        return rows * sigma.reciprocal().to(rows.dtype)


SNLinear = _sn_class(nn.Linear, _SNLinear, 0,
                     "nn.Linear with spectral normalization of its weight: linear(x, weight_orig) "
                     "/ sigma + bias. Takes nn.Linear's arguments plus n_power_iterations=1, "
                     "eps=1e-12, num_svs=1, backend=None.")
SNEmbedding = _sn_class(nn.Embedding, _SNEmbedding, 0,
                        "nn.Embedding with spectral normalization of its table: the looked-up "
                        "rows / sigma. Takes nn.Embedding's arguments plus n_power_iterations=1, "
                        "eps=1e-12, num_svs=1, backend=None.")

# The torch layers spectral_norm() turns into a fused SN class (exact types: a subclass may have
# its own forward).
SN_CLASSES: dict[type, type] = {
    nn.Conv1d: SNConv1d, nn.Conv2d: SNConv2d, nn.Conv3d: SNConv3d,
    nn.ConvTranspose1d: SNConvTranspose1d, nn.ConvTranspose2d: SNConvTranspose2d,
    nn.ConvTranspose3d: SNConvTranspose3d, nn.Linear: SNLinear, nn.Embedding: SNEmbedding,
}


def spectral_norm(module: nn.Module, name: str = "weight", n_power_iterations: int = 1,
                  eps: float = 1e-12, dim: int | None = None,
                  backend: str | None = None) -> nn.Module:
    """Spectrally normalises ``module.<name>``, as torch.nn.utils.spectral_norm does.

    The same parameters and buffers (``<name>_orig``, ``<name>_u``, ``<name>_v``), initialisation
    and numerics as torch's; the power iteration runs on fastgan's fused op (``backend``). Conv,
    ConvTranspose, Linear and Embedding layers (exact types) become their SN* class, which
    divides the layer's output by sigma instead of building W / sigma; other modules get torch's
    forward pre-hook design. ``dim`` defaults to 1 for ConvTranspose, else 0.

    Returns the module (changed in place).
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"fastgan.nn.spectral_norm: module must be an nn.Module, got "
                        f"{type(module).__name__}")
    if _applied(module, name):
        raise RuntimeError(f"fastgan.nn.spectral_norm: {type(module).__name__}.{name} already has "
                           "spectral norm applied")
    weight = module._parameters.get(name)
    if not isinstance(weight, torch.Tensor):
        raise ValueError(f"fastgan.nn.spectral_norm: {type(module).__name__} has no parameter "
                         f"named {name!r}")
    if dim is None:
        dim = 1 if isinstance(module, _TRANSPOSED) else 0
    if not -weight.dim() <= dim < max(weight.dim(), 1):
        raise ValueError(f"fastgan.nn.spectral_norm: dim must be in [{-weight.dim()}, "
                         f"{weight.dim() - 1}] for a weight of shape {tuple(weight.shape)}, got "
                         f"{dim}")
    dim = dim % max(weight.dim(), 1)
    fused = SN_CLASSES.get(type(module))
    if fused is not None and name == "weight":
        expected = 1 if isinstance(module, _TRANSPOSED) else 0
        if dim == expected:
            state = SpectralNormState(name, n_power_iterations, eps, dim, backend)
            state.register(module)
            module.__class__ = fused
            module._sn = state
            module._register_load_state_dict_pre_hook(state.load_hook)
            return module
    state = SpectralNormState(name, n_power_iterations, eps, dim, backend)
    state.register(module)
    # Until the first forward, module.<name> aliases the parameter, as with torch's hook.
    setattr(module, name, state.weight_orig(module).detach())
    module.register_forward_pre_hook(state)
    module._register_load_state_dict_pre_hook(state.load_hook)
    return module
