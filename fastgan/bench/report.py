"""Long-format CSV rows (one per metric per measurement), run metadata, and the text table.

Every measurement becomes a `time_ms` row plus derived rows (`gbps`, `frac_of_copy_bw`,
`speedup_vs_eager`, `speedup_vs_compile`); the roofline probe adds `op=roofline` rows, so one CSV
holds everything its derived numbers were computed from. See benchmarks/results/README.md.
"""

from __future__ import annotations

import csv
import datetime
import os
import platform
import re
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import __version__
from .roofline import Roofline
from .timing import Timing

COLUMNS: tuple[str, ...] = (
    "op", "provider", "mode", "dtype", "shape", "metric", "p50", "p20", "p80",
    "device", "torch", "triton", "fastgan", "git_sha", "timestamp",
)
ROOFLINE_OP = "roofline"


@dataclass(frozen=True)
class RunInfo:
    """The columns shared by every row of one run."""

    device: str
    torch: str
    triton: str
    fastgan: str
    git_sha: str
    timestamp: str


@dataclass(frozen=True)
class Measurement:
    """One timed (op, provider, mode, dtype, shape) and the bytes one iteration moves."""

    op: str
    provider: str
    mode: str
    dtype: str
    shape: str
    timing: Timing
    bytes: int
    launches: int | None = None  # GPU kernels (+ copies) one iteration queues, CUDA only
    flops: int | None = None  # for matmul-bound ops: the operations one iteration does
    peak_bytes: int | None = None  # CUDA only: peak memory one iteration allocates


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def device_name(device: torch.device) -> str:
    """Human name: the GPU's marketing name, or the CPU model with the thread count used."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{_cpu_model()} ({torch.get_num_threads()} threads)"


def device_slug(device: torch.device) -> str:
    """Directory-safe device id: "nvidia-h100-80gb-hbm3", "cpu-amd-epyc"."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device).lower()
    else:  # "Intel(R) Xeon(R) CPU @ 2.20GHz" -> "cpu-intel-xeon-2-20ghz"
        name = "cpu " + re.sub(r"\((r|tm)\)|\bcpu\b", "", _cpu_model().lower())
    return re.sub(r"[^a-z0-9]+", "-", name).strip("-")


