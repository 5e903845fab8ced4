"""The zoo's models: a GAN training step (train) and generator inference (infer), eager vs
torch.compile vs fastgan vs fastgan + torch.compile, the same points as
`fastgan bench --suite models` (fastgan/bench/models.py). Tiny configs on CPU (a smoke test),
the per-model batch on CUDA.

    pytest benchmarks/bench_models.py --benchmark-only [--fastgan-device cuda]
"""

from __future__ import annotations

import functools
import itertools

import pytest
import torch

from fastgan.bench import models as bm
from fastgan.bench.providers import first_line


def _dtypes(device: torch.device) -> list[str]:
    return ["fp32", "bf16"] if device.type == "cuda" else ["fp32"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "model_point" not in metafunc.fixturenames:
        return
    name = metafunc.config.getoption("--fastgan-device") or (
        "cuda" if torch.cuda.is_available() else "cpu")
    params = [pytest.param((m, p, mode, d), id=f"{m}-{d}-{p}-{mode}")
              for m, d, p, mode in itertools.product(bm.MODELS, _dtypes(torch.device(name)),
                                                     bm.PROVIDERS, bm.MODES)]
    metafunc.parametrize("model_point", params)


@functools.cache
def _built(model: str, device: torch.device) -> tuple:
    """The eager G, D, their inputs and the untrained oracle, built once per model."""
    bench = bm.MODELS[model]
    tiny = device.type == "cpu"
    g0, d0 = bm.build(bench, tiny, device)
    data = bm.make_batch(bench, g0, d0, bm.TINY_BATCH if tiny else bench.batch, device, tiny)
    return bench, g0, d0, data, bm.make_provider("eager", g0, d0)


def bench_model(benchmark, model_point, device: torch.device) -> None:
    model, prov, mode, dname = model_point
    try:
        bench, g0, d0, data, oracle = _built(model, device)
    except Exception as e:  # a model not in the zoo yet, a stale tiny config
        pytest.skip(f"{model} cannot be built: {first_line(e)}")
    dtype = bm.DTYPES[dname]
    try:
        r = bm.make_provider(prov, g0, d0)
        if prov != "eager":
            bm.check_against_eager(r, oracle, data, device)
    except AssertionError:
        raise  # a wrong result is a failure, never a skip
    except Exception as e:
        if prov.endswith("compile"):
            pytest.skip(f"torch.compile failed: {first_line(e)}")
        raise
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def call() -> None:
        if mode == "train":
            bm.train_step(r, bench, data, device, dtype)
        else:
            bm.infer_step(r, data, device, dtype)
        sync()  # pytest-benchmark times on the host clock: wait for the GPU work

    for _ in range(2):  # untimed warm-up: first calls allocate, autotune, compile
        call()
    benchmark.group = f"{model} {dname} {mode}"
    benchmark.extra_info.update(op=model, provider=prov, mode=mode, dtype=dname,
                                shape=bench.shape(data.real.shape[0], device.type == "cpu"))
    benchmark(call)
