"""1D diffusion-sorption (PDEBench; the PI-HC paper's problem A).

    u_t = D / R(u) u_xx,   R(u) = 1 + (1 - phi) / phi * rho_s * k * n_f * (u + 1e-6)^(n_f - 1),

x in (0, 1), t in (0, 500], u(0, t) = 1 and the outflow condition u(1, t) + D u_x(1, t) = 0.
That is the sign PDEBench's simulator uses; its paper writes u(1, t) = D u_x(1, t), which admits
the boundary mode exp((x - 1) / D) exp(t / (D R)) growing ~600-fold per unit time, so no
discretisation of it converges. The 1e-6 guards the Freundlich isotherm's singular derivative
at u = 0 (n_f < 1), as the PI-HC reference does; u is clipped at 0 first.
Written as the residual u_t - D / R(u) u_xx so its scale is that of u_t.
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


@dataclass(frozen=True)
class DiffusionSorption(PDE):
    """Diffusion with nonlinear (Freundlich) sorption; parameters as in PDEBench."""

    D: float = 5e-4
    phi: float = 0.29
    rho_s: float = 2880.0
    k: float = 3.5e-4
    n_f: float = 0.874
    t_end: float = 500.0
    name = "diffusion_sorption"
    fields = ("u", "u_t", "u_xx")

    def __post_init__(self) -> None:
        for name in ("D", "rho_s", "k", "n_f", "t_end"):
            check_real(self, name, nonnegative=True)
        check_real(self, "phi")
        if not 0 < self.phi < 1:
            raise ConfigError(f"DiffusionSorption: `phi` (={self.phi}) is a porosity and must lie in (0, 1).")
        if self.t_end <= 0:
            raise ConfigError(f"DiffusionSorption: `t_end` (={self.t_end}) must be > 0.")

    @property
    def domain(self) -> Domain:
        return Domain(space=((0.0, 1.0),), time=(0.0, self.t_end), periodic=False)

    eps: ClassVar[float] = 1e-6  # guard of the singular power at u = 0

    @property
    def sorption(self) -> float:
        """The constant ((1 - phi) / phi) rho_s k n_f in front of the power in R(u)."""
        return (1 - self.phi) / self.phi * self.rho_s * self.k * self.n_f

    def retardation(self, u):
        """R(u) = 1 + sorption (max(u, 0) + eps)^(n_f - 1), the isotherm being defined for u >= 0;
        works on numpy arrays, torch tensors and JAX arrays alike. max(u, 0) is written
        clip(u, 0) (u > 0), whose derivative is 0 at u = 0 in every version of every library
        (torch's clip alone has had 1 there, then 0); -inf gives 0, as clip alone does."""
        return 1 + self.sorption * (u.clip(min=0) * (u > 0) + self.eps) ** (self.n_f - 1)

    def retardation_derivative(self, u: np.ndarray) -> np.ndarray:
        """dR/du on numpy arrays (zero where u < 0, where R is frozen at its u = 0 value)."""
        slope = self.sorption * (self.n_f - 1) * (np.maximum(u, 0.0) + self.eps) ** (self.n_f - 2)
        return np.where(u > 0, slope, 0.0)

    def residual(self, f: Mapping[str, Tensor]) -> Tensor:
        return f["u_t"] - self.D / self.retardation(f["u"]) * f["u_xx"]

    def residual_slopes(self, f: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Closed form of the slopes (2x faster than autograd's pass, and the layer evaluates them
        once per solver iteration): with k = D / R(u), r = u_t - k u_xx, dr/du_t = 1,
        dr/du_xx = -k and dr/du = k / R R'(u) u_xx, R'(u) = sorption (n_f - 1) v^(n_f - 2) with
        v = max(u, 0) + eps; zero where u <= 0, where the isotherm is frozen (as autograd
        differentiates :meth:`retardation`, and as :meth:`retardation_derivative` has it)."""
        u, u_t, u_xx = f["u"], f["u_t"], f["u_xx"]
        v = u.relu() + self.eps  # relu: derivative 0 at u = 0 (clamp_min's was 1 in torch 2.11)
        power = v ** (self.n_f - 1)
        retardation = 1 + self.sorption * power
        k = self.D / retardation
        d_u = (k / retardation * (self.sorption * (self.n_f - 1))) * u_xx * power / v
        ones = torch.ones((), dtype=u_t.dtype, device=u_t.device).expand_as(u_t)
        return torch.addcmul(u_t, k, u_xx, value=-1), {"u": d_u.masked_fill(u <= 0, 0), "u_t": ones, "u_xx": -k}

    def initial_condition(self, x: np.ndarray) -> np.ndarray:
        """PDEBench starts every sample from a random field; this default is the empty column."""
        return np.zeros_like(np.asarray(x, dtype=float))
