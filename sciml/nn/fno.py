"""Fourier neural operators in 1, 2 or 3 spatial dimensions (pure torch, no Lightning).

A Fourier layer maps v -> act(K v + W v): W is a pointwise linear map and K a kernel integral
operator applied in Fourier space (Li et al., ICLR 2021),

    (K v)(x) = F^-1[ R(k) . (F v)(k) ](x),   R(k) in C^{out x in},  R(k) = 0 outside -modes_i <= k_i < modes_i,

so K is a convolution whose kernel is band-limited to the lowest ``modes`` frequencies. With the
FFT normalised as torch's default (forward unscaled, inverse divided by n), the same weights act
on any grid fine enough to hold the kept modes: this is what makes the operator
resolution-independent. The dimension of every module here is ``len(modes)``.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .mlp import ACTIVATIONS, MLP, _is_width


def _check_width(name: str, value: object) -> None:
    if not _is_width(value):
        raise ValueError(f"`{name}` (={value!r}) must be a positive integer")


def _is_zero(value: object) -> bool:
    try:
        return not isinstance(value, bool) and operator.index(value) == 0
    except TypeError:
        return False


def _check_modes(modes: object) -> tuple[int, ...]:
    ok = isinstance(modes, Sequence) and not isinstance(modes, (str, bytes)) and 1 <= len(modes) <= 3
    if not ok or not all(_is_width(m) for m in modes):
        raise ValueError(
            f"`modes` (={modes!r}) must be a tuple of 1 to 3 positive integers, one per spatial axis, "
            "e.g. (8, 8) for a 2D grid"
        )
    return tuple(int(m) for m in modes)


def _check_activation(activation: str | None, allow_none: bool) -> None:
    if activation is None and allow_none:
        return
    if activation not in ACTIVATIONS:
        raise ValueError(f"`activation` (={activation!r}) must be one of {sorted(ACTIVATIONS)}")


def _min_grid(modes: Sequence[int]) -> tuple[int, ...]:
    """The smallest grid that holds ``modes``: 2m points on each axis but the last (frequencies
    -m..m-1, with -m the Nyquist row when n = 2m), and 2(m-1) on the last, whose rFFT has n//2 + 1 >= m bins."""
    *lead, last = modes
    return (*(2 * m for m in lead), max(1, 2 * (last - 1)))


def _check_input(x: Tensor, channels: int, modes: tuple[int, ...], padding: tuple[int, ...], who: str) -> None:
    """Raise a ValueError naming the mismatch between ``x`` and the module's arguments."""
    d = len(modes)
    if x.ndim != d + 2:
        axes = ", ".join(f"n{i + 1}" for i in range(d))
        raise ValueError(
            f"{who} with `modes` (={modes}) is {d}D and takes input [batch, channels, {axes}] ({d + 2} dims); "
            f"got shape {tuple(x.shape)}. Add the missing batch or channel axis, or pass one mode per spatial axis."
        )
    if x.shape[1] != channels:
        raise ValueError(
            f"{who} has `in_channels` (={channels}) but the input has {x.shape[1]} channels (shape {tuple(x.shape)}, "
            "channels on axis 1)"
        )
    grid = tuple(x.shape[2:])
    padded = tuple(n + p for n, p in zip(grid, padding))
    need = _min_grid(modes)
    if any(n < m for n, m in zip(padded, need)):
        seen = f"the input grid {grid} with `padding` (={padding}) is {padded}" if any(padding) else f"the input grid is {grid}"
        raise ValueError(
            f"`modes` (={modes}) need a grid of at least {need} points (2*m on each axis but the last, 2*(m-1) on "
            f"the last); {seen}. Use fewer modes or a finer grid."
        )


def append_grid(x: Tensor) -> Tensor:
    """[batch, c, *grid] -> [batch, c + d, *grid]: appends each axis' coordinate, linspace(0, 1, n)."""
    grid = x.shape[2:]
    axes = [torch.linspace(0.0, 1.0, n, dtype=x.dtype, device=x.device) for n in grid]
    coords = torch.stack(torch.meshgrid(*axes, indexing="ij"))
    return torch.cat([x, coords.expand(x.shape[0], *coords.shape)], dim=1)


class SpectralConv(nn.Module):
    """The kernel integral operator K above: [batch, in, *grid] -> [batch, out, *grid], periodic.

    Kept frequencies: 0..m-1 on the last axis (the rFFT's half spectrum, the rest follows by
    Hermitian symmetry) and -m..m-1 on the others, i.e. 2^(d-1) corner blocks of the spectrum,
    each with its own complex weights R [in, out, *modes]. The weights are stored as real tensors
    with a trailing axis (re, im) so that ``.double()``, state_dict and ``torch.load(weights_only=True)``
    see plain floating-point parameters.
    """

    def __init__(self, in_channels: int, out_channels: int, modes: tuple[int, ...]):
        super().__init__()
        _check_width("in_channels", in_channels)
        _check_width("out_channels", out_channels)
        self.modes = _check_modes(modes)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        corners = 2 ** (len(self.modes) - 1)
        # Li et al.'s initialisation: the spectral path starts small, so at first the pointwise
        # skip of the surrounding block carries the signal.
        scale = 1.0 / (self.in_channels * self.out_channels)
        self.weight = nn.Parameter(scale * torch.rand(corners, self.in_channels, self.out_channels, *self.modes, 2))

    def _corners(self, grid: Sequence[int]) -> list[tuple[slice, ...]]:
        """Index of each corner block in the rFFT of a ``grid``, ordered as ``self.weight``."""
        *lead, last = self.modes
        per_axis = [(slice(0, m), slice(n - m, n)) for m, n in zip(lead, grid)]
        return [(*block, slice(0, last)) for block in itertools.product(*per_axis)]

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x, self.in_channels, self.modes, (0,) * len(self.modes), type(self).__name__)
        grid = x.shape[2:]
        axes = tuple(range(2, x.ndim))
        x_hat = torch.fft.rfftn(x, dim=axes)  # [batch, in, *grid[:-1], grid[-1] // 2 + 1]
        weight = torch.view_as_complex(self.weight)
        out = x_hat.new_zeros(x.shape[0], self.out_channels, *x_hat.shape[2:])
        for c, block in enumerate(self._corners(grid)):
            out[(..., *block)] = torch.einsum("bi...,io...->bo...", x_hat[(..., *block)], weight[c])
        return torch.fft.irfftn(out, s=grid, dim=axes)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, modes={self.modes}"


