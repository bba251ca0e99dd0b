"""Convex constraints on a network's prediction: project it onto a polyhedron, differentiably.

For every problem of the batch, on the field itself (u [n]) or on basis coefficients
(w [N], u = B w):

    u* = argmin_u |u - u_hat|^2 + ridge |u|^2                       (no basis)
    w* = argmin_w |B w - u_hat|^2 + ridge |w|^2,   u* = B w*        (basis B [n, N])
    subject to  A u = b  (linear PDE residual rows, IC/BC),  G u <= h,  lower <= u[points] <= upper.

Two backends, one interface. ``"cvxpylayers"`` solves the general problem as a cone program
(CPU, one problem after another, gradients by differentiating the cone program). With equality
rows only, ``"closed_form"`` solves the KKT system in torch, batched and differentiable by plain
autograd: with H = M^T M + ridge I = L L^T (M = I or B) and the whitened variable z = L^T x,

    z* = z0 - C'^T (C' C'^T)^-1 (C' z0 - b),   z0 = L^-1 M^T u_hat,   C' = C L^-T,   x* = L^-T z*,

where C = A (or A B): one N x N and one q x q Cholesky per problem, never n x n. With a basis and
no rows (ridge least squares, the hard-constraint solve of a linear PDE) the gradient is in
closed form instead of autograd's (:class:`_RidgeLeastSquares`, 2.5-2.8x faster forward +
backward at batch 64). ``"auto"`` takes the closed form whenever there are no inequalities.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import optional_import
from ._solution import SolveError

BACKENDS = ("auto", "cvxpylayers", "closed_form")
INFEASIBLE = 1e-3  # a constraint violation, relative to the data's scale, that means "infeasible"
CLARABEL = {"solve_method": "Clarabel", "tol_gap_abs": 1e-10, "tol_gap_rel": 1e-10, "tol_feas": 1e-10}


@dataclass(frozen=True)
class Bounds:
    """lower <= u[points] <= upper. ``points`` [p]: indices into u (None: all of u); ``lower``
    and ``upper``: a number, [p] or [batch, p]; None leaves that side unbounded."""

    lower: float | Tensor | None = None
    upper: float | Tensor | None = None
    points: Tensor | None = None


@dataclass
class _Problem:
    """The constraints mapped onto the unknown x (u, or w with a basis), batched on the first
    axis: C x = d, E x <= f, lower <= S x <= upper (S x = x[points] without a basis)."""

    u_hat: Tensor  # [batch, n]
    basis: Tensor | None  # [batch, n, N]
    ridge: float
    C: Tensor | None = None  # [batch, q, N]
    d: Tensor | None = None  # [batch, q]
    E: Tensor | None = None  # [batch, r, N]
    f: Tensor | None = None  # [batch, r]
    points: np.ndarray | None = None  # [p]
    S: Tensor | None = None  # [batch, p, N], basis rows at `points`
    lower: Tensor | None = None  # [batch, p]
    upper: Tensor | None = None  # [batch, p]

    @property
    def has_inequalities(self) -> bool:
        return self.E is not None or self.lower is not None or self.upper is not None

    def field(self, x: Tensor) -> Tensor:
        """u [batch, n] from the unknown x."""
        return x if self.basis is None else (self.basis @ x.unsqueeze(-1)).squeeze(-1)

    def violation(self, x: Tensor) -> Tensor:
        """[batch]: the largest violation of any constraint at x (0 where all hold)."""
        def times(m: Tensor) -> Tensor:
            return (m @ x.unsqueeze(-1)).squeeze(-1)

        at = None if self.points is None else x[:, self.points] if self.S is None else times(self.S)
        gaps = [(times(self.C) - self.d).abs() if self.C is not None else None,
                (times(self.E) - self.f).clamp_min(0) if self.E is not None else None,
                (self.lower - at).clamp_min(0) if self.lower is not None else None,
                (at - self.upper).clamp_min(0) if self.upper is not None else None]
        worst = [g.amax(-1) for g in gaps if g is not None and g.shape[-1]]
        return torch.stack(worst).amax(0) if worst else x.new_zeros(x.shape[0])


def _batched(name: str, t: Tensor | float, batch: int, tail: tuple[int, ...], ref: str, like: Tensor) -> Tensor:
    """`t` as [batch, *tail]: it may lack the batch axis (shared by all problems) or be a number."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    if t.ndim == 0 or tuple(t.shape) == tail:
        return t.expand(batch, *tail)
    if tuple(t.shape) == (batch, *tail):
        return t
    want = f"{list(tail)} or {[batch, *tail]}"
    raise ValueError(f"`{name}` has shape {tuple(t.shape)} but must be {want} to match {ref}.")


