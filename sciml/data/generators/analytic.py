"""ProbConserv's 1D datasets with exact solutions: GPME (diffusion, PME, Stefan) and hyperbolic cases.

Each case is a conservation law u_t + F(u)_x = 0 on x in [x0, x1] with one parameter, an exact
solution u(t, x) and its exact mass b(t) = int u dx (the right-hand side of ProbConserv's
constraint G u = b). Solutions are float64 arrays [nt, nx] on the grid of ``x`` [nx] and ``t`` [nt].

- diffusion (k): u_t = k u_xx, x in [0, 2 pi] periodic, t in [0, 1]; u = e^{-k t} sin x; b = 0.
- pme (m): u_t = (u^m u_x)_x, x, t in [0, 1]; u = (m (t - x)_+)^{1/m} (u(t, 0) = (m t)^{1/m},
  u(0, x) = 0); b = m^{1/m} m / (m + 1) [t^{1+1/m} - (t - 1)_+^{1+1/m}].
- stefan (u*): u_t = (k(u) u_x)_x with k = 1 for u >= u*, else 0; x in [0, 1], t in [0, 0.1],
  u(t, 0) = 1, u(0, x) = 0. u = 1 - c1 erf(x / (2 sqrt t)) for x <= alpha sqrt t, else 0, where
  z1 solves u* erf(z1) z1 e^{z1^2} = (1 - u*) / sqrt(pi) (the front condition: the flux u_x
  arriving at the front carries the jump u* at the front speed z1 / sqrt t), alpha = 2 z1,
  c1 = (1 - u*) / erf(z1). b = 2 sqrt t [eta - c1 (eta erf eta + (e^{-eta^2} - 1) / sqrt pi)]
  with eta = min(z1, 1 / (2 sqrt t)), which is 2 c1 sqrt(t / pi) while the front is inside.
- advection (a): u_t + a u_x = 0, x in [0, 1], t in [0, 0.1], inflow u(t, 0) = 1 and the step
  u(0, x) = 1 for x < 1/4, else 0 (our choice). Characteristics carry the step:
  u = 1 for x < 1/4 + a t, else 0; b = min(1/4 + a t, 1).
- burgers_ramp (a): u_t + (u^2 / 2)_x = 0, x in [0, 1], t in [0, 0.1], inflow u(t, 0) = a and
  the falling ramp (our choice) u(0, x) = a for x <= xl = 0.2, a (xr - x) / (xr - xl) up to
  xr = 0.3, 0 beyond. The ramp steepens along characteristics x = xi + u0(xi) t:
  u = a (xr - x) / (xr - xl - a t) for xl + a t < x < xr, until it breaks at t_b = (xr - xl) / a;
  then a shock from xr with the Rankine-Hugoniot speed a / 2: u = a for x < s(t) = xr +
  a (t - t_b) / 2, else 0. b = a (xl + xr) / 2 + a^2 t / 2 (the inflow flux a^2 / 2), clipped at
  a once the shock leaves the domain. For a in [1, 4] the shock forms at t_b in [0.025, 0.1].

Training parameters are drawn uniformly from ProbConserv's ranges (``Case.train_range``); a fixed
value (e.g. k = 1 for a test set) is passed to the generator instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np
from scipy.optimize import brentq
from scipy.special import erf

from ... import __version__
from ...errors import ConfigError
from ..schema import PDEDataset, shape_only
from .base import Generator, Sample, check_int, check_real, rng_for

_ADVECTION_STEP = 0.25
_RAMP = (0.2, 0.3)


@dataclass(frozen=True)
class Case:
    name: str
    param: str
    train_range: tuple[float, float]
    valid: tuple[float, float]  # open interval of admissible parameter values
    x_range: tuple[float, float]
    t_range: tuple[float, float]
    t_star: float  # ProbConserv's evaluation time
    solution: Callable[[float, np.ndarray, np.ndarray], np.ndarray]  # (param, x [1, nx], t [nt, 1])
    mass: Callable[[float, np.ndarray], np.ndarray]  # (param, t [nt])


def _diffusion(k, x, t):
    return np.exp(-k * t) * np.sin(x)


def _pme(m, x, t):
    return (m * np.maximum(t - x, 0.0)) ** (1.0 / m)


def _pme_mass(m, t):
    p = 1.0 + 1.0 / m
    return m ** (1.0 / m) * m / (m + 1.0) * (t**p - np.maximum(t - 1.0, 0.0) ** p)


def stefan_constants(u_star: float) -> tuple[float, float, float]:
    """(z1, alpha, c1) of the Stefan solution for the threshold u* in (0, 1); z1 by Brent's method."""
    u_star = _check_param(CASES["stefan"], u_star)

    def front(z):
        return u_star * erf(z) * z * math.exp(z * z) - (1.0 - u_star) / math.sqrt(math.pi)

    upper = 1.0
    while front(upper) < 0:  # front(0) < 0 and front increases
        upper *= 2.0
    z1 = brentq(front, 0.0, upper, xtol=1e-15, rtol=4 * np.finfo(float).eps)
    return z1, 2.0 * z1, (1.0 - u_star) / erf(z1)


