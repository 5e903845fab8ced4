"""The compiled extension loads and registers every op; the CLI runs."""

import os
import subprocess
import sys

import pytest
import torch

import fastgan
from fastgan import backend

SCHEMAS = ["pixel_shuffle_act_fwd", "pixel_shuffle_act_bwd", "cond_bn_stats", "cond_bn_fwd",
           "cond_bn_bwd_reduce", "cond_bn_bwd_dx", "cond_bn_train_fwd", "cond_bn_train_bwd",
           "sn_power_iteration", "self_attention_core_fwd", "self_attention_core_bwd"]


def _require_extension():
    if os.environ.get("FASTGAN_REQUIRE_EXT") == "1":
        assert backend.extension() is not None, fastgan.backends()["cpu"].reason
    elif backend.extension() is None:
        pytest.skip(f"extension not built: {fastgan.backends()['cpu'].reason}")


def test_extension_registers_every_schema_with_cpu_kernels():
    _require_extension()
    for name in SCHEMAS:
        op = getattr(torch.ops.fastgan, name).default
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CPU"), name
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "Meta"), name
    ext = backend.extension()
    assert ext.torch_version.split(".")[:2] == torch.__version__.split(".")[:2]
    if torch.version.cuda is None:
        assert not ext.with_cuda  # CUDA kernels are built only against a CUDA torch


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "fastgan.cli", *args], capture_output=True, text=True,
                          timeout=600)


def test_fastgan_info_runs():
    out = _cli("info")
    assert out.returncode == 0, out.stderr
    for word in ("fastgan", "torch", "backends:", "reference", "triton", "cuda", "cpu"):
        assert word in out.stdout


def test_fastgan_check_passes_on_cpu():
    out = _cli("check", "--device", "cpu", "--dtype", "float32", "float64")
    assert out.returncode == 0, out.stdout + out.stderr
    if backend.extension() is not None:
        assert " cpu " in out.stdout and "FAIL" not in out.stdout
