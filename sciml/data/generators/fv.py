"""1D diffusion-sorption (PDEBench): a finite-volume method-of-lines reference solver (scipy).

    R(u) u_t = D u_xx,  x in (0, 1),  t in (0, t_end]
    R(u) = 1 + ((1 - phi) / phi) rho_s k n_f (u+ + eps)^(n_f - 1)   (Freundlich retardation)
    u(0, t) = 1,   u(1, t) + D u_x(1, t) = 0

The retardation factor is singular at u = 0; ``eps`` = 1e-6 guards it as in PDEBench, and
u+ = max(u, 0) keeps it real should a Newton or BDF iterate dip below zero.

**The sign of the Robin condition.** PDEBench writes u(1, t) = D u_x(1, t), but its generating
solver sets the value beyond x = 1 to -D times the interior slope, i.e. u + D u_x = 0, and only
that sign is well posed: with u = D u_x the pure-boundary mode u = exp((x - 1) / D) exp(t / (D R))
satisfies both the PDE and the condition and grows at the rate 1 / (D R) ~ 600 per unit time,
so no discretisation converges (a cell-centred one blows up once h < 2 D, i.e. at 1024 cells).
With u + D u_x = 0 the outflow flux -D u_x(1) equals u(1) >= 0: mass leaves through x = 1.

This module is the independent cross-check of the DOLFINx solver
(:mod:`sciml.data.generators.fem.diffusion_sorption`) and needs only numpy and scipy. Both solvers
report u on the cell centres x_j = (j + 1/2) / nx of a uniform grid, and both draw their initial
conditions from :func:`random_initial_condition`.

Finite volumes: unknowns u_j at the cell centres, fluxes F = D u_x at the faces by central
differences; at x = 0 the face value is 1 (half-cell gradient, Dirichlet), at x = 1 the face
value u_b solves u_b + D (u_b - u_{n-1}) / (h / 2) = 0 (the Robin condition on the half cell).
Second order in space; the stiff system R(u_j) u_j' = (F_{j+1/2} - F_{j-1/2}) / h is integrated
by scipy's BDF with its exact tridiagonal Jacobian.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import ClassVar

import numpy as np
import scipy.sparse as sp
from scipy.integrate import solve_ivp

from ... import __version__
from ...errors import SciMLError
from ...pdes import DiffusionSorption
from ..schema import PDEDataset, shape_only
from .base import Generator, Sample, check_int, check_real, rng_for

InitialCondition = Callable[[np.ndarray], np.ndarray]  # u0(x), vectorised over an array of x


# The physical parameters and R(u) live in the PDE definition, shared with the PI-HC models.
SorptionParams = DiffusionSorption
PDEBENCH = DiffusionSorption()  # PDEBench's constants


def cell_centres(nx: int) -> np.ndarray:
    """x_j = (j + 1/2) / nx, j = 0..nx-1: the grid of every diffusion-sorption dataset. [nx]"""
    return (np.arange(nx) + 0.5) / nx


@dataclass(frozen=True)
class RandomModes:
    """A smooth positive initial condition u0(x) = level (1 + amplitude sum_m w_m cos(m pi x + theta_m)).

    The weights satisfy sum |w_m| = 1, so u0 lies in [level (1 - amplitude), level (1 + amplitude)]
    for every x, whatever the grid it is sampled on.
    """

    level: float
    amplitude: float
    weights: tuple[float, ...]
    phases: tuple[float, ...]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        m = np.arange(1, len(self.weights) + 1)
        modes = np.cos(np.pi * m * np.asarray(x, dtype=np.float64)[..., None] + np.asarray(self.phases))
        return self.level * (1.0 + self.amplitude * modes @ np.asarray(self.weights))


def random_initial_condition(rng: np.random.Generator, n_modes: int = 4) -> RandomModes:
    """Draw the initial condition of one sample.

    level ~ U(0.02, 0.2) (PDEBench draws a constant u0 ~ U(0, 0.2); the floor keeps u0 > 0, as
    PI-HC's relative initial-condition residual (u - u0) / u0 needs), amplitude ~ U(0, 0.5),
    weights w_m ∝ z_m / m with z_m ~ N(0, 1), phases ~ U(0, 2 pi). Hence 0.01 <= u0 <= 0.3.
    """
    level = rng.uniform(0.02, 0.2)
    amplitude = rng.uniform(0.0, 0.5)
    w = rng.standard_normal(n_modes) / np.arange(1, n_modes + 1)
    phases = rng.uniform(0.0, 2 * np.pi, n_modes)
    return RandomModes(float(level), float(amplitude), tuple((w / np.abs(w).sum()).tolist()), tuple(phases.tolist()))


def initial_values(u0: InitialCondition, x: np.ndarray) -> np.ndarray:
    """u0 evaluated on the points x [n], checked to give one finite value per point."""
    if not callable(u0):
        raise TypeError(f"`u0` must be a function of x (e.g. a RandomModes), got {type(u0).__name__}; "
                        "wrap grid values in an interpolant such as `lambda x: np.interp(x, grid, values)`.")
    values = np.asarray(u0(x), dtype=np.float64)
    if values.shape != x.shape or not np.all(np.isfinite(values)):
        raise ValueError(f"`u0` must give {x.size} finite values for {x.size} points, got shape {values.shape}.")
    return values


def check_times(t: np.ndarray) -> np.ndarray:
    """The output times as a float array: 1D, starting at 0, strictly increasing."""
    t = np.asarray(t, dtype=np.float64)
    if t.ndim != 1 or t.size < 1 or t[0] != 0 or np.any(np.diff(t) <= 0) or not np.all(np.isfinite(t)):
        raise ValueError(f"`t` must be a 1D array of increasing finite times starting at 0, got {t!r}; "
                         "e.g. np.linspace(0, 500, 101).")
    return t


def solve_fv(u0: InitialCondition, t: np.ndarray, nx: int = 1024, params: SorptionParams = PDEBENCH,
             *, rtol: float = 1e-6, atol: float = 1e-9) -> np.ndarray:
    """Solve diffusion-sorption on ``nx`` cells; u [len(t), nx] at the cell centres, u[0] = u0.

    ``u0`` is a function of x, sampled at the :func:`cell_centres`; ``rtol``/``atol`` go to scipy's
    BDF. Raises ``SciMLError`` if the integrator fails.
    """
    t = check_times(t)
    if isinstance(nx, bool) or not isinstance(nx, (int, np.integer)) or nx < 2:
        raise ValueError(f"`nx` (={nx!r}) must be an integer >= 2.")
    x = cell_centres(nx)
    h, D = 1.0 / nx, params.D
    # g(u) = A u + b = (F_{j+1/2} - F_{j-1/2}) / h, with the boundary faces as in the module doc.
    main = np.full(nx, -2.0 * D / h**2)
    main[0] = -3.0 * D / h**2
    main[-1] = -D / h**2 - 2.0 * D / (h * (h + 2.0 * D))
    off = np.full(nx - 1, D / h**2)
    A = sp.diags([off, main, off], [-1, 0, 1], format="csr")
    b = np.zeros(nx)
    b[0] = 2.0 * D / h**2

    def rhs(_, u):
        return (A @ u + b) / params.retardation(u)

    def jac(_, u):
        R = params.retardation(u)
        g = A @ u + b
        return (sp.diags(1.0 / R) @ A - sp.diags(g * params.retardation_derivative(u) / R**2)).tocsc()

    sol = solve_ivp(rhs, (0.0, t[-1]), initial_values(u0, x), method="BDF", t_eval=t, jac=jac,
                    rtol=rtol, atol=atol)
    if sol.status != 0:
        raise SciMLError(f"the finite-volume diffusion-sorption solve failed at nx={nx}: {sol.message}. "
                         "Tighten `rtol` or report the initial condition.")
    return sol.y.T


class DiffusionSorptionGenerator(Generator):
    """Diffusion-sorption samples on the ``nx`` cell centres of (0, 1) at ``nt`` times in [0, t_end].

    Shared by the finite-volume and finite-element generators, which differ only in :meth:`solve`.
    Sample i starts from :func:`random_initial_condition` drawn from ``rng_for(seed, i)``; its
    ``params`` are the physical constants (D, phi, rho_s, k, n_f), the same for every sample.
    The quadrature weights are the midpoint rule, 1 / nx per cell.
    """

    solver: ClassVar[str]
    param_names: ClassVar[tuple[str, ...]] = ("D", "phi", "rho_s", "k", "n_f")

    def __init__(self, nx: int = 1024, nt: int = 101, t_end: float = 500.0):
        self.nx = check_int(self.name, "nx", nx, 4)
        self.nt = check_int(self.name, "nt", nt, 2)
        self.t_end = check_real(self.name, "t_end", t_end, positive=True)

    @property
    def x(self) -> np.ndarray:
        return cell_centres(self.nx)

    @property
    def t(self) -> np.ndarray:
        return np.linspace(0.0, self.t_end, self.nt)

    def _params(self) -> np.ndarray:
        return np.array([getattr(PDEBENCH, name) for name in self.param_names])

    def layout(self, n: int) -> PDEDataset:
        common = asdict(PDEBENCH) | {"t_end": self.t_end,
            "equation": "R(u) u_t = D u_xx, R(u) = 1 + ((1-phi)/phi) rho_s k n_f (max(u,0) + eps)^(n_f-1)",
            "boundary": "u(0,t) = 1, u(1,t) + D u_x(1,t) = 0",
            "initial_condition": "level (1 + amplitude sum_m w_m cos(m pi x + theta_m)), 4 modes",
            "grid": "cell centres", "solver": self.solver,
        }
        return PDEDataset(
            pde="diffusion_sorption", u=shape_only((n, self.nt, self.nx)), grid={"x": self.x, "t": self.t},
            params=np.broadcast_to(self._params(), (n, len(self.param_names))),
            param_names=list(self.param_names), generator=f"sciml {__version__} {self.solver}",
            common_params=common, u0=shape_only((n, self.nx)), weights=np.full(self.nx, 1.0 / self.nx),
        )

    def sample(self, i: int, seed: int) -> Sample:
        u0 = random_initial_condition(rng_for(seed, i))
        u = self.solve(u0)
        return Sample(u=u, params=self._params(), u0=u[0].copy())

    @abstractmethod
    def solve(self, u0: InitialCondition) -> np.ndarray:
        """u [nt, nx] on the generator's grid from the initial condition ``u0``."""


class DiffusionSorptionFV(DiffusionSorptionGenerator):
    """Diffusion-sorption by cell-centred finite volumes and scipy BDF (the cross-check solver)."""

    name = "diffusion_sorption_fv"
    description = "R(u) u_t = D u_xx (PDEBench), cell-centred finite volumes + scipy BDF"
    solver = "finite volumes (scipy BDF, rtol 1e-6)"

    def solve(self, u0: InitialCondition) -> np.ndarray:
        return solve_fv(u0, self.t, self.nx)


FV_GENERATORS: dict[str, type[Generator]] = {DiffusionSorptionFV.name: DiffusionSorptionFV}

__all__ = ["FV_GENERATORS", "PDEBENCH", "DiffusionSorptionFV", "DiffusionSorptionGenerator", "InitialCondition",
           "RandomModes", "SorptionParams", "cell_centres", "check_times", "initial_values",
           "random_initial_condition", "solve_fv"]
