"""The ``fastgan`` command: ``info`` | ``check`` | ``bench``."""

from __future__ import annotations

import argparse
import platform
import sys

import torch

from . import __version__
from . import backend as _backend

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "float64": torch.float64}


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def info() -> int:
    """Versions, device, build flags and the backend table."""
    ext = _backend.extension()
    try:
        import triton
        triton_version = triton.__version__
    except Exception:
        triton_version = "not installed"
    rows = [
        ("fastgan", __version__),
        ("python", platform.python_version()),
        ("torch", f"{torch.__version__} (CUDA {torch.version.cuda or 'none'})"),
        ("triton", triton_version),
        ("cpu", f"{platform.machine()} {platform.processor() or ''}".strip()
                + f", {torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}"),
    ]
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        rows.append(("gpu", f"{props.name} (sm_{props.major}{props.minor}, "
                            f"{props.total_memory / 2**30:.0f} GiB)"))
    else:
        rows.append(("gpu", "none"))
    if ext is None:
        rows.append(("extension", "not built"))
    else:
        cuda = f"CUDA kernels for {ext.cuda_arch_list}" if ext.with_cuda else "CPU kernels only"
        rows.append(("extension", f"fastgan._C built against torch {ext.torch_version}, {cuda}"))
        try:
            level = f"{ext.cpu_isa()} (x86-64 level of the CPU kernels; FASTGAN_CPU_ISA lowers it)"
        except RuntimeError as exc:  # FASTGAN_CPU_ISA names no level
            level = f"error: {exc}"
        rows.append(("cpu kernels", level))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    print("\nbackends:")
    for status in _backend.backends().values():
        mark = "yes" if status.available else "no "
        print(f"  {status.name:<10} {mark}  {status.reason}")
    return 0


def check(device: str, dtypes: list[str], ops: list[str] | None) -> int:
    """Runs each available backend of each op against the reference; non-zero exit on a failure."""
    from .check import run_checks

    results = run_checks(torch.device(device), [_DTYPES[d] for d in dtypes], ops)
    if not results:
        print(f"no fused backend can run on {device}; nothing to check "
              f"(see `fastgan info`)")
        return 0
    w_op = max(20, *(len(r.op) for r in results))
    w_case = max(30, *(len(r.sample) for r in results))
    print(f"{'op':<{w_op}} {'backend':<8} {'dtype':<9} {'case':<{w_case}} {'max err':>9}  result")
    for r in results:
        dtype = str(r.dtype).removeprefix("torch.")
        verdict = "pass" if r.passed else f"FAIL {r.error}".rstrip()
        print(f"{r.op:<{w_op}} {r.backend:<8} {dtype:<9} {r.sample:<{w_case}} {r.max_error:>9.2e}  "
              f"{verdict}")
    failed = sum(not r.passed for r in results)
    print(f"\n{len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="fastgan", description="fused kernels for GANs")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, device, build flags and backends")
    p_check = sub.add_parser("check", help="every available backend against the reference")
    p_check.add_argument("--device", default=_default_device(), choices=["cpu", "cuda"])
    p_check.add_argument("--dtype", nargs="+", default=["float32"], choices=sorted(_DTYPES))
    p_check.add_argument("--op", nargs="+", default=None, help="ops to check (default: all)")
    sub.add_parser("bench", help="benchmarks, --suite ops or models (fastgan bench --help)",
                   add_help=False)

    if argv[:1] == ["bench"]:
        from .bench.runner import main as bench_main

        return bench_main(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "info":
        return info()
    return check(args.device, args.dtype, args.op)


if __name__ == "__main__":
    sys.exit(main())
