"""2D incompressible Navier-Stokes in vorticity form on the periodic unit square (PI-HC problem B).

    w_t + u . grad w - nu lap w - f = 0,    u = (psi_y, -psi_x),    -lap psi = w,

(x, y) in [0, 1)^2, t in [0, t_end]. The field "u" of the residual is the vorticity w; the
velocity enters through the stream function's derivatives "psi_x" and "psi_y", linear in w
(an FFT Poisson solve: :func:`sciml.constraints.fields.stream_function`), so the residual

    u_t + psi_y u_x - psi_x u_y - nu (u_xx + u_yy) - f

is quadratic in the coefficients of a basis expansion of w. The optional forcing is the FNO
benchmark's (Li et al., ICLR 2021, there with amplitude 0.1):
f(x, y) = forcing (sin 2 pi (x + y) + cos 2 pi (x + y)); the PI-HC paper has none.
Reference solutions come from the pseudo-spectral solver of
:mod:`sciml.data.generators.navier_stokes`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from ..errors import ConfigError
from .base import PDE, Domain, check_real

_FIELDS = ("u_t", "u_x", "u_y", "u_xx", "u_yy", "psi_x", "psi_y")


@dataclass(frozen=True)
class NavierStokes2D(PDE):
    """Vorticity form with viscosity ``nu``, forcing amplitude ``forcing`` and horizon ``t_end``."""

    nu: float = 1e-4
    forcing: float = 0.0
    t_end: float = 5.0
    name = "navier_stokes_2d"

    def __post_init__(self) -> None:
        check_real(self, "nu", nonnegative=True)
        check_real(self, "forcing")
        check_real(self, "t_end")
        if self.t_end <= 0:
            raise ConfigError(f"NavierStokes2D: `t_end` (={self.t_end}) must be > 0.")

    @property
    def fields(self) -> tuple[str, ...]:  # type: ignore[override]
        """The residual's fields; "f" (the forcing on the points) only when ``forcing`` != 0."""
        return _FIELDS + (("f",) if self.forcing else ())

    @property
    def domain(self) -> Domain:
        return Domain(space=((0.0, 1.0), (0.0, 1.0)), time=(0.0, self.t_end), periodic=True)

    def residual(self, f: Mapping[str, Tensor]) -> Tensor:
        r = f["u_t"] + f["psi_y"] * f["u_x"] - f["psi_x"] * f["u_y"] - self.nu * (f["u_xx"] + f["u_yy"])
        if self.forcing:
            if "f" not in f:
                raise ValueError(f"NavierStokes2D with `forcing` (={self.forcing}) needs the field 'f' (from forcing_field).")
            r = r - f["f"]
        return r

    def forcing_field(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """f [n_x, n_y] on the grid x [n_x] by y [n_y] (zeros without forcing)."""
        s = 2 * math.pi * (np.asarray(x, dtype=float)[:, None] + np.asarray(y, dtype=float)[None, :])
        return self.forcing * (np.sin(s) + np.cos(s))

    def initial_condition(self, x: np.ndarray) -> np.ndarray:
        """The Taylor-Green vortex w0 = 4 pi cos(2 pi x) cos(2 pi y) on the square grid x by x,
        [n_x, n_x]; datasets start from Gaussian random fields instead (the generator)."""
        k = 2 * math.pi
        x = np.asarray(x, dtype=float)
        return 2 * k * np.cos(k * x)[:, None] * np.cos(k * x)[None, :]

    def reference_solution(self, u0: np.ndarray, x: np.ndarray, t: np.ndarray) -> np.ndarray:
        """w [..., n_t, n_x, n_x] from w0 [..., n_x, n_x] on the square grid x (y = x), pseudo-spectral."""
        from ..data.generators.navier_stokes import solve_navier_stokes

        f = self.forcing_field(x, x) if self.forcing else None
        return solve_navier_stokes(u0, t, self.nu, forcing=f).numpy()
