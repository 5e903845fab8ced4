"""`fastgan bench --suite models`: whole-model training steps and generator inference of the zoo.

    fastgan bench --suite models [--model biggan128 ...] [--device cpu|cuda] [--dtype fp32,bf16]
                  [--batch N] [--tiny] [--providers eager,fastgan,...] [--quick] [--out DIR]

Per model (a generator and its discriminator from fastgan.models) and mode:
  train  one GAN step: D forward + backward + Adam step on real and detached fake, then G forward +
         backward (through D) + Adam step; losses written inline below (hinge for BigGAN / SAGAN,
         non-saturating BCE + pixel L1 for SRGAN / ESRGAN / pix2pix).
  infer  the generator forward in eval mode under torch.no_grad.
Providers: eager (every layer on backend="reference", the plain PyTorch path), compile
(torch.compile of the eager models), fastgan (backend=None: auto), fastgan+compile. dtypes: fp32,
and bf16 under torch.autocast (weights and optimizer state stay fp32: mixed-precision training).

Batch sizes on CUDA are the upstream per-GPU training batches (`ModelBench.batch`); on CPU, and
with --tiny, every model is built with a tiny width (`ModelBench.tiny_g` / `tiny_d`) and batch 2:
CPU numbers are a smoke test of the machinery, never a performance claim. The inputs are random
tensors (a model's activations exceed any cache, so no input rotation is needed).

Every provider's eval-mode generator output is checked against eager's (fp32) before it is timed;
a fastgan provider that raises or differs is FAILED (exit 1), a torch.compile failure is skipped
with its reason. Rows: the long-format CSV of the op suite (benchmarks/results/README.md) with
op = the model ("biggan128"), mode = train | infer, shape = "<batch>@<resolution>" (+" tiny").
"""

from __future__ import annotations

import argparse
import copy
import inspect
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .providers import Skip, first_line
from .report import Measurement, measurement_rows, run_info, write_csv
from .timing import Budget, count_gpu_launches, default_budget, peak_gpu_bytes, time_step

MODES: tuple[str, ...] = ("train", "infer")
PROVIDERS: tuple[str, ...] = ("eager", "compile", "fastgan", "fastgan+compile")
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}
TINY_BATCH = 2


@dataclass(frozen=True)
class ModelBench:
    """One benchmarked GAN: registry names of G and D, how G is fed, the loss, and configs.

    kind: "noise" (G(z) or G(z, y), D(x) or D(x, y)), "sr" (G(lr) -> hr, D(hr)), or "pix2pix"
    (G(x) -> y, D(cat(x, y)) with input_nc = 6). lr_size: the generator's input size for sr /
    pix2pix. tiny_g / tiny_d: factory keyword arguments of the smoke-test config.
    """

    name: str
    g: str
    d: str
    kind: str
    resolution: int
    batch: int
    loss: str  # "hinge" | "bce_l1"
    lr_size: int | None = None
    g_cfg: dict[str, Any] = field(default_factory=dict)
    d_cfg: dict[str, Any] = field(default_factory=dict)
    tiny_g: dict[str, Any] = field(default_factory=dict)
    tiny_d: dict[str, Any] = field(default_factory=dict)

    def shape(self, batch: int, tiny: bool) -> str:
        res = f"{self.resolution}x{self.resolution}"
        if self.lr_size is not None and self.kind == "sr":
            res = f"{self.lr_size}x{self.lr_size}->{res}"
        return f"{batch}@{res}{' tiny' if tiny else ''}"