def _pair(mat_name: str, vec_name: str, mat: Tensor | None, vec: Tensor | None, u_hat: Tensor) -> tuple[Tensor | None, Tensor | None]:
    """Validate rows (mat [batch?, q, n], vec [batch?, q]) on u; both or neither."""
    if (mat is None) != (vec is None):
        given, missing = (mat_name, vec_name) if vec is None else (vec_name, mat_name)
        raise ValueError(f"`{given}` was given without `{missing}`; pass both or neither.")
    if mat is None:
        return None, None
    batch, n = u_hat.shape
    if mat.ndim not in (2, 3) or mat.shape[-1] != n:
        raise ValueError(f"`{mat_name}` has shape {tuple(mat.shape)} but must be [q, n] or [batch, q, n] with n = {n} "
                         f"from `u_hat` {tuple(u_hat.shape)}.")
    q = mat.shape[-2]
    mat = _batched(mat_name, mat, batch, (q, n), f"`u_hat` {tuple(u_hat.shape)}", u_hat)
    vec = _batched(vec_name, vec, batch, (q,), f"`{mat_name}` {tuple(mat.shape)}", u_hat)
    return mat, vec


def _problem(u_hat: Tensor, A: Tensor | None, b: Tensor | None, G: Tensor | None, h: Tensor | None,
             bounds: Bounds | None, basis: Tensor | None, ridge: float) -> _Problem:
    """Check shapes and map every constraint onto the unknown, in one place for both backends."""
    if not torch.is_tensor(u_hat) or u_hat.ndim != 2 or not u_hat.is_floating_point():
        shape = tuple(u_hat.shape) if torch.is_tensor(u_hat) else type(u_hat).__name__
        raise ValueError(f"`u_hat` must be a floating-point tensor [batch, n], got {shape}; add a batch axis with u_hat[None].")
    if not ridge >= 0:
        raise ValueError(f"`ridge` (={ridge!r}) must be >= 0.")
    batch, n = u_hat.shape
    if basis is not None:
        if basis.ndim not in (2, 3) or basis.shape[-2] != n:
            raise ValueError(f"`basis` has shape {tuple(basis.shape)} but must be [n, N] or [batch, n, N] with n = {n} "
                             f"from `u_hat` {tuple(u_hat.shape)}.")
        basis = _batched("basis", basis, batch, tuple(basis.shape[-2:]), f"`u_hat` {tuple(u_hat.shape)}", u_hat)
    unknowns = n if basis is None else basis.shape[-1]
    on_x = (lambda m: m) if basis is None else (lambda m: m @ basis)
    p = _Problem(u_hat, basis, float(ridge))
    A, p.d = _pair("A", "b", A, b, u_hat)
    if A is not None:
        if A.shape[-2] > unknowns:
            what = "values of u" if basis is None else "basis functions"
            raise ValueError(f"{A.shape[-2]} equality rows (`A` {tuple(A.shape)}) on {unknowns} unknowns ({what}) are "
                             f"overdetermined and in general infeasible; use at most {unknowns} rows"
                             + (" or more basis functions." if basis is not None else "."))
        p.C = on_x(A)
    G, p.f = _pair("G", "h", G, h, u_hat)
    p.E = None if G is None else on_x(G)
    if bounds is not None and (bounds.lower is not None or bounds.upper is not None):
        pts = torch.arange(n) if bounds.points is None else torch.as_tensor(bounds.points)
        if pts.ndim != 1 or pts.dtype.is_floating_point or (len(pts) and not (0 <= int(pts.min()) and int(pts.max()) < n)):
            raise ValueError(f"`bounds.points` (shape {tuple(pts.shape)}) must be a 1-D integer tensor of indices in [0, {n}) "
                             f"into u of `u_hat` {tuple(u_hat.shape)}.")
        p.points = pts.cpu().numpy()
        ref = f"`bounds.points` {tuple(pts.shape)}"
        for side in ("lower", "upper"):
            if (value := getattr(bounds, side)) is not None:
                setattr(p, side, _batched(f"bounds.{side}", value, batch, (len(pts),), ref, u_hat))
        if basis is not None:
            p.S = basis[:, pts.to(basis.device)]
    return p


