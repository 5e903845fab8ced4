"""fastgan's fused ops, one folder each; every op takes ``backend=`` (see fastgan.backend)."""

from .batch_norm import cond_batch_norm
from .pixel_shuffle import pixel_shuffle_act
from .self_attention import self_attention2d
from .spectral_norm import spectral_norm_power_iteration, spectral_norm_power_iteration_grouped

__all__ = ["cond_batch_norm", "pixel_shuffle_act", "self_attention2d",
           "spectral_norm_power_iteration", "spectral_norm_power_iteration_grouped"]
