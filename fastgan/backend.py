"""The four backends, whether each can run here (and why not), and how an op picks one.

Resolution order: the explicit ``backend=`` argument > ``with fastgan.use_backend(name):`` >
the ``FASTGAN_BACKEND`` environment variable > ``"auto"``. Auto picks, for a CUDA tensor, the
fastest runnable fused backend of that op (``AUTO_CUDA_ORDER``) and, for a CPU tensor, ``cpu`` when
the compiled extension is built; otherwise ``reference``. Triton runs on CPU tensors only through
its interpreter (``TRITON_INTERPRET=1``) and only when asked for by name.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import threading
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from types import ModuleType

import torch

__all__ = [
    "BACKENDS",
    "BackendStatus",
    "BackendUnavailableError",
    "backends",
    "extension",
    "resolve",
    "runnable",
    "triton_importable",
    "use_backend",
]

BACKENDS = ("reference", "triton", "cuda", "cpu")
_CHOICES = (*BACKENDS, "auto")

# Fused backend preference on CUDA tensors, per op. Set from the committed GPU benchmark results
# (benchmarks/results/); an op missing here prefers cuda, then triton.
AUTO_CUDA_ORDER: dict[str, tuple[str, ...]] = {}
_DEFAULT_CUDA_ORDER = ("cuda", "triton")

_log = logging.getLogger("fastgan")
# use_backend's stack, per thread. (A ContextVar would suit asyncio too, but torch.compile cannot
# trace ContextVar.get, and resolve() runs inside compiled code.)
_local = threading.local()


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run the call; the message says why."""


@dataclass(frozen=True)
class BackendStatus:
    name: str
    available: bool
    reason: str

    def __str__(self) -> str:
        return f"{self.name}: {'available' if self.available else 'unavailable'} ({self.reason})"


def _load_extension() -> tuple[ModuleType | None, str]:
    if os.environ.get("FASTGAN_DISABLE_EXT") == "1":
        return None, "disabled by FASTGAN_DISABLE_EXT=1"
    try:
        module = importlib.import_module("fastgan._C")
    except ImportError as err:
        return None, f"compiled extension fastgan._C not importable ({err})"
    except OSError as err:  # e.g. built against another torch: undefined symbols
        return None, f"compiled extension fastgan._C failed to load ({err})"
    # torch's C++ ABI holds within a minor release, not across them.
    built_for = getattr(module, "torch_version", "")
    running = torch.__version__.split("+")[0]
    if built_for and built_for.split(".")[:2] != running.split(".")[:2]:
        return None, f"fastgan._C was built for torch {built_for}, but torch {running} is running"
    return module, "built"


def _triton_status() -> tuple[bool, str]:
    try:
        import triton
    except Exception as err:  # triton is optional; a broken install must not break fastgan
        return False, f"triton not importable ({type(err).__name__}: {err})"
    if not hasattr(torch.library, "triton_op"):
        return False, f"torch {torch.__version__} lacks torch.library.triton_op (needs torch >= 2.6)"
    return True, f"triton {triton.__version__}"


# Probed once at import, so that resolve() is plain lookups that torch.compile traces through.
_EXTENSION, _EXTENSION_REASON = _load_extension()
_TRITON_OK, _TRITON_REASON = _triton_status()


def extension() -> ModuleType | None:
    """The loaded fastgan._C module (its import registers torch.ops.fastgan.*), or None."""
    return _EXTENSION


def triton_importable() -> bool:
    """Whether triton (and torch.library.triton_op) can be imported, whatever the device."""
    return _TRITON_OK


def _interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _status(name: str) -> BackendStatus:
    """One backend's availability; runnable() asks for just the backend it needs on every op call."""
    if name == "reference":
        return BackendStatus("reference", True, "pure PyTorch")
    if name == "cpu":
        return BackendStatus("cpu", _EXTENSION is not None,
                             "built" if _EXTENSION is not None else _EXTENSION_REASON)
    if name == "cuda":
        if _EXTENSION is None:
            return BackendStatus("cuda", False, _EXTENSION_REASON)
        if not getattr(_EXTENSION, "with_cuda", 0):
            return BackendStatus("cuda", False, "fastgan._C was built without CUDA kernels")
        if not torch.cuda.is_available():
            return BackendStatus("cuda", False, "no CUDA device")
        return BackendStatus("cuda", True, f"built for sm {_EXTENSION.cuda_arch_list}")
    if not _TRITON_OK:
        return BackendStatus("triton", False, _TRITON_REASON)
    if torch.cuda.is_available():
        return BackendStatus("triton", True, f"{_TRITON_REASON} on CUDA")
    if _interpreter_on():
        return BackendStatus("triton", True, f"{_TRITON_REASON}, interpreter on CPU tensors")
    return BackendStatus(
        "triton", False, f"{_TRITON_REASON} but no CUDA device (TRITON_INTERPRET=1 runs it on CPU)")


