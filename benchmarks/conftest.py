"""pytest-benchmark glue: parametrizes bench_<op>.py over the cases and providers of
fastgan.bench, so `fastgan bench` and this suite time exactly the same things.

A bench module sets OP = "<registered op name>" and takes the `point` and `device` fixtures.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

from fastgan.bench.cases import DTYPE_NAMES, Case, OpBench, get_op
from fastgan.bench.providers import COMPILE, Provider, first_line, prepare, providers_for
from fastgan.bench.timing import MODES


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fastgan", "fastgan benchmarks")
    group.addoption("--fastgan-device", choices=("cpu", "cuda"), default=None,
                    help="device to benchmark on (default: cuda if available, else cpu)")
    group.addoption("--fastgan-quick", action="store_true",
                    help="the 1-2 small shapes of `fastgan bench --quick`")


def _device(config: pytest.Config) -> torch.device:
    name = config.getoption("--fastgan-device") or ("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("--fastgan-device cuda, but torch sees no CUDA device")
    return torch.device(name)


@pytest.fixture(scope="session")
def device(pytestconfig: pytest.Config) -> torch.device:
    return _device(pytestconfig)


@dataclass(frozen=True)
class Point:
    """One benchmark: (op, case, provider, mode, dtype)."""

    op: OpBench
    case: Case
    provider: Provider
    mode: str
    dtype: torch.dtype

    @property
    def group(self) -> str:
        # Providers of the same shape, mode and dtype land in one pytest-benchmark table.
        return f"{self.op.name} {DTYPE_NAMES[self.dtype]} {self.case.shape} {self.mode}"

    def step(self, device: torch.device) -> Callable[[], None]:
        """A zero-argument call for pytest-benchmark: rotates input sets, syncs on CUDA.

        Skips (with the reason) if torch.compile cannot compile here, e.g. no C++ compiler.
        """
        try:
            fn = self.provider.make()
            step = prepare(fn, self.op.reference_fn(), self.case, self.mode, device, self.dtype)
        except AssertionError:
            raise  # a wrong result is a failure, never a skip
        except Exception as e:
            if self.provider.name == COMPILE:
                pytest.skip(f"torch.compile failed: {first_line(e)}")
            if type(e).__name__ == "BackendUnavailableError":  # e.g. a dtype the backend lacks
                pytest.skip(first_line(e))
            raise
        counter = itertools.count()
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

        def call() -> None:
            step(next(counter))
            sync()  # pytest-benchmark times on the host clock: wait for the GPU work

        for _ in range(2):  # untimed warm-up: first calls allocate, autotune, compile
            call()
        return call

    def bytes_moved(self) -> int:
        return self.case.bytes_moved(self.mode, torch.empty((), dtype=self.dtype).element_size())


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "point" not in metafunc.fixturenames:
        return
    op = get_op(metafunc.module.OP)
    device = _device(metafunc.config)
    provs, skips = providers_for(op, device)
    params = []
    for dtype in op.dtypes_on(device):
        for case in op.cases(metafunc.config.getoption("--fastgan-quick"), device):
            for prov in provs:
                for mode in MODES:
                    pid = f"{DTYPE_NAMES[dtype]}-{case.shape.replace(' ', '-')}-{prov.name}-{mode}"
                    params.append(pytest.param(Point(op, case, prov, mode, dtype), id=pid))
    for skip in skips:  # listed, so a report shows which backends were not timed and why
        mark = pytest.mark.skip(reason=skip.reason)
        params.append(pytest.param(None, id=skip.provider, marks=mark))
    metafunc.parametrize("point", params)


def run_point(benchmark, point: Point, device: torch.device) -> None:
    """The body of every bench_<op>: time one point, record what the CSV would."""
    call = point.step(device)
    benchmark.group = point.group
    benchmark.extra_info.update(
        op=point.op.name, provider=point.provider.name, mode=point.mode, shape=point.case.shape,
        model=point.case.model, bytes=point.bytes_moved(),
    )
    benchmark(call)
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["gbps"] = point.bytes_moved() / benchmark.stats.stats.median / 1e9
