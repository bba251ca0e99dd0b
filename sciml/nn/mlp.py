"""A plain multilayer perceptron (pure torch, no Lightning)."""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn


class Sine(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(x)


ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "gelu": nn.GELU, "silu": nn.SiLU, "relu": nn.ReLU, "sin": Sine}


def _is_width(value: object) -> bool:
    """A layer width: a positive integer (numpy integers too; not bool, not 32.0)."""
    if isinstance(value, bool):
        return False
    try:
        return operator.index(value) >= 1
    except TypeError:
        return False


class MLP(nn.Module):
    """x [..., in_features] -> [..., out_features] through ``hidden`` layers; Xavier-normal init."""

    def __init__(self, in_features: int, out_features: int, hidden: Sequence[int], activation: str = "tanh"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"`activation` (={activation!r}) must be one of {sorted(ACTIVATIONS)}")
        widths = list(hidden) if isinstance(hidden, Iterable) and not isinstance(hidden, (str, bytes)) else []
        if not widths or not all(_is_width(h) for h in widths):
            raise ValueError(f"`hidden` (={hidden!r}) must be a non-empty list of positive integer layer widths, e.g. [50, 50, 50, 50]")
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if not _is_width(value):
                raise ValueError(f"`{name}` (={value!r}) must be a positive integer")
        widths = [in_features, *map(int, widths), out_features]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            linear = nn.Linear(a, b)
            nn.init.xavier_normal_(linear.weight)
            nn.init.zeros_(linear.bias)
            layers.append(linear)
            if i < len(widths) - 2:
                layers.append(ACTIVATIONS[activation]())
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
