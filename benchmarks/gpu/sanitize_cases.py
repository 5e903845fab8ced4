"""Runs the CUDA kernels of every fastgan op over edge-case shapes, for compute-sanitizer:

    compute-sanitizer --tool memcheck --error-exitcode 9 python3 benchmarks/gpu/sanitize_cases.py

Out-of-bounds accesses, races and uninitialised reads are the sanitizer's to find; this script only
drives the kernels (forward and backward) through sizes that end mid-block, every activation and
affine form, NCHW / channels_last / strided inputs and the reduced-precision dtypes.
"""

from __future__ import annotations

import itertools

import torch

from fastgan.ops import (
    cond_batch_norm,
    pixel_shuffle_act,
    self_attention2d,
    spectral_norm_power_iteration_grouped,
)


def _input(shape, layout: str, dtype: torch.dtype) -> torch.Tensor:
    """A random CUDA leaf: NCHW, channels_last, or every other column of a wider tensor."""
    n, c, h, w = shape
    if layout == "strided":
        x = torch.randn(n, c, h, 2 * w, device="cuda", dtype=dtype)[..., ::2]
    else:
        x = torch.randn(n, c, h, w, device="cuda", dtype=dtype)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
    return x.requires_grad_(True)


def pixel_shuffle_cases() -> int:
    count = 0
    shapes = [(1, 1, 1, 1, 2), (2, 3, 5, 7, 2), (1, 2, 3, 4, 3), (2, 2, 3, 5, 4), (3, 4, 6, 5, 1),
              (16, 64, 33, 31, 2)]
    activations = ["none", "relu", "leaky_relu", "prelu1", "preluC", "tanh"]
    for (n, c, h, w, r), act, layout, dtype in itertools.product(
            shapes, activations, ("nchw", "channels_last", "strided"),
            (torch.float32, torch.bfloat16, torch.float16)):
        cin = c * r * r
        x = _input((n, cin, h, w), layout, dtype)
        bias = torch.randn(cin, device="cuda", dtype=dtype, requires_grad=True)
        weight = None
        if act.startswith("prelu"):
            weight = torch.rand(1 if act == "prelu1" else c, device="cuda", dtype=dtype,
                                requires_grad=True)
        y = pixel_shuffle_act(x, r, bias, "prelu" if weight is not None else act, 0.1, weight,
                              backend="cuda")
        y.backward(torch.randn_like(y))
        count += 1
    torch.cuda.synchronize()
    return count


def cond_batch_norm_cases() -> int:
    count = 0
    shapes = [(1, 3, 1, 2), (2, 5, 3, 7), (4, 96, 33, 31), (64, 1536, 4, 4), (3, 7, 1, 1)]
    for (b, c, h, w), affine, layout, dtype, training in itertools.product(
            shapes, ("per_sample", "per_channel", "none"), ("nchw", "channels_last", "strided"),
            (torch.float32, torch.bfloat16, torch.float16), (True, False)):
        x = _input((b, c, h, w), layout, dtype)
        pshape = {"per_sample": (b, c), "per_channel": (c,)}.get(affine)
        gain = bias = None
        if pshape is not None:
            gain = torch.randn(pshape, device="cuda", dtype=dtype, requires_grad=True)
            bias = torch.randn(pshape, device="cuda", dtype=dtype, requires_grad=True)
        stats = torch.zeros(c, device="cuda"), torch.ones(c, device="cuda")
        y = cond_batch_norm(x, gain, bias, *stats, training=training, activation="leaky_relu",
                            backend="cuda")
        y.backward(torch.randn_like(y))
        count += 1
    torch.cuda.synchronize()
    return count


def spectral_norm_cases() -> int:
    """Groups of odd-sized, tall, wide and strided matrices through n = 0, 1, 2 (the last-block
    finish of every layer is where a race would hide)."""
    count = 0
    shapes = [(1, 1), (3, 45), (1000, 7), (7, 1000), (37, 53), (160, 4700), (1, 1536),
              (24576, 20)]
    for dtype, layout, n in itertools.product((torch.float32, torch.bfloat16, torch.float16),
                                              ("contiguous", "transposed", "strided"), (0, 1, 2)):
        weights = []
        for h, w in shapes:
            if layout == "transposed":
                weights.append(torch.randn(w, h, device="cuda", dtype=dtype).t())
            elif layout == "strided":
                weights.append(torch.randn(h, 2 * w, device="cuda", dtype=dtype)[:, ::2])
            else:
                weights.append(torch.randn(h, w, device="cuda", dtype=dtype))
        us = [torch.randn(h, device="cuda") for h, _ in shapes]
        vs = [torch.randn(w, device="cuda") for _, w in shapes]
        spectral_norm_power_iteration_grouped(weights, us, vs, n, backend="cuda")
        count += 1
    torch.cuda.synchronize()
    return count


def self_attention_cases() -> int:
    """Both layouts through odd sizes (blocks that end mid-tile), q/k widths 2-24, value widths
    16-192, channels_last, every dtype; forward and backward."""
    count = 0
    for (b, c, h, w), layout, fmt, dtype in itertools.product(
            [(1, 16, 3, 5), (2, 96, 9, 7), (1, 192, 16, 16), (2, 64, 17, 15)],
            ("biggan", "sagan"), ("nchw", "channels_last"),
            (torch.float32, torch.bfloat16, torch.float16)):
        x = _input((b, c, h, w), fmt, dtype)
        c_v = c // 2 if layout == "biggan" else c

        def p(*shape):
            return (0.2 * torch.randn(*shape, device="cuda")).to(dtype).requires_grad_(True)

        kw = dict(w_query=p(c // 8, c), w_key=p(c // 8, c), w_value=p(c_v, c), gamma=p(1))
        if layout == "biggan":
            kw.update(w_out=p(c, c_v), pool=2)
        else:
            kw.update(b_query=p(c // 8), b_key=p(c // 8), b_value=p(c_v), pool=1)
        y = self_attention2d(x, **kw, backend="cuda")
        y.backward(torch.randn_like(y))
        count += 1
    torch.cuda.synchronize()
    return count


if __name__ == "__main__":
    print(f"pixel_shuffle_act: {pixel_shuffle_cases()} cuda fwd+bwd cases ran")
    print(f"cond_batch_norm: {cond_batch_norm_cases()} cuda fwd+bwd cases ran")
    print(f"spectral_norm: {spectral_norm_cases()} cuda grouped power-iteration cases ran")
    print(f"self_attention2d: {self_attention_cases()} cuda fwd+bwd cases ran")
