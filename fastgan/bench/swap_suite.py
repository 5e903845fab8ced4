"""`fastgan bench --suite swap`: third-party-style models before and after fastgan.swap.

    fastgan bench --suite swap [--model biggan_g ...] [--device cpu|cuda] [--dtype fp32,bf16]
                  [--providers eager,compile,fastgan,fastgan+compile] [--quick] [--out DIR]

The models are fastgan/bench/third_party.py's: written as BigGAN-PyTorch, heykeetae SAGAN, SRGAN
and BasicSR write theirs (their own SN layers, ccbn, attention, upsamplers), none of it fastgan.
Providers: eager (the model as written), compile (torch.compile of it), fastgan (the model after
``fastgan.swap``), fastgan+compile. Modes: fwd (eval-mode forward under no_grad) and train (forward,
a mean-square loss, backward, Adam step). Every provider's eval output is checked against eager's
before it is timed; a swapped model that differs is FAILED (exit 1). On CPU the models are small
(``SwapBench.cpu``): a smoke test of the machinery, not a performance claim.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import third_party as tp
from .models import DTYPES, _autocast, settle
from .providers import Skip, first_line
from .report import Measurement, measurement_rows, run_info, write_csv
from .timing import count_gpu_launches, default_budget, peak_gpu_bytes, time_step

MODES = ("fwd", "train")
PROVIDERS = ("eager", "compile", "fastgan", "fastgan+compile")


@dataclass(frozen=True)
class SwapBench:
    """A third-party-style model, its inputs (batch, device) -> tuple, and the configs."""

    name: str
    make: Callable[..., nn.Module]
    inputs: Callable[[int, torch.device, dict], tuple]
    gpu: dict[str, Any] = field(default_factory=dict)
    cpu: dict[str, Any] = field(default_factory=dict)
    batch: int = 16


def _noise_and_label(b, dev, cfg):
    return (torch.randn(b, cfg.get("dim_z", 8), device=dev),
            torch.randint(0, cfg.get("n_classes", 5), (b,), device=dev))


SUITE: dict[str, SwapBench] = {b.name: b for b in (
    # BigGAN-128-like widths at 64x64 on GPU (4 blocks, attention at 32x32).
    SwapBench("biggan_g", tp.BigGANStyleG, _noise_and_label,
              dict(ch=96, dim_z=120, n_classes=1000, shared_dim=128, n_blocks=4, attention_block=2),
              dict(ch=16, dim_z=8, n_classes=5, shared_dim=6, n_blocks=2, attention_block=1), 32),
    SwapBench("biggan_d", tp.BigGANStyleD,
              lambda b, dev, cfg: (torch.randn(b, 3, 64 if cfg["ch"] > 16 else 8,
                                               64 if cfg["ch"] > 16 else 8, device=dev),
                                   torch.randint(0, cfg["n_classes"], (b,), device=dev)),
              dict(ch=96, n_classes=1000, n_blocks=3), dict(ch=16, n_classes=5, n_blocks=1), 32),
    SwapBench("sagan_g", tp.SAGANStyleG,
              lambda b, dev, cfg: (torch.randn(b, cfg["z_dim"], device=dev),),
              dict(z_dim=128, ch=256, n_up=4), dict(z_dim=8, ch=16, n_up=2), 64),
    SwapBench("srgan_g", tp.SRGANStyleG,
              lambda b, dev, cfg: (torch.randn(b, 3, 24 if cfg["c"] > 8 else 6,
                                               24 if cfg["c"] > 8 else 6, device=dev),),
              dict(c=64, n_res=16), dict(c=8, n_res=1), 16),
    SwapBench("msrresnet", tp.MSRResNet,
              lambda b, dev, cfg: (torch.randn(b, 3, 32 if cfg["num_feat"] > 8 else 6,
                                               32 if cfg["num_feat"] > 8 else 6, device=dev),),
              dict(num_feat=64, num_block=16, upscale=4), dict(num_feat=8, num_block=2, upscale=4),
              16),
)}


def _output(out) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out  # SAGAN-style G returns (image, attention)


def _provider(name: str, model: nn.Module) -> tuple[nn.Module, Callable]:
    m = copy.deepcopy(model)
    if name.startswith("fastgan"):
        import fastgan

        fastgan.swap(m)
    call = m
    if name.endswith("compile"):
        torch._dynamo.reset()
        call = torch.compile(m)
    return m, call


def run_model(bench: SwapBench, device: torch.device, dtypes: Sequence[torch.dtype],
              providers: Sequence[str], modes: Sequence[str], quick: bool,
              log: Callable[[str], None]) -> tuple[list[Measurement], list[Skip]]:
    cfg = dict(bench.cpu if device.type == "cpu" else bench.gpu)
    batch = 2 if device.type == "cpu" else bench.batch
    torch.manual_seed(0)
    model = bench.make(**cfg).to(device)
    inputs = bench.inputs(batch, device, dict(cfg))
    with torch.no_grad():  # a few training calls: SN vectors and BN statistics off their init
        for _ in range(2):
            model.train()(*inputs)
    shape = f"{batch}x{tuple(inputs[0].shape[1:])}" + (" cpu-small" if device.type == "cpu" else "")
    budget = default_budget(device, quick)
    with torch.no_grad():
        expected = _output(copy.deepcopy(model).eval()(*inputs)).float()
    out, skips = [], []
    for prov in providers:
        log(f"{bench.name} {shape} {prov}")
        try:
            m, call = _provider(prov, model)
            m.eval()
            with torch.no_grad():
                got = _output(call(*inputs)).float()
            err = ((got - expected).abs().max() / expected.abs().max().clamp_min(1e-6)).item()
            if not err <= (1e-2 if device.type == "cuda" else 1e-3):
                raise AssertionError(f"output differs from the unswapped model: {err:.2e}")
        except Exception as e:
            failed = prov.startswith("fastgan") and (isinstance(e, AssertionError)
                                                     or not prov.endswith("compile"))
            skips.append(Skip(prov, f"{bench.name}: {first_line(e)}", failed))
            continue
        opt = torch.optim.Adam(m.parameters(), 1e-4)
        for dtype in dtypes:
            dname = next(k for k, v in DTYPES.items() if v == dtype)
            for mode in modes:
                def step(i: int, dtype: torch.dtype = dtype, mode: str = mode) -> None:
                    if mode == "fwd":
                        m.eval()
                        with torch.no_grad(), _autocast(device, dtype):
                            call(*inputs)
                        return
                    m.train()
                    opt.zero_grad(set_to_none=True)
                    with _autocast(device, dtype):
                        loss = _output(call(*inputs)).float().square().mean()
                    loss.backward()
                    opt.step()
                try:
                    settle(step, device)
                    timing = time_step(step, device, budget)
                    launches, peak = count_gpu_launches(step, device), peak_gpu_bytes(step, device)
                except Exception as e:
                    skips.append(Skip(prov, f"{bench.name} {dname} {mode}: {first_line(e)}",
                                      prov == "fastgan"))
                    continue
                out.append(Measurement(bench.name, prov, mode, dname, shape, timing, 0, launches,
                                       None, peak))
    out.sort(key=lambda x: (x.dtype != "fp32", modes.index(x.mode), providers.index(x.provider)))
    return out, skips


def _list(value: str, allowed: Sequence[str], name: str, p: argparse.ArgumentParser) -> list[str]:
    items = [s.strip() for s in value.split(",") if s.strip()]
    if not items or set(items) - set(allowed):
        p.error(f"--{name} must be a comma-separated subset of {','.join(allowed)}")
    return items


def main(argv: Sequence[str] | None = None) -> int:
    """`fastgan bench --suite swap`: 0, or 1 if a swapped model raised or differed."""
    from .runner import bench_device, default_out, print_results, repo_root

    p = argparse.ArgumentParser(prog="fastgan bench --suite swap",
                                description=__doc__.splitlines()[0])
    p.add_argument("--suite", choices=("swap",), default="swap")
    p.add_argument("--model", nargs="+", choices=sorted(SUITE), help="default: all")
    p.add_argument("--device", choices=("cpu", "cuda"))
    p.add_argument("--dtype", help="comma-separated subset of fp32,bf16 (default: both on CUDA)")
    p.add_argument("--providers", default=",".join(PROVIDERS))
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    providers = _list(args.providers, PROVIDERS, "providers", p)
    modes = _list(args.modes, MODES, "modes", p)
    device = bench_device(args.device)
    if device is None:
        return 2
    default = "fp32,bf16" if device.type == "cuda" else "fp32"
    dtypes = [DTYPES[d] for d in _list(args.dtype or default, tuple(DTYPES), "dtype", p)]
    repo = repo_root()
    info = run_info(device, repo)
    print(f"fastgan bench --suite swap on {info.device}: torch {info.torch}, "
          f"fastgan {info.fastgan} @ {info.git_sha}")
    if device.type == "cpu":
        print("note: small models on CPU: a smoke test of the suite, not a performance result")
    measurements, skips = [], []
    for name in args.model or list(SUITE):
        ms, sk = run_model(SUITE[name], device, dtypes, providers, modes, args.quick,
                           lambda line: print(line, file=sys.stderr, flush=True))
        measurements += ms
        skips += sk
    rows = measurement_rows(measurements, None, info)
    failures = print_results(rows, skips)
    if rows:
        suffix = ("-cpu-small" if device.type == "cpu" else "") + ("-quick" if args.quick else "")
        print(f"wrote {write_csv(rows, (args.out or default_out(device, repo)) / f'swap{suffix}.csv')}")
    return 1 if failures else 0