# Batches: BigGAN-PyTorch's 128px recipe runs 256 per step over 8 GPUs with 8 accumulations (32 a
# micro-batch); 64 fits one modern GPU and is what SAGAN (heykeetae: batch_size 64) trains with.
# SRGAN and ESRGAN (BasicSR): 16 crops a GPU. pix2pix (junyanz): batch_size 1 by default; 4 here,
# the smallest batch that keeps a GPU busy enough to say something about the kernels.
# Tiny widths: 8 for BigGAN / SAGAN, whose attention projects to channels // 8.
MODELS: dict[str, ModelBench] = {m.name: m for m in (
    ModelBench("biggan128", "biggan128_g", "biggan128_d", "noise", 128, 64, "hinge",
               tiny_g=dict(G_ch=8, n_classes=10), tiny_d=dict(D_ch=8, n_classes=10)),
    ModelBench("sagan128", "sagan128_g", "sagan128_d", "noise", 128, 64, "hinge",
               tiny_g=dict(conv_dim=8), tiny_d=dict(conv_dim=8)),
    # SRGAN: the paper's SRResNet (BN + PReLU blocks), not BasicSR's BN-free MSRResNet default.
    ModelBench("srgan", "srresnet_g", "srgan_d", "sr", 96, 16, "bce_l1", lr_size=24,
               g_cfg=dict(variant="srresnet"), d_cfg=dict(image_size=96),
               tiny_g=dict(num_feat=8, num_block=2), tiny_d=dict(num_feat=4)),
    ModelBench("esrgan", "esrgan_g", "esrgan_d", "sr", 128, 16, "bce_l1", lr_size=32,
               d_cfg=dict(input_size=128), tiny_g=dict(num_feat=8, num_block=1, num_grow_ch=4),
               tiny_d=dict(num_feat=4)),
    ModelBench("pix2pix", "pix2pix_unet256_g", "patchgan_d", "pix2pix", 256, 4, "bce_l1",
               lr_size=256, d_cfg=dict(input_nc=6), tiny_g=dict(ngf=4),
               tiny_d=dict(input_nc=6, ndf=4)),
)}


# ---- building ------------------------------------------------------------------------------------

def _accepted(factory: Callable[..., nn.Module], cfg: dict[str, Any]) -> dict[str, Any]:
    """cfg, raising a ValueError naming any key the factory does not take (a stale tiny config
    would otherwise build the full-size model on a CPU)."""
    params = inspect.signature(factory).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return cfg
    unknown = sorted(set(cfg) - set(params))
    if unknown:
        raise ValueError(f"{factory.__name__} takes no {', '.join(unknown)} "
                         f"(it takes {', '.join(params)})")
    return cfg


def build(bench: ModelBench, tiny: bool, device: torch.device, seed: int = 0
          ) -> tuple[nn.Module, nn.Module]:
    """The eager (backend="reference") G and D of `bench`, seeded, on `device`."""
    from ..models import _registry

    missing = [n for n in (bench.g, bench.d) if n not in _registry.list_models()]
    if missing:
        raise LookupError(f"not registered in fastgan.models: {', '.join(missing)}")
    models = []
    for name, cfg in ((bench.g, {**bench.g_cfg, **(bench.tiny_g if tiny else {})}),
                      (bench.d, {**bench.d_cfg, **(bench.tiny_d if tiny else {})})):
        torch.manual_seed(seed)
        factory = _registry._entry(name).factory
        models.append(_registry.create(name, **_accepted(factory, cfg), backend="reference")
                      .to(device))
    return models[0], models[1]


def _takes_labels(module: nn.Module) -> bool:
    """Whether forward takes a second positional input (class labels y, possibly optional: BigGAN's
    G(z, y=None, shared=None))."""
    params = inspect.signature(module.forward).parameters.values()
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params) >= 2


def _attr(module: nn.Module, cfg: dict[str, Any], names: Sequence[str], what: str) -> int:
    """An int hyper-parameter: the module's attribute, else the factory argument (cfg holds the
    factory's defaults updated with what it was called with)."""
    for source in (vars(module), cfg):
        for n in names:
            if isinstance(source.get(n), int) and not isinstance(source.get(n), bool):
                return source[n]
    raise AttributeError(f"{type(module).__name__} has none of {', '.join(names)} ({what})")


def _factory_kwargs(name: str, cfg: dict[str, Any]) -> dict[str, Any]:
    from ..models import _registry

    params = inspect.signature(_registry._entry(name).factory).parameters.values()
    return {**{p.name: p.default for p in params if p.default is not p.empty}, **cfg}


@dataclass
class Batch:
    """One step's data: G's inputs, the real images, D's condition (labels or the source image)."""

    g_args: tuple[torch.Tensor, ...]
    real: torch.Tensor
    d_cond: tuple[torch.Tensor, ...]  # extra D arguments: (y,) for a projection D, else ()
    source: torch.Tensor | None  # pix2pix: the input image D sees beside the output