def _cholesky(m: Tensor) -> Tensor:
    """Lower Cholesky factor of a batch of SPD matrices; a singular one (redundant rows, a
    rank-deficient basis without ridge) gets a jitter of 1e-10 of its scale, so outputs stay finite."""
    chol, info = torch.linalg.cholesky_ex(m)
    if bool((info != 0).any()):
        scale = m.diagonal(dim1=-2, dim2=-1).abs().mean(-1).clamp_min(torch.finfo(m.dtype).tiny)
        eye = torch.eye(m.shape[-1], dtype=m.dtype, device=m.device)
        chol = torch.linalg.cholesky(m + 1e-10 * scale[:, None, None] * eye)
    return chol


def _project(z: Tensor, C: Tensor | None, d: Tensor | None) -> Tensor:
    """argmin |x - z|^2 s.t. C x = d: z - C^T (C C^T)^-1 (C z - d), batched; C [batch, q, N]."""
    if C is None or C.shape[-2] == 0:
        return z
    residual = (C @ z.unsqueeze(-1)).squeeze(-1) - d
    mult = torch.cholesky_solve(residual.unsqueeze(-1), _cholesky(C @ C.mT))
    return z - (C.mT @ mult).squeeze(-1)


class _RidgeLeastSquares(torch.autograd.Function):
    """w* = (B^T B + ridge I)^-1 B^T y for B [batch, m, N], y [batch, m], with the gradient in
    closed form: for H z = dL/dw*, dL/dB = (y - B w*) z^T - (B z) w*^T and dL/dy = B z. Two rank-1
    terms of B's size, where autograd through the Gram matrix would take two more products of
    B's size times N."""

    @staticmethod
    def forward(ctx, B: Tensor, y: Tensor, ridge: float) -> Tensor:
        n = B.shape[-1]
        chol = _cholesky(B.mT @ B + ridge * torch.eye(n, dtype=B.dtype, device=B.device))
        w = torch.cholesky_solve((y.unsqueeze(-2) @ B).mT, chol).squeeze(-1)  # B^T y as y^T B: row-major
        ctx.save_for_backward(B, y, w, chol)
        return w

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: Tensor):
        B, y, w, chol = ctx.saved_tensors
        z = torch.cholesky_solve(g.unsqueeze(-1), chol)  # [batch, N, 1]
        bz = (B @ z).squeeze(-1)  # [batch, m]
        grad_b = grad_y = None
        if ctx.needs_input_grad[0]:  # [r, -B z] @ [z^T; w^T]: both rank-1 terms into one output, one pass
            r = y - (B @ w.unsqueeze(-1)).squeeze(-1)
            grad_b = torch.stack([r, -bz], dim=-1) @ torch.cat([z.mT, w.unsqueeze(-2)], dim=-2)
        if ctx.needs_input_grad[1]:
            grad_y = bz
        return grad_b, grad_y, None


