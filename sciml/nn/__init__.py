"""Pure torch networks; they know nothing about Lightning, datasets or PDEs."""

from .mlp import MLP

__all__ = ["MLP"]
