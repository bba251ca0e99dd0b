"""ProbConserv's 1D conservation laws u_t + F(u)_x = 0, one family per case, one parameter each.

The parameter (k, m, u*, a) differs between the functions of a dataset, so a residual reads it
from the fields as ``f["param"]`` (broadcast against ``f["u"]``); ``value`` fixes it for a PDE
that describes one function (an initial condition, a reference solution).

    diffusion     u_t - k u_xx                                   (k const; F = -k u_x)
    pme           u_t - (u^m u_x)_x = u_t - m u^{m-1} u_x^2 - u^m u_xx
    stefan        u_t - (1[u >= u*] u_x)_x, away from the front: u_t - 1[u >= u*] u_xx
    advection     u_t + a u_x
    burgers_ramp  u_t + u u_x                                    (a: the inflow value)

Domains, exact solutions and masses are those of :mod:`sciml.data.generators.analytic`. The
Stefan residual drops the delta function of the step's derivative: it is the residual of each
phase, which is what a smooth network can be asked to satisfy (as in SoftC-ANP).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError
from .base import PDE, Domain, check_real


def _cases():
    from ..data.generators.analytic import CASES

    return CASES


@dataclass(frozen=True)
class ConservationLaw1D(PDE):
    """One of ProbConserv's 1D cases (``case``); ``value`` optionally fixes its parameter."""

    case: str = "diffusion"
    value: float | None = None

    name: ClassVar[str] = "conservation_law_1d"
    fields: ClassVar[tuple[str, ...]] = ("u", "u_t", "u_x", "u_xx", "param")

    def __post_init__(self) -> None:
        cases = _cases()
        if self.case not in cases:
            raise ConfigError(f"ConservationLaw1D: `case` (={self.case!r}) must be one of {sorted(cases)}.")
        if self.value is not None:
            from ..data.generators.analytic import _check_param

            object.__setattr__(self, "value", _check_param(cases[self.case], self.value, owner="ConservationLaw1D"))

    @property
    def spec(self):
        return _cases()[self.case]

    @property
    def param_name(self) -> str:
        return self.spec.param

    @property
    def domain(self) -> Domain:
        s = self.spec
        return Domain(space=(s.x_range,), time=s.t_range, periodic=self.case == "diffusion")

    def residual(self, f: Mapping[str, Tensor]) -> Tensor:
        u, u_t, u_x = f["u"], f["u_t"], f["u_x"]
        p = f["param"] if "param" in f else self._fixed(u)
        if self.case == "diffusion":
            return u_t - p * f["u_xx"]
        if self.case == "pme":
            # u >= 0 (the density); a floor keeps the gradient of u^{m-1} finite at the front.
            up = u.clamp_min(1e-8)
            grad_k = p * up.pow(p - 1) * u_x.pow(2)
            return u_t - grad_k - up.pow(p) * f["u_xx"]
        if self.case == "stefan":
            return u_t - (u >= p).to(u.dtype) * f["u_xx"]
        if self.case == "advection":
            return u_t + p * u_x
        return u_t + u * u_x  # burgers_ramp

    def _fixed(self, like: Tensor) -> Tensor:
        if self.value is None:
            raise ConfigError(f"ConservationLaw1D({self.case!r}) has no fixed `value`; pass the parameter as field 'param'.")
        return torch.as_tensor(self.value, dtype=like.dtype, device=like.device)

    def initial_condition(self, x: np.ndarray) -> np.ndarray:
        from ..data.generators.analytic import exact_solution

        if self.value is None:
            raise ConfigError(f"ConservationLaw1D({self.case!r}): set `value` (the {self.param_name}) to get an initial condition.")
        return exact_solution(self.case, self.value, x, [self.spec.t_range[0]])[0]

    def reference_solution(self, u0: np.ndarray, x: np.ndarray, t: np.ndarray) -> np.ndarray:
        from ..data.generators.analytic import exact_solution

        if self.value is None:
            raise ConfigError(f"ConservationLaw1D({self.case!r}): set `value` (the {self.param_name}) to get a reference solution.")
        return exact_solution(self.case, self.value, x, t)


@dataclass(frozen=True)
class MeshConservationLaw(PDE):
    """A conservation law on an unstructured mesh (the FEM datasets' heat, PME or Stefan with
    no-flux walls): the models use its domain and the mass weights of the dataset; it has no
    pointwise residual here (SoftC needs a grid: use the 1D cases)."""

    law: str = "heat"
    t_end: float = 0.1

    name: ClassVar[str] = "mesh_conservation_law"
    fields: ClassVar[tuple[str, ...]] = ("u",)

    def __post_init__(self) -> None:
        if self.law not in ("heat", "pme", "stefan"):
            raise ConfigError(f"MeshConservationLaw: `law` (={self.law!r}) must be 'heat', 'pme' or 'stefan'.")
        check_real(self, "t_end")
        if self.t_end <= 0:
            raise ConfigError(f"MeshConservationLaw: `t_end` (={self.t_end}) must be > 0 (the dataset's final time).")

    @property
    def domain(self) -> Domain:
        return Domain(space=((0.0, 1.0), (0.0, 1.0)), time=(0.0, self.t_end), periodic=False)

    def residual(self, f: Mapping[str, Tensor]) -> Tensor:
        raise ConfigError("MeshConservationLaw has no pointwise residual; SoftC (model.softc_weight > 0) needs a 1D case.")

    def initial_condition(self, x: np.ndarray) -> np.ndarray:
        raise ConfigError("MeshConservationLaw: the initial data are the dataset's (random Gaussian bumps).")


__all__ = ["ConservationLaw1D", "MeshConservationLaw"]
