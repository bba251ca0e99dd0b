"""Loss landscapes: a loss on a plane through trained weights (Li et al., NeurIPS 2018).

    L(a, b) = loss(theta + a d1 + b d2)

with d1, d2 random directions, *filter-normalised*: each filter of a direction (one row of a
weight matrix, i.e. the weights into one unit; a whole tensor if it has one dimension) is
rescaled to the norm of the same filter of theta. Networks whose weights differ in scale (a
PINN and an LPINN, or one network before and after training) are then drawn on comparable
axes: a = 1 moves every filter by its own size. One-dimensional parameters (biases) get no
direction by default, as in Li et al., since a bias has no scale of its own to normalise by.

Works for any ``nn.Module`` and loss closure, including losses that differentiate the network
with respect to its inputs (PINN residuals): the closure runs with autograd enabled.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

__all__ = ["LossSurface", "filter_normalized_direction", "loss_surface", "plot_loss_surfaces"]


@dataclass(frozen=True)
class LossSurface:
    """``loss[i, j]`` = L(alphas[i], betas[j]); ``directions`` are (d1, d2), one tensor per parameter."""

    alphas: np.ndarray  # [n]
    betas: np.ndarray  # [n]
    loss: np.ndarray  # [n, n]
    directions: tuple[list[Tensor], list[Tensor]]

    @property
    def center(self) -> float:
        """The loss at the grid point nearest the trained weights (at them for an odd ``steps``)."""
        i, j = np.abs(self.alphas).argmin(), np.abs(self.betas).argmin()
        return float(self.loss[i, j])

    def to_dict(self) -> dict:
        return {"alphas": self.alphas.tolist(), "betas": self.betas.tolist(), "loss": self.loss.tolist()}


def filter_normalized_direction(params: Sequence[Tensor], generator: torch.Generator, include_1d: bool = False) -> list[Tensor]:
    """A Gaussian random direction, each filter rescaled to the norm of the matching filter of
    ``params``; one-dimensional tensors get zeros unless ``include_1d`` (then the whole tensor
    is one filter). Filters of ``params`` that are zero stay zero."""
    direction = []
    for p in (p.detach() for p in params):
        d = torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p)
        if p.dim() <= 1:
            d = d * (p.norm() / d.norm().clamp_min(1e-30)) if include_1d else torch.zeros_like(p)
        else:
            rows, drows = p.reshape(p.shape[0], -1), d.reshape(d.shape[0], -1)
            scale = rows.norm(dim=1, keepdim=True) / drows.norm(dim=1, keepdim=True).clamp_min(1e-30)
            d = (drows * scale).reshape(p.shape)
        direction.append(d)
    return direction


def loss_surface(
    module: nn.Module,
    loss_fn: Callable[[], Tensor],
    span: float = 1.0,
    steps: int = 21,
    seed: int = 0,
    directions: tuple[Sequence[Tensor], Sequence[Tensor]] | None = None,
    include_1d: bool = False,
) -> LossSurface:
    """L(a, b) = ``loss_fn()`` at the weights theta + a d1 + b d2 for a, b on ``steps`` points of
    [-span, span]. ``directions`` default to two filter-normalised random ones drawn from ``seed``.

    The module's parameters are restored afterwards, also when ``loss_fn`` raises.
    """
    if not span > 0:
        raise ValueError(f"`span` (={span}) must be > 0: the plane covers [-span, span]^2.")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ValueError(f"`steps` (={steps!r}) must be an integer >= 2 (grid points per axis).")
    params = [p for p in module.parameters() if p.requires_grad]
    if directions is None:
        gen = torch.Generator().manual_seed(seed)
        directions = tuple(filter_normalized_direction(params, gen, include_1d) for _ in range(2))
    d1, d2 = (list(d) for d in directions)
    for name, d in (("directions[0]", d1), ("directions[1]", d2)):
        if [t.shape for t in d] != [p.shape for p in params]:
            raise ValueError(f"`{name}` must hold one tensor per trainable parameter of the module, of the same shapes.")
    theta = [p.detach().clone() for p in params]
    grid = np.linspace(-span, span, steps)
    loss = np.empty((steps, steps))
    try:
        for i, a in enumerate(grid):
            for j, b in enumerate(grid):
                with torch.no_grad():
                    for p, p0, u, v in zip(params, theta, d1, d2):
                        p.copy_(p0 + a * u + b * v)
                with torch.enable_grad():
                    loss[i, j] = float(loss_fn().detach())
    finally:
        with torch.no_grad():
            for p, p0 in zip(params, theta):
                p.copy_(p0)
    return LossSurface(alphas=grid, betas=grid.copy(), loss=loss, directions=(d1, d2))


def plot_loss_surfaces(surfaces: Mapping[str, LossSurface], path: str | os.PathLike, ncols: int | None = None, levels: int = 20) -> Path:
    """Contour plots of log10 loss, one panel per surface (titled by its key), in a grid of
    ``ncols`` columns; the trained weights are marked at the origin. Returns the path."""
    from .plotting import _save

    if not surfaces:
        raise ValueError("`surfaces` is empty; pass at least one {title: LossSurface}.")
    ncols = ncols or len(surfaces)
    nrows = -(-len(surfaces) // ncols)
    fig = Figure(figsize=(3.6 * ncols, 3.2 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, (title, s) in zip(axes, surfaces.items()):
        z = np.log10(np.maximum(s.loss, 1e-30)).T  # contourf wants [y, x]
        filled = ax.contourf(s.alphas, s.betas, z, levels=levels, cmap="viridis")
        ax.contour(s.alphas, s.betas, z, levels=levels, colors="k", linewidths=0.3)
        ax.plot([0], [0], marker="*", color="tab:red", markersize=9)
        fig.colorbar(filled, ax=ax, label="log10 loss")
        ax.set_title(title)
        ax.set_xlabel("direction 1")
        ax.set_ylabel("direction 2")
    for ax in axes[len(surfaces):]:
        ax.set_visible(False)
    return _save(fig, path)