def _stefan(u_star, x, t):
    _, alpha, c1 = stefan_constants(u_star)
    root_t = np.sqrt(t)
    with np.errstate(divide="ignore", invalid="ignore"):
        inside = 1.0 - c1 * erf(x / (2.0 * root_t))
    # t = 0: the front sits at x = 0, where the boundary value 1 holds
    return np.where(t > 0, np.where(x <= alpha * root_t, inside, 0.0), np.where(x <= 0, 1.0, 0.0))


def _stefan_mass(u_star, t):
    z1, _, c1 = stefan_constants(u_star)
    root_t = np.sqrt(t)
    with np.errstate(divide="ignore"):
        eta = np.minimum(z1, 1.0 / (2.0 * root_t))
    inner = eta * erf(eta) + (np.exp(-(eta**2)) - 1.0) / math.sqrt(math.pi)
    return 2.0 * root_t * (eta - c1 * inner)


def _advection(a, x, t):
    return np.where(x < _ADVECTION_STEP + a * t, 1.0, 0.0)


def _advection_mass(a, t):
    return np.clip(_ADVECTION_STEP + a * t, 0.0, 1.0)


def _burgers_ramp(a, x, t):
    xl, xr = _RAMP
    t_break = (xr - xl) / a
    with np.errstate(divide="ignore", invalid="ignore"):
        ramp = np.clip(a * (xr - x) / (xr - xl - a * t), 0.0, a)
    shock = xr + 0.5 * a * (t - t_break)
    return np.where(t < t_break, ramp, np.where(x < shock, a, 0.0))


def _burgers_ramp_mass(a, t):
    xl, xr = _RAMP
    return np.minimum(a * (xl + xr) / 2 + a * a * t / 2, a)


CASES: dict[str, Case] = {
    case.name: case
    for case in (
        Case("diffusion", "k", (1.0, 5.0), (0.0, math.inf), (0.0, 2 * math.pi), (0.0, 1.0), 0.5,
             _diffusion, lambda k, t: np.zeros_like(t)),
        Case("pme", "m", (1.0, 6.0), (0.0, math.inf), (0.0, 1.0), (0.0, 1.0), 0.5, _pme, _pme_mass),
        Case("stefan", "u_star", (0.55, 0.7), (0.0, 1.0), (0.0, 1.0), (0.0, 0.1), 0.05, _stefan, _stefan_mass),
        Case("advection", "a", (1.0, 5.0), (0.0, math.inf), (0.0, 1.0), (0.0, 0.1), 0.05, _advection, _advection_mass),
        Case("burgers_ramp", "a", (1.0, 4.0), (0.0, math.inf), (0.0, 1.0), (0.0, 0.1), 0.05, _burgers_ramp, _burgers_ramp_mass),
    )
}


def exact_solution(case: str, param: float, x, t) -> np.ndarray:
    """u(t, x) of ``case`` for parameter ``param`` on the grid x [nx] x t [nt]. Shape [nt, nx]."""
    spec = _case(case)
    param = _check_param(spec, param)
    x, t = _axis("x", x), _axis("t", t, nonnegative=True)
    return spec.solution(param, x[None, :], t[:, None]) + np.zeros((t.size, x.size))


