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
        return _spectral(b, (dim,), (spacing,), [((order,), ())])[0]
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
    return _spectral(b, tuple(dims), tuple(spacing), [(tuple(order), (0, 1))])[0]


def _spectral(b: Tensor, dims: tuple[int, ...], spacing: tuple[float, ...], requests: list[tuple[tuple[int, ...], tuple[int, ...]]]) -> list[Tensor]:
    """Spectral fields of real b on its periodic ``dims``, one per request: (the derivative's
    order along each of ``dims``, the positions in ``dims`` of a stream function's plane: the
    field is then divided by |k|^2 over them, mean zero; () for none), from one shared real
    transform: one forward FFT for every field, one inverse each. Odd derivatives drop the
    Nyquist mode (it has no real first derivative)."""
    sizes = [b.shape[d] for d in dims]
    freq = []
    for j, (d, n, h) in enumerate(zip(dims, sizes, spacing)):
        k = 2 * math.pi * (torch.fft.rfftfreq if j == len(dims) - 1 else torch.fft.fftfreq)(n, d=h, device=b.device, dtype=b.dtype)
        shape = [1] * b.ndim
        shape[d] = len(k)
        freq.append(k.reshape(shape))
    spectrum = torch.fft.rfftn(b, dim=dims)
    out = []
    for orders, psi in requests:
        factor = 1
        for j, (k, o, n) in enumerate(zip(freq, orders, sizes)):
            if o == 0:
                continue
            ik = (1j * k) ** o
            if o % 2 and n % 2 == 0:
                nyquist = n // 2 if j < len(dims) - 1 else k.numel() - 1
                ik = ik.clone()
                ik.view(-1)[nyquist] = 0  # k is 1 x ... x n x ... x 1: its flat index is the mode's
            factor = factor * ik
        if psi:
            k2 = sum(freq[j] ** 2 for j in psi)
            factor = factor * torch.where(k2 > 0, 1 / k2.clamp_min(1e-30), torch.zeros_like(k2))
        out.append(torch.fft.irfftn(spectrum * factor, s=sizes, dim=dims))
    return out


def grid_fields(b: Tensor, names: tuple[str, ...], spacing: dict[str, float], periodic: dict[str, bool], axes: dict[str, int]) -> dict[str, Tensor]:
    """The named fields of basis b: "u", and "u_<a>" / "u_<a><a>" for grid axes a in ``axes``;
    on a periodic (x, y) square also the stream function "psi" and its derivatives "psi_x",
    "psi_y" (:func:`stream_function`).

    ``axes`` maps an axis name ("t", "x", "y") to its dim in b; ``spacing`` and ``periodic`` are
    per axis. E.g. names ("u", "u_t", "u_xx") on b [batch, n_t, n_x, n]. The spectral fields
    (derivatives along periodic axes, psi) share one forward transform of b over those axes.
    """
    out: dict[str, Tensor] = {}
    spectral: dict[str, tuple[dict[str, int], bool]] = {}  # name: (orders per axis, whether of psi)
    for name in names:
        _check_field(name, periodic, axes)
        if name == "u":
            out[name] = b
        elif name in ("psi", "psi_x", "psi_y"):
            spectral[name] = ({"x": int(name == "psi_x"), "y": int(name == "psi_y")}, True)
        elif periodic.get(name[2], False):
            spectral[name] = ({name[2]: len(name) - 2}, False)
        else:
            axis = name[2]
            out[name] = derivative(b, axes[axis], spacing[axis], order=len(name) - 2)
    if spectral:
        used = sorted({a for orders, psi in spectral.values() for a in (("x", "y") if psi else orders)}, key=lambda a: axes[a])
        fields = _spectral(b, tuple(axes[a] for a in used), tuple(spacing[a] for a in used),
                           [(tuple(orders.get(a, 0) for a in used), (used.index("x"), used.index("y")) if psi else ())
                            for orders, psi in spectral.values()])
        out.update(zip(spectral, fields))
    return {name: out[name] for name in names}


def _check_field(name: str, periodic: dict[str, bool], axes: dict[str, int]) -> None:
    """Raise unless :func:`grid_fields` knows how to compute field ``name``."""
    if name == "u":
        return
    if name in ("psi", "psi_x", "psi_y"):
        if not ({"x", "y"} <= set(axes) and periodic.get("x") and periodic.get("y")):
            raise ValueError(f"field {name!r} needs periodic axes x and y (got axes {sorted(axes)}, periodic {periodic}).")
        return
    if not name.startswith("u_") or len(set(name[2:])) != 1 or len(name) - 2 not in (1, 2) or name[2] not in axes:
        raise ValueError(f"unknown field {name!r}: grid_fields computes u, u_<axis> and u_<axis><axis> for axes {sorted(axes)}, and psi, psi_x, psi_y.")