def _closed_form(p: _Problem) -> Tensor:
    if p.has_inequalities:
        raise ValueError("the closed form handles equality rows only (`A`, `b`); for `G`/`h` or `bounds` use "
                         "ConvexConstraint(backend='cvxpylayers') or backend='auto'.")
    if p.basis is None:  # H = (1 + ridge) I: whitening is a scale
        s = math.sqrt(1.0 + p.ridge)
        return _project(p.u_hat / s, None if p.C is None else p.C / s, p.d) / s
    if p.C is None or p.C.shape[-2] == 0:  # ridge least squares on the basis alone: its own gradient
        return _RidgeLeastSquares.apply(p.basis, p.u_hat, p.ridge)
    n_basis = p.basis.shape[-1]
    gram = p.basis.mT @ p.basis + p.ridge * torch.eye(n_basis, dtype=p.basis.dtype, device=p.basis.device)
    chol = _cholesky(gram)
    z0 = torch.linalg.solve_triangular(chol, p.basis.mT @ p.u_hat.unsqueeze(-1), upper=False)
    C = None if p.C is None else torch.linalg.solve_triangular(chol, p.C.mT, upper=False).mT
    z = _project(z0.squeeze(-1), C, p.d)
    return torch.linalg.solve_triangular(chol.mT, z.unsqueeze(-1), upper=True).squeeze(-1)


def equality_projection(u_hat: Tensor, A: Tensor | None = None, b: Tensor | None = None, *,
                        basis: Tensor | None = None, ridge: float = 0.0) -> Tensor:
    """u* [batch, n] for equality rows A u = b only, in closed form (see the module docstring).

    Args:
        u_hat: the prediction [batch, n].
        A, b: rows [q, n] / [q] or batched [batch, q, n] / [batch, q]; q <= unknowns.
        basis: optional B [n, N] or [batch, n, N]: u* = B w* with w* the constrained
            least-squares coefficients.
        ridge: weight of ridge |x|^2 on the unknown (u, or w with a basis).
    """
    p = _problem(u_hat, A, b, None, None, None, basis, ridge)
    return p.field(_closed_form(p))


def _parameters(p: _Problem) -> tuple[list[tuple[str, Tensor]], Tensor]:
    """The cvxpy parameters' values in layer order (their names fix the problem's structure),
    and the scale [batch] the right-hand sides were divided by.

    x* is homogeneous of degree one in the right-hand sides (u_hat, b, h, bounds), so solving
    with them divided by the size of u_hat and b and scaling x* back is exact, also in its
    derivatives; it keeps the cone program's accuracy whatever the units of u. (h and the bounds
    do not set the scale: a loose bound of 1e3 would push u_hat's digits below the tolerance.)
    """
    rhs = {"y": p.u_hat, "d": p.d, "f": p.f, "lower": p.lower, "upper": p.upper}
    scale = torch.stack([t.detach().abs().amax(-1) for t in (p.u_hat, p.d) if t is not None and t.shape[-1]]).amax(0)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    rhs = {k: None if t is None else t / scale[:, None] for k, t in rhs.items()}
    named = [("M", p.basis), ("y", rhs["y"]), ("C", p.C), ("d", rhs["d"]), ("E", p.E), ("f", rhs["f"]),
             ("S", p.S), ("lower", rhs["lower"]), ("upper", rhs["upper"])]
    return [(name, t.to(torch.float64)) for name, t in named if t is not None], scale


def _build_layer(p: _Problem, params: list[tuple[str, Tensor]]):
    """A CvxpyLayer for p's structure, taking the values of `params` in their order."""
    cp = optional_import("cvxpy", "convex", "the convex constraint layer")
    layers = optional_import("cvxpylayers.torch", "convex", "the convex constraint layer")
    x = cp.Variable(p.u_hat.shape[-1] if p.basis is None else p.basis.shape[-1])
    par = {name: cp.Parameter(tuple(t.shape[1:])) for name, t in params}
    fit = (par["M"] @ x if "M" in par else x) - par["y"]
    # One sum of squares: a separate ridge term costs the cone program digits (1e-5 instead of 1e-15).
    objective = cp.sum_squares(cp.hstack([fit, math.sqrt(p.ridge) * x]) if p.ridge else fit)
    constraints = []
    if "C" in par:
        constraints.append(par["C"] @ x == par["d"])
    if "E" in par:
        constraints.append(par["E"] @ x <= par["f"])
    at_points = par["S"] @ x if "S" in par else x[p.points] if p.points is not None else None
    if "lower" in par:
        constraints.append(at_points >= par["lower"])
    if "upper" in par:
        constraints.append(at_points <= par["upper"])
    problem = cp.Problem(cp.Minimize(objective), constraints)
    if not problem.is_dpp():  # a bug here, not the caller's: every product above is parameter @ variable
        raise RuntimeError("internal error: the convex constraint problem is not DPP.")
    return layers.CvxpyLayer(problem, parameters=list(par.values()), variables=[x])


