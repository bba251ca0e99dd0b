"""The 1D periodic family on x in [0, 2pi), t in [0, 1] (Krishnapriyan et al., 2021).

    convection            u_t + beta u_x = 0
    convection-diffusion  u_t + beta u_x - nu u_xx = 0
    reaction              u_t - rho u (1 - u) = 0
    reaction-diffusion    u_t - nu u_xx - rho u (1 - u) = 0
    viscous Burgers       u_t + u u_x - nu u_xx = 0

Reference solutions come from :mod:`sciml.data.generators.spectral`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from ..errors import ConfigError
from .base import PDE, Domain

_DOMAIN = Domain(space=((0.0, 2 * math.pi),), time=(0.0, 1.0), periodic=True)


def _spectral():
    from ..data.generators import spectral

    return spectral


def _check_nonnegative(owner: object, name: str, value: float) -> None:
    if not value >= 0:
        raise ConfigError(f"{type(owner).__name__}: `{name}` (={value}) must be >= 0.")


def _check_ic(owner: object, ic: str) -> None:
    names = _spectral().INITIAL_CONDITIONS
    if ic not in names:
        raise ConfigError(f"{type(owner).__name__}: unknown initial condition `ic` (={ic!r}); choose one of {sorted(names)}.")


class _Periodic1D(PDE):
    ic: str

    @property
    def domain(self) -> Domain:
        return _DOMAIN

    def initial_condition(self, x: np.ndarray) -> np.ndarray:
        return _spectral().initial_condition(self.ic, x, **self._ic_kwargs())

    def _ic_kwargs(self) -> dict:
        return {}


@dataclass(frozen=True)
class Convection(_Periodic1D):
    """u_t + beta u_x = 0."""

    beta: float = 1.0
    ic: str = "sine"
    name = "convection"
    fields = ("u", "u_t", "u_x")

    def __post_init__(self) -> None:
        _check_ic(self, self.ic)

    def residual(self, f: Mapping[str, Tensor]) -> Tensor:
        return f["u_t"] + self.beta * f["u_x"]

    def reference_solution(self, u0, x, t):
        return _spectral().solve_convection_diffusion(u0, t, beta=self.beta, nu=0.0)


@dataclass(frozen=True)
class ConvectionDiffusion(_Periodic1D):
    """u_t + beta u_x - nu u_xx = 0."""

    beta: float = 1.0
    nu: float = 0.01
    ic: str = "sine"
    name = "convection_diffusion"
    fields = ("u", "u_t", "u_x", "u_xx")

    def __post_init__(self) -> None:
        _check_nonnegative(self, "nu", self.nu)
        _check_ic(self, self.ic)

    def residual(self, f: Mapping[str, Tensor]) -> Tensor:
        return f["u_t"] + self.beta * f["u_x"] - self.nu * f["u_xx"]

    def reference_solution(self, u0, x, t):
        return _spectral().solve_convection_diffusion(u0, t, beta=self.beta, nu=self.nu)


@dataclass(frozen=True)
class Reaction(_Periodic1D):
    """u_t - rho u (1 - u) = 0 (Fisher-KPP reaction term, no diffusion)."""

    rho: float = 1.0
    ic: str = "gaussian"
    name = "reaction"
    fields = ("u", "u_t")

    def __post_init__(self) -> None:
        _check_ic(self, self.ic)

    def residual(self, f: Mapping[str, Tensor]) -> Tensor:
        u = f["u"]
        return f["u_t"] - self.rho * u * (1 - u)

    def reference_solution(self, u0, x, t):
        return _spectral().solve_reaction(u0, t, rho=self.rho)


@dataclass(frozen=True)
class ReactionDiffusion(_Periodic1D):
    """u_t - nu u_xx - rho u (1 - u) = 0."""

    rho: float = 1.0
    nu: float = 0.01
    ic: str = "gaussian"
    name = "reaction_diffusion"
    fields = ("u", "u_t", "u_xx")

    def __post_init__(self) -> None:
        _check_nonnegative(self, "nu", self.nu)
        _check_ic(self, self.ic)

    def residual(self, f: Mapping[str, Tensor]) -> Tensor:
        u = f["u"]
        return f["u_t"] - self.nu * f["u_xx"] - self.rho * u * (1 - u)

    def reference_solution(self, u0, x, t):
        return _spectral().solve_reaction_diffusion(u0, t, rho=self.rho, nu=self.nu)


@dataclass(frozen=True)
class Burgers(_Periodic1D):
    """Viscous Burgers u_t + u u_x - nu u_xx = 0; ``offset`` C gives the moving-shock IC C + sin x."""

    nu: float = 0.01
    ic: str = "sine"
    offset: float = 0.0
    name = "burgers"
    fields = ("u", "u_t", "u_x", "u_xx")

    def __post_init__(self) -> None:
        _check_nonnegative(self, "nu", self.nu)
        _check_ic(self, self.ic)

    def residual(self, f: Mapping[str, Tensor]) -> Tensor:
        return f["u_t"] + f["u"] * f["u_x"] - self.nu * f["u_xx"]

    def _ic_kwargs(self) -> dict:
        return {"C": self.offset} if self.ic == "sine_offset" else {}

    def reference_solution(self, u0, x, t):
        if self.nu <= 0:
            raise ConfigError("Burgers: the spectral reference solver needs `nu` > 0 (inviscid shocks are not resolved).")
        return _spectral().solve_burgers(u0, t, nu=self.nu)
