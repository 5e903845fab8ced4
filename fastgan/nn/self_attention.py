"""SelfAttention2d: SAGAN's and BigGAN's non-local block on the fused self_attention2d op.

- ``layout="biggan"`` is BigGAN-PyTorch's ``Attention``: theta, phi (C/8), g (C/2) and o (C/2 -> C)
  1x1 convs without bias, spectrally normalised by default, phi and g max-pooled by 2, and
  ``gamma`` (0-dim, initialised to 0). Its checkpoints load (BigGAN's SN buffers ``u0``/``sv0``
  included, through fastgan's SN layers).
- ``layout="sagan"`` is SAGAN's ``Self_Attn`` (heykeetae/Self-Attention-GAN): query_conv,
  key_conv (C/8) and value_conv (C) 1x1 convs with bias, no pooling, no output conv, and
  ``gamma`` of shape [1].

The attention matrix is never built on the fused backends; ``return_attention=True`` returns it
(SAGAN's forward does, for visualisation) through the reference path, whose memory is
O(B * N * M).
"""

from __future__ import annotations

import torch
from torch import nn

from ..ops.self_attention import self_attention2d, self_attention2d_reference
from .spectral_norm import SNConv2d

__all__ = ["SelfAttention2d"]

_LAYOUTS = {
    # name: (query, key, value, out) submodule names; the value's channels as a fraction of C
    "biggan": (("theta", "phi", "g", "o"), 2),
    "sagan": (("query_conv", "key_conv", "value_conv", None), 1),
}


class SelfAttention2d(nn.Module):
    """Self-attention over the H x W positions of x [B, C, H, W]: gamma * out + x.

    Args:
        channels: C, a multiple of 8 (the query/key width is C / 8).
        layout: "biggan" or "sagan" (module names, biases, pooling and output conv as upstream).
        spectral_norm: spectrally normalise the 1x1 convs (default: True for biggan, False for
            sagan, as upstream).
        n_power_iterations, eps: the spectral norm's settings.
        eval_iteration: what the spectral norm does in eval mode (fastgan.nn.SNConv2d): "none"
            (torch: sigma from the stored vectors), "peek" (BigGAN-PyTorch: one iteration on
            copies) or "update" (the SAGAN reference code: iterate and store).
        backend: "reference", "triton", "cuda", "cpu", "auto" or None.
    """

    def __init__(self, channels: int, layout: str = "biggan", spectral_norm: bool | None = None,
                 n_power_iterations: int = 1, eps: float = 1e-12,
                 backend: str | None = None, eval_iteration: str = "none") -> None:
        super().__init__()
        if layout not in _LAYOUTS:
            raise ValueError(f"fastgan.nn.SelfAttention2d: layout must be one of "
                             f"{tuple(_LAYOUTS)}, got {layout!r}")
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 8 \
                or channels % 8:
            raise ValueError(f"fastgan.nn.SelfAttention2d: channels must be a positive multiple "
                             f"of 8 (the query/key width is channels / 8), got {channels!r}")
        self.channels, self.layout, self.backend = channels, layout, backend
        if spectral_norm is None:
            spectral_norm = layout == "biggan"
        if not spectral_norm and eval_iteration != "none":
            raise ValueError(f"fastgan.nn.SelfAttention2d: eval_iteration={eval_iteration!r} needs "
                             f"spectral_norm=True (the plain convs have no power iteration)")
        self.spectral_norm = spectral_norm
        names, value_div = _LAYOUTS[layout]
        bias = layout == "sagan"
        c, c_qk, c_v = channels, channels // 8, channels // value_div

        def conv(c_in: int, c_out: int) -> nn.Conv2d:
            if spectral_norm:
                return SNConv2d(c_in, c_out, 1, bias=bias, n_power_iterations=n_power_iterations,
                                eps=eps, backend=backend, eval_iteration=eval_iteration)
            return nn.Conv2d(c_in, c_out, 1, bias=bias)

        q_name, k_name, v_name, o_name = names
        self._names = names
        setattr(self, q_name, conv(c, c_qk))
        setattr(self, k_name, conv(c, c_qk))
        setattr(self, v_name, conv(c, c_v))
        if o_name is not None:
            setattr(self, o_name, conv(c_v, c))
        self.pool = 2 if layout == "biggan" else 1
        self.gamma = nn.Parameter(torch.zeros(() if layout == "biggan" else (1,)))

    def _weight(self, conv: nn.Conv2d) -> torch.Tensor:
        """The conv's weight, normalised by this forward's sigma for an SN conv (which updates its
        u, v in training exactly as the conv's own forward would)."""
        if isinstance(conv, SNConv2d):
            return conv._sn.normalized(conv, conv._sn.sigma(conv))
        return conv.weight

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        """y [B, C, H, W]; with ``return_attention``, (y, attention [B, N, M]) via the reference."""
        convs = [getattr(self, n) if n is not None else None for n in self._names]
        weights = [self._weight(m) if m is not None else None for m in convs]
        biases = [m.bias if m is not None else None for m in convs]
        args = dict(w_out=weights[3], b_query=biases[0], b_key=biases[1], b_value=biases[2],
                    b_out=biases[3], pool=self.pool)
        if return_attention:
            return self_attention2d_reference(x, *weights[:3], self.gamma, **args,
                                              return_attention=True)
        return self_attention2d(x, *weights[:3], self.gamma, **args, backend=self.backend)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, layout={self.layout!r}, "
                f"spectral_norm={self.spectral_norm}")
