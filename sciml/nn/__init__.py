"""Pure torch networks; they know nothing about Lightning, datasets or PDEs."""

from .mlp import MLP
from .fno import FNO, FNOBlock, SpectralConv, append_grid
from .neural_process import Gaussian, NeuralProcess

__all__ = ["MLP", "FNO", "FNOBlock", "Gaussian", "NeuralProcess", "SpectralConv", "append_grid"]
