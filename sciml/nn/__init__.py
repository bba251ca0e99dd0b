"""Pure torch networks; they know nothing about Lightning, datasets or PDEs."""

from .mlp import MLP
from .fno import FNO, FNOBlock, SpectralConv, append_grid

__all__ = ["MLP", "FNO", "FNOBlock", "SpectralConv", "append_grid"]
