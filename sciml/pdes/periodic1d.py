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
from typing import ClassVar

import numpy as np
from torch import Tensor

from ..errors import ConfigError
from .base import PDE, Domain, check_real

_DOMAIN = Domain(space=((0.0, 2 * math.pi),), time=(0.0, 1.0), periodic=True)


def _spectral():
    from ..data.generators import spectral

    return spectral


def _check_ic(owner: _Periodic1D) -> None:
    names = type(owner).initial_conditions
    if owner.ic not in names:
        raise ConfigError(f"{type(owner).__name__}: `ic` (={owner.ic!r}) is not one of its initial conditions; choose one of {sorted(names)}.")


class _Periodic1D(PDE):
    ic: str
    # Named initial conditions of the spectral module this PDE can start from.
    initial_conditions: ClassVar[tuple[str, ...]] = ("sine", "gaussian")

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
        check_real(self, "beta")
        _check_ic(self)

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
        check_real(self, "beta")
        check_real(self, "nu", nonnegative=True)
        _check_ic(self)

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
        check_real(self, "rho")
        _check_ic(self)

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
        check_real(self, "rho")
        check_real(self, "nu", nonnegative=True)
        _check_ic(self)

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
    initial_conditions = ("sine", "gaussian", "sine_offset")

    def __post_init__(self) -> None:
        check_real(self, "nu", nonnegative=True)
        check_real(self, "offset")
        _check_ic(self)
        if self.offset != 0 and self.ic != "sine_offset":
            raise ConfigError(f"Burgers: `offset` (={self.offset}) only applies to ic='sine_offset', but `ic` is {self.ic!r}; set ic=sine_offset or drop offset.")

    def residual(self, f: Mapping[str, Tensor]) -> Tensor:
        return f["u_t"] + f["u"] * f["u_x"] - self.nu * f["u_xx"]

    def _ic_kwargs(self) -> dict:
        return {"C": self.offset} if self.ic == "sine_offset" else {}

    def reference_solution(self, u0, x, t):
        if self.nu <= 0:
            raise ConfigError("Burgers: the spectral reference solver needs `nu` > 0 (inviscid shocks are not resolved).")
        return _spectral().solve_burgers(u0, t, nu=self.nu)
