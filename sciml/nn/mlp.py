"""A plain multilayer perceptron (pure torch, no Lightning)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

class Sine(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(x)


ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "gelu": nn.GELU, "silu": nn.SiLU, "relu": nn.ReLU, "sin": Sine}


class MLP(nn.Module):
    """x [..., in_features] -> [..., out_features] through ``hidden`` layers; Xavier-normal init."""

    def __init__(self, in_features: int, out_features: int, hidden: Sequence[int], activation: str = "tanh"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"`activation` (={activation!r}) must be one of {sorted(ACTIVATIONS)}")
        if not hidden or any(int(h) < 1 for h in hidden):
            raise ValueError(f"`hidden` (={list(hidden)}) must be a non-empty list of positive layer widths, e.g. [50, 50, 50, 50]")
        widths = [in_features, *map(int, hidden), out_features]
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
