"""The solver loop shared by every adjoint: batched normal equations and masked updates.

A residual ``fn(y [batch, n], *args) -> r [batch, m]`` may offer, besides its value:

- ``fn.jacobian(y, *args) -> (r, J [batch, m, n])``, used instead of n forward-mode products;
- ``fn.normal_equations(y, *args) -> (cost, J^T r, J^T J)``, used instead of forming J at all
  (a structured residual sums its rows' contributions without concatenating them);
- ``fn.newton_equations(y, *args) -> (cost, J^T r, J^T J, H)``, with H the cost's exact Hessian,
  for a solver that asks for it (``LevenbergMarquardt(hessian="exact")``; else ``fn.hessian``
  after the normal equations, else autograd);
- ``fn.prepare(*args) -> args'``, called once per solve: what ``normal_equations`` then gets
  instead of ``args`` (e.g. with the Gram matrix of its linear rows computed once), and
  ``fn.prepare_backward(*args, kept=None)``, the same for the implicit adjoint's backward where it
  can be cheaper (it evaluates the normal equations once, at the solution), given what
  ``fn.keep_for_backward(*prepared)`` kept of the forward solve's preparation (None when the
  forward ran elsewhere);
- ``fn.per_problem_args = True``: every tensor argument has the problems along its first axis,
  so the loop may drop converged problems from the arguments (they stop costing anything).
"""

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


def prepare(fn: Residual, args: Sequence[Tensor], backward: bool = False, kept: tuple | None = None) -> tuple:
    """The arguments :func:`normal_equations` takes: ``fn.prepare(*args)`` where offered; for the
    adjoint's backward (one set of normal equations, no solve) ``fn.prepare_backward(*args)``
    where the residual offers a cheaper one, given what it ``kept`` of the forward's."""
    if backward and hasattr(fn, "prepare_backward"):
        return tuple(fn.prepare_backward(*args, kept=kept) if kept is not None else fn.prepare_backward(*args))
    return tuple(fn.prepare(*args)) if hasattr(fn, "prepare") else tuple(args)