class ConvexConstraint(nn.Module):
    """Project a prediction onto {A u = b, G u <= h, lower <= u[points] <= upper}, differentiably.

    Args:
        ridge: weight of ridge |x|^2 on the unknown (u, or w with a basis).
        backend: "cvxpylayers" (any constraints), "closed_form" (equality rows only; batched
            torch, fast) or "auto" (the closed form when there are no inequalities).
        solver_args: passed to cvxpylayers' solver (diffcp); default: Clarabel with tolerances
            1e-10, fast and accurate (~1e-8 in values, ~1e-6 in gradients) where SCS at its
            defaults stops near 1e-4 and SCS at eps=1e-9 is slow.
    """

    def __init__(self, ridge: float = 0.0, backend: str = "auto", solver_args: dict[str, Any] | None = None):
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"`backend` (={backend!r}) must be one of {BACKENDS}.")
        if not ridge >= 0:
            raise ValueError(f"`ridge` (={ridge!r}) must be >= 0.")
        self.ridge, self.backend = float(ridge), backend
        self.solver_args = dict(CLARABEL if solver_args is None else solver_args)
        self._layers: dict[tuple, Any] = {}  # one CvxpyLayer per problem structure, built on first use
        self.last_violation: Tensor | None = None  # [batch] of the last cvxpylayers solve, to log

    def forward(self, u_hat: Tensor, A: Tensor | None = None, b: Tensor | None = None, *, G: Tensor | None = None,
                h: Tensor | None = None, bounds: Bounds | None = None, basis: Tensor | None = None) -> Tensor:
        """u* [batch, n] from u_hat [batch, n]; constraint tensors may omit the batch axis."""
        p = _problem(u_hat, A, b, G, h, bounds, basis, self.ridge)
        return p.field(self._solve(p))

    def solve(self, u_hat: Tensor, A: Tensor | None = None, b: Tensor | None = None, *, G: Tensor | None = None,
              h: Tensor | None = None, bounds: Bounds | None = None, basis: Tensor | None = None) -> Tensor:
        """The unknown itself: w* [batch, N] with a basis, else u* [batch, n]."""
        return self._solve(_problem(u_hat, A, b, G, h, bounds, basis, self.ridge))

    def _solve(self, p: _Problem) -> Tensor:
        if self.backend == "closed_form" or (self.backend == "auto" and not p.has_inequalities):
            return _closed_form(p)
        params, scale = _parameters(p)
        key = (p.basis is None, p.ridge, tuple((name, tuple(t.shape[1:])) for name, t in params),
               None if p.points is None else p.points.tobytes())
        if key not in self._layers:
            self._layers[key] = _build_layer(p, params)
        hint = "the constraints may be infeasible (check that `lower` <= `upper` and that the rows agree)"
        try:
            (x,) = self._layers[key](*(t.cpu() for _, t in params), solver_args=self.solver_args)
        except Exception as exc:  # diffcp and cvxpy raise their own SolverError types
            if type(exc).__name__ != "SolverError":
                raise
            raise SolveError(f"cvxpylayers could not solve the convex constraint problem ({exc}); {hint}.") from exc
        x = x.to(device=p.u_hat.device, dtype=p.u_hat.dtype) * scale[:, None].to(p.u_hat.device)
        # Some solvers (Clarabel through diffcp) hand back a point for an infeasible problem
        # without raising: check the constraints ourselves.
        self.last_violation = p.violation(x.detach()) / scale.to(x.device)
        if bool((self.last_violation > INFEASIBLE).any()):
            bad = torch.nonzero(self.last_violation > INFEASIBLE).flatten().tolist()
            raise SolveError(f"cvxpylayers returned points that violate the constraints by up to "
                             f"{float(self.last_violation.max()):.3g} (relative) for problems {bad} of the batch; {hint}.")
        return x
