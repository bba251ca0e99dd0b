"""The Navier-Stokes basis fields: one shared real transform against one complex FFT per field
(``sciml bench fields``).

PI-HC on 2D Navier-Stokes needs, for every basis function on the (t, x, y) grid, the spectral
fields u_x, u_y, u_xx, u_yy (the vorticity's derivatives) and psi_x, psi_y (the velocity, from
the stream function -lap psi = u), forward and backward every training step:

- ``ours``: :func:`sciml.constraints.grid_fields`: one real forward transform of the basis over
  (x, y) shared by the six fields, one inverse real transform per field;
- ``per_field``, the peer: the formula as usually written, each field its own complex transform
  pair, ``ifft(fft(b) * (i k)^p).real`` along one axis for a derivative (``ifft2(fft2(b) * ...)``
  for psi), as in the reference implementations.

Bases [batch, t, x, y, N] as PhysicsFNO3d makes them (channel last), float32, forward + backward
(the gradient of a fixed random functional of the six fields); best of a few repeats. The largest
difference between the two sets of fields is reported too.
"""

from __future__ import annotations

import math
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..constraints.fields import grid_fields
from . import publish
from .solver import _sync, best_of

NAMES = ("u_x", "u_y", "u_xx", "u_yy", "psi_x", "psi_y")
AXES = {"t": 1, "x": 2, "y": 3}


def per_field(b: torch.Tensor, spacing: float) -> dict[str, torch.Tensor]:
    """The peer: each field from its own complex FFT pair (x, y periodic, equal spacing)."""
    n_x, n_y = b.shape[2], b.shape[3]
    cdtype = torch.complex64 if b.dtype == torch.float32 else torch.complex128
    kx = (2 * math.pi * torch.fft.fftfreq(n_x, d=spacing, dtype=b.dtype, device=b.device)).reshape(1, 1, n_x, 1, 1)
    ky = (2 * math.pi * torch.fft.fftfreq(n_y, d=spacing, dtype=b.dtype, device=b.device)).reshape(1, 1, 1, n_y, 1)

    def odd(k: torch.Tensor, n: int) -> torch.Tensor:  # a first derivative drops the Nyquist mode
        k = k.clone()
        if n % 2 == 0:
            k.view(-1)[n // 2] = 0
        return k

    def along(dim: int, factor: torch.Tensor) -> torch.Tensor:
        return torch.fft.ifft(torch.fft.fft(b, dim=dim) * factor.to(cdtype), dim=dim).real

    k2 = kx**2 + ky**2
    inverse = torch.where(k2 > 0, 1 / k2.clamp_min(1e-30), torch.zeros_like(k2))

    def psi(factor: torch.Tensor) -> torch.Tensor:
        return torch.fft.ifft2(torch.fft.fft2(b, dim=(2, 3)) * (factor * inverse).to(cdtype), dim=(2, 3)).real

    return {"u_x": along(2, 1j * odd(kx, n_x)), "u_y": along(3, 1j * odd(ky, n_y)), "u_xx": along(2, -kx**2 + 0j),
            "u_yy": along(3, -ky**2 + 0j), "psi_x": psi(1j * odd(kx, n_x)), "psi_y": psi(1j * odd(ky, n_y))}


def ours(b: torch.Tensor, spacing: float) -> dict[str, torch.Tensor]:
    return grid_fields(b, NAMES, {"t": 1.0, "x": spacing, "y": spacing}, {"x": True, "y": True}, AXES)


def measure(quick: bool, device: str = "cpu") -> dict[str, Any]:
    where = torch.device(device)
    cases = [(2, 9, 16, 8)] if quick else [(2, 33, 64, 32), (2, 64, 64, 64)]  # batch, t, x = y, N
    rows = []
    for batch, nt, n, basis in cases:
        g = torch.Generator().manual_seed(0)
        b = torch.randn(batch, nt, n, n, basis, generator=g).to(where).requires_grad_(True)
        weights = {k: torch.randn(b.shape, generator=g).to(where) for k in NAMES}
        spacing = 1.0 / n
        with torch.no_grad():
            a, p = ours(b, spacing), per_field(b, spacing)
            error = max(float(((a[k] - p[k]).abs().max() / p[k].abs().max().clamp_min(1e-30))) for k in NAMES)
        def fwd_bwd(fn):
            def once() -> None:
                fields = fn(b, spacing)
                torch.autograd.grad(sum((fields[k] * weights[k]).sum() for k in NAMES), b)
                _sync(where)
            return best_of(once, 2 if quick else 3)[0]

        t_ours, t_peer = fwd_bwd(ours), fwd_bwd(per_field)
        rows.append({"grid": f"{batch}x{nt}x{n}x{n}", "basis": basis, "ours_s": t_ours, "per_field_s": t_peer,
                     "speedup": t_peer / t_ours, "max_rel_difference": error})
    machine = torch.cuda.get_device_name(where) if where.type == "cuda" else f"{platform.machine()}, torch threads {torch.get_num_threads()}"
    return {"benchmark": "fields", "quick": quick, "device": device, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": machine, "versions": {"sciml": __version__, "torch": torch.__version__}, "rows": rows}


def markdown(r: dict[str, Any]) -> str:
    lines = [f"Navier-Stokes basis fields ({'quick' if r['quick'] else 'full'}), {r['date']}, {r['machine']}, torch {r['versions']['torch']}", "",
             "| bases (batch x t x x x y) | N | ours: shared rfft, fwd+bwd (s) | one complex FFT pair per field (s) | speed-up | max rel. difference |",
             "|---|---|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| {row['grid']} | {row['basis']} | {row['ours_s']:.3g} | {row['per_field_s']:.3g} | {row['speedup']:.2f} | "
                     f"{row['max_rel_difference']:.1e} |")
    return "\n".join(lines) + "\n"


def run(quick: bool, out_dir: Path, device: str = "cpu") -> dict[str, Any]:
    report = measure(quick, device)
    return publish("fields", report, markdown(report), out_dir)
