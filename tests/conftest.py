"""Test setup: the Triton interpreter on machines without CUDA, seeding, and the gpu marker."""

import os

import torch

# Triton reads TRITON_INTERPRET when it is imported; fastgan imports it, so set it first. On a
# machine without CUDA this lets the triton backend run (slowly) on CPU tensors.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed(request):
    """A fresh seed per test (from its name), so a failure reproduces and inputs differ per test."""
    seed = int.from_bytes(request.node.nodeid.encode()[-8:].ljust(8, b"\0"), "little") % (2**31)
    seed ^= int(os.environ.get("FASTGAN_TEST_SEED", "0"))
    torch.manual_seed(seed)
    yield
