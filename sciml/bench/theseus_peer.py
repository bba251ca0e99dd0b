"""theseus-ai's Levenberg-Marquardt on the PI-HC constraint: the second peer of ``sciml bench solver``.

Imported only when theseus is installed. theseus 0.2.3 has wheels for Python <= 3.10 only; on 3.12
it builds from source against torch (``--no-build-isolation``) and needs SuiteSparse's headers for
its scikit-sparse dependency (scikit-sparse 0.4.16; 0.5.0 does not compile against SuiteSparse 5).
It is not in the ``bench`` extra for that reason; the benchmark leaves its columns empty without it.

The peer is given the best case theseus allows: the constraint's own structured Jacobian (the
layer's residual, ``jacobian``), not ``AutoDiffCostFunction``, whose reverse-mode Jacobian of a
2e4-row residual would not fit in memory. theseus then forms the full Jacobian [problems, rows, n]
and its normal equations every iteration (dense Cholesky), damping lambda I adapted per problem
(x11 on a rejected step, /9 on an accepted one), and linearises every problem until all have
converged. A problem stops at the first step whose cost change is below 1e-12 absolute or 1e-8
relative, a rejected step (change 0) included; its criterion is on the cost, ours and optimistix's
on the step, so the benchmark reports the ratio of the costs reached. Its implicit backward takes
one undamped Gauss-Newton step at the solution under autograd: the Gauss-Newton approximation of
the implicit gradient (ours and optimistix's are exact, which costs us more in the backward).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import theseus as th
import torch

from .solver import RESIDUAL, _sync, best_of, residual_args

F64 = torch.float64
NAMES = ("bu", "bt", "bxx", "a", "b")


class Constraint(th.CostFunction):
    """The PI-HC constraint as a theseus cost: error and Jacobian from the layer's residual."""

    def __init__(self, w: th.Vector, bu: th.Variable, bt: th.Variable, bxx: th.Variable, a: th.Variable, b: th.Variable, name: str | None = None):
        super().__init__(th.ScaleCostWeight(torch.ones((), dtype=F64)), name=name)
        self.w, self.bu, self.bt, self.bxx, self.a, self.b = w, bu, bt, bxx, a, b
        self.register_optim_vars(["w"])
        self.register_aux_vars(list(NAMES))

    def _args(self) -> list[torch.Tensor]:
        bases = [self.bu.tensor, self.bt.tensor, self.bxx.tensor]
        zero = torch.zeros(bases[0].shape[:2], dtype=F64, device=bases[0].device)
        return [*bases, zero, zero, zero, self.a.tensor, self.b.tensor]

    def error(self) -> torch.Tensor:
        return RESIDUAL(self.w.tensor, *self._args())

    def jacobians(self) -> tuple[list[torch.Tensor], torch.Tensor]:
        r, jac = RESIDUAL.jacobian(self.w.tensor, *self._args())
        return [jac], r

    def dim(self) -> int:
        return self.bu.tensor.shape[1] + self.a.tensor.shape[1] + self.w.tensor.shape[1]

    def _copy_impl(self, new_name: str | None = None) -> Constraint:
        return Constraint(self.w.copy(), *(getattr(self, k).copy() for k in NAMES), name=new_name)


def layer(points: int, rows: int, n: int, max_steps: int = 100) -> th.TheseusLayer:
    """A theseus layer solving the constraint for any batch of problems of this shape."""
    w = th.Vector(n, name="w", dtype=F64)
    bases = [th.Variable(torch.zeros(1, points, n, dtype=F64), name=k) for k in NAMES[:3]]
    objective = th.Objective(dtype=F64)
    objective.add(Constraint(w, *bases, th.Variable(torch.zeros(1, rows, n, dtype=F64), name="a"),
                             th.Variable(torch.zeros(1, rows, dtype=F64), name="b")))
    return th.TheseusLayer(th.LevenbergMarquardt(objective, th.CholeskyDenseSolver, max_iterations=max_steps,
                                                 abs_err_tolerance=1e-12, rel_err_tolerance=1e-8))


def time_theseus(p: dict[str, np.ndarray], backward: bool, repeats: int, device: str | torch.device = "cpu",
                 max_steps: int = 100) -> tuple[float, np.ndarray, int]:
    """(best seconds, solution [problems, n], its iterations: the most any problem took, or
    ``max_steps`` if one did not converge) for the problems ``p``, forward or forward + backward
    (the gradient of the same linear functional of w as ours)."""
    device = torch.device(device)
    problems, points, n = p["u"].shape
    solver = layer(points, p["a"].shape[1], n, max_steps)
    solver.to(device)
    args = [a.to(device) for a in residual_args(p)]
    weights = torch.linspace(-1, 1, n, dtype=F64, device=device)
    kwargs: dict[str, Any] = {"backward_mode": "implicit" if backward else "unroll", "damping": 1e-3, "adaptive_damping": True,
                              "track_best_solution": False, "verbose": False}

    def once() -> tuple[np.ndarray, int]:
        inputs = dict(zip(NAMES, (*args[:3], *args[6:])))
        inputs = {k: v.detach().requires_grad_(backward and k in NAMES[:3]) for k, v in inputs.items()}
        inputs["w"] = torch.zeros(problems, n, dtype=F64, device=device)
        with torch.set_grad_enabled(backward):
            sol, info = solver.forward(inputs, optimizer_kwargs=kwargs)
            if backward:
                torch.autograd.grad((sol["w"] * weights).sum(), [inputs[k] for k in NAMES[:3]])
        _sync(device)
        steps = info.converged_iter  # -1 where a problem hit the iteration limit
        return sol["w"].detach().cpu().numpy(), max_steps if bool((steps < 0).any()) else int(steps.max())

    seconds, (value, steps) = best_of(once, repeats)
    return seconds, value, steps
