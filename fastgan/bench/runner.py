"""`fastgan bench`: time every provider of every registered op, print a table, write CSV + PNG.

    fastgan bench [--op NAME] [--device cpu|cuda] [--quick] [--modes fwd,bwd,full] [--out DIR]
    fastgan bench --suite models [...]   whole zoo models (fastgan/bench/models.py)
    python -m fastgan.bench.runner --quick
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from .cases import DTYPE_NAMES, REGISTRY, Case, OpBench, _resolve, get_op
from .plot import have_matplotlib, plot_op
from .providers import COMPILE, Provider, Skip, first_line, measure, providers_for
from .report import (
    Measurement,
    device_slug,
    format_table,
    measurement_rows,
    roofline_rows,
    run_info,
    write_csv,
)
from .roofline import probe
from .timing import MODES, Budget, default_budget

EXTRA_HINT = "pip install 'fastgan[bench]'"
# `fastgan bench --suite NAME`: "module:function" taking the whole argv; "ops" is this module's.
SUITES: dict[str, str] = {"ops": "", "models": "fastgan.bench.models:main",
                          "swap": "fastgan.bench.swap_suite:main"}


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="fastgan bench", description=__doc__.splitlines()[0])
    p.add_argument("--suite", choices=sorted(SUITES), default="ops",
                   help="ops: every fused op (default); models: zoo training steps and "
                        "inference (`fastgan bench --suite models --help`)")
    p.add_argument("--op", choices=sorted(REGISTRY), help="one op (default: all)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda if available, else cpu")
    p.add_argument("--quick", action="store_true", help="1-2 small shapes, few repetitions")
    p.add_argument("--modes", default=",".join(MODES),
                   help="comma-separated subset of fwd,bwd,full (default: all)")
    p.add_argument("--out", type=Path,
                   help="results folder (default: benchmarks/results/<device>/ inside the "
                        "checkout, else ./fastgan-bench/<device>/)")
    args = p.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.modes or set(args.modes) - set(MODES):
        p.error(f"--modes must be a comma-separated subset of {','.join(MODES)}")
    return args


def repo_root() -> Path | None:
    """The source checkout this fastgan is imported from, or None for an installed copy."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "benchmarks").is_dir() and (root / ".git").exists() else None


def bench_device(requested: str | None) -> torch.device | None:
    """The device a `fastgan bench` run times on: ``--device``, else cuda when torch sees one,
    else cpu. None, after saying why on stderr, for ``--device cuda`` without a CUDA device."""
    if requested == "cuda" and not torch.cuda.is_available():
        print("fastgan bench: --device cuda, but torch sees no CUDA device", file=sys.stderr)
        return None
    device = torch.device(requested or ("cuda" if torch.cuda.is_available() else "cpu"))
    return torch.device("cuda", torch.cuda.current_device()) if device.type == "cuda" else device


def note_cpu_load(device: torch.device) -> None:
    """On CPU, say so when other processes share the cores (the timings will be noisy)."""
    if device.type == "cpu" and hasattr(os, "getloadavg"):
        load, cores = os.getloadavg()[0], os.cpu_count() or 1
        if load > 0.5 * cores:
            print(f"note: load average {load:.1f} on {cores} cores; CPU timings will be noisy")


def print_results(rows: Sequence[dict[str, str]], skips: Sequence[Skip],
                  empty: str = "nothing could be timed") -> int:
    """The table of rows (or ``empty``), then each provider that was not timed and why; returns
    how many of those are fastgan defects."""
    print()
    print(format_table(rows) if rows else empty)
    unique = list(dict.fromkeys(skips))
    for skip in unique:
        print(f"{'FAILED' if skip.failed else 'skipped'} {skip.provider}: {skip.reason}")
    return sum(skip.failed for skip in unique)


def default_out(device: torch.device, repo: Path | None) -> Path:
    """benchmarks/results/<slug>/ when run inside the checkout, else ./fastgan-bench/<slug>/."""
    cwd = Path.cwd().resolve()
    if repo is not None and (cwd == repo or repo in cwd.parents):
        return repo / "benchmarks" / "results" / device_slug(device)
    return cwd / "fastgan-bench" / device_slug(device)


