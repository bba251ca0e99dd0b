"""Derivatives of basis functions on a tensor grid: finite differences, or FFT on periodic axes.

A hard-constraint layer needs u, u_t, u_x, ... of u = B w at sampled points. All are linear in
w, so they are computed once per step on the basis B [batch, *grid, n] (the derivative of each
basis function), never inside the solver's iterations. So is the stream function psi of a 2D
vorticity u on a periodic (x, y) square (-lap psi = u, by FFT): the velocity (psi_y, -psi_x) of
Navier-Stokes in vorticity form is linear in u too.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def derivative(b: Tensor, dim: int, spacing: float, order: int = 1, periodic: bool = False) -> Tensor:
    """d^order b / d(axis dim)^order on a uniform grid, same shape as b.

    Periodic axes: spectral (FFT), exact for band-limited functions. Other axes: second-order
    central differences inside and second-order one-sided ones at the two ends.
    """
    if order not in (1, 2):
        raise ValueError(f"`order` (={order}) must be 1 or 2.")
    n = b.shape[dim]
    if periodic:
        k = 2 * math.pi * torch.fft.fftfreq(n, d=spacing, device=b.device, dtype=b.dtype)
        if order == 1 and n % 2 == 0:
            k[n // 2] = 0  # the Nyquist mode has no real first derivative
        shape = [1] * b.ndim
        shape[dim] = n
        factor = (1j * k) ** order  # complex of b's precision
        return torch.fft.ifft(torch.fft.fft(b, dim=dim) * factor.reshape(shape), dim=dim).real
    if n < 3:
        raise ValueError(f"a finite-difference derivative needs >= 3 points along dim {dim}, got {n}.")
    x = b.movedim(dim, 0)
    out = torch.empty_like(x)
    h = spacing
    if order == 1:
        out[1:-1] = (x[2:] - x[:-2]) / (2 * h)
        out[0] = (-3 * x[0] + 4 * x[1] - x[2]) / (2 * h)
        out[-1] = (3 * x[-1] - 4 * x[-2] + x[-3]) / (2 * h)
    else:
        if n < 4:
            raise ValueError(f"a second derivative needs >= 4 points along dim {dim}, got {n}.")
        out[1:-1] = (x[2:] - 2 * x[1:-1] + x[:-2]) / h**2
        out[0] = (2 * x[0] - 5 * x[1] + 4 * x[2] - x[3]) / h**2
        out[-1] = (2 * x[-1] - 5 * x[-2] + 4 * x[-3] - x[-4]) / h**2
    return out.movedim(0, dim)


def stream_function(b: Tensor, dims: tuple[int, int], spacing: tuple[float, float], order: tuple[int, int] = (0, 0)) -> Tensor:
    """d^i/dx^i d^j/dy^j psi with -lap psi = b on a periodic (x, y) grid, (i, j) = ``order``.

    ``dims`` are b's x and y dims, ``spacing`` their grid steps. Spectral: psi^(k) = b^(k) / |k|^2,
    with the mean (k = 0) of psi set to zero, so the mean of b is ignored; the Nyquist modes are
    dropped from odd derivatives, as in :func:`derivative`. Same shape as b.
    """
    if any(o not in (0, 1) for o in order):
        raise ValueError(f"`order` (={order}) must hold 0 or 1 per axis: psi and its first derivatives.")
    factor, k2 = 1, 0
    for dim, h, o in zip(dims, spacing, order):
        n = b.shape[dim]
        shape = [1] * b.ndim
        shape[dim] = n
        k = 2 * math.pi * torch.fft.fftfreq(n, d=h, device=b.device, dtype=b.dtype).reshape(shape)
        k2 = k2 + k**2
        if o:
            ik = 1j * k
            if n % 2 == 0:
                ik.select(dim, n // 2).zero_()  # the Nyquist mode has no real first derivative
            factor = factor * ik
    factor = factor * torch.where(k2 > 0, 1 / k2.clamp_min(1e-30), torch.zeros_like(k2))
    return torch.fft.ifft2(torch.fft.fft2(b, dim=dims) * factor, dim=dims).real


def grid_fields(b: Tensor, names: tuple[str, ...], spacing: dict[str, float], periodic: dict[str, bool], axes: dict[str, int]) -> dict[str, Tensor]:
    """The named fields of basis b: "u", and "u_<a>" / "u_<a><a>" for grid axes a in ``axes``;
    on a periodic (x, y) square also the stream function "psi" and its derivatives "psi_x",
    "psi_y" (:func:`stream_function`).

    ``axes`` maps an axis name ("t", "x", "y") to its dim in b; ``spacing`` and ``periodic`` are
    per axis. E.g. names ("u", "u_t", "u_xx") on b [batch, n_t, n_x, n].
    """
    out: dict[str, Tensor] = {}
    for name in names:
        if name == "u":
            out[name] = b
            continue
        if name in ("psi", "psi_x", "psi_y"):
            if not ({"x", "y"} <= set(axes) and periodic.get("x") and periodic.get("y")):
                raise ValueError(f"field {name!r} needs periodic axes x and y (got axes {sorted(axes)}, periodic {periodic}).")
            order = (int(name == "psi_x"), int(name == "psi_y"))
            out[name] = stream_function(b, (axes["x"], axes["y"]), (spacing["x"], spacing["y"]), order)
            continue
        if not name.startswith("u_") or len(set(name[2:])) != 1 or len(name) - 2 not in (1, 2) or name[2] not in axes:
            raise ValueError(f"unknown field {name!r}: grid_fields computes u, u_<axis> and u_<axis><axis> for axes {sorted(axes)}, and psi, psi_x, psi_y.")
        axis = name[2]
        out[name] = derivative(b, axes[axis], spacing[axis], order=len(name) - 2, periodic=periodic.get(axis, False))
    return out
