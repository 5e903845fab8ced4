"""The x86-64 levels the CPU kernels run at (csrc/common/cpu_isa.h).

The main test run covers the highest level this CPU has; here every lower level runs the cpu
backend's op tests in a subprocess (the level is read once per process), and FASTGAN_CPU_ISA is
checked to pick the level, or to fail clearly.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastgan import backend

LEVELS = ("avx512", "avx2", "baseline")  # highest first
TESTS = Path(__file__).resolve().parent

pytestmark = pytest.mark.skipif(backend.extension() is None, reason="fastgan._C is not built")


def _python(code: str, level: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FASTGAN_CPU_ISA": level}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)


def _highest() -> str:
    out = _python("import torch, fastgan._C as c; print(c.cpu_isa())", "")
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_the_level_is_one_of_the_three():
    assert backend.extension().cpu_isa() in LEVELS


@pytest.mark.parametrize("level", LEVELS)
def test_fastgan_cpu_isa_lowers_the_level_never_raises_it(level):
    highest = _highest()
    expected = LEVELS[max(LEVELS.index(level), LEVELS.index(highest))]
    out = _python("import torch, fastgan._C as c; print(c.cpu_isa())", level)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected


def test_an_unknown_level_is_a_clear_error_at_the_first_kernel_call():
    code = ("import torch, fastgan\n"
            "try:\n"
            "    fastgan.ops.pixel_shuffle_act(torch.randn(1, 4, 2, 2), 2, backend='cpu')\n"
            "except RuntimeError as e:\n"
            "    print(e)\n")
    out = _python(code, "avx3")
    assert out.returncode == 0, out.stderr
    assert "FASTGAN_CPU_ISA must be avx512, avx2 or baseline" in out.stdout
    assert "'avx3'" in out.stdout


@pytest.mark.parametrize("level", LEVELS[1:])
def test_cpu_op_tests_pass_at_a_lower_level(level):
    if LEVELS.index(level) <= LEVELS.index(_highest()):
        pytest.skip(f"{level} is this CPU's highest level: the main run covers it")
    env = {**os.environ, "FASTGAN_CPU_ISA": level}
    cmd = [sys.executable, "-m", "pytest", str(TESTS / "ops"), "-q", "-x", "-p", "no:cacheprovider",
           "-k", "cpu and not sync"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert " passed" in out.stdout