def backends() -> dict[str, BackendStatus]:
    """Each backend's availability on this machine, with the reason."""
    return {name: _status(name) for name in BACKENDS}


def runnable(name: str, device: torch.device, dtype: torch.dtype | None = None,
             dtypes: Collection[torch.dtype] | None = None) -> tuple[bool, str]:
    """Whether backend ``name`` can run on tensors of ``device`` (and ``dtype`` within ``dtypes``)."""
    if name not in BACKENDS:
        raise ValueError(f"fastgan: backend must be one of {_CHOICES}, got {name!r}")
    if name == "reference":
        return True, "pure PyTorch"
    status = _status(name)
    if not status.available:
        return False, status.reason
    device = torch.device(device)
    if name == "cpu" and device.type != "cpu":
        return False, f"the cpu backend runs CPU tensors, got a tensor on {device}"
    if name == "cuda" and device.type != "cuda":
        return False, f"the cuda backend runs CUDA tensors, got a tensor on {device}"
    if name == "triton":
        if device.type == "cpu" and not _interpreter_on():
            return False, "triton runs CPU tensors only under TRITON_INTERPRET=1"
        if device.type not in ("cpu", "cuda"):
            return False, f"triton runs CUDA tensors, got a tensor on {device}"
    if dtype is not None and dtypes is not None and dtype not in dtypes:
        names = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        return False, f"dtype {str(dtype).removeprefix('torch.')} unsupported (supports {names})"
    return True, status.reason


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run the ops inside the block on backend ``name`` ("auto" restores automatic choice)."""
    if name not in _CHOICES:
        raise ValueError(f"fastgan.use_backend: name must be one of {_CHOICES}, got {name!r}")
    stack = _local.__dict__.setdefault("stack", [])
    stack.append(name)
    try:
        yield
    finally:
        stack.pop()


def _requested(backend: str | None) -> str:
    if backend is not None:
        if backend not in _CHOICES:
            raise ValueError(f"fastgan: backend must be one of {_CHOICES} or None, got {backend!r}")
        return backend
    stack = getattr(_local, "stack", None)
    if stack:
        return stack[-1]
    env = os.environ.get("FASTGAN_BACKEND", "").strip()
    if env:
        if env not in _CHOICES:
            raise ValueError(f"fastgan: FASTGAN_BACKEND must be one of {_CHOICES}, got {env!r}")
        return env
    return "auto"


_logged_fallbacks: set[tuple[str, str, str]] = set()


def _log_fallback_once(op: str, device: str, dtype: str, reason: str) -> None:
    if torch.compiler.is_compiling() or (op, device, dtype) in _logged_fallbacks:
        return
    _logged_fallbacks.add((op, device, dtype))
    _log.debug("fastgan: %s on %s %s uses the reference backend (%s)", op, device, dtype, reason)


def resolve(op: str, x: torch.Tensor, backend: str | None = None,
            dtypes: dict[str, Collection[torch.dtype]] | None = None) -> str:
    """The backend that runs ``op`` on ``x``; raises BackendUnavailableError for a named one that can't.

    ``dtypes`` maps a fused backend to the dtypes this op supports on it (absent: no restriction).
    """
    dtypes = dtypes or {}
    name = _requested(backend)
    if name != "auto":
        ok, reason = runnable(name, x.device, x.dtype, dtypes.get(name))
        if not ok:
            raise BackendUnavailableError(
                f"fastgan.{op}: backend {name!r} cannot run on this input "
                f"({x.device.type} {str(x.dtype).removeprefix('torch.')}): {reason}"
            )
        return name
    if x.device.type == "cuda":
        candidates = AUTO_CUDA_ORDER.get(op, _DEFAULT_CUDA_ORDER)
    elif x.device.type == "cpu":
        candidates = ("cpu",)
    else:
        candidates = ()
    reasons = []
    for candidate in candidates:
        ok, reason = runnable(candidate, x.device, x.dtype, dtypes.get(candidate))
        if ok:
            return candidate
        reasons.append(f"{candidate}: {reason}")
    _log_fallback_once(op, x.device.type, str(x.dtype), "; ".join(reasons) or "no fused backend")
    return "reference"
