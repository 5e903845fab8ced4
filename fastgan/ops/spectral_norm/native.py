"""The compiled backends (csrc/cpu, csrc/cuda): the fake kernel of torch.ops.fastgan.sn_power_iteration.

The schema lives in csrc/fastgan.cpp; importing fastgan._C registers it with its CPU and CUDA
kernels. The fake kernel gives torch.compile and FakeTensor the shape and dtype of the sigmas.
"""

from __future__ import annotations

import torch

from ... import backend
from .reference import acc_dtype

# An extension built before this op existed loads but lacks the schema.
AVAILABLE = backend.extension() is not None and hasattr(torch.ops.fastgan, "sn_power_iteration")


def sn_power_iteration_fake(weights, us, vs, n_power_iterations, eps):
    return weights[0].new_empty(len(weights), dtype=acc_dtype(weights[0].dtype))


if AVAILABLE:
    torch.library.register_fake("fastgan::sn_power_iteration")(sn_power_iteration_fake)
    op = torch.ops.fastgan.sn_power_iteration.default