def _stencil(position: Tensor, n: int, order: int) -> tuple[Tensor, Tensor]:
    """(offsets [m, S] int64, weights [m, S] float64) of :func:`derivative`'s finite-difference
    stencil at grid indices ``position`` [m] along an axis of n points with unit spacing (zero
    weights pad the shorter stencils)."""
    if order == 1:
        if n < 3:
            raise ValueError(f"a finite-difference derivative needs >= 3 points along an axis, got {n}.")
        rows = {"inside": ([-1, 1, 0], [-0.5, 0.5, 0.0]), "first": ([0, 1, 2], [-1.5, 2.0, -0.5]), "last": ([0, -1, -2], [1.5, -2.0, 0.5])}
    else:
        if n < 4:
            raise ValueError(f"a second derivative needs >= 4 points along an axis, got {n}.")
        rows = {"inside": ([-1, 0, 1, 0], [1.0, -2.0, 1.0, 0.0]), "first": ([0, 1, 2, 3], [2.0, -5.0, 4.0, -1.0]),
                "last": ([0, -1, -2, -3], [2.0, -5.0, 4.0, -1.0])}
    which = torch.where(position == 0, 1, torch.where(position == n - 1, 2, 0))
    key = (order, str(position.device))
    tables = _STENCILS.get(key)
    if tables is None:  # copied to a GPU once, not every call (each copy a wait for the device)
        tables = (torch.tensor([rows[k][0] for k in ("inside", "first", "last")], device=position.device),
                  torch.tensor([rows[k][1] for k in ("inside", "first", "last")], dtype=torch.float64, device=position.device))
        if type(tables[0]) is Tensor:  # not a fake or traced tensor (torch.compile, FakeTensorMode): those are not kept
            _STENCILS[key] = tables
    offsets, weights = tables
    return offsets[which], weights[which]


_STENCILS: dict[tuple[int, str], tuple[Tensor, Tensor]] = {}


class GridFields:
    """The named fields of a basis b [batch, *grid, n] (as :func:`grid_fields`), computed where
    they are needed.

    :meth:`at` gives the fields at a set of grid points only: finite-difference derivatives by
    the same stencils as :func:`derivative` (neighbours across any block edge included, so an
    expert's derivatives are those of the whole grid), from one gather of b; spectral ones (on
    periodic axes, psi) from the whole-grid fields. A hard-constraint layer samples a few
    thousand of a grid's 1e5-1e6 points: this skips the whole-grid derivatives and their
    backward (~90% of a layer call with 1000 points on the paper's 101 x 1024 grid, on a CPU).
    Where the points are dense it computes the whole-grid fields itself, which then cost less.
    :meth:`full` gives the whole-grid fields (cached).
    """

    def __init__(self, b: Tensor, names: tuple[str, ...], spacing: dict[str, float], periodic: dict[str, bool], axes: dict[str, int]):
        self.b, self.names, self.spacing, self.periodic, self.axes = b, tuple(names), dict(spacing), dict(periodic), dict(axes)
        if any(not 1 <= d <= b.ndim - 2 for d in self.axes.values()):
            raise ValueError(f"`axes` (={self.axes}) must name grid dims of b (1 .. {b.ndim - 2}) for a basis of shape {tuple(b.shape)}.")
        self._full: dict[str, Tensor] | None = None
        for name in self.names:
            _check_field(name, self.periodic, self.axes)

    @property
    def grid(self) -> tuple[int, ...]:
        return tuple(self.b.shape[1:-1])

    def _local(self, name: str) -> tuple[str, int] | None:
        """(axis, order) for a finite-difference field u_<a> / u_<a><a>; None for u and spectral ones."""
        if name.startswith("u_") and len(name) in (3, 4) and len(set(name[2:])) == 1 and name[2] in self.axes and not self.periodic.get(name[2], False):
            return name[2], len(name) - 2
        return None

    def full(self) -> dict[str, Tensor]:
        """{name: [batch, *grid, n]} on the whole grid."""
        if self._full is None:
            self._full = grid_fields(self.b, self.names, self.spacing, self.periodic, self.axes)
        return self._full

    def at(self, index: Tensor, names: tuple[str, ...] | None = None) -> dict[str, Tensor]:
        """{name: [batch, *index.shape, n]} at flat grid indices ``index`` (any shape), for
        ``names`` (default: all)."""
        names = self.names if names is None else tuple(names)
        if unknown := [k for k in names if k not in self.names]:
            raise ValueError(f"fields {unknown} were not declared; GridFields has {list(self.names)}.")
        batch, n = self.b.shape[0], self.b.shape[-1]
        flat_b = self.b.reshape(batch, -1, n)
        index = index.to(self.b.device)
        flat = index.reshape(-1)
        coords = torch.unravel_index(flat, self.grid)
        strides = [math.prod(self.grid[d + 1:]) for d in range(len(self.grid))]
        plan: list[tuple[str, Tensor, Tensor | None]] = []  # (name, neighbour indices [m, S], weights [m, S])
        out: dict[str, Tensor] = {}
        for name in names:
            if name == "u":
                plan.append((name, flat[:, None], None))
            elif (local := self._local(name)) is not None:
                axis, order = local
                d = self.axes[axis] - 1
                offsets, weights = _stencil(coords[d], self.grid[d], order)
                plan.append((name, flat[:, None] + offsets * strides[d], weights / self.spacing[axis] ** order))
            else:
                out[name] = self.full()[name].reshape(batch, -1, n)[:, flat]
        # Stencils gather S rows of b per point and field; past about 1.5 rows per grid point and
        # field, whole-grid differences cost less (measured at the paper's grid: the two break
        # even near 15k of 25k points per expert).
        if plan and sum(nb.numel() for _, nb, _ in plan) > 1.5 * math.prod(self.grid) * len(plan):
            for name, _, _ in plan:
                out[name] = self.full()[name].reshape(batch, -1, n)[:, flat]
            plan = []
        if plan:  # one gather for every local field: its backward writes one whole-grid gradient
            gathered = flat_b.index_select(1, torch.cat([nb.reshape(-1) for _, nb, _ in plan]))
            start = 0
            for name, nb, weights in plan:
                part = gathered[:, start:start + nb.numel()].reshape(batch, *nb.shape, n)
                start += nb.numel()
                out[name] = part[:, :, 0] if weights is None else (part * weights.to(part.dtype)[None, :, :, None]).sum(-2)
        return {k: out[k].reshape(batch, *index.shape, n) for k in names}
