"""The solver loop shared by every adjoint: batched residual, Jacobian and masked updates."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ._solution import Result, Solution
from .solvers import AbstractSolver

Residual = Callable[..., Tensor]


def jacobian(fn: Residual, y: Tensor, args: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """(r [batch, m], J [batch, m, n]) at y: from ``fn.jacobian(y, *args)`` when the residual
    provides one (structured residuals know their Jacobian for a fraction of the cost), otherwise
    by n forward-mode products (never m x m)."""
    if hasattr(fn, "jacobian"):
        return fn.jacobian(y, *args)
    n = y.shape[-1]
    tangents = torch.eye(n, dtype=y.dtype, device=y.device).unsqueeze(1).expand(n, *y.shape)

    def column(v: Tensor) -> tuple[Tensor, Tensor]:
        return torch.func.jvp(lambda z: fn(z, *args), (y,), (v,))

    r, cols = torch.func.vmap(column, out_dims=(None, 0))(tangents)
    return r, cols.permute(1, 2, 0)


def _cost(r: Tensor) -> Tensor:
    return 0.5 * r.pow(2).sum(-1)


def solve(fn: Residual, y0: Tensor, args: Sequence[Tensor], solver: AbstractSolver, max_steps: int) -> Solution:
    """The solver loop, differentiable if its inputs are (the unrolled adjoint relies on that).

    Problems stop moving once converged. A non-finite residual or Jacobian at the start, or at a
    Gauss-Newton trial point, marks the problem ``nonfinite`` (Levenberg-Marquardt instead
    rejects the trial and retries with more damping); every problem keeps its last finite point,
    so the output is always finite.
    """
    y = y0
    r, jac = jacobian(fn, y, args)
    cost = _cost(r)
    state = solver.init(y)
    result = torch.full(y.shape[:1], int(Result.max_steps_reached), dtype=torch.int64, device=y.device)
    finite = torch.isfinite(r).all(-1) & torch.isfinite(jac).flatten(1).all(-1)
    result[~finite] = int(Result.nonfinite)
    active = finite & ~(r.abs().amax(-1) <= solver.atol)
    result[finite & ~active] = int(Result.successful)
    steps = 0
    while steps < max_steps and bool(active.any()):
        steps += 1
        step = solver.step(r, jac, state)
        delta = torch.where(active[:, None], step.delta, torch.zeros_like(step.delta))
        trial = y + delta
        r_new, jac_new = jacobian(fn, trial, args)
        cost_new = _cost(r_new)
        finite_new = torch.isfinite(r_new).all(-1) & torch.isfinite(jac_new).flatten(1).all(-1)
        keep = active & solver.accept(cost, torch.where(finite_new, cost_new, torch.full_like(cost_new, float("inf"))), step, state) & finite_new
        # A stateless solver (Gauss-Newton) would propose the same non-finite step again: give up on it.
        stuck = active & ~finite_new & (not state)
        result = torch.where(stuck, torch.full_like(result, int(Result.nonfinite)), result)
        active = active & ~stuck
        decrease = cost - cost_new
        y = torch.where(keep[:, None], trial, y)
        r = torch.where(keep[:, None], r_new, r)
        jac = torch.where(keep[:, None, None], jac_new, jac)
        cost = torch.where(keep, cost_new, cost)
        done = keep & solver.converged(y, delta, r, state, decrease, cost)
        result = torch.where(done, torch.full_like(result, int(Result.successful)), result)
        active = active & ~done
    return Solution(value=y, result=result, steps=steps, cost=cost)