class Progress:
    """tqdm when installed; otherwise one short line per measurement on stderr."""

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0
        try:
            from tqdm import tqdm
        except ImportError:
            print(f"note: tqdm not installed, no progress bar ({EXTRA_HINT})", file=sys.stderr)
            self.bar = None
        else:
            self.bar = tqdm(total=total, unit="run", dynamic_ncols=True, file=sys.stderr,
                            disable=None)  # None: no bar when stderr is not a terminal (CI logs)

    def start(self, label: str) -> None:
        if self.bar is not None:
            self.bar.set_description_str(label)
        else:
            print(f"[{self.done + 1}/{self.total}] {label}", file=sys.stderr, flush=True)

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_op(
    op: OpBench, device: torch.device, modes: Sequence[str], quick: bool, budget: Budget
) -> tuple[list[Measurement], list[Skip]]:
    """Time every (dtype, case, provider, mode) of op; errors become Skips, never a crash."""
    eager = op.reference_fn()
    provs, skips = providers_for(op, device)
    dtypes, cases = op.dtypes_on(device), op.cases(quick, device)
    progress = Progress(len(dtypes) * len(cases) * len(provs) * len(modes))
    try:
        out = _run(op, eager, provs, skips, dtypes, cases, device, modes, budget, progress)
    finally:
        progress.close()
    # Table order: per dtype and shape, each mode with its providers side by side.
    order = {p.name: i for i, p in enumerate(provs)}
    shapes = {c.shape: i for i, c in enumerate(cases)}
    out.sort(key=lambda m: (m.dtype != "fp32", shapes[m.shape], modes.index(m.mode),
                            order[m.provider]))
    return out, skips


def _run(
    op: OpBench, eager: Callable[..., torch.Tensor], provs: list[Provider], skips: list[Skip],
    dtypes: list[torch.dtype], cases: list[Case], device: torch.device, modes: Sequence[str],
    budget: Budget, progress: Progress,
) -> list[Measurement]:
    disabled: set[str] = set()
    out: list[Measurement] = []
    for dtype in dtypes:
        dname = DTYPE_NAMES[dtype]
        for case in cases:
            for prov in provs:
                if prov.name in disabled:
                    progress.advance(len(modes))
                    continue
                try:
                    fn = prov.make()
                except Exception as e:  # e.g. fastgan.ops not importable
                    skips.append(Skip(prov.name, first_line(e), prov.name != COMPILE))
                    disabled.add(prov.name)
                    progress.advance(len(modes))
                    continue
                for i, mode in enumerate(modes):
                    progress.start(f"{op.name} {dname} {case.shape} {prov.name} {mode}")
                    try:
                        timing, launches, peak = measure(fn, eager, case, mode, device, dtype,
                                                         budget)
                    except Exception as e:
                        where = f"{dname} {case.shape} {mode}"
                        # torch.compile failing (no C++ compiler, ...) is the environment's
                        # problem; anything else raising or differing from eager is a defect.
                        failed = prov.name != COMPILE
                        skips.append(Skip(prov.name, f"{where}: {first_line(e)}", failed))
                        if not failed:
                            disabled.add(COMPILE)  # no compiler stays no compiler: fail once
                        progress.advance(len(modes) - i)
                        break
                    elem = torch.empty((), dtype=dtype).element_size()
                    flops = case.flops(mode) if case.flops is not None else None
                    out.append(Measurement(op.name, prov.name, mode, dname, case.shape, timing,
                                           case.bytes_moved(mode, elem), launches, flops, peak))
                    progress.advance()
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point of `fastgan bench`: 0, or 1 if a fastgan backend or the eager reference raised
    or differed from eager (a skipped torch.compile is not a failure)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(prog="fastgan bench", add_help=False)
    pre.add_argument("--suite", choices=sorted(SUITES), default="ops")
    suite = SUITES[pre.parse_known_args(argv)[0].suite]
    if suite:
        return _resolve(suite)(argv)
    args = _parse(argv)
    device = bench_device(args.device)
    if device is None:
        return 2
    ops = [get_op(args.op)] if args.op else list(REGISTRY.values())
    repo = repo_root()
    out_dir = args.out or default_out(device, repo)
    info = run_info(device, repo)
    print(f"fastgan bench on {info.device}: torch {info.torch}, triton {info.triton}, "
          f"fastgan {info.fastgan} @ {info.git_sha}{' (quick)' if args.quick else ''}")
    note_cpu_load(device)
    roof = probe(device, quick=args.quick)
    print(f"roofline: {roof.summary()}")
    if not have_matplotlib():
        print(f"note: matplotlib not installed, no plot ({EXTRA_HINT})")

    budget = default_budget(device, args.quick)
    suffix = "-quick" if args.quick else ""
    failures = 0
    for op in ops:
        measurements, skips = run_op(op, device, args.modes, args.quick, budget)
        rows = roofline_rows(roof, info) + measurement_rows(measurements, roof, info)
        failures += print_results(rows, skips)
        csv_path = write_csv(rows, out_dir / f"{op.name}{suffix}.csv")
        print(f"wrote {csv_path}")
        png_path = plot_op(rows, op.name, out_dir / f"{op.name}{suffix}.png")
        if png_path is not None:
            print(f"wrote {png_path}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
