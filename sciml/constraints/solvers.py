"""Gauss-Newton and Levenberg-Marquardt steps for a batch of independent least-squares problems.

Each problem b minimises 0.5 |r_b(y_b)|^2 over y_b in R^n, r_b in R^m. A solver sees the
current point through its normal equations, the gradient g = J^T r [batch, n] and the
Gauss-Newton matrix H = J^T J [batch, n, n], and proposes a step; it never touches autodiff (the
adjoint does that) and never sees anything of size m: only n x n systems are formed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor


def spd_solve(a: Tensor, b: Tensor, ridge: bool = True) -> Tensor:
    """Solve a x = b for a batch of symmetric positive semi-definite a [batch, n, n], b [batch, n].

    Cholesky where it succeeds; where a is singular or indefinite, a ridge of 1e-10 of its scale
    and, failing that, least squares: the result is finite for any finite input. ``ridge=False``
    (an adjoint's solve, whose answer for a singular a should be the minimum-norm one, not one
    of size 1 / ridge) goes straight to least squares.
    """
    a, b = torch.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0), torch.nan_to_num(b, nan=0.0, posinf=0.0, neginf=0.0)
    n = a.shape[-1]
    eye = torch.eye(n, dtype=a.dtype, device=a.device)
    scale = a.diagonal(dim1=-2, dim2=-1).abs().mean(-1).clamp_min(torch.finfo(a.dtype).tiny)
    chol, info = torch.linalg.cholesky_ex(a)
    x = torch.cholesky_solve(b.unsqueeze(-1), chol).squeeze(-1)
    bad = (info != 0) | ~torch.isfinite(x).all(-1)
    if a.device.type != "cpu":
        return _spd_solve_fallbacks(a, b, x, bad, scale * (1e-10 if ridge else 0.0), eye)
    if not ridge:
        if bool(bad.any()):
            x = x.clone()
            x[bad] = min_norm_solve(a[bad], b[bad])
        return torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    if bool(bad.any()):
        ridged = a[bad] + 1e-10 * scale[bad, None, None] * eye
        chol2, info2 = torch.linalg.cholesky_ex(ridged)
        x2 = torch.cholesky_solve(b[bad].unsqueeze(-1), chol2).squeeze(-1)
        still = (info2 != 0) | ~torch.isfinite(x2).all(-1)
        if bool(still.any()):
            x2 = x2.clone()  # not in place on cholesky_solve's output, which its backward needs
            x2[still] = min_norm_solve(ridged[still], b[bad][still])
        x = x.clone()
        x[bad] = x2
    return torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)


def _spd_solve_fallbacks(a: Tensor, b: Tensor, x: Tensor, bad: Tensor, ridge: Tensor, eye: Tensor) -> Tensor:
    """:func:`spd_solve`'s fallbacks without asking the device which problems need them (on a
    GPU that question is a wait, once per solver step): every problem also gets the ridged
    Cholesky solve and the minimum-norm solution of the ridged system (its symmetric
    pseudo-inverse, eigenvalues below eps n max|lambda| dropped, as LAPACK's gelsd drops singular
    values), and each keeps the first that is finite."""
    ridged = a + ridge[:, None, None] * eye
    chol, info = torch.linalg.cholesky_ex(ridged)
    x2 = torch.cholesky_solve(b.unsqueeze(-1), chol).squeeze(-1)
    still = bad & ((info != 0) | ~torch.isfinite(x2).all(-1))
    # eigh only where it is needed: elsewhere a matrix of distinct eigenvalues stands in, whose
    # result is discarded, since eigh's backward divides by eigenvalue gaps and a repeated
    # eigenvalue (s I) would send 0 * inf = NaN into a gradient through the discarded branch
    distinct = torch.diag_embed(torch.arange(1, a.shape[-1] + 1, dtype=a.dtype, device=a.device)).expand_as(ridged)
    lam, vec = torch.linalg.eigh(torch.where(still[:, None, None], ridged, distinct))
    cut = torch.finfo(a.dtype).eps * a.shape[-1] * lam.abs().amax(-1, keepdim=True)
    inv = torch.where(lam.abs() > cut, 1 / torch.where(lam == 0, torch.ones_like(lam), lam), torch.zeros_like(lam))
    x3 = (vec @ (inv * (vec.transpose(-1, -2) @ b.unsqueeze(-1)).squeeze(-1)).unsqueeze(-1)).squeeze(-1)
    x = torch.where(still[:, None], x3, torch.where(bad[:, None], x2, x))
    return torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)


def min_norm_solve(a: Tensor, b: Tensor) -> Tensor:
    """The minimum-norm least-squares solution of a batch of small square systems a x = b of
    any rank, by LAPACK's SVD-based gelsd on the CPU: CUDA's only driver (gels) assumes full
    rank and returns garbage for the singular systems this fallback exists for."""
    x = torch.linalg.lstsq(a.cpu(), b.cpu().unsqueeze(-1), driver="gelsd").solution.squeeze(-1)
    return x.to(b.device)


@dataclass
class Step:
    """A proposed step: ``delta`` [batch, n] and the decrease of the cost it predicts [batch]."""

    delta: Tensor
    predicted: Tensor


class AbstractSolver(ABC):
    """A least-squares solver: tolerances, a step rule, and what it does with a trial point.

    Convergence of problem b after a step: the step proposed is small, max|delta| <= atol +
    rtol max|y| (whether or not it was taken: the point is then within the tolerance of where
    the step leads); or the cost stopped moving, 0 < decrease <= rtol^2 cost after an accepted
    step (y is then known to about rtol); or the residual vanishes, |r| <= atol. Relative
    tolerance finer than the working precision counts as 16 ulps of it, for the step and for the
    cost's change (float32 solves under the float64 defaults converge instead of running to
    ``max_steps``).
    """

    rtol: float
    atol: float

    def init(self, y: Tensor) -> dict[str, Tensor]:
        """The solver's per-problem state."""
        return {}

    @abstractmethod
    def step(self, y: Tensor, grad: Tensor, gram: Tensor, state: dict[str, Tensor], hessian: Tensor | None = None) -> Step:
        """The step from the current point ``y``: gradient ``grad`` = J^T r, ``gram`` = J^T J,
        and where the solver asks for it (``hessian = "exact"``) the cost's Hessian
        J^T J + sum_i r_i d2r_i/dy2."""

    def accept(self, cost: Tensor, new_cost: Tensor, step: Step, state: dict[str, Tensor]) -> Tensor:
        """Which trial points to keep [batch] bool; may update ``state``."""
        return torch.isfinite(new_cost)

    def converged(self, y: Tensor, delta: Tensor, state: dict[str, Tensor], decrease: Tensor, cost: Tensor) -> Tensor:
        # A tolerance below the dtype's rounding could never be met (rtol = 1e-8 in float32):
        # there a step counts as small within 16 ulps of |y|, and the cost as flat once it moves
        # by 16 ulps or less.
        floor = 16 * torch.finfo(y.dtype).eps
        rtol, flat_tol = (self.rtol, self.rtol**2) if self.rtol >= floor else (floor, floor)
        small_step = delta.abs().amax(-1) <= self.atol + rtol * y.abs().amax(-1)
        flat = (decrease > 0) & (decrease <= flat_tol * cost)
        return small_step | flat | self.vanished(cost)

    def vanished(self, cost: Tensor) -> Tensor:
        """The residual is zero to ``atol``: |r| = sqrt(2 cost) <= atol."""
        return (2 * cost).sqrt() <= self.atol


