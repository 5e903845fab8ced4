"""Autograd for pixel_shuffle_act's fused ops, shared by every backend's forward/backward op pair.

The fused backward op is first-order only. When the graph of the gradient itself is being built
(``create_graph=True``: gradient penalties, R1), the backward runs the differentiable reference
formula instead, which has the same first and second derivatives.
"""

from __future__ import annotations

import torch

from .reference import pixel_shuffle_act_backward_reference


def _setup_context(ctx, inputs, output) -> None:
    x, bias, upscale_factor, activation, negative_slope, prelu_weight = inputs
    ctx.save_for_backward(x, bias, prelu_weight)
    ctx.args = (upscale_factor, activation, negative_slope)


def register(fwd_op_name: str, bwd_op) -> None:
    """Registers autograd on the forward op ``fwd_op_name``, whose backward op is ``bwd_op``."""

    def backward(ctx, grad_out):
        x, bias, prelu_weight = ctx.saved_tensors
        upscale_factor, activation, negative_slope = ctx.args
        if torch.is_grad_enabled():
            grads = pixel_shuffle_act_backward_reference(
                grad_out, x, bias, upscale_factor, activation, negative_slope, prelu_weight)
        else:
            grads = bwd_op(grad_out, x, bias, upscale_factor, activation, negative_slope, prelu_weight)
        grad_x, grad_bias, grad_prelu = grads
        return (
            grad_x,
            grad_bias if bias is not None else None,
            None,
            None,
            None,
            grad_prelu if prelu_weight is not None else None,
        )

    torch.library.register_autograd(fwd_op_name, backward, setup_context=_setup_context)