def make_batch(bench: ModelBench, g: nn.Module, d: nn.Module, batch: int,
               device: torch.device, tiny: bool, seed: int = 0) -> Batch:
    """Random inputs of the right shapes; D's real images take the shape of G's output."""
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(device)

    if bench.kind == "noise":
        g_cfg = _factory_kwargs(bench.g, {**bench.g_cfg, **(bench.tiny_g if tiny else {})})
        z = randn(batch, _attr(g, g_cfg, ("dim_z", "z_dim", "nz", "latent_dim"), "latent size"))
        y = None
        if _takes_labels(g) or _takes_labels(d):
            n_classes = _attr(g, g_cfg, ("n_classes", "num_classes"), "classes")
            y = torch.randint(n_classes, (batch,), generator=gen).to(device)
        g_args = (z, y) if _takes_labels(g) else (z,)
        d_cond = (y,) if _takes_labels(d) else ()
        with torch.no_grad():
            out_shape = g.eval()(*g_args).shape
        g.train()
        return Batch(g_args, randn(*out_shape), d_cond, None)
    x = randn(batch, 3, bench.lr_size, bench.lr_size)
    with torch.no_grad():
        out_shape = g.eval()(x).shape
    g.train()
    return Batch((x,), randn(*out_shape), (), x if bench.kind == "pix2pix" else None)


# ---- the steps -----------------------------------------------------------------------------------

def _d_logits(d: Callable[..., torch.Tensor], img: torch.Tensor, b: Batch) -> torch.Tensor:
    if b.source is not None:  # pix2pix: a conditional PatchGAN sees (input, output) pairs
        img = torch.cat([b.source, img], dim=1)
    return d(img, *b.d_cond).float()


def _d_loss_real(loss: str, logits: torch.Tensor) -> torch.Tensor:
    if loss == "hinge":
        return F.relu(1 - logits).mean()
    return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))


def _d_loss_fake(loss: str, logits: torch.Tensor) -> torch.Tensor:
    if loss == "hinge":
        return F.relu(1 + logits).mean()
    return F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits))


def _g_loss(loss: str, fake_logits: torch.Tensor, fake: torch.Tensor, b: Batch) -> torch.Tensor:
    if loss == "hinge":
        return -fake_logits.mean()
    adv = F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
    # The pixel term SRGAN / ESRGAN / pix2pix add (pix2pix weighs it 100; ESRGAN 1e-2 / 5e-3).
    return adv + 100.0 * F.l1_loss(fake.float(), b.real)


@dataclass
class Runnable:
    """One provider's models (G and D, possibly compiled), their optimizers, and the step."""

    g: nn.Module
    d: nn.Module
    g_call: Callable[..., torch.Tensor]
    d_call: Callable[..., torch.Tensor]
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer


def make_provider(name: str, g0: nn.Module, d0: nn.Module) -> Runnable:
    """Copies of the eager models (same weights) set up as provider `name`."""
    from ..models import set_backend

    if name not in PROVIDERS:
        raise ValueError(f"provider must be one of {PROVIDERS}, got {name!r}")
    g, d = copy.deepcopy(g0), copy.deepcopy(d0)
    if name.startswith("fastgan"):
        set_backend(g, None)
        set_backend(d, None)
    g_call, d_call = g, d
    if name.endswith("compile"):
        torch._dynamo.reset()  # a clean cache per model: no silent fallback to eager
        g_call, d_call = torch.compile(g), torch.compile(d)
    # Adam with BigGAN-PyTorch's betas (torch's default implementation: foreach on CUDA).
    opt_g = torch.optim.Adam(g.parameters(), lr=1e-4, betas=(0.0, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=4e-4, betas=(0.0, 0.999))
    return Runnable(g, d, g_call, d_call, opt_g, opt_d)


def _autocast(device: torch.device, dtype: torch.dtype):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


def _requires_grad(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


def train_step(r: Runnable, bench: ModelBench, b: Batch, device: torch.device,
               dtype: torch.dtype) -> None:
    """One D step then one G step, as BasicSR and BigGAN-PyTorch do them: D's real and fake
    terms backward one at a time (a D called twice in one graph would save its spectral-norm
    vectors and BN statistics across an in-place update), and D frozen during G's step."""
    r.g.train()
    r.d.train()
    _requires_grad(r.d, True)
    r.opt_d.zero_grad(set_to_none=True)
    with _autocast(device, dtype):
        with torch.no_grad():
            fake = r.g_call(*b.g_args)
        real_logits = _d_logits(r.d_call, b.real.to(fake.dtype), b)
    _d_loss_real(bench.loss, real_logits).backward()
    with _autocast(device, dtype):
        fake_logits = _d_logits(r.d_call, fake, b)
    _d_loss_fake(bench.loss, fake_logits).backward()
    r.opt_d.step()
    _requires_grad(r.d, False)
    r.opt_g.zero_grad(set_to_none=True)
    with _autocast(device, dtype):
        fake = r.g_call(*b.g_args)
        loss_g = _g_loss(bench.loss, _d_logits(r.d_call, fake, b), fake, b)
    loss_g.backward()
    r.opt_g.step()
    _requires_grad(r.d, True)


def infer_step(r: Runnable, b: Batch, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The generator forward, eval mode, no autograd."""
    r.g.eval()
    with torch.no_grad(), _autocast(device, dtype):
        return r.g_call(*b.g_args)


def check_against_eager(r: Runnable, eager: Runnable, b: Batch, device: torch.device) -> None:
    """Raise AssertionError if the provider's fp32 eval-mode G output differs from eager's.

    Relative to the output's scale: a deep net's fp32 sums differ in their last bits by more than
    a single op's do. Also the first call, so a torch.compile failure surfaces here.
    """
    got = infer_step(r, b, device, torch.float32).float()
    expected = infer_step(eager, b, device, torch.float32).float()
    scale = expected.abs().max().clamp_min(1e-6)
    err = ((got - expected).abs().max() / scale).item()
    # CUDA: cuDNN runs fp32 convolutions in TF32 by default, and compile may pick other algorithms.
    if not err <= (1e-2 if device.type == "cuda" else 1e-3):
        raise AssertionError(f"generator output differs from eager: max error {err:.2e} "
                             f"of the output's max |value|")


def settle(step: Callable[[int], object], device: torch.device, max_steps: int = 10) -> None:
    """Untimed steps until two in a row take within 25% of each other (at most max_steps).

    A model's first steps can be far slower than its steady state (allocator growth, cuDNN and
    compile autotuning, backends caching per shape), more than the timing core's fixed warm-up
    (sized for one op) absorbs.
    """
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    prev = None
    for i in range(max_steps):
        t0 = time.perf_counter()
        step(i)
        sync()
        t = time.perf_counter() - t0
        if prev is not None and 0.8 * prev <= t <= 1.25 * prev:
            return
        prev = t


# ---- the suite -----------------------------------------------------------------------------------

def run_model(
    bench: ModelBench, device: torch.device, dtypes: Sequence[torch.dtype],
    providers: Sequence[str] = PROVIDERS, modes: Sequence[str] = MODES,
    batch: int | None = None, tiny: bool | None = None, budget: Budget | None = None,
    log: Callable[[str], None] | None = None, max_warmup: int = 10,
) -> tuple[list[Measurement], list[Skip]]:
    """Time every (dtype, provider, mode) of one model; errors become Skips, never a crash.

    tiny defaults to True on CPU; batch to bench.batch (TINY_BATCH when tiny). log(line) is
    told what starts (a compile takes minutes on a CPU). max_warmup: see settle().
    """
    log = log or (lambda line: None)
    tiny = device.type == "cpu" if tiny is None else tiny
    batch = batch or (TINY_BATCH if tiny else bench.batch)
    budget = budget or default_budget(device)
    shape = bench.shape(batch, tiny)
    try:
        g0, d0 = build(bench, tiny, device)
        data = make_batch(bench, g0, d0, batch, device, tiny)
        # The oracle of the checks: never trained (the timed eager provider is another copy).
        oracle = make_provider("eager", g0, d0)
    except Exception as e:  # a placeholder model, a stale tiny config: say so, run the rest
        return [], [Skip(bench.name, f"cannot build: {first_line(e)}", failed=False)]
    out: list[Measurement] = []
    skips: list[Skip] = []
    for prov in providers:
        # A compile provider failing is the environment's (no compiler, a dynamo gap); a fastgan
        # provider raising or differing from eager is a defect.
        defect = not prov.endswith("compile")
        log(f"{bench.name} {shape} {prov}: build{'' if prov == 'eager' else ', check vs eager'}")
        try:
            r = make_provider(prov, g0, d0)
            if prov != "eager":
                check_against_eager(r, oracle, data, device)
        except Exception as e:
            # torch.compile of the reference differing is torch's problem; of fastgan's ops, ours.
            wrong = isinstance(e, AssertionError) and prov.startswith("fastgan")
            skips.append(Skip(prov, f"{bench.name}: {first_line(e)}", defect or wrong))
            continue
        for dtype in dtypes:
            dname = next(k for k, v in DTYPES.items() if v == dtype)
            for mode in modes:
                if mode == "train":
                    # Each provider trains its own copy: the state drifts, the work does not.
                    def step(i: int, r: Runnable = r, dtype: torch.dtype = dtype) -> None:
                        train_step(r, bench, data, device, dtype)
                else:
                    def step(i: int, r: Runnable = r, dtype: torch.dtype = dtype) -> object:
                        return infer_step(r, data, device, dtype)
                log(f"{bench.name} {shape} {prov} {dname} {mode}")
                try:
                    settle(step, device, max_warmup)
                    timing = time_step(step, device, budget)
                    launches = count_gpu_launches(step, device)
                    peak = peak_gpu_bytes(step, device)
                except Exception as e:
                    skips.append(Skip(prov, f"{bench.name} {dname} {mode}: {first_line(e)}",
                                      defect))
                    continue
                out.append(Measurement(bench.name, prov, mode, dname, shape, timing, 0,
                                       launches, None, peak))
        r = step = None  # free this provider's models, optimizer state and graphs before the next
    # Table order: per dtype and mode, the providers side by side.
    out.sort(key=lambda m: (m.dtype != "fp32", modes.index(m.mode), providers.index(m.provider)))
    return out, skips


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="fastgan bench --suite models",
                                description=__doc__.splitlines()[0])
    p.add_argument("--suite", choices=("models",), default="models")
    p.add_argument("--model", nargs="+", choices=sorted(MODELS), help="default: all")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda if available, else cpu")
    p.add_argument("--dtype", default=None,
                   help="comma-separated subset of fp32,bf16 (default: fp32,bf16 on CUDA, fp32 "
                        "on CPU)")
    p.add_argument("--providers", default=",".join(PROVIDERS),
                   help=f"comma-separated subset of {','.join(PROVIDERS)}")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of train,infer")
    p.add_argument("--batch", type=int, help="batch size of every model (default: per model; "
                                             f"{TINY_BATCH} with tiny configs)")
    p.add_argument("--tiny", action="store_true",
                   help="tiny widths (always on CPU): a smoke test, not a measurement")
    p.add_argument("--quick", action="store_true", help="few repetitions")
    p.add_argument("--out", type=Path, help="results folder (as for the op suite)")
    args = p.parse_args(argv)
    for name, allowed in (("providers", PROVIDERS), ("modes", MODES)):
        items = [s.strip() for s in getattr(args, name).split(",") if s.strip()]
        if not items or set(items) - set(allowed):
            p.error(f"--{name} must be a comma-separated subset of {','.join(allowed)}")
        setattr(args, name, items)
    if args.dtype is not None:
        items = [s.strip() for s in args.dtype.split(",") if s.strip()]
        if not items or set(items) - set(DTYPES):
            p.error(f"--dtype must be a comma-separated subset of {','.join(DTYPES)}")
        args.dtype = items
    if args.batch is not None and args.batch < 1:
        p.error("--batch must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """`fastgan bench --suite models`: 0, or 1 if a fastgan provider raised or differed."""
    from .runner import bench_device, default_out, note_cpu_load, print_results, repo_root

    args = _parse(argv)
    device = bench_device(args.device)
    if device is None:
        return 2
    tiny = args.tiny or device.type == "cpu"
    dnames = args.dtype or (["fp32", "bf16"] if device.type == "cuda" else ["fp32"])
    repo = repo_root()
    out_dir = args.out or default_out(device, repo)
    info = run_info(device, repo)
    print(f"fastgan bench --suite models on {info.device}: torch {info.torch}, "
          f"fastgan {info.fastgan} @ {info.git_sha}")
    note_cpu_load(device)
    if tiny:
        print("note: tiny model configs: a smoke test of the suite, not a performance result")
    budget = default_budget(device, args.quick)
    measurements: list[Measurement] = []
    skips: list[Skip] = []
    for name in args.model or list(MODELS):
        ms, sk = run_model(MODELS[name], device, [DTYPES[d] for d in dnames], args.providers,
                           args.modes, args.batch, tiny, budget,
                           log=lambda line: print(line, file=sys.stderr, flush=True))
        measurements += ms
        skips += sk
    rows = measurement_rows(measurements, None, info)
    failures = print_results(rows, skips, "no model could be timed")
    suffix = ("-tiny" if tiny else "") + ("-quick" if args.quick else "")
    if rows:
        print(f"wrote {write_csv(rows, out_dir / f'models{suffix}.csv')}")
        from .plot import plot_op

        for name in dict.fromkeys(m.op for m in measurements):
            png = plot_op(rows, name, out_dir / f"models-{name}{suffix}.png")
            if png is not None:
                print(f"wrote {png}")
    return 1 if failures else 0

