"""Build fastgan and its compiled extension fastgan._C by driving CMakeLists.txt.

The extension is built against the torch that is already installed, so install with
``pip install --no-build-isolation .`` (build isolation would fetch a second torch).
``FASTGAN_BUILD_EXT=0`` gives a pure-Python install (reference and triton backends only).
CUDA kernels are built when the installed torch has CUDA and nvcc is found; ``TORCH_CUDA_ARCH_LIST``
picks the architectures (default "8.0;9.0"). ``MAX_JOBS`` caps build parallelism.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
BUILD_EXT = os.environ.get("FASTGAN_BUILD_EXT", "1") != "0"


def base_version() -> str:
    text = (ROOT / "fastgan" / "_version.py").read_text()
    return re.search(r'__version__ = "([^"]+)"', text).group(1)


def import_torch():
    try:
        import torch
    except ImportError as err:
        raise RuntimeError(
            "fastgan's extension is built against the installed torch, and none was found in this "
            "build environment. Install torch first, then run "
            "`pip install --no-build-isolation .` (or set FASTGAN_BUILD_EXT=0 for a pure-Python "
            "install)."
        ) from err
    return torch


def find_nvcc() -> str | None:
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if cuda_home and (Path(cuda_home) / "bin" / "nvcc").exists():
        return str(Path(cuda_home) / "bin" / "nvcc")
    return shutil.which("nvcc") or (
        "/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None
    )


def with_cuda() -> bool:
    torch = import_torch()
    if os.environ.get("FASTGAN_WITH_CUDA") == "0":
        return False
    return torch.version.cuda is not None and find_nvcc() is not None


def local_version_tag() -> str:
    """'+cpu' or '+cuXYZ': which compiled kernels the wheel holds (pure-Python installs have none)."""
    if not BUILD_EXT:
        return ""
    torch = import_torch()
    if with_cuda():
        return "+cu" + torch.version.cuda.replace(".", "")
    return "+cpu"


class CMakeExtension(Extension):
    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        torch = import_torch()
        out_dir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        build_dir = Path(self.build_temp).resolve() / ext.name
        build_dir.mkdir(parents=True, exist_ok=True)
        cuda = with_cuda()
        args = [
            f"-S{ROOT}",
            f"-B{build_dir}",
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
            f"-DPython3_EXECUTABLE={sys.executable}",
            f"-DCMAKE_BUILD_TYPE={'Debug' if self.debug else 'Release'}",
            f"-DFASTGAN_OUTPUT_DIR={out_dir}",
            f"-DFASTGAN_WITH_CUDA={'ON' if cuda else 'OFF'}",
        ]
        if cuda:
            args.append(f"-DCMAKE_CUDA_COMPILER={find_nvcc()}")
        if shutil.which("ninja"):
            args.append("-GNinja")
        jobs = os.environ.get("MAX_JOBS") or str(os.cpu_count() or 1)
        subprocess.run(["cmake", *args], check=True)
        subprocess.run(["cmake", "--build", str(build_dir), "--parallel", jobs], check=True)


setup(
    version=base_version() + local_version_tag(),
    ext_modules=[CMakeExtension("fastgan._C")] if BUILD_EXT else [],
    cmdclass={"build_ext": CMakeBuild},
)
