"""fastgan's fused ops, one folder each; every op takes ``backend=`` (see fastgan.backend)."""

from .batch_norm import cond_batch_norm
from .pixel_shuffle import pixel_shuffle_act

__all__ = ["cond_batch_norm", "pixel_shuffle_act"]
