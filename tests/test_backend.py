"""Backend availability and resolution: explicit > use_backend > FASTGAN_BACKEND > auto."""

import pytest
import torch

import fastgan
from fastgan import backend


def test_backends_report_every_backend_with_a_reason():
    table = fastgan.backends()
    assert list(table) == ["reference", "triton", "cuda", "cpu"]
    assert table["reference"].available
    for status in table.values():
        assert status.reason
    if not torch.cuda.is_available():
        assert not table["cuda"].available


def test_resolution_order(monkeypatch):
    x = torch.randn(2, 2)
    monkeypatch.delenv("FASTGAN_BACKEND", raising=False)
    auto = "cpu" if backend.runnable("cpu", x.device)[0] else "reference"
    assert backend.resolve("op", x) == auto
    monkeypatch.setenv("FASTGAN_BACKEND", "reference")
    assert backend.resolve("op", x) == "reference"
    with fastgan.use_backend("auto"):
        assert backend.resolve("op", x) == auto  # the context beats the environment
        with fastgan.use_backend("reference"):
            assert backend.resolve("op", x) == "reference"
            assert backend.resolve("op", x, "auto") == auto  # the argument beats the context
        assert backend.resolve("op", x) == auto
    assert backend.resolve("op", x) == "reference"


def test_bad_names(monkeypatch):
    x = torch.randn(2)
    with pytest.raises(ValueError, match="backend must be one of"):
        backend.resolve("op", x, "cudnn")
    with pytest.raises(ValueError, match="use_backend: name must be one of"):
        with fastgan.use_backend("fast"):
            pass
    monkeypatch.setenv("FASTGAN_BACKEND", "nope")
    with pytest.raises(ValueError, match="FASTGAN_BACKEND must be one of"):
        backend.resolve("op", x)


def test_explicit_backend_that_cannot_run_says_why(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x = torch.randn(2)
    with pytest.raises(fastgan.BackendUnavailableError, match="'cuda' cannot run"):
        backend.resolve("op", x, "cuda")
    if backend.extension() is not None:
        with pytest.raises(fastgan.BackendUnavailableError, match="dtype int64 unsupported"):
            backend.resolve("op", torch.zeros(2, dtype=torch.int64), "cpu", {"cpu": {torch.float32}})
    if not torch.cuda.is_available() and backend.triton_importable():
        with pytest.raises(fastgan.BackendUnavailableError, match="TRITON_INTERPRET=1"):
            backend.resolve("op", x, "triton")


def test_auto_falls_back_to_reference_for_unsupported_dtype():
    x = torch.zeros(2, dtype=torch.float64)
    assert backend.resolve("op", x, None, {"cpu": {torch.float32}}) == "reference"
    assert backend.resolve("op", torch.zeros(2, device="meta")) == "reference"
