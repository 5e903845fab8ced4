"""`fastgan bench --suite models` machinery on CPU: the suite's tiny BigGAN-128 and SRGAN configs,
eager and fastgan providers, one repetition; the CSV rows are well-formed, the timed train step
really steps both models, and a wrong or unbuildable model is reported, never timed."""

from __future__ import annotations

import csv
import math
from dataclasses import replace

import pytest
import torch
from fastgan.bench import models as bm
from fastgan.bench.report import COLUMNS, measurement_rows, run_info, write_csv
from fastgan.bench.timing import Budget

ONE_REP = Budget(warmup_ms=0.0, rep_ms=0.0, min_reps=1, max_reps=1)
PROVIDERS = ("eager", "fastgan")
CPU = torch.device("cpu")
SRGAN = bm.MODELS["srgan"]


def _check_rows(rows: list[dict[str, str]], bench: bm.ModelBench) -> None:
    assert rows
    for r in rows:
        assert tuple(r) == COLUMNS
        assert r["op"] == bench.name and r["dtype"] == "fp32"
        assert r["provider"] in PROVIDERS and r["mode"] in bm.MODES
        assert r["shape"] == bench.shape(bm.TINY_BATCH, tiny=True)
        p20, p50, p80 = (float(r[k]) for k in ("p20", "p50", "p80"))
        assert all(math.isfinite(v) and v > 0 for v in (p20, p50, p80))
        assert p20 <= p50 <= p80
    times = {(r["provider"], r["mode"]) for r in rows if r["metric"] == "time_ms"}
    assert times == {(p, m) for p in PROVIDERS for m in bm.MODES}
    speedups = {(r["provider"], r["mode"]) for r in rows if r["metric"] == "speedup_vs_eager"}
    assert speedups == {("fastgan", m) for m in bm.MODES}
    assert {r["metric"] for r in rows} == {"time_ms", "speedup_vs_eager"}  # no GB/s for a model


@pytest.mark.parametrize("model", ["biggan128", "srgan"])
def test_run_model_rows(model: str, tmp_path) -> None:
    """The suite's tiny config of a conditional (BigGAN) and an image-to-image (SRGAN) model
    builds, trains and infers on eager and fastgan, and gives well-formed CSV rows."""
    bench = bm.MODELS[model]
    ms, skips = bm.run_model(bench, CPU, [torch.float32], PROVIDERS, budget=ONE_REP,
                             max_warmup=0)
    assert skips == []
    assert all(m.timing.reps == 1 for m in ms)
    rows = measurement_rows(ms, None, run_info(CPU, None))
    _check_rows(rows, bench)
    with write_csv(rows, tmp_path / "models.csv").open(newline="") as f:
        assert list(csv.DictReader(f)) == rows


def test_train_step_changes_both_models() -> None:
    """The timed train step really steps G and D (a no-op step would time nothing)."""
    g0, d0 = bm.build(SRGAN, tiny=True, device=CPU)
    data = bm.make_batch(SRGAN, g0, d0, 2, CPU, tiny=True)
    r = bm.make_provider("fastgan", g0, d0)
    bm.train_step(r, SRGAN, data, CPU, torch.float32)
    for before, after in ((g0, r.g), (d0, r.d)):
        changed = [not torch.equal(p, q) for p, q in
                   zip(before.parameters(), after.parameters(), strict=True)]
        assert all(changed)


def test_unbuildable_model_is_a_skip_not_a_crash() -> None:
    stale = replace(SRGAN, tiny_g=dict(no_such_width=4))
    ms, skips = bm.run_model(stale, CPU, [torch.float32], PROVIDERS, budget=ONE_REP,
                             max_warmup=0)
    assert ms == [] and len(skips) == 1 and not skips[0].failed
    assert "no_such_width" in skips[0].reason


def test_wrong_provider_output_is_a_failure(monkeypatch) -> None:
    """A fastgan provider whose generator differs from eager's is FAILED, not timed."""
    real = bm.make_provider

    def perturbed(name, g0, d0):
        r = real(name, g0, d0)
        if name == "fastgan":
            with torch.no_grad():
                list(r.g.parameters())[-1].add_(0.5)  # the last conv's bias
        return r

    monkeypatch.setattr(bm, "make_provider", perturbed)
    ms, skips = bm.run_model(SRGAN, CPU, [torch.float32], PROVIDERS, budget=ONE_REP,
                             max_warmup=0)
    assert {m.provider for m in ms} == {"eager"}
    assert len(skips) == 1 and skips[0].failed and "differs from eager" in skips[0].reason


def test_cli_writes_csv_and_table(monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setattr(bm, "default_budget", lambda device, quick=False: ONE_REP)
    from fastgan.cli import main

    rc = main(["bench", "--suite", "models", "--model", "srgan", "--device", "cpu",
               "--providers", "eager,fastgan", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "tiny model configs" in out and "srgan" in out
    with (tmp_path / "models-tiny.csv").open(newline="") as f:
        _check_rows(list(csv.DictReader(f)), SRGAN)

