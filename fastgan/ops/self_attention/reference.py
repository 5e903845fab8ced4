"""SAGAN/BigGAN self-attention in plain PyTorch: the oracle of every backend, and the fallback.

``self_attention2d_reference`` is the whole block as the upstream code computes it (1x1 convs,
max-pooled key and value, softmax over keys, gamma * out + x). ``attention_core_reference`` is the
part the fused backends implement (README.md beside this file), with the [B, N, M] matrix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def attention_core_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(o [B, N, E] in q's dtype, lse [B, N] in the accumulation dtype), differentiable."""
    acc = acc_dtype(q.dtype)
    s = scale * torch.bmm(q.to(acc), k.to(acc).transpose(1, 2))
    lse = torch.logsumexp(s, dim=-1)
    o = torch.bmm(torch.exp(s - lse[..., None]), v.to(acc))
    return o.to(q.dtype), lse


def project(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A 1x1 convolution with a [C_out, C_in] (or [C_out, C_in, 1, 1]) weight."""
    return F.conv2d(x, weight.reshape(weight.shape[0], -1, 1, 1), bias)


def self_attention2d_reference(x, w_query, w_key, w_value, gamma, w_out=None, b_query=None,
                               b_key=None, b_value=None, b_out=None, pool=2, scale=1.0,
                               return_attention=False):
    """gamma * out + x (and the [B, N, M] attention map when ``return_attention``)."""
    b, c, h, w = x.shape
    query = project(x, w_query, b_query).flatten(2)                        # [B, Cqk, N]
    key = project(x, w_key, b_key)
    value = project(x, w_value, b_value)
    if pool > 1:
        key, value = F.max_pool2d(key, pool), F.max_pool2d(value, pool)
    key, value = key.flatten(2), value.flatten(2)                          # [B, C, M]
    attn = torch.softmax(scale * torch.bmm(query.transpose(1, 2), key), dim=-1)  # [B, N, M]
    o = torch.bmm(value, attn.transpose(1, 2)).view(b, -1, h, w)           # [B, Cv, H, W]
    out = project(o, w_out, b_out) if w_out is not None else o
    y = gamma * out + x
    return (y, attn) if return_attention else y
