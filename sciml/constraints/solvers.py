"""Gauss-Newton and Levenberg-Marquardt steps for a batch of independent least-squares problems.

Each problem b minimises 0.5 |r_b(y_b)|^2 over y_b in R^n, r_b in R^m. A solver sees the
current point, residual r [batch, m] and Jacobian J [batch, m, n] and proposes a step; it never
touches autodiff (the adjoint does that). Only n x n systems are formed, never m x m.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor


def spd_solve(a: Tensor, b: Tensor) -> Tensor:
    """Solve a x = b for a batch of symmetric positive semi-definite a [batch, n, n], b [batch, n].

    Cholesky where it succeeds; where a is singular or indefinite, a ridge of 1e-10 of its scale
    and, failing that, least squares: the result is finite for any finite input.
    """
    a, b = torch.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0), torch.nan_to_num(b, nan=0.0, posinf=0.0, neginf=0.0)
    n = a.shape[-1]
    eye = torch.eye(n, dtype=a.dtype, device=a.device)
    scale = a.diagonal(dim1=-2, dim2=-1).abs().mean(-1).clamp_min(torch.finfo(a.dtype).tiny)
    chol, info = torch.linalg.cholesky_ex(a)
    x = torch.cholesky_solve(b.unsqueeze(-1), chol).squeeze(-1)
    bad = (info != 0) | ~torch.isfinite(x).all(-1)
    if bool(bad.any()):
        ridged = a[bad] + 1e-10 * scale[bad, None, None] * eye
        chol2, info2 = torch.linalg.cholesky_ex(ridged)
        x2 = torch.cholesky_solve(b[bad].unsqueeze(-1), chol2).squeeze(-1)
        still = (info2 != 0) | ~torch.isfinite(x2).all(-1)
        if bool(still.any()):
            x2[still] = torch.linalg.lstsq(ridged[still], b[bad][still].unsqueeze(-1), driver="gelsd" if a.device.type == "cpu" else None).solution.squeeze(-1)
        x = x.clone()
        x[bad] = x2
    return torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)


@dataclass
class Step:
    """A proposed step: ``delta`` [batch, n] and the decrease of the cost it predicts [batch]."""

    delta: Tensor
    predicted: Tensor


class AbstractSolver(ABC):
    """A least-squares solver: tolerances, a step rule, and what it does with a trial point.

    Convergence of problem b after an accepted step: the step is small, max|delta| <= atol +
    rtol max|y|; or the cost stopped moving, 0 < decrease <= rtol^2 cost (y is then known to
    about rtol); or the residual vanishes, max|r| <= atol.
    """

    rtol: float
    atol: float

    def init(self, y: Tensor) -> dict[str, Tensor]:
        """The solver's per-problem state."""
        return {}

    @abstractmethod
    def step(self, r: Tensor, jac: Tensor, state: dict[str, Tensor]) -> Step:
        """The step from the current point (residual ``r``, Jacobian ``jac``)."""

    def accept(self, cost: Tensor, new_cost: Tensor, step: Step, state: dict[str, Tensor]) -> Tensor:
        """Which trial points to keep [batch] bool; may update ``state``."""
        return torch.isfinite(new_cost)

    def converged(self, y: Tensor, delta: Tensor, r: Tensor, state: dict[str, Tensor], decrease: Tensor, cost: Tensor) -> Tensor:
        small_step = delta.abs().amax(-1) <= self.atol + self.rtol * y.abs().amax(-1)
        flat = (decrease > 0) & (decrease <= self.rtol**2 * cost)
        return small_step | flat | (r.abs().amax(-1) <= self.atol)


def _normal_equations(r: Tensor, jac: Tensor) -> tuple[Tensor, Tensor]:
    """J^T J [batch, n, n] and J^T r [batch, n]."""
    return jac.transpose(-1, -2) @ jac, (jac.transpose(-1, -2) @ r.unsqueeze(-1)).squeeze(-1)


def _predicted_decrease(jtj: Tensor, jtr: Tensor, delta: Tensor) -> Tensor:
    """cost(y) - model cost(y + delta) for the Gauss-Newton model 0.5 |r + J delta|^2."""
    return -(jtr * delta).sum(-1) - 0.5 * (delta.unsqueeze(-2) @ jtj @ delta.unsqueeze(-1)).squeeze(-1).squeeze(-1)


@dataclass
class GaussNewton(AbstractSolver):
    """Full Gauss-Newton steps: exact in one step for a linear residual; fast near a zero residual."""

    rtol: float = 1e-8
    atol: float = 1e-10

    def step(self, r: Tensor, jac: Tensor, state: dict[str, Tensor]) -> Step:
        jtj, jtr = _normal_equations(r, jac)
        delta = spd_solve(jtj, -jtr)
        return Step(delta, _predicted_decrease(jtj, jtr, delta))


@dataclass
class LevenbergMarquardt(AbstractSolver):
    """Gauss-Newton with adaptive damping (J^T J + lambda diag(J^T J)) delta = -J^T r.

    lambda shrinks by 3 after a step that does what the model predicted (ratio > 0.75), grows by
    2 after a poor one (ratio < 0.25); a step that does not decrease the cost is rejected.
    """

    rtol: float = 1e-8
    atol: float = 1e-10
    damping: float = 1e-6
    min_damping: float = 1e-12
    max_damping: float = 1e12

    def init(self, y: Tensor) -> dict[str, Tensor]:
        return {"lambda": torch.full(y.shape[:1], self.damping, dtype=y.dtype, device=y.device)}

    def step(self, r: Tensor, jac: Tensor, state: dict[str, Tensor]) -> Step:
        jtj, jtr = _normal_equations(r, jac)
        diag = jtj.diagonal(dim1=-2, dim2=-1)
        floor = 1e-12 * diag.mean(-1, keepdim=True).clamp_min(torch.finfo(r.dtype).tiny)
        damped = jtj + torch.diag_embed(state["lambda"][:, None] * diag.clamp_min(floor))
        delta = spd_solve(damped, -jtr)
        return Step(delta, _predicted_decrease(jtj, jtr, delta))

    def accept(self, cost: Tensor, new_cost: Tensor, step: Step, state: dict[str, Tensor]) -> Tensor:
        actual = cost - new_cost
        ratio = torch.where(step.predicted > 0, actual / step.predicted.clamp_min(torch.finfo(cost.dtype).tiny), torch.zeros_like(cost))
        # Near a nonzero minimum the cost stops resolving the last digits of y (a change of
        # |J| dy^2 drowns in its rounding): there, take the step if it does not increase the
        # cost beyond rounding, so y still converges to full precision.
        roundoff = 64 * torch.finfo(cost.dtype).eps * cost.abs()
        in_noise = (step.predicted.abs() <= roundoff) & (actual >= -roundoff)
        good = torch.isfinite(new_cost) & (((actual >= 0) & ((ratio > 1e-4) | (actual == 0))) | in_noise)
        lam = state["lambda"]
        lam = torch.where(ratio > 0.75, lam / 3, lam)
        lam = torch.where((ratio < 0.25) | ~good, lam * 2, lam)
        state["lambda"] = lam.clamp(self.min_damping, self.max_damping)
        return good

    def converged(self, y: Tensor, delta: Tensor, r: Tensor, state: dict[str, Tensor], decrease: Tensor, cost: Tensor) -> Tensor:
        # A heavily damped step is small because of the damping, not because y has converged.
        return super().converged(y, delta, r, state, decrease, cost) & (state["lambda"] <= 1) | (r.abs().amax(-1) <= self.atol)
