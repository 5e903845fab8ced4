"""fastgan's fused ops, one folder each; every op takes ``backend=`` (see fastgan.backend)."""

from .pixel_shuffle import pixel_shuffle_act

__all__ = ["pixel_shuffle_act"]