def exact_mass(case: str, param: float, t) -> np.ndarray:
    """b(t) = int u(t, x) dx over the case's domain, exactly. Shape [nt]."""
    spec = _case(case)
    return spec.mass(_check_param(spec, param), _axis("t", t, nonnegative=True))


def trapezoid_weights(x) -> np.ndarray:
    """Trapezoid-rule weights [nx] on the (possibly non-uniform) grid x: int u dx ~ weights . u."""
    x = _axis("x", x)
    gaps = np.diff(x)
    return np.concatenate([gaps, [0.0]]) / 2 + np.concatenate([[0.0], gaps]) / 2


class Points(NamedTuple):
    """Scattered samples of one function: x, t, u, each [n_points]."""

    x: np.ndarray
    t: np.ndarray
    u: np.ndarray


def sample_context_target(u, x, t, rng: np.random.Generator, n_context: int = 100,
                          n_target: int = 100) -> tuple[Points, Points]:
    """ProbConserv's context and target points of one function ``u`` [nt, nx] on x [nx], t [nt].

    Context: the tensor grid of sqrt(n_context) distinct times and sqrt(n_context) distinct
    positions drawn from the grid (10 t x 10 x for 100), ordered by t then x. Target: n_target
    distinct grid points drawn uniformly from the whole (t, x) grid (they may overlap the context).
    """
    x, t = _axis("x", x), _axis("t", t)
    u = np.asarray(u, dtype=np.float64)
    if u.shape != (t.size, x.size):
        raise ValueError(f"`u` has shape {list(u.shape)}, expected [nt={t.size}, nx={x.size}]: one function on the t x x grid.")
    side = math.isqrt(n_context) if isinstance(n_context, (int, np.integer)) and n_context > 0 else 0
    if side * side != n_context or side > min(t.size, x.size):
        raise ValueError(f"`n_context` (={n_context!r}) must be a square number side^2 with side <= min(nt, nx) "
                         f"= {min(t.size, x.size)}, e.g. 100 for 10 t x 10 x.")
    if isinstance(n_target, bool) or not isinstance(n_target, (int, np.integer)) or not 0 < n_target <= u.size:
        raise ValueError(f"`n_target` (={n_target!r}) must be an integer in [1, nt * nx = {u.size}].")
    it = np.sort(rng.choice(t.size, side, replace=False))
    ix = np.sort(rng.choice(x.size, side, replace=False))
    ct, cx = (a.ravel() for a in np.meshgrid(it, ix, indexing="ij"))
    tt, tx = np.divmod(rng.choice(u.size, int(n_target), replace=False), x.size)
    return Points(x[cx], t[ct], u[ct, cx]), Points(x[tx], t[tt], u[tt, tx])


class _AnalyticGenerator(Generator):
    """One case of :data:`CASES` on an nx x nt grid; sample i has the case parameter drawn
    uniformly from the training range with ``rng_for(seed, i)``, or the fixed value given."""

    case: str

    def _setup(self, nx: int, nt: int, value: float | None) -> None:
        spec = CASES[self.case]
        self.nx = check_int(self.name, "nx", nx, 2)
        self.nt = check_int(self.name, "nt", nt, 2)
        if value is not None:
            value = check_real(self.name, spec.param, value)
            _check_param(spec, value, owner=self.name)
        setattr(self, spec.param, value)

    @property
    def x(self) -> np.ndarray:
        return np.linspace(*CASES[self.case].x_range, self.nx)

    @property
    def t(self) -> np.ndarray:
        return np.linspace(*CASES[self.case].t_range, self.nt)

    def layout(self, n: int) -> PDEDataset:
        n = check_int(self.name, "n_samples", n, 1)
        spec = CASES[self.case]
        common = self.config() | {"case": spec.name, "x_range": list(spec.x_range), "t_range": list(spec.t_range),
                                  "t_star": spec.t_star, "train_range": list(spec.train_range)}
        return PDEDataset(
            pde=self.name, u=shape_only((n, self.nt, self.nx)), grid={"x": self.x, "t": self.t},
            params=shape_only((n, 1)), param_names=[spec.param], common_params=common,
            generator=f"sciml {__version__} {self.name} (exact solution)",
            weights=trapezoid_weights(self.x),
        )

    def sample(self, i: int, seed: int) -> Sample:
        spec = CASES[self.case]
        value = getattr(self, spec.param)
        if value is None:
            value = rng_for(seed, i).uniform(*spec.train_range)
        return Sample(u=exact_solution(spec.name, value, self.x, self.t), params=np.array([value]))


