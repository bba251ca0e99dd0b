"""``least_squares``: one call that solves a batch of nonlinear least-squares problems.

    sol = least_squares(fn, y0, args, solver=LevenbergMarquardt(), adjoint=ImplicitAdjoint())

minimises 0.5 |fn(y, *args)_b|^2 over y_b for every problem b of the batch at once:
``fn(y [batch, n], *args) -> r [batch, m]`` must treat the problems independently (row b of r
depends on row b of y only). The forward solve runs without autograd; gradients with respect to
``args`` come from the adjoint strategy (:mod:`sciml.constraints.adjoint`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ._solution import Solution
from ._solve import Residual
from .adjoint import AbstractAdjoint, ImplicitAdjoint
from .solvers import AbstractSolver, LevenbergMarquardt


def least_squares(
    fn: Residual,
    y0: Tensor,
    args: Sequence[Tensor] = (),
    *,
    solver: AbstractSolver | None = None,
    adjoint: AbstractAdjoint | None = None,
    max_steps: int = 50,
    throw: bool = True,
    dtype: torch.dtype | None = None,
) -> Solution:
    """Solve min_y 0.5 |fn(y, *args)|^2 for a batch of problems; differentiable in ``args``.

    Args:
        fn: residual ``fn(y [batch, n], *args) -> [batch, m]``, row b depending on row b only.
            It may also offer ``fn.jacobian(y, *args) -> (r, J [batch, m, n])``, used instead of
            n forward-mode products, or its normal equations directly (``fn.normal_equations``,
            ``fn.prepare``, ``fn.per_problem_args``; for the adjoints ``fn.hessian`` and
            ``fn.pullback``): see :mod:`sciml.constraints._solve` and the layer's residual in
            :mod:`sciml.constraints.hard`. What it offers must be differentiable in ``args``
            for the unrolled adjoint.
        y0: starting point [batch, n].
        args: tensors the residual depends on; gradients flow to them through ``adjoint``.
        solver: :class:`LevenbergMarquardt` (default) or :class:`GaussNewton`.
        adjoint: :class:`ImplicitAdjoint` (default: one n x n solve and one vector-Jacobian
            product per problem) or :class:`UnrolledAdjoint` (backprop through the iterations).
        max_steps: solver iterations at most.
        throw: raise :class:`SolveError` if a problem did not converge; with False, read
            ``Solution.result`` and log it.
        dtype: solve in this precision (e.g. torch.float64 under a float32 network); the
            solution is cast back to ``y0``'s dtype.
    """
    if y0.ndim != 2:
        raise ValueError(f"`y0` must be [batch, n], got shape {tuple(y0.shape)}; add a batch axis with y0[None].")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"`max_steps` (={max_steps!r}) must be an integer >= 1.")
    solver = solver or LevenbergMarquardt()
    adjoint = adjoint or ImplicitAdjoint()
    out_dtype = y0.dtype
    if dtype is not None:
        y0 = y0.to(dtype)
        args = tuple(a.to(dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)
    sol = adjoint.apply(fn, y0, tuple(args), solver, max_steps)
    if dtype is not None:
        sol = Solution(value=sol.value.to(out_dtype), result=sol.result, steps=sol.steps, cost=sol.cost.to(out_dtype))
    if throw:
        sol.raise_if_failed()
    return sol
