"""fastgan.swap(model): fused layers into a model someone else wrote, in place.

    report = fastgan.swap(G)         # G's own parameter tensors, now behind fused layers
    print(report)                    # what became what, what was skipped and why
    fastgan.unswap(G)                # the original modules back

Patterns (the first that matches a module wins):
- torch.nn.utils.spectral_norm (the hook) and torch.nn.utils.parametrizations.spectral_norm on
  any layer -> fastgan spectral norm (Conv / ConvTranspose / Linear / Embedding become their
  ``SN*`` class), and with ``group_spectral_norm`` one grouped power iteration per model forward;
- in an nn.Sequential: BatchNorm2d / SyncBatchNorm -> ReLU / LeakyReLU -> BatchNormAct2d;
  Conv2d -> PixelShuffle [-> activation] -> one conv + fused bias, shuffle and activation;
  PixelShuffle -> ReLU / LeakyReLU / PReLU / Tanh -> the fused shuffle + activation.

Every replacement holds the replaced modules' very parameter and buffer tensors, so an
optimizer built before the swap keeps working and training state is shared with the originals.
In a Sequential the fused module takes the first module's index and the modules it absorbed stay
at theirs as pass-through holders of their parameters: state_dict keys do not change. The one
pattern that changes keys (parametrizations' ``parametrizations.weight.original`` ->
``weight_orig``) says so in the report; the new layer still loads the old layout.

Numerics: a swapped spectral norm keeps its origin's iteration: torch.nn.utils.spectral_norm's
(v from u, then u from v) on the fused op and in the group; parametrizations' (u first, then v)
as plain matrix-vector steps with the sigma on the op, outside the group.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.spectral_norm import SpectralNorm as TorchSpectralNorm

from .backend import _CHOICES
from .nn.batch_norm import BatchNormAct2d
from .nn.pixel_shuffle import _ACTIVATION_MODULES, _activation_args
from .nn.spectral_norm import SN_CLASSES, SpectralNormState
from .nn.spectral_norm_group import SpectralNormGroup
from .nn.spectral_norm_group import _states as _sn_states
from .ops import pixel_shuffle_act
from .swap_adapters import (ADAPTERS, BigGANBN, Skip, install_spectral_norm, is_adapted,
                            shallow_copy)

__all__ = ["SwapReport", "SwapRow", "swap", "unswap"]

_STATE_ATTR = "_fastgan_swap"


# ---------------------------------------------------------------------------------- the report
@dataclass(frozen=True)
class SwapRow:
    """One line of the report: ``status`` is "replaced", "fused" (already fastgan's), "skipped"
    (a pattern matched but was not applied: ``note`` says why) or "untouched" (no pattern)."""

    path: str
    was: str
    became: str
    status: str
    note: str = ""


@dataclass
class SwapReport:
    """What ``swap`` did, module by module. ``print(report)`` gives the table."""

    rows: list[SwapRow] = field(default_factory=list)
    changed_keys: dict[str, str] = field(default_factory=dict)
    spectral_norm_group: int = 0

    def _select(self, status: str) -> list[SwapRow]:
        return [r for r in self.rows if r.status == status]

    @property
    def replaced(self) -> list[SwapRow]:
        return self._select("replaced")

    @property
    def skipped(self) -> list[SwapRow]:
        return self._select("skipped")

    @property
    def untouched(self) -> list[SwapRow]:
        return self._select("untouched")

    def __len__(self) -> int:
        return len(self.replaced)

    def __str__(self) -> str:
        head = ("module", "was", "became", "status / note")
        lines = [(r.path or "(root)", r.was, r.became or "-",
                  r.status + (f": {r.note}" if r.note else "")) for r in self.rows]
        widths = [max(len(head[i]), *(len(line[i]) for line in lines)) if lines else len(head[i])
                  for i in range(3)]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
        out = [fmt.format(*head), fmt.format(*("-" * w for w in widths), "-" * 13)]
        out += [fmt.format(*line) for line in lines]
        summary = f"{len(self.replaced)} replaced, {len(self.skipped)} skipped, " \
                  f"{len(self.untouched)} untouched"
        if self.spectral_norm_group:
            summary += f"; one grouped power iteration for {self.spectral_norm_group} layers"
        if self.changed_keys:
            summary += "\nstate_dict keys that changed:\n" + "\n".join(
                f"  {a} -> {b}" for a, b in self.changed_keys.items())
        return "\n".join(out + [summary])

    __repr__ = __str__


# ---------------------------------------------------------------------------- fused modules
class _Absorbed(nn.Module):
    """Stands where a module fused into the one before it stood: holds that module's parameters
    and buffers under their names (so state_dict keys stay) and passes its input through."""

    def __init__(self, module: nn.Module, into: str) -> None:
        super().__init__()
        self.training = module.training
        object.__setattr__(self, "absorbed", module)  # not a child: its tensors are ours below
        self.into = into
        for name, p in module._parameters.items():
            self.register_parameter(name, p)
        for name, b in module._buffers.items():
            self.register_buffer(name, b, persistent=name not in module._non_persistent_buffers_set)

    def activation_args(self, dtype: torch.dtype) -> tuple[str, float, torch.Tensor | None]:
        name, slope, _ = _activation_args(self.absorbed, dtype)
        weight = self._parameters.get("weight") if name == "prelu" else None
        return name, slope, None if weight is None else weight.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def extra_repr(self) -> str:
        return f"{self.absorbed!r} fused into {self.into}"


def _activation(holder: _Absorbed | None, dtype: torch.dtype):
    return ("none", 0.2, None) if holder is None else holder.activation_args(dtype)


class SwappedPixelShuffleAct(nn.Module):
    """nn.PixelShuffle(r) and the activation after it (held at the next index), fused."""

    def __init__(self, shuffle: nn.PixelShuffle, act: _Absorbed, backend: str | None) -> None:
        super().__init__()
        self.training = shuffle.training
        self.upscale_factor, self.backend = shuffle.upscale_factor, backend
        object.__setattr__(self, "act", act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        name, slope, weight = _activation(self.act, x.dtype)
        return pixel_shuffle_act(x, self.upscale_factor, None, name, slope, weight,
                                 backend=self.backend)

    def extra_repr(self) -> str:
        return f"upscale_factor={self.upscale_factor}, activation={self.act.absorbed!r}"


class SwappedConvPixelShuffleAct(nn.Conv2d):
    """An nn.Conv2d (the replaced conv's own parameters and keys) whose bias, the PixelShuffle
    and the activation after it run as one fused op."""

    upscale_factor: int
    backend: str | None
    act: _Absorbed | None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._conv_forward(x, self.weight, None)
        bias = None if self.bias is None else self.bias.to(y.dtype)
        name, slope, weight = _activation(self.act, y.dtype)
        return pixel_shuffle_act(y, self.upscale_factor, bias, name, slope, weight,
                                 backend=self.backend)

    def extra_repr(self) -> str:
        act = "none" if self.act is None else repr(self.act.absorbed)
        return f"{super().extra_repr()}, pixel_shuffle={self.upscale_factor}, activation={act}"


_FUSED_TYPES = (BatchNormAct2d, SwappedPixelShuffleAct, SwappedConvPixelShuffleAct, _Absorbed,
                *SN_CLASSES.values())


def _fused(module: nn.Module) -> bool:
    return isinstance(module, _FUSED_TYPES) or is_adapted(module)


# -------------------------------------------------------------------------------- helpers
def _has_user_hooks(module: nn.Module) -> bool:
    return any(getattr(module, name) for name in (
        "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"))


def _type_name(module: nn.Module) -> str:
    return type(module).__name__


def _hook_spectral_norm(module: nn.Module) -> TorchSpectralNorm | None:
    hooks = [h for h in module._forward_pre_hooks.values() if isinstance(h, TorchSpectralNorm)]
    return hooks[0] if len(hooks) == 1 else None


def _parametrized_spectral_norm(module: nn.Module):
    """(tensor name, the _SpectralNorm parametrization) when that is the module's only one."""
    if not parametrize.is_parametrized(module) or len(module.parametrizations) != 1:
        return None
    name, plist = next(iter(module.parametrizations.items()))
    if len(plist) != 1 or type(plist[0]).__name__ != "_SpectralNorm":
        return None
    return name, plist[0]


def _swap_spectral_norm(module: nn.Module, path: str, backend: str | None,
                        report: SwapReport) -> nn.Module | None:
    hook = _hook_spectral_norm(module)
    if hook is not None:
        new = shallow_copy(module, type(module))
        ours = {id(hook)}
        new._forward_pre_hooks = type(new._forward_pre_hooks)(
            (k, h) for k, h in new._forward_pre_hooks.items() if id(h) not in ours)
        for attr in ("_state_dict_hooks", "_load_state_dict_pre_hooks"):
            hooks = getattr(new, attr)
            setattr(new, attr, type(hooks)((k, h) for k, h in hooks.items()
                                           if getattr(getattr(h, "hook", h), "fn", None) is not hook))
        state = SpectralNormState(hook.name, hook.n_power_iterations, hook.eps, hook.dim, backend)
        alias = new.__dict__.get(hook.name)
        orig = state.weight_orig(new)
        # torch's module.<name> aliases <name>_orig until the first forward, W / sigma after.
        state.called = not (isinstance(alias, torch.Tensor) and alias.data_ptr() == orig.data_ptr())
        kind = install_spectral_norm(new, state, type(module))
        report.rows.append(SwapRow(path, f"{_type_name(module)} + spectral_norm", kind, "replaced"))
        return new
    found = _parametrized_spectral_norm(module)
    if found is None:
        return None
    name, p = found
    base = parametrize.type_before_parametrizations(module)
    new = shallow_copy(module, base)
    new._modules.pop("parametrizations")
    new.register_parameter(name + "_orig", module.parametrizations[name].original)
    new.register_buffer(name + "_u", p._u)
    new.register_buffer(name + "_v", p._v)
    state = SpectralNormState(name, p.n_power_iterations, p.eps, p.dim, backend, order="uv")
    state.called = True
    kind = install_spectral_norm(new, state, base)
    prefix = f"{path}." if path else ""
    for old, ours in (("original", "_orig"), ("0._u", "_u"), ("0._v", "_v")):
        report.changed_keys[f"{prefix}parametrizations.{name}.{old}"] = f"{prefix}{name}{ours}"
    report.rows.append(SwapRow(path, f"{base.__name__} + parametrizations.spectral_norm", kind,
                               "replaced", "state_dict keys change (old keys still load)"))
    return new


# ---------------------------------------------------------------- Sequential chain patterns
_BN_ACTS = (nn.ReLU, nn.LeakyReLU)
_BIGGAN_BN = BigGANBN()


def _plain(module: nn.Module | None, types: tuple[type, ...]) -> bool:
    """Exactly one of ``types`` (a subclass may compute something else) and without hooks."""
    return module is not None and type(module) in types and not _has_user_hooks(module) \
        and not parametrize.is_parametrized(module)


def _chain(mods: list[nn.Module], i: int, backend: str | None):
    """(how many modules from i, the replacements for them, description) or None."""
    m = mods[i]
    nxt = mods[i + 1] if i + 1 < len(mods) else None
    third = mods[i + 2] if i + 2 < len(mods) else None
    if _plain(m, (nn.BatchNorm2d, nn.SyncBatchNorm)) and _plain(nxt, _BN_ACTS):
        return 2, [BatchNormAct2d.from_module(m, nxt, backend=backend),
                   _Absorbed(nxt, "the BatchNormAct2d before")], "BatchNormAct2d"
    if _BIGGAN_BN.matches(m) and not _has_user_hooks(m) and _plain(nxt, _BN_ACTS):
        try:
            fused, _ = _BIGGAN_BN.convert(m, backend, nxt)
        except Skip:
            return None
        return 2, [fused, _Absorbed(nxt, "the bn before")], type(fused).__name__
    if _plain(m, (nn.Conv2d,)) and _plain(nxt, (nn.PixelShuffle,)):
        act = _Absorbed(third, "the conv before") if _plain(third, tuple(_ACTIVATION_MODULES)) \
            else None
        conv = shallow_copy(m, SwappedConvPixelShuffleAct)
        conv.upscale_factor, conv.backend = nxt.upscale_factor, backend
        object.__setattr__(conv, "act", act)
        out = [conv, _Absorbed(nxt, "the conv before")] + ([act] if act is not None else [])
        return len(out), out, "SwappedConvPixelShuffleAct"
    if _plain(m, (nn.PixelShuffle,)) and _plain(nxt, tuple(_ACTIVATION_MODULES)):
        act = _Absorbed(nxt, "the PixelShuffle before")
        return 2, [SwappedPixelShuffleAct(m, act, backend), act], "SwappedPixelShuffleAct"
    return None


# ------------------------------------------------------------------------------ the walk
@dataclass
class _SwapState:
    """Kept on the swapped model: how to undo each replacement, and the SN group."""

    records: list[tuple[nn.Module, str, nn.Module]] = field(default_factory=list)
    group: SpectralNormGroup | None = None
    root: tuple[type, dict] | None = None  # the model's own class and dict, if an adapter took it


def _selected(path: str, include: Iterable[str] | None, exclude: Iterable[str]) -> bool:
    if include is not None and not any(fnmatch.fnmatchcase(path, p) for p in include):
        return False
    return not any(fnmatch.fnmatchcase(path, p) for p in exclude)


def _patterns(value, name: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = (value,)
    value = tuple(value)
    if not all(isinstance(p, str) for p in value):
        raise TypeError(f"fastgan.swap: {name} must be a glob pattern or a list of them "
                        f"(module paths as in model.named_modules()), got {value!r}")
    return value


def swap(model: nn.Module, backend: str | None = None, include: Iterable[str] | str | None = None,
         exclude: Iterable[str] | str | None = None,
         group_spectral_norm: bool = True) -> SwapReport:
    """Replaces, in place, every pattern ``model`` holds with its fused equivalent.

    Args:
        model: any nn.Module; changed in place (``fastgan.unswap(model)`` undoes it).
        backend: the fused layers' backend ("reference", "triton", "cuda", "cpu", "auto" or None).
        include / exclude: glob patterns over module paths (``"blocks.*"``); a module is swapped
            when it matches ``include`` (default: everything) and no ``exclude`` pattern.
        group_spectral_norm: run the power iterations of all spectral-norm layers as one grouped
            op per forward of ``model`` (fastgan.nn.SpectralNormGroup).

    Returns a SwapReport: every module path, what it was, what it became, or why it was skipped.
    Swapping a swapped model changes nothing.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fastgan.swap: model must be an nn.Module, got {type(model).__name__}")
    if backend is not None and backend not in _CHOICES:
        raise ValueError(f"fastgan.swap: backend must be one of {_CHOICES} or None, got {backend!r}")
    include, exclude = _patterns(include, "include"), _patterns(exclude, "exclude") or ()
    state: _SwapState = model.__dict__.get(_STATE_ATTR) or _SwapState()
    report = SwapReport()

    def replace(parent: nn.Module, name: str, new: nn.Module) -> None:
        state.records.append((parent, name, parent._modules[name]))
        parent._modules[name] = new

    def visit(module: nn.Module, path: str) -> None:
        names = list(module._modules)
        mods = [module._modules[n] for n in names]
        i = 0
        while i < len(names):
            child, cpath = mods[i], f"{path}.{names[i]}" if path else names[i]
            if child is None:
                i += 1
                continue
            chain = _chain(mods, i, backend) if isinstance(module, nn.Sequential) else None
            if chain is not None:
                count, news, kind = chain
                if not _selected(cpath, include, exclude):
                    report.rows.append(SwapRow(cpath, _type_name(child), kind, "skipped",
                                               "excluded by include/exclude"))
                    i += 1
                    continue
                was = " -> ".join(_type_name(m) for m in mods[i:i + count])
                for k, new in enumerate(news):
                    replace(module, names[i + k], new)
                report.rows.append(SwapRow(cpath, was, kind, "replaced",
                                           f"fuses indices {names[i]}..{names[i + count - 1]}"))
                i += count
                continue
            new = _swap_child(child, cpath)
            if new is not None:
                replace(module, names[i], new)
                child = new
            visit(child, cpath)
            i += 1

    def _swap_child(child: nn.Module, cpath: str) -> nn.Module | None:
        if _fused(child):
            report.rows.append(SwapRow(cpath, _type_name(child), _type_name(child), "fused"))
            return None
        adapter = next((a for a in ADAPTERS if a.matches(child)), None)
        if adapter is not None:
            return _adapt(adapter, child, cpath)
        candidate = _hook_spectral_norm(child) is not None or \
            _parametrized_spectral_norm(child) is not None
        if candidate and not _selected(cpath, include, exclude):
            report.rows.append(SwapRow(cpath, _type_name(child), "", "skipped",
                                       "excluded by include/exclude"))
            return None
        new = _swap_spectral_norm(child, cpath, backend, report) if candidate else None
        if new is None and not child._modules:
            report.rows.append(SwapRow(cpath, _type_name(child), "", "untouched",
                                       "no fused equivalent"))
        return new

    def _adapt(adapter, child: nn.Module, cpath: str) -> nn.Module | None:
        if not _selected(cpath, include, exclude):
            report.rows.append(SwapRow(cpath, _type_name(child), "", "skipped",
                                       "excluded by include/exclude"))
            return None
        try:
            new, changes = adapter.convert(child, backend)
        except Skip as why:
            report.rows.append(SwapRow(cpath, _type_name(child), "", "skipped",
                                       f"{adapter.name}: {why}"))
            return None
        prefix = f"{cpath}." if cpath else ""
        for old, ours in changes:
            report.changed_keys[prefix + old if old else f"(new) {prefix}{ours}"] = \
                prefix + ours if ours else "(dropped)"
        report.rows.append(SwapRow(cpath, _type_name(child), _type_name(new), "replaced",
                                   adapter.name + ("; state_dict keys change" if changes else "")))
        return new

    root_adapter = next((a for a in ADAPTERS if a.matches(model)), None)
    if root_adapter is not None and not _fused(model):
        new = _adapt(root_adapter, model, "")
        if new is not None:  # the model object itself takes the new class and containers
            state.root = (type(model), model.__dict__)
            model.__class__, model.__dict__ = type(new), new.__dict__
    visit(model, "")
    if state.records or state.root:
        model.__dict__[_STATE_ATTR] = state
    if group_spectral_norm:
        _regroup(model, state, report)
    return report


def _regroup(model: nn.Module, state: _SwapState, report: SwapReport) -> None:
    """One SpectralNormGroup over the model's fastgan SN layers (a fresh one when layers came in)."""
    if state.group is not None:
        report.spectral_norm_group = len(state.group)
        known = {id(s) for _, s in state.group.layers}
        if all(id(s) in known for m in model.modules() for s in _sn_states(m)):
            return
        state.group.remove()
        state.group = None
    try:
        state.group = SpectralNormGroup(model)
    except ValueError:  # no spectral-norm layers
        return
    except RuntimeError as err:  # the user grouped (some of) them already
        report.rows.append(SwapRow("", _type_name(model), "", "skipped", f"grouping: {err}"))
        return
    model.__dict__[_STATE_ATTR] = state
    report.spectral_norm_group = len(state.group)


def unswap(model: nn.Module) -> nn.Module:
    """Puts back every module ``swap`` replaced in ``model`` (they share the tensors the fused
    modules trained) and removes the spectral-norm group. Returns the model."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"fastgan.unswap: model must be an nn.Module, got {type(model).__name__}")
    state: _SwapState | None = model.__dict__.pop(_STATE_ATTR, None)
    if state is None:
        return model
    if state.group is not None:
        state.group.remove()
    for parent, name, original in reversed(state.records):
        parent._modules[name] = original
    if state.root is not None:
        model.__class__, model.__dict__ = state.root
    return model