class Diffusion1D(_AnalyticGenerator):
    name = "diffusion_1d"
    description = "u_t = k u_xx on [0, 2 pi] periodic, u = e^{-kt} sin x (ProbConserv); k ~ U[1, 5] unless fixed"
    case = "diffusion"

    def __init__(self, nx: int = 201, nt: int = 201, k: float | None = None):
        self._setup(nx, nt, k)


class PorousMedium1D(_AnalyticGenerator):
    name = "pme_1d"
    description = "u_t = (u^m u_x)_x on [0, 1], u = (m (t - x)_+)^{1/m} (ProbConserv); m ~ U[1, 6] unless fixed"
    case = "pme"

    def __init__(self, nx: int = 201, nt: int = 201, m: float | None = None):
        self._setup(nx, nt, m)


class Stefan1D(_AnalyticGenerator):
    name = "stefan_1d"
    description = "Stefan problem on [0, 1], t <= 0.1, erf similarity solution (ProbConserv); u* ~ U[0.55, 0.7] unless fixed"
    case = "stefan"

    def __init__(self, nx: int = 201, nt: int = 201, u_star: float | None = None):
        self._setup(nx, nt, u_star)


class Advection1D(_AnalyticGenerator):
    name = "advection_1d"
    description = "u_t + a u_x = 0 on [0, 1], t <= 0.1, step at x = 1/4 carried at speed a; a ~ U[1, 5] unless fixed"
    case = "advection"

    def __init__(self, nx: int = 201, nt: int = 201, a: float | None = None):
        self._setup(nx, nt, a)


class BurgersRamp1D(_AnalyticGenerator):
    name = "burgers_ramp_1d"
    description = "inviscid Burgers on [0, 1], t <= 0.1, falling ramp that breaks into a shock; a ~ U[1, 4] unless fixed"
    case = "burgers_ramp"

    def __init__(self, nx: int = 201, nt: int = 201, a: float | None = None):
        self._setup(nx, nt, a)


ANALYTIC_GENERATORS: dict[str, type[Generator]] = {
    cls.name: cls for cls in (Diffusion1D, PorousMedium1D, Stefan1D, Advection1D, BurgersRamp1D)
}


def _case(case: str) -> Case:
    if case not in CASES:
        raise ConfigError(f"`case` (={case!r}) is not an analytic case; use one of {sorted(CASES)}.")
    return CASES[case]


def _check_param(spec: Case, value, owner: str | None = None) -> float:
    lo, hi = spec.valid
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) and lo < value < hi
    if not ok:
        where = f"{owner}: " if owner else f"{spec.name}: "
        bound = f"> {lo:g}" if math.isinf(hi) else f"in ({lo:g}, {hi:g})"
        raise ConfigError(f"{where}`{spec.param}` (={value!r}) must be a number {bound}; "
                          f"the training range is [{spec.train_range[0]:g}, {spec.train_range[1]:g}].")
    return float(value)


def _axis(name: str, values, nonnegative: bool = False) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size == 0 or not np.all(np.isfinite(values)):
        raise ValueError(f"`{name}` must be a non-empty 1D array of finite values, got shape {list(values.shape)}.")
    if nonnegative and values.min() < 0:
        raise ValueError(f"`{name}` (min {values.min():g}) must be >= 0: the solutions start at t = 0.")
    return values


__all__ = [
    "ANALYTIC_GENERATORS", "CASES", "Advection1D", "BurgersRamp1D", "Case", "Diffusion1D", "Points",
    "PorousMedium1D", "Stefan1D", "exact_mass", "exact_solution", "sample_context_target", "stefan_constants",
    "trapezoid_weights",
]
