"""Entropy coding of code grids: the reveal schedule and the MIM-driven range coder."""

from .coder import MIMCoder
from .schedule import reveal_groups, window_tiles

__all__ = ["MIMCoder", "reveal_groups", "window_tiles"]
