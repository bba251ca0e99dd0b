"""How gradients reach the residual's inputs through a least-squares solve.

At a solution y* of min_y 0.5 |r(y, theta)|^2 the gradient vanishes: F(y*, theta) = J^T r = 0.
The implicit function theorem gives dy*/dtheta = -(dF/dy)^-1 dF/dtheta, so for an upstream
gradient g = dL/dy* the backward pass is

    H mu = g,    dL/dtheta = -mu^T dF/dtheta,

with H = dF/dy: one n x n solve and one vector-Jacobian product per problem, whatever the number
of solver iterations: the residual's own ``fn.pullback(y, mu, g_cost, *args)`` where it has one
(closed form; given ``wanted=indices`` where it takes that keyword, it may return None for the
other arguments), else a double backward through F. ``hessian="gauss-newton"`` takes H = J^T J
(the residual's normal equations): exact when r is linear in y, even where r does not vanish,
and close to exact near a zero residual. ``hessian="exact"`` takes dF/dy with the second
derivatives of r: the residual's own ``fn.hessian(y, *prepared)`` where it has one (or
``fn.linearise(y, *prepared) -> (hessian, state)``, the state then passed to
``fn.pullback(..., linearised=state)``), else n backward passes.
The cost 0.5 |r|^2 at y* is differentiable too: by the envelope theorem its gradient is the
partial derivative in theta.
Since the backward needs y* alone, not the iterations that led there, the forward solve may run
anywhere (``ImplicitAdjoint(forward=...)``: another process, Ray workers); the gradient is
attached here.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ._solution import Result, Solution
from ._solve import Residual, normal_equations, prepare, solve
from .solvers import AbstractSolver, min_norm_solve, spd_solve

# forward(fn, y0, args, solver, max_steps) -> Solution: a solve without autograd (inputs detached).
Forward = Callable[[Residual, Tensor, Sequence[Tensor], AbstractSolver, int], Solution]


class AbstractAdjoint(ABC):
    @abstractmethod
    def apply(self, fn: Residual, y0: Tensor, args: Sequence[Tensor], solver: AbstractSolver, max_steps: int) -> Solution:
        """Solve, with ``value`` and ``cost`` differentiable in ``args`` as this strategy says."""


@dataclass(frozen=True)
class UnrolledAdjoint(AbstractAdjoint):
    """Backpropagate through every solver iteration: exact for the iterations taken, memory
    growing with them. Meant for checking the implicit adjoint."""

    def apply(self, fn, y0, args, solver, max_steps):
        return solve(fn, y0, args, solver, max_steps)


@dataclass(frozen=True)
class ImplicitAdjoint(AbstractAdjoint):
    """Implicit-function-theorem gradients; ``hessian`` is "gauss-newton" or "exact".

    ``forward`` runs the solve (default: :func:`~sciml.constraints._solve.solve` here); any
    function that returns the converged y*, status and cost will do, wherever it computes them
    (e.g. :class:`~sciml.constraints.RayExecutor`'s workers).
    """

    hessian: str = "gauss-newton"
    forward: Forward = solve

    def __post_init__(self) -> None:
        if self.hessian not in ("gauss-newton", "exact"):
            raise ValueError(f"`hessian` (={self.hessian!r}) must be 'gauss-newton' or 'exact'.")

    def apply(self, fn, y0, args, solver, max_steps):
        box: dict[str, Solution] = {}
        primal = lambda y, a: self.forward(fn, y, a, solver, max_steps)  # noqa: E731
        value, cost = _ImplicitSolve.apply(fn, primal, self.hessian, box, y0.detach(), *args)
        sol = box["solution"]
        return Solution(value=value, result=sol.result, steps=sol.steps, cost=cost)


class _ImplicitSolve(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fn, primal, hessian, box, y0, *args):
        with torch.no_grad():
            sol = primal(y0, [a.detach() if torch.is_tensor(a) else a for a in args])
        box["solution"] = sol
        ctx.fn, ctx.hessian, ctx.kept = fn, hessian, sol.kept
        ctx.nonfinite = sol.result == int(Result.nonfinite)
        tensors = [a if torch.is_tensor(a) else None for a in args]
        ctx.others = [None if torch.is_tensor(a) else a for a in args]
        ctx.save_for_backward(sol.value, *[t for t in tensors if t is not None])
        ctx.tensor_mask = [t is not None for t in tensors]
        return sol.value, sol.cost

    @staticmethod
    def backward(ctx, g_value, g_cost):
        y, *saved = ctx.saved_tensors
        it = iter(saved)
        args = [next(it).detach() if is_t else other for is_t, other in zip(ctx.tensor_mask, ctx.others)]
        wanted = [i for i, a in enumerate(args) if torch.is_tensor(a) and ctx.needs_input_grad[5 + i]]
        if not wanted:
            return (None,) * (5 + len(args))
        g_value = torch.zeros_like(y) if g_value is None else g_value
        g_cost = torch.zeros(y.shape[:1], dtype=y.dtype, device=y.device) if g_cost is None else g_cost
        # A problem whose residual was not finite kept its start point, which does not depend on
        # the arguments: it contributes no gradient (the normal equations there would send NaN
        # into every shared parameter). Where every argument is per problem, the backward runs
        # on the others alone.
        per_problem = all(not torch.is_tensor(a) or (a.ndim > 0 and a.shape[0] == len(y)) for a in args)
        if per_problem and bool(ctx.nonfinite.any()):
            keep = (~ctx.nonfinite).nonzero().squeeze(-1)
            kept = None if ctx.kept is None else tuple(k[keep] for k in ctx.kept)
            sub = [a[keep] if torch.is_tensor(a) else a for a in args]
            grads = _pull(ctx.fn, ctx.hessian, kept, y[keep], sub, wanted, g_value[keep], g_cost[keep]) if len(keep) else [None] * len(wanted)
            grads = [None if g is None else torch.zeros_like(args[i]).index_copy(0, keep, g) for i, g in zip(wanted, grads)]
        else:
            grads = _pull(ctx.fn, ctx.hessian, ctx.kept, y, args, wanted, g_value, g_cost)
        out: list[Tensor | None] = [None] * len(args)
        for i, g in zip(wanted, grads):
            out[i] = torch.zeros_like(args[i]) if g is None else g
        return (None, None, None, None, None, *out)


def _pull(fn, hessian: str, kept, y: Tensor, args: list, wanted: list[int], g_value: Tensor, g_cost: Tensor) -> list[Tensor | None]:
    """The gradients dL/dargs[i], i in ``wanted``, at the solution y: one n x n solve and one
    vector-Jacobian product per problem (see the module doc)."""
    detached = prepare(fn, args, backward=True, kept=kept)
    mu, linearised = None, {}
    if hessian == "gauss-newton":
        mu = spd_solve(normal_equations(fn, y, detached)[2], g_value, ridge=False)  # singular J^T J: the minimum-norm mu
    elif hasattr(fn, "linearise"):  # its d(J^T r)/dy, and what its pullback reuses
        hess, state = fn.linearise(y, *detached)
        mu, linearised = _general_solve(hess, g_value), {"linearised": state}
    elif hasattr(fn, "hessian"):  # a structured residual's own d(J^T r)/dy
        mu = _general_solve(fn.hessian(y, *detached), g_value)
    if mu is not None and hasattr(fn, "pullback"):  # its own d(-mu . F + g_cost cost)/dargs
        extra = {"wanted": frozenset(wanted)} if _accepts(fn.pullback, "wanted") else {}
        pulled = fn.pullback(y, mu, g_cost, *args, **extra, **linearised)
        return [pulled[i] for i in wanted]
    args = list(args)
    for i in wanted:
        args[i] = args[i].requires_grad_(True)
    with torch.enable_grad():
        y_ = y.detach().requires_grad_(True)
        r = fn(y_, *args)
        cost = 0.5 * r.pow(2).sum(-1)
        (grad_y,) = torch.autograd.grad(cost.sum(), y_, create_graph=True)  # F = J^T r
        if mu is None:
            rows = [torch.autograd.grad(grad_y[:, k].sum(), y_, retain_graph=True)[0] for k in range(y.shape[-1])]
            mu = _general_solve(torch.stack(rows, dim=1), g_value)
        return list(torch.autograd.grad([grad_y, cost], [args[i] for i in wanted], [-mu, g_cost], allow_unused=True))


def _accepts(method: Callable, keyword: str) -> bool:
    """Whether ``method`` takes the keyword argument (by name, or through ``**kwargs``)."""
    try:
        parameters = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == keyword or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def _general_solve(a: Tensor, b: Tensor) -> Tensor:
    """a x = b for a batch of square (possibly indefinite or singular) a; finite for finite input."""
    a, b = torch.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0), torch.nan_to_num(b, nan=0.0, posinf=0.0, neginf=0.0)
    x, info = torch.linalg.solve_ex(a, b)
    bad = (info != 0) | ~torch.isfinite(x).all(-1)
    if bool(bad.any()):
        x = x.clone()
        x[bad] = min_norm_solve(a[bad], b[bad])
    return torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
