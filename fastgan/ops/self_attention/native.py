"""The compiled backends (csrc/cpu, csrc/cuda): fake kernels for torch.ops.fastgan.self_attention_core_*.

The schemas live in csrc/fastgan.cpp; importing fastgan._C registers them with their CPU and CUDA
kernels. The fake kernels give torch.compile and FakeTensor the output shapes and dtypes.
"""

from __future__ import annotations

import torch

from ... import backend
from .reference import acc_dtype

# An extension built before this op existed loads but lacks the schemas.
AVAILABLE = backend.extension() is not None and hasattr(torch.ops.fastgan, "self_attention_core_fwd")


def core_fwd_fake(q, k, v, scale):
    b, n, _ = q.shape
    return q.new_empty(b, n, v.shape[2]), q.new_empty(b, n, dtype=acc_dtype(q.dtype))


def core_bwd_fake(grad_o, q, k, v, o, lse, scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


if AVAILABLE:
    torch.library.register_fake("fastgan::self_attention_core_fwd")(core_fwd_fake)
    torch.library.register_fake("fastgan::self_attention_core_bwd")(core_bwd_fake)
    fwd = torch.ops.fastgan.self_attention_core_fwd.default
    bwd = torch.ops.fastgan.self_attention_core_bwd.default