def git_sha(repo: Path | None) -> str:
    """HEAD of the checkout this fastgan runs from (+"-dirty" with local edits), else "unknown".

    FASTGAN_GIT_SHA overrides it, for a copy of the tree without its .git (a lent GPU machine).
    """
    if os.environ.get("FASTGAN_GIT_SHA"):
        return os.environ["FASTGAN_GIT_SHA"]
    if repo is None:
        return "unknown"
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=repo, capture_output=True, text=True,
            timeout=10, check=True,
        ).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=repo, timeout=10).returncode
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def run_info(device: torch.device, repo: Path | None) -> RunInfo:
    """Versions, device, commit and a UTC timestamp shared by all rows of this run."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    return RunInfo(
        device=device_name(device),
        torch=torch.__version__,
        triton=triton_version,
        fastgan=__version__,
        git_sha=git_sha(repo),
        timestamp=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


def _row(info: RunInfo, op: str, provider: str, mode: str, dtype: str, shape: str, metric: str,
         p50: float, p20: float, p80: float) -> dict[str, str]:
    values = dict(op=op, provider=provider, mode=mode, dtype=dtype, shape=shape, metric=metric,
                  p50=f"{p50:.6g}", p20=f"{p20:.6g}", p80=f"{p80:.6g}")
    return {**values, **vars(info)}


def _inverse(numerator: float, t: Timing) -> tuple[float, float, float]:
    # A rate falls as time rises: its p20 comes from the time's p80, and vice versa.
    return numerator / t.p50, numerator / t.p80, numerator / t.p20


def _speedup(base: Timing, t: Timing) -> tuple[float, float, float]:
    # Not quantiles of the ratio (the runs are independent) but its pessimistic / optimistic band.
    return base.p50 / t.p50, base.p20 / t.p80, base.p80 / t.p20


def roofline_rows(roof: Roofline, info: RunInfo) -> list[dict[str, str]]:
    """op=roofline rows: the copy and matmul probes, time_ms plus gbps / tflops."""
    c = roof.copy
    rows = [
        _row(info, ROOFLINE_OP, "torch", "copy", "fp32", str(c.numel), "time_ms",
             c.timing.p50, c.timing.p20, c.timing.p80),
        _row(info, ROOFLINE_OP, "torch", "copy", "fp32", str(c.numel), "gbps",
             *_inverse(c.bytes / 1e6, c.timing)),
    ]
    for m in roof.matmul:
        shape = f"{m.n}x{m.n}x{m.n}"
        rows.append(_row(info, ROOFLINE_OP, "torch", "matmul", m.dtype, shape, "time_ms",
                         m.timing.p50, m.timing.p20, m.timing.p80))
        rows.append(_row(info, ROOFLINE_OP, "torch", "matmul", m.dtype, shape, "tflops",
                         *_inverse(m.flops / 1e9, m.timing)))
    return rows


def measurement_rows(
    ms: Sequence[Measurement], roof: Roofline | None, info: RunInfo
) -> list[dict[str, str]]:
    """time_ms, gbps and frac_of_copy_bw for each measurement; speedups where a baseline ran.

    Without a roofline (the model suite) or bytes (a whole training step), no gbps / frac rows.
    """
    by_key = {(m.op, m.provider, m.mode, m.dtype, m.shape): m.timing for m in ms}
    rows = []
    for m in ms:
        key, t = (m.op, m.provider, m.mode, m.dtype, m.shape), m.timing
        rows.append(_row(info, *key, "time_ms", t.p50, t.p20, t.p80))
        if m.bytes:
            gbps = _inverse(m.bytes / 1e6, t)
            rows.append(_row(info, *key, "gbps", *gbps))
            if roof is not None:
                rows.append(_row(info, *key, "frac_of_copy_bw",
                                 *(g / roof.copy_gbps for g in gbps)))
        if m.launches is not None:
            rows.append(_row(info, *key, "launches", m.launches, m.launches, m.launches))
        if m.peak_bytes is not None:
            mb = m.peak_bytes / 2**20
            rows.append(_row(info, *key, "peak_mem_mb", mb, mb, mb))
        if m.flops is not None:
            tflops = _inverse(m.flops / 1e9, t)
            rows.append(_row(info, *key, "tflops", *tflops))
            ceiling = roof.matmul_tflops(m.dtype) if roof is not None else None
            if ceiling:
                rows.append(_row(info, *key, "frac_of_matmul", *(f / ceiling for f in tflops)))
        for base in ("eager", "compile"):
            base_t = by_key.get((m.op, base, m.mode, m.dtype, m.shape))
            if base_t is not None and m.provider != base:
                rows.append(_row(info, *key, f"speedup_vs_{base}", *_speedup(base_t, t)))
    return rows


def write_csv(rows: Iterable[dict[str, str]], path: Path) -> Path:
    """Write rows (COLUMNS order) to path, replacing it; returns path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _fmt(v: str | None, spec: str, scale: float = 1.0, suffix: str = "") -> str:
    return "-" if v is None else f"{float(v) * scale:{spec}}{suffix}"


def format_table(rows: Sequence[dict[str, str]]) -> str:
    """One line per (op, shape, dtype, mode, provider): time, GB/s, % of copy bw, speedups."""
    metrics: dict[tuple[str, ...], dict[str, dict[str, str]]] = {}
    for r in rows:
        if r["op"] != ROOFLINE_OP:
            key = (r["op"], r["shape"], r["dtype"], r["mode"], r["provider"])
            metrics.setdefault(key, {})[r["metric"]] = r
    header = ("op", "shape", "dtype", "mode", "provider", "ms p50", "[p20, p80]", "GB/s",
              "% copy", "vs eager", "vs compile", "launches")
    lines = [header]
    for key, m in metrics.items():
        t = m["time_ms"]
        lines.append((
            *key, f"{float(t['p50']):.3f}", f"[{float(t['p20']):.3f}, {float(t['p80']):.3f}]",
            _fmt(m.get("gbps", {}).get("p50"), ".1f"),
            _fmt(m.get("frac_of_copy_bw", {}).get("p50"), ".0f", 100, "%"),
            _fmt(m.get("speedup_vs_eager", {}).get("p50"), ".2f", suffix="x"),
            _fmt(m.get("speedup_vs_compile", {}).get("p50"), ".2f", suffix="x"),
            _fmt(m.get("launches", {}).get("p50"), ".0f"),
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    numeric = set(range(5, len(header)))
    out = []
    for n, line in enumerate(lines):
        cells = [c.rjust(w) if i in numeric else c.ljust(w)
                 for i, (c, w) in enumerate(zip(line, widths, strict=True))]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)