def normal_equations(fn: Residual, y: Tensor, prepared: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """(cost 0.5 |r|^2 [batch], J^T r [batch, n], J^T J [batch, n, n]) at y, from the
    residual's own ``normal_equations`` where it has one, else from its Jacobian."""
    if hasattr(fn, "normal_equations"):
        return fn.normal_equations(y, *prepared)
    r, jac = jacobian(fn, y, prepared)
    jt = jac.transpose(-1, -2)
    return 0.5 * r.pow(2).sum(-1), (jt @ r.unsqueeze(-1)).squeeze(-1), jt @ jac


def newton_equations(fn: Residual, y: Tensor, prepared: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The normal equations and the cost's exact Hessian d(J^T r)/dy [batch, n, n]: from the
    residual's ``newton_equations`` (one pass), its ``hessian``, or n reverse passes of autograd
    through its gradient J^T r (its ``normal_equations``' where it has them: they, not the
    residual, take the prepared arguments). Where the Hessian is not finite (a residual that is
    not twice differentiable there), J^T J stands in for it: it only steers the steps."""
    if hasattr(fn, "newton_equations"):
        cost, grad, gram, hess = fn.newton_equations(y, *prepared)
    else:
        cost, grad, gram = normal_equations(fn, y, prepared)
        if hasattr(fn, "hessian"):
            hess = fn.hessian(y, *prepared)
        else:
            with torch.enable_grad():
                y_ = y.detach().requires_grad_(True)
                if hasattr(fn, "normal_equations"):
                    g = fn.normal_equations(y_, *prepared)[1]
                else:
                    (g,) = torch.autograd.grad(0.5 * fn(y_, *prepared).pow(2).sum(), y_, create_graph=True)
                rows = [torch.autograd.grad(g[:, k].sum(), y_, retain_graph=k + 1 < y.shape[-1], allow_unused=True)[0]
                        for k in range(y.shape[-1])]
            hess = torch.stack([torch.zeros_like(y) if row is None else row for row in rows], dim=1).detach()
    return cost, grad, gram, torch.where(_finite(hess)[:, None, None], hess, gram)


def _finite(*tensors: Tensor) -> Tensor:
    """[batch] bool: every entry of every tensor finite for that problem."""
    ok = torch.ones(tensors[0].shape[:1], dtype=torch.bool, device=tensors[0].device)
    for t in tensors:
        ok = ok & torch.isfinite(t.reshape(t.shape[0], -1)).all(-1)
    return ok


def solve(fn: Residual, y0: Tensor, args: Sequence[Tensor], solver: AbstractSolver, max_steps: int) -> Solution:
    """The solver loop, differentiable if its inputs are (the unrolled adjoint relies on that).

    Problems stop moving once converged; with ``fn.per_problem_args``, once half of the problems
    still iterating have converged, they are dropped from the working set (their arguments
    included), so a batch whose problems converge at different speeds costs what its problems
    need, not its slowest one's steps times the batch. A non-finite residual or normal equations
    at the start, or at a Gauss-Newton trial point, mark the problem ``nonfinite``
    (Levenberg-Marquardt instead rejects the trial and retries with more damping); every problem
    keeps its last finite point, so the output is always finite.
    """
    args = prepare(fn, args)
    kept = fn.keep_for_backward(*args) if hasattr(fn, "keep_for_backward") else None
    batch = y0.shape[0]
    if getattr(solver, "hessian", "gauss-newton") == "exact":
        evaluate = lambda y: newton_equations(fn, y, args)  # noqa: E731
    else:
        evaluate = lambda y: (*normal_equations(fn, y, args), None)  # noqa: E731
    compact = bool(getattr(fn, "per_problem_args", False)) and all(
        not torch.is_tensor(a) or (a.ndim > 0 and a.shape[0] == batch) for a in args)
    y = y0
    cost, grad, gram, hess = evaluate(y)
    state = solver.init(y)
    # statuses are written with torch.where, not boolean-mask indexing, which on a GPU waits for
    # the device (a nonzero): the loop's one wait per step is the count of active problems
    result = torch.full((batch,), int(Result.max_steps_reached), dtype=torch.int64, device=y.device)
    finite = _finite(cost, grad, gram)
    active = finite & ~solver.vanished(cost)
    result = torch.where(finite, torch.where(active, result, int(Result.successful)), int(Result.nonfinite))
    value, final_cost = y, cost  # every problem's latest point; the working set's rows are written back
    index = torch.arange(batch, device=y.device)  # the working set's problems
    steps = 0
    while steps < max_steps:
        n_active = int(active.sum())
        if n_active == 0:
            break
        if compact and n_active <= len(index) // 2:
            value, final_cost = value.index_copy(0, index, y), final_cost.index_copy(0, index, cost)
            keep = active.nonzero().squeeze(-1)
            index, y, cost, grad, gram, active = index[keep], y[keep], cost[keep], grad[keep], gram[keep], active[keep]
            hess = None if hess is None else hess[keep]
            state = {k: v[keep] for k, v in state.items()}
            args = tuple(a[keep] if torch.is_tensor(a) else a for a in args)
        steps += 1
        step = solver.step(y, grad, gram, state, hess) if hess is not None else solver.step(y, grad, gram, state)
        delta = torch.where(active[:, None], step.delta, torch.zeros_like(step.delta))
        trial = y + delta
        cost_new, grad_new, gram_new, hess_new = evaluate(trial)
        finite_new = _finite(cost_new, grad_new, gram_new)
        if torch.is_grad_enabled() and not bool(finite_new.all()):
            # Under autograd (the unrolled adjoint) a rejected non-finite trial would still reach
            # the gradient, as 0 * NaN through torch.where's other branch: those problems are
            # evaluated again at their current point, which the rejection keeps anyway.
            cost_new, grad_new, gram_new, hess_new = evaluate(torch.where(finite_new[:, None], trial, y))
        keep = active & solver.accept(cost, torch.where(finite_new, cost_new, torch.full_like(cost_new, float("inf"))), step, state) & finite_new
        # A stateless solver (Gauss-Newton) would propose the same non-finite step again: give up on it.
        stuck = active & ~finite_new & (not state)
        result = result.index_copy(0, index, torch.where(stuck, int(Result.nonfinite), result[index]))
        active = active & ~stuck
        decrease = torch.where(keep, cost - cost_new, torch.zeros_like(cost))
        y = torch.where(keep[:, None], trial, y)
        grad = torch.where(keep[:, None], grad_new, grad)
        gram = torch.where(keep[:, None, None], gram_new, gram)
        hess = None if hess is None else torch.where(keep[:, None, None], hess_new, hess)
        cost = torch.where(keep, cost_new, cost)
        done = active & finite_new & solver.converged(y, delta, state, decrease, cost)
        result = result.index_copy(0, index, torch.where(done, int(Result.successful), result[index]))
        active = active & ~done
    value, final_cost = value.index_copy(0, index, y), final_cost.index_copy(0, index, cost)
    return Solution(value=value, result=result, steps=steps, cost=final_cost, kept=kept)
