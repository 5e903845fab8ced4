"""The ceilings each result is judged against, probed on this device in this run.

Copy bandwidth: a large tensor `copy_`, counting bytes read + written. Matmul rate: square
matmuls, fp32 (and bf16 on CUDA). Cached per process and device, so every op shares one probe.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .cases import DTYPE_NAMES
from .timing import Timing, cache_bytes, default_budget, time_step


@dataclass(frozen=True)
class CopyProbe:
    """dst.copy_(src) of `numel` fp32 elements."""

    numel: int
    timing: Timing

    @property
    def bytes(self) -> int:
        return 2 * 4 * self.numel  # read src + write dst

    @property
    def gbps(self) -> float:
        return self.bytes / (self.timing.p50 * 1e6)


@dataclass(frozen=True)
class MatmulProbe:
    """[n, n] @ [n, n] in `dtype`."""

    dtype: str
    n: int
    timing: Timing

    @property
    def flops(self) -> int:
        return 2 * self.n**3

    @property
    def tflops(self) -> float:
        return self.flops / (self.timing.p50 * 1e9)


@dataclass(frozen=True)
class Roofline:
    copy: CopyProbe
    matmul: tuple[MatmulProbe, ...]

    @property
    def copy_gbps(self) -> float:
        return self.copy.gbps

    def matmul_tflops(self, dtype: str) -> float | None:
        """The probed matmul rate for ``dtype`` ("fp32", "bf16", ...), else None."""
        rates = [m.tflops for m in self.matmul if m.dtype == dtype]
        return rates[0] if rates else None

    def summary(self) -> str:
        mm = ", ".join(f"matmul {m.dtype} {m.tflops:.2f} TFLOP/s" for m in self.matmul)
        return f"copy {self.copy_gbps:.1f} GB/s, {mm}"


def _probe_copy(device: torch.device, quick: bool) -> CopyProbe:
    # 8x the cache (at least 128 MB per buffer, 32 MB quick) so the copy streams from DRAM / HBM.
    floor = (32 if quick else 128) * 2**20
    numel = max(8 * cache_bytes(device), floor) // 4
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    timing = time_step(lambda i: dst.copy_(src), device, default_budget(device, quick))
    return CopyProbe(numel=numel, timing=timing)


def _probe_matmul(device: torch.device, dtype: torch.dtype, quick: bool) -> MatmulProbe:
    # Large enough to be compute bound: 8192 on GPU; on a small CPU, 2048 already takes ~0.1 s.
    n = (4096 if quick else 8192) if device.type == "cuda" else (1024 if quick else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    timing = time_step(lambda i: torch.matmul(a, b, out=c), device, default_budget(device, quick))
    return MatmulProbe(dtype=DTYPE_NAMES[dtype], n=n, timing=timing)


@functools.cache
def _probe(device: torch.device, quick: bool) -> Roofline:
    dtypes = [torch.float32, torch.bfloat16] if device.type == "cuda" else [torch.float32]
    # fp32 at torch's default matmul precision: IEEE fp32, TF32 only if the caller enabled it.
    matmul = tuple(_probe_matmul(device, dt, quick) for dt in dtypes)
    return Roofline(copy=_probe_copy(device, quick), matmul=matmul)


def probe(device: torch.device | str, quick: bool = False) -> Roofline:
    """Measure (once per process) this device's copy bandwidth and matmul rates."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return _probe(device, quick)