def _pointwise(layer: nn.Module, x: Tensor) -> Tensor:
    """Apply a channels-last ``layer`` to channels-first ``x`` [batch, c, *grid]."""
    return layer(x.movedim(1, -1)).movedim(-1, 1)


class FNOBlock(nn.Module):
    """One Fourier layer, v -> act(K v + W v) on [batch, channels, *grid]; ``activation=None`` drops act."""

    def __init__(self, channels: int, modes: tuple[int, ...], activation: str | None = "gelu"):
        super().__init__()
        _check_activation(activation, allow_none=True)
        self.spectral = SpectralConv(channels, channels, modes)
        self.skip = nn.Linear(channels, channels)
        self.activation = ACTIVATIONS[activation]() if activation is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.activation(self.spectral(x) + _pointwise(self.skip, x))


class FNO(nn.Module):
    """Fourier neural operator: [batch, in_channels, *grid] -> [batch, out_channels, *grid].

    lifting (pointwise, to ``width`` channels) -> ``layers`` Fourier layers (no activation after
    the last, as in Li et al.) -> projection (pointwise MLP width -> ``projection_channels`` -> out).
    The spatial dimension is ``len(modes)``: (8, 8) over (t, x) is the PI-HC diffusion-sorption
    basis network, (8, 8, 8) over (x, y, t) the Navier-Stokes one.

    Args:
        lifting_channels: None lifts with one linear map; an integer with a 2-layer pointwise MLP.
        padding: zero-padding appended after lifting on each axis and cropped before projection,
            for non-periodic axes (the FFT treats every axis as periodic). An int pads every axis;
            a tuple gives one value per axis, 0 for periodic ones, e.g. (0, 0, 8) for (x, y, t).
            Padding is counted in grid points, so a padded FNO is tied to its grid spacing.
        with_grid: append each axis' coordinate linspace(0, 1, n) as input channels
            (``in_channels`` counts only the caller's channels).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        modes: tuple[int, ...],
        width: int = 64,
        layers: int = 4,
        *,
        lifting_channels: int | None = None,
        projection_channels: int = 128,
        activation: str = "gelu",
        padding: int | tuple[int, ...] = 0,
        with_grid: bool = False,
    ):
        super().__init__()
        self.modes = _check_modes(modes)
        d = len(self.modes)
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("width", width),
                            ("layers", layers), ("projection_channels", projection_channels)):
            _check_width(name, value)
        if lifting_channels is not None:
            _check_width("lifting_channels", lifting_channels)
        _check_activation(activation, allow_none=False)
        self.padding = self._check_padding(padding, d)
        self.in_channels, self.with_grid = int(in_channels), bool(with_grid)
        lifted_from = self.in_channels + (d if self.with_grid else 0)
        self.lifting = (
            nn.Linear(lifted_from, width)
            if lifting_channels is None
            else MLP(lifted_from, width, [lifting_channels], activation)
        )
        self.blocks = nn.ModuleList(
            FNOBlock(width, self.modes, activation if i < layers - 1 else None) for i in range(layers)
        )
        self.projection = MLP(width, out_channels, [projection_channels], activation)

    @staticmethod
    def _check_padding(padding: object, d: int) -> tuple[int, ...]:
        values = padding if isinstance(padding, Sequence) and not isinstance(padding, (str, bytes)) else [padding]
        ok = len(values) in (1, d) and all(_is_width(p) or _is_zero(p) for p in values)
        if not ok:
            raise ValueError(
                f"`padding` (={padding!r}) must be a non-negative integer or a tuple of {d} of them, one per axis "
                "(0 on periodic axes)"
            )
        return tuple(int(p) for p in values) * (d if len(values) == 1 else 1)

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x, self.in_channels, self.modes, self.padding, type(self).__name__)
        grid = x.shape[2:]
        if self.with_grid:
            x = append_grid(x)
        x = _pointwise(self.lifting, x)
        if any(self.padding):
            # F.pad lists (before, after) pairs from the last axis backwards.
            x = F.pad(x, [v for p in reversed(self.padding) for v in (0, p)])
        for block in self.blocks:
            x = block(x)
        x = x[(..., *(slice(0, n) for n in grid))]
        return _pointwise(self.projection, x)
