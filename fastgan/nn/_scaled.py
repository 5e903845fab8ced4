"""conv(x, W) / sigma + b and linear(x, W) / sigma + b without materialising W / sigma.

A spectrally normalised layer computes layer(x, W / sigma) + b. Because the layer is linear in its
weight, that equals layer(x, W) / sigma + b: the 1/sigma folds into the bias add (one pass over the
output either way) and no weight-sized W / sigma is kept for backward. The backward gives
dx = layer_dgrad(dy, W / sigma) (a transient weight-sized scale, not an activation-sized one),
dW = G / sigma and dsigma = -<G, W> / sigma^2 with G = layer_wgrad(x, dy), the gradient w.r.t.
the normalised weight; sigma's own backward adds (d sigma / dW) dsigma, which makes PyTorch's
dL/dW = G / sigma - (<G, W> / sigma^2) u v^T. The backward is made of differentiable ops
(convolution_backward has a derivative), so double backward (R1, gradient penalties) works.
"""

from __future__ import annotations

import torch


def _bias_view(bias: torch.Tensor, ndim: int) -> torch.Tensor:
    return bias.view(1, -1, *([1] * (ndim - 2)))


def _scale_add(y: torch.Tensor, inv: torch.Tensor, bias: torch.Tensor | None,
               channel_dim_last: bool) -> torch.Tensor:
    """y * inv + bias in one pass; y is a fresh output, free to overwrite."""
    inv = inv.to(y.dtype)
    if bias is None:
        return y.mul_(inv)
    b = bias if channel_dim_last else _bias_view(bias, y.dim())
    return torch.addcmul(b, y, inv)


def _sigma_grad(g: torch.Tensor, weight: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
    """-<G, W> / sigma^2 in sigma's dtype."""
    dot = torch.dot(g.reshape(-1).to(inv.dtype), weight.reshape(-1).to(inv.dtype))
    return -dot * inv * inv


class ScaledConvolution(torch.autograd.Function):
    """convolution(x, weight) / sigma + bias, as aten.convolution takes its arguments."""

    @staticmethod
    def forward(ctx, x, weight, bias, sigma, stride, padding, dilation, transposed,
                output_padding, groups):
        conv = (stride, padding, dilation, transposed, output_padding, groups)
        ctx.conv = conv
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, weight, sigma)
        y = torch.ops.aten.convolution(x, weight, None, *conv)
        return _scale_add(y, sigma.reciprocal(), bias, channel_dim_last=False)

    @staticmethod
    def backward(ctx, dy):
        x, weight, sigma = ctx.saved_tensors
        need_x, need_w, need_b, need_sigma = ctx.needs_input_grad[:4]
        inv = sigma.reciprocal()
        bias_sizes = [weight.shape[1] * ctx.conv[5] if ctx.conv[3] else weight.shape[0]]
        gx, g, gb = torch.ops.aten.convolution_backward(
            dy, x, weight * inv.to(weight.dtype), bias_sizes if ctx.has_bias else None,
            *ctx.conv, [need_x, need_w or need_sigma, need_b and ctx.has_bias])
        dw = g * inv.to(g.dtype) if need_w else None
        dsigma = _sigma_grad(g, weight, inv) if need_sigma else None
        return gx, dw, gb, dsigma, None, None, None, None, None, None


class ScaledLinear(torch.autograd.Function):
    """linear(x, weight) / sigma + bias, x [*, in], weight [out, in]."""

    @staticmethod
    def forward(ctx, x, weight, bias, sigma):
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, weight, sigma)
        y = torch.nn.functional.linear(x, weight)
        return _scale_add(y, sigma.reciprocal(), bias, channel_dim_last=True)

    @staticmethod
    def backward(ctx, dy):
        x, weight, sigma = ctx.saved_tensors
        need_x, need_w, need_b, need_sigma = ctx.needs_input_grad[:4]
        inv = sigma.reciprocal()
        gx = dw = gb = dsigma = None
        if need_x:
            gx = dy @ (weight * inv.to(weight.dtype))
        dy2 = dy.reshape(-1, dy.shape[-1])
        if need_w or need_sigma:
            g = dy2.t() @ x.reshape(-1, x.shape[-1])
            dw = g * inv.to(g.dtype) if need_w else None
            dsigma = _sigma_grad(g, weight, inv) if need_sigma else None
        if need_b and ctx.has_bias:
            gb = dy2.sum(0)
        return gx, dw, gb, dsigma