def _predicted_decrease(hess: Tensor, jtr: Tensor, delta: Tensor) -> Tensor:
    """cost(y) - model cost(y + delta) for the quadratic model cost + g^T delta + 0.5 delta^T H delta
    (Gauss-Newton's 0.5 |r + J delta|^2 with H = J^T J)."""
    return -(jtr * delta).sum(-1) - 0.5 * (delta.unsqueeze(-2) @ hess @ delta.unsqueeze(-1)).squeeze(-1).squeeze(-1)


@dataclass
class GaussNewton(AbstractSolver):
    """Full Gauss-Newton steps: exact in one step for a linear residual; fast near a zero residual."""

    rtol: float = 1e-8
    atol: float = 1e-10

    def step(self, y: Tensor, grad: Tensor, gram: Tensor, state: dict[str, Tensor], hessian: Tensor | None = None) -> Step:
        delta = spd_solve(gram, -grad)
        return Step(delta, _predicted_decrease(gram, grad, delta))


@dataclass
class LevenbergMarquardt(AbstractSolver):
    """Gauss-Newton with adaptive damping (J^T J + lambda diag(J^T J)) delta = -J^T r.

    The damping follows Nielsen's rule: after an accepted step with gain ratio rho (actual over
    predicted decrease) lambda is multiplied by max(min_shrink, 1 - (2 rho - 1)^3); after a
    rejected one (the cost did not decrease) by nu, and nu doubles, so a run of rejections reaches
    a useful damping in a few trials instead of one factor 2 per trial. Nielsen's floor is 1/3;
    ours, 1e-2 (reached at rho >= 0.998), lets the damping fall as fast as the model proves
    exact: on the layer's problems, whose first step takes the cost down by 1e7 with rho = 1,
    that halves the steps. After a rejected step the floor is Nielsen's 1/3 until a step
    proves the model exact again (rho >= 0.998): where the model misleads, the faster fall
    saws between too little and too much damping. After a step that raised the cost beyond
    rounding the damping jumps at least to where it shortens that step, delta^T H delta /
    delta^T D delta.

    ``hessian="exact"`` models the cost with its exact Hessian, J^T J plus the residual's
    curvature sum_i r_i d2r_i/dy2, where that is positive definite once damped (a damped Newton
    step), and with J^T J where it is not. Gauss-Newton converges only linearly where the
    residual stays large at the minimum (each step misses the curvature); Newton converges
    quadratically there, for one more pass over the points per step. The residual's
    ``newton_equations`` or ``hessian`` provide it, or autograd.
    """

    rtol: float = 1e-8
    atol: float = 1e-10
    damping: float = 1e-6
    min_damping: float = 1e-16
    max_damping: float = 1e12
    min_shrink: float = 1e-2
    hessian: str = "gauss-newton"

    def __post_init__(self) -> None:
        if self.hessian not in ("gauss-newton", "exact"):
            raise ValueError(f"`hessian` (={self.hessian!r}) must be 'gauss-newton' or 'exact'.")

    def init(self, y: Tensor) -> dict[str, Tensor]:
        return {"lambda": torch.full(y.shape[:1], self.damping, dtype=y.dtype, device=y.device),
                "nu": torch.full(y.shape[:1], 2.0, dtype=y.dtype, device=y.device),
                "cautious": torch.zeros(y.shape[:1], dtype=torch.bool, device=y.device)}

    def step(self, y: Tensor, grad: Tensor, gram: Tensor, state: dict[str, Tensor], hessian: Tensor | None = None) -> Step:
        diag = gram.diagonal(dim1=-2, dim2=-1)
        floor = 1e-12 * diag.mean(-1, keepdim=True).clamp_min(torch.finfo(grad.dtype).tiny)
        metric = diag.clamp_min(floor)  # D: Marquardt's scaling
        damping = torch.diag_embed(state["lambda"][:, None] * metric)
        model = gram
        if hessian is not None:  # Newton where the damped Hessian is positive definite
            indefinite = torch.linalg.cholesky_ex(hessian + damping)[1] != 0
            model = torch.where(indefinite[:, None, None], gram, hessian)
        delta = spd_solve(model + damping, -grad)
        state["used"] = state["lambda"]
        # The damping that would shorten this step noticeably: its curvature along delta relative
        # to the damping's metric, delta^T H delta / delta^T D delta (a damping far below it
        # leaves the step as it is).
        d, h = delta.detach(), model.detach()  # the damping's state stays out of autograd (see accept)
        curvature = (d.unsqueeze(-2) @ h @ d.unsqueeze(-1)).squeeze(-1).squeeze(-1)
        state["bite"] = (curvature / (metric.detach() * d.pow(2)).sum(-1).clamp_min(torch.finfo(grad.dtype).tiny)).clamp_min(0)
        # |J y|: the size of what the residual sums at y, which sets the rounding of the cost.
        y_, g_ = y.detach(), gram.detach()
        state["size"] = (y_.unsqueeze(-2) @ g_ @ y_.unsqueeze(-1)).squeeze(-1).squeeze(-1).clamp_min(0).sqrt()
        return Step(delta, _predicted_decrease(model, grad, delta))

    def accept(self, cost: Tensor, new_cost: Tensor, step: Step, state: dict[str, Tensor]) -> Tensor:
        # The damping is the step rule's setting, not a function to differentiate: under the
        # unrolled adjoint its updates stay out of the graph (the gain ratio's division by a
        # vanishing prediction would send 0 * inf = NaN back through torch.where).
        cost, new_cost, predicted = cost.detach(), new_cost.detach(), step.predicted.detach()
        actual = cost - new_cost
        ratio = torch.where(predicted > 0, actual / predicted.clamp_min(torch.finfo(cost.dtype).tiny), torch.zeros_like(cost))
        # Near a nonzero minimum the cost stops resolving the last digits of y (a change of
        # |J| dy^2 drowns in its rounding): there, take the step if it does not increase the
        # cost beyond rounding, so y still converges to full precision. The cost's rounding:
        # that of its sum, and that of every residual entry, eps |J y| |r| (|r| = sqrt(2 cost)),
        # which dominates where the residual is small next to the terms it sums.
        eps = torch.finfo(cost.dtype).eps
        roundoff = 64 * eps * cost.abs() + 16 * eps * state["size"] * (2 * cost.abs()).sqrt()
        in_noise = (predicted.abs() <= roundoff) & (actual >= -roundoff)
        good = torch.isfinite(new_cost) & (((actual >= 0) & ((ratio > 1e-4) | (actual == 0))) | in_noise)
        lam, nu = state["lambda"], state["nu"]
        # A step in the noise says nothing about the model's quality: the damping stays.
        # The floor: min_shrink, but Nielsen's 1/3 after a rejected step until a step proves the
        # model exact again (rho >= 0.998; a decrease beyond the predicted one counts, as in the
        # shrink rule, which clamps rho to 1): where the model misleads, falling by 100x per step
        # saws between too little damping and too much (2.5x the worst case on Rosenbrock's valley).
        # Never a faster fall than min_shrink's.
        floor = torch.where(state["cautious"], torch.full_like(ratio, max(self.min_shrink, 1 / 3)), torch.full_like(ratio, self.min_shrink))
        shrink = torch.where(in_noise, torch.ones_like(ratio), torch.maximum(1 - (2 * ratio.clamp(0, 1) - 1) ** 3, floor))
        # After a step that raised the cost beyond rounding, at least the damping that shortens
        # it: one that fell far below that (after exact steps) would take many doublings to
        # matter again. A rise within rounding only doubles it.
        raised = actual < -16 * roundoff
        rejected = torch.where(raised, torch.maximum(lam * nu, state["bite"]), lam * nu)
        state["lambda"] = torch.where(good, lam * shrink, rejected).clamp(self.min_damping, self.max_damping)
        state["nu"] = torch.where(good, torch.full_like(nu, 2.0), nu * 2).clamp_max(1e6)
        state["cautious"] = (state["cautious"] & ~(good & (ratio >= 0.998))) | ~good
        return good

    def converged(self, y: Tensor, delta: Tensor, state: dict[str, Tensor], decrease: Tensor, cost: Tensor) -> Tensor:
        # A heavily damped step is small because of the damping, not because y has converged.
        return super().converged(y, delta, state, decrease, cost) & (state["used"] <= 1) | self.vanished(cost)
