"""Helpers every fused op shares: argument checks and memory-format rules."""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# What the GPU backends compute in (fp32 accumulation inside); float64 runs on reference and cpu.
GPU_DTYPES = frozenset({torch.float32, torch.float16, torch.bfloat16})
CPU_DTYPES = frozenset(FLOAT_DTYPES)


def output_memory_format(x: torch.Tensor) -> torch.memory_format:
    """channels_last when x is channels_last-dense and not also NCHW-contiguous, else contiguous.

    A tensor that is both (C == 1, or H == W == 1) counts as NCHW, as in ATen.
    """
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def check_tensor(name: str, t: object, *, op: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"fastgan.{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def check_float(name: str, t: torch.Tensor, *, op: str) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"fastgan.{op}: {name} must be float32, float16, bfloat16 or float64, got {t.dtype}"
        )


def check_like(name: str, t: torch.Tensor, x: torch.Tensor, *, op: str) -> None:
    """t must be on x's device with x's dtype."""
    if t.device != x.device:
        raise ValueError(f"fastgan.{op}: {name} is on {t.device} but x is on {x.device}")
    if t.dtype != x.dtype:
        raise ValueError(f"fastgan.{op}: {name} has dtype {t.dtype} but x has dtype {x.dtype}")


def check_int(name: str, value: object, *, op: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"fastgan.{op}: {name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"fastgan.{op}: {name} must be >= {minimum}, got {value}")
    return value
