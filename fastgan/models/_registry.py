"""The zoo's registry: models by name, and the converters that load upstream checkpoints."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ..nn.spectral_norm import SpectralNormState

__all__ = ["ModelEntry", "create", "list_models", "load_upstream", "convert_upstream",
           "register_model", "register_converter", "set_backend", "upstream_names"]


@dataclass(frozen=True)
class ModelEntry:
    name: str
    factory: Callable[..., nn.Module]
    family: str
    description: str


@dataclass(frozen=True)
class _Converter:
    fn: Callable[[Mapping[str, torch.Tensor]], dict[str, torch.Tensor]]
    upstream: str


_MODELS: dict[str, ModelEntry] = {}
_CONVERTERS: dict[str, _Converter] = {}


def register_model(name: str, family: str, description: str):
    """Decorator: registers ``factory(**cfg) -> nn.Module`` under ``name``."""

    def wrap(factory):
        if name in _MODELS:
            raise RuntimeError(f"fastgan.models: model {name!r} is registered twice")
        _MODELS[name] = ModelEntry(name, factory, family, description)
        return factory

    return wrap


def register_converter(name: str, upstream: str):
    """Decorator: registers ``fn(upstream_state_dict) -> fastgan state_dict`` for model ``name``;
    ``upstream`` says whose checkpoints it reads (e.g. "BigGAN-PyTorch G")."""

    def wrap(fn):
        if name in _CONVERTERS:
            raise RuntimeError(f"fastgan.models: converter for {name!r} is registered twice")
        _CONVERTERS[name] = _Converter(fn, upstream)
        return fn

    return wrap


def _entry(name: str) -> ModelEntry:
    if not isinstance(name, str) or name not in _MODELS:
        raise ValueError(f"fastgan.models: unknown model {name!r}; known: {', '.join(sorted(_MODELS))}")
    return _MODELS[name]


def create(name: str, **cfg) -> nn.Module:
    """Builds the registered model ``name`` with its factory's keyword arguments (all models take
    ``backend=``: "reference", "triton", "cuda", "cpu", "auto" or None)."""
    return _entry(name).factory(**cfg)


def list_models(family: str | None = None) -> list[str]:
    """The registered model names (of one ``family`` if given), sorted."""
    return sorted(n for n, e in _MODELS.items() if family is None or e.family == family)


def upstream_names() -> dict[str, str]:
    """Model name -> whose checkpoints ``load_upstream`` reads for it."""
    return {n: c.upstream for n, c in sorted(_CONVERTERS.items())}


def convert_upstream(name: str, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The fastgan state_dict of model ``name`` from an upstream checkpoint's state_dict."""
    _entry(name)
    if name not in _CONVERTERS:
        raise ValueError(f"fastgan.models.convert_upstream: no upstream converter for {name!r}; "
                         f"models with one: {', '.join(sorted(_CONVERTERS))}")
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"fastgan.models.convert_upstream: state_dict must be a mapping of "
                        f"tensors, got {type(state_dict).__name__}")
    return _CONVERTERS[name].fn(state_dict)


def load_upstream(name: str, state_dict: Mapping[str, torch.Tensor], **cfg) -> nn.Module:
    """Builds ``create(name, **cfg)`` and loads an upstream checkpoint into it (strictly: a key
    the converter does not place, or a shape that does not fit, raises)."""
    model = create(name, **cfg)
    model.load_state_dict(convert_upstream(name, state_dict), strict=True)
    return model


def set_backend(model: nn.Module, backend: str | None) -> nn.Module:
    """Points every fastgan layer of ``model`` (and its spectral norm) at ``backend``; returns
    the model. Weights are untouched, so one model can be compared across backends."""
    for m in model.modules():
        if "backend" in vars(m):
            m.backend = backend
        states = [getattr(m, "_sn", None), *m._forward_pre_hooks.values()]
        for state in states:
            if isinstance(state, SpectralNormState):
                state.backend = backend
    return model
