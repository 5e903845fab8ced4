"""What pixel_shuffle_act computes, in plain PyTorch: the oracle every backend is tested against,
the fallback when no fused backend can run, and the differentiable backward used for double
backward (gradient penalties)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

ACTIVATIONS = ("none", "relu", "leaky_relu", "prelu", "tanh")


def _prelu_weight_view(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """[1] or [C] PReLU weight -> broadcastable against [N, C, H, W]."""
    return weight.reshape(1, -1, 1, 1) if weight.numel() == channels else weight.reshape(1, 1, 1, 1)


def apply_activation(z: torch.Tensor, activation: str, negative_slope: float,
                     prelu_weight: torch.Tensor | None) -> torch.Tensor:
    if activation == "none":
        return z
    if activation == "relu":
        return F.relu(z)
    if activation == "leaky_relu":
        return F.leaky_relu(z, negative_slope)
    if activation == "prelu":
        return F.prelu(z, prelu_weight)
    if activation == "tanh":
        return torch.tanh(z)
    raise ValueError(f"fastgan: activation must be one of {ACTIVATIONS}, got {activation!r}")


def pixel_shuffle_act_reference(x: torch.Tensor, upscale_factor: int, bias: torch.Tensor | None = None,
                                activation: str | None = None, negative_slope: float = 0.2,
                                prelu_weight: torch.Tensor | None = None) -> torch.Tensor:
    """act(F.pixel_shuffle(x + bias[:, None, None], upscale_factor)).

    x: [N, C*r*r, H, W]; bias: [C*r*r] or None; prelu_weight: [1] or [C]. Returns [N, C, H*r, W*r].
    """
    z = x + bias[:, None, None] if bias is not None else x
    return apply_activation(F.pixel_shuffle(z, upscale_factor), activation or "none",
                            negative_slope, prelu_weight)


def pixel_shuffle_act_backward_reference(
    grad_out: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None, upscale_factor: int,
    activation: str, negative_slope: float, prelu_weight: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_x, grad_bias, grad_prelu_weight) of pixel_shuffle_act, written with differentiable ops.

    The fused backends' backward ops return the same triple; absent bias / prelu_weight give empty
    [0] tensors. Recomputes the pre-activation z from x, as the fused kernels do.
    """
    r = upscale_factor
    z = F.pixel_shuffle(x + bias[:, None, None] if bias is not None else x, r)
    positive = z > 0
    if activation == "none":
        dz = grad_out
    elif activation == "relu":
        dz = grad_out * positive
    elif activation == "leaky_relu":
        dz = torch.where(positive, grad_out, grad_out * negative_slope)
    elif activation == "prelu":
        a = _prelu_weight_view(prelu_weight, z.shape[1])
        dz = torch.where(positive, grad_out, grad_out * a)
    elif activation == "tanh":
        dz = grad_out * (1 - torch.tanh(z) ** 2)
    else:
        raise ValueError(f"fastgan: activation must be one of {ACTIVATIONS}, got {activation!r}")
    grad_x = F.pixel_unshuffle(dz, r)
    empty = x.new_empty(0)
    grad_bias = grad_x.sum(dim=(0, 2, 3)) if bias is not None else empty
    if prelu_weight is not None:
        contrib = torch.where(positive, torch.zeros_like(z), z * grad_out)
        per_channel = contrib.sum(dim=(0, 2, 3))
        grad_prelu = per_channel if prelu_weight.numel() == z.shape[1] else per_channel.sum().reshape(1)
    else:
        grad_prelu = empty
    return grad_x, grad_bias, grad_prelu
