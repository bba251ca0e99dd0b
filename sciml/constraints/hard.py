"""The hard-constraint layer (PI-HC) and its mixture of experts (PI-HC-MoE).

A network gives n basis functions B on a space-time grid. The layer finds coefficients w* with

    w* = argmin_w  |PDE residual of (B w + c) at sampled points|^2 + |A w - b|^2 + ridge |w|^2

(c an optional fixed offset, A w = b linear initial/boundary rows) and returns u = B w* + c;
gradients reach B through the solve's adjoint. With experts, the grid is split into fixed
non-overlapping blocks (splits per axis); expert k solves its own w_k on points sampled in its
block, with the rows whose points lie there; blocks are stitched back without blending. The
derivatives are taken on the whole grid first, then partitioned. All experts of all batch
elements go through the solver as one batched call, on the executor given.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..pdes import PDE
from ._solution import Solution
from .adjoint import AbstractAdjoint
from .executors import Executor, LocalExecutor
from .fields import GridFields
from .solvers import AbstractSolver


@dataclass
class Rows:
    """Linear rows sum_f coefficients[f] * field_f(points) = target, each divided by ``scale``.

    ``points`` [q] are flat indices into the grid; coefficients are scalars or [q]; ``target``
    is [batch, q]; ``scale`` a scalar or [batch, q] (e.g. u0 for the relative IC rows).
    """

    points: Tensor
    coefficients: Mapping[str, float | Tensor]
    target: Tensor
    scale: float | Tensor = 1.0


@dataclass
class Partition:
    """Fixed blocks of a grid: ``splits[d]`` equal slabs along grid axis d (remainders spread)."""

    grid: tuple[int, ...]
    splits: tuple[int, ...]
    blocks: list[Tensor] = field(init=False)

    def __post_init__(self) -> None:
        if len(self.splits) != len(self.grid):
            raise ValueError(f"`splits` (={self.splits}) needs one entry per grid axis {self.grid}.")
        for n, s in zip(self.grid, self.splits):
            if isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= n:
                raise ValueError(f"`splits` (={self.splits}) must be integers between 1 and the grid size {self.grid}.")
        label = torch.zeros(self.grid, dtype=torch.int64)
        stride = 1
        for d in reversed(range(len(self.grid))):
            part = torch.arange(self.grid[d]) * self.splits[d] // self.grid[d]
            shape = [1] * len(self.grid)
            shape[d] = self.grid[d]
            label = label + stride * part.reshape(shape)
            stride *= self.splits[d]
        self.label = label.flatten()
        self.blocks = [torch.nonzero(self.label == k).flatten() for k in range(math.prod(self.splits))]

    @property
    def experts(self) -> int:
        return len(self.blocks)


@dataclass(frozen=True)
class _Residual:
    """[problems, points + rows + n]: PDE residual, linear rows and ridge for coefficients w.

    Every field is affine in w (f_k = M_k w + c_k) and the PDE residual is pointwise in the
    fields, so its Jacobian is sum_k diag(dR/df_k) M_k, with all the pointwise derivatives
    dR/df_k from one reverse pass on point-sized vectors. The solver only needs the normal
    equations: J^T J = J_pde^T J_pde + A^T A + ridge I, where the linear rows' Gram matrix
    A^T A and (on the CPU) their QR factor are computed once per solve (``prepare``), so an
    iteration costs one pass over the sampled points' bases and nothing of size points x
    points. The exact Hessian (for the implicit gradient at a nonzero residual) adds
    sum_kl M_k^T diag(r d2R/df_k df_l) M_l.
    """

    pde: PDE
    names: tuple[str, ...]
    ridge: float
    scale: float
    per_problem_args: ClassVar[bool] = True

    def _split(self, tensors):
        k = len(self.names)
        return tensors[:k], tensors[k:2 * k], tensors[2 * k:]

    def _fields(self, w: Tensor, bases, offsets) -> list[Tensor]:
        return [torch.baddbmm(c.unsqueeze(-1), m, w.unsqueeze(-1)).squeeze(-1) for m, c in zip(bases, offsets)]

    def _pde_rows(self, fields: list[Tensor]) -> Tensor:
        return self.scale * self.pde.residual(dict(zip(self.names, fields)))

    def _pointwise(self, *fields: Tensor) -> tuple[Tensor, ...]:
        """The residual rows and dR/df_k at every point, for every field k (the PDE's
        ``residual_slopes``: one vector-Jacobian product with ones unless it has a closed form)."""
        r, slopes = self.pde.residual_slopes(dict(zip(self.names, fields)))
        if self.scale != 1:
            r, slopes = self.scale * r, {k: self.scale * d for k, d in slopes.items()}
        return (r, *(slopes[k] for k in self.names))

    def __call__(self, w: Tensor, *tensors: Tensor) -> Tensor:
        bases, offsets, (a, b) = self._split(tensors)
        rows = (a @ w.unsqueeze(-1)).squeeze(-1) - b
        return torch.cat([self._pde_rows(self._fields(w, bases, offsets)), rows, math.sqrt(self.ridge) * w], dim=-1)

    def _pde_jacobian(self, w: Tensor, bases, offsets, out: Tensor | None = None) -> tuple[Tensor, Tensor, list[Tensor]]:
        fields = self._fields(w, bases, offsets)
        r, *slopes = self._pointwise(*fields)
        return r, self._combine(slopes, bases, out), fields

    @staticmethod
    def _combine(slopes: Sequence[Tensor], bases: Sequence[Tensor], out: Tensor | None = None) -> Tensor:
        """J_pde = sum_k diag(d_k) M_k [problems, points, n], written into ``out`` when given and
        autograd is off: a workspace reused by every iteration, since a fresh points x n
        allocation per iteration (page faults) costs as much as the arithmetic."""
        if out is not None and not torch.is_grad_enabled():
            jac = torch.mul(slopes[0].unsqueeze(-1), bases[0], out=out)
            for d, m in zip(slopes[1:], bases[1:]):
                jac.addcmul_(d.unsqueeze(-1), m)
            return jac
        jac = slopes[0].unsqueeze(-1) * bases[0]
        for d, m in zip(slopes[1:], bases[1:]):
            jac = torch.addcmul(jac, d.unsqueeze(-1), m)
        return jac

    def jacobian(self, w: Tensor, *tensors: Tensor) -> tuple[Tensor, Tensor]:
        bases, offsets, (a, b) = self._split(tensors)
        r_pde, jac_pde, _ = self._pde_jacobian(w, bases, offsets)
        ridge = math.sqrt(self.ridge) * torch.eye(w.shape[-1], dtype=w.dtype, device=w.device).expand(w.shape[0], -1, -1)
        r = torch.cat([r_pde, (a @ w.unsqueeze(-1)).squeeze(-1) - b, math.sqrt(self.ridge) * w], dim=-1)
        return r, torch.cat([jac_pde, a, ridge], dim=1)

    def prepare(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        """The arguments plus, once per solve, the linear rows condensed to n x n, and a workspace
        for the Jacobian: G = A^T A + ridge I, A^T b, and the rows' QR factorisation.

        With A = Q R (Householder, any rank) and z = Q^T b, |A w - b|^2 = |R w - z_1..n|^2 +
        |z_n+1..|^2: an iteration evaluates the rows' cost from R alone, never touching the rows
        (a padded expert's rows cost once per solve, not per step), to the precision of the
        rows evaluated directly (both round R w - z, A w - b at eps |A| |w|; forms built on A^T A
        instead lose what its conditioning cancels). G and A^T b come from R too, and the rows
        leave the arguments (the loop would copy them whenever it drops converged problems).
        Trailing zero rows (the padding of experts with fewer rows than the longest) are left out
        of the factorisation (:func:`_row_groups`). Under autograd (the unrolled adjoint) the rows
        are evaluated directly instead, and so they are on a GPU: there a pass over them costs
        microseconds, while torch's batched QR of tall matrices loops over the problems in cuSOLVER."""
        bases, _, (a, b) = self._split(tensors)
        if torch.is_grad_enabled() or a.device.type == "cuda":
            return self.prepare_backward(*tensors)
        n = a.shape[-1]
        r = a.new_zeros(*a.shape[:-2], n, n)
        z_top, rest = b.new_zeros(*b.shape[:-1], n), b.new_zeros(b.shape[:-1])
        for index, a_g, b_g in _grouped_rows(a, b, _row_groups(a, b)):
            q = a_g.shape[-2]
            if q == 0:
                continue  # no rows: R, z and the rest stay zero
            factors, tau = torch.geqrf(a_g)
            z = torch.ormqr(factors, tau, b_g.unsqueeze(-1), left=True, transpose=True).squeeze(-1)
            k = min(q, n)
            r_g, z_g, rest_g = factors[..., :k, :].triu(), z[..., :k], z[..., n:].pow(2).sum(-1)
            if index is None:
                r[..., :k, :], z_top[..., :k], rest = r_g, z_g, rest_g
            else:
                r[index, :k], z_top[index, :k], rest[index] = r_g, z_g, rest_g
        rt = r.transpose(-1, -2)
        gram = rt @ r + self.ridge * torch.eye(n, dtype=a.dtype, device=a.device)
        atb = (rt @ z_top.unsqueeze(-1)).squeeze(-1)
        return (*tensors[:-2], None, None, gram, atb, r, z_top, rest, torch.empty_like(bases[0]))

    def keep_for_backward(self, *prepared: Tensor) -> tuple[Tensor, Tensor]:
        """(G, A^T b) of :meth:`prepare`: what the implicit backward needs of the rows, n x n per
        problem, so that it does not form them again."""
        return prepared[-6], prepared[-5]

    def prepare_backward(self, *tensors: Tensor, kept: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, ...]:
        """What the implicit adjoint's backward needs (G and A^T b, the rows kept as they are):
        :meth:`prepare` without the factorisation, differentiable, the padding skipped as there;
        G and A^T b as the forward solve ``kept`` them where it did (outside autograd)."""
        bases, _, (a, b) = self._split(tensors)
        if kept is not None and not torch.is_grad_enabled():
            return (*tensors, *kept, None, None, None, torch.empty_like(bases[0]))
        n = a.shape[-1]
        groups = _row_groups(a, b) if a.device.type == "cpu" and not torch.is_grad_enabled() else [(None, a.shape[-2])]
        gram, atb = a.new_zeros(*a.shape[:-2], n, n), b.new_zeros(*b.shape[:-1], n)
        for index, a_g, b_g in _grouped_rows(a, b, groups):
            gram_g = a_g.transpose(-1, -2) @ a_g
            atb_g = (b_g.unsqueeze(-2) @ a_g).squeeze(-2)  # A^T b as b^T A: row-major, ~3x faster on a CPU
            if index is None:
                gram, atb = gram_g, atb_g
            else:
                gram[index], atb[index] = gram_g, atb_g
        gram = gram + self.ridge * torch.eye(n, dtype=a.dtype, device=a.device)
        return (*tensors, gram, atb, None, None, None, torch.empty_like(bases[0]))

    def normal_equations(self, w: Tensor, *prepared: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        *tensors, gram, atb, r_rows, z_top, rest, workspace = prepared
        bases, offsets, rows = self._split(tensors)
        r, jac, _ = self._pde_jacobian(w, bases, offsets, workspace)
        cost, grad = self._cost_and_gradient(w, r, jac, rows, gram, atb, r_rows, z_top, rest)
        return cost, grad, torch.baddbmm(gram, jac.transpose(-1, -2), jac)

    def newton_equations(self, w: Tensor, *prepared: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """:meth:`normal_equations` and the cost's exact Hessian (:meth:`linearise`) from one
        evaluation of the fields, for Newton steps. Under autograd (the unrolled adjoint) the
        normal equations stay differentiable and the Hessian, which only steers the steps, is not."""
        if torch.is_grad_enabled():
            return (*self.normal_equations(w, *prepared), self.linearise(w, *prepared)[0].detach())
        *tensors, gram, atb, r_rows, z_top, rest, workspace = prepared
        bases, offsets, rows = self._split(tensors)
        r, slopes, curvature = self._second_order(self._fields(w, bases, offsets))
        jac = self._combine(slopes, bases, workspace)
        cost, grad = self._cost_and_gradient(w, r, jac, rows, gram, atb, r_rows, z_top, rest)
        gauss = torch.baddbmm(gram, jac.transpose(-1, -2), jac)
        return cost, grad, gauss, self._add_curvature(gauss, r, curvature, bases, workspace)

    def _cost_and_gradient(self, w: Tensor, r: Tensor, jac: Tensor, rows: Sequence[Tensor], gram: Tensor, atb: Tensor,
                           r_rows: Tensor | None, z_top: Tensor | None, rest: Tensor | None) -> tuple[Tensor, Tensor]:
        """0.5 |r|^2 over the PDE rows r, the linear rows (as given, or condensed to R, z, rest)
        and the ridge, and its gradient J^T r (the rows' part G w - A^T b)."""
        if r_rows is None:
            a, b = rows
            row_cost = ((a @ w.unsqueeze(-1)).squeeze(-1) - b).pow(2).sum(-1)
        else:
            row_cost = ((r_rows @ w.unsqueeze(-1)).squeeze(-1) - z_top).pow(2).sum(-1) + rest
        cost = 0.5 * (r.pow(2).sum(-1) + row_cost + self.ridge * w.pow(2).sum(-1))
        # J^T r as r^T J: the row-major product streams J once, ~3x faster than J^T @ r on a CPU.
        return cost, torch.baddbmm(r.unsqueeze(-2) @ jac, w.unsqueeze(-2), gram, beta=1).squeeze(-2) - atb

    def _second_order(self, fields: list[Tensor]) -> tuple[Tensor, list[Tensor], dict[tuple[int, int], Tensor]]:
        """The residual r, slopes dR/df_k and the curvatures d2R/df_k df_l that are not
        identically zero, {(k, l): [problems, points]}, at every point, by reverse passes on
        point-sized vectors (outside any graph: for the backward only)."""
        with torch.enable_grad():
            fs = [f.detach().requires_grad_(True) for f in fields]
            r = self._pde_rows(fs)
            slopes = torch.autograd.grad(r.sum(), fs, create_graph=True, allow_unused=True)
            curvature = {}
            for k, d in enumerate(slopes):
                if d is None or not d.requires_grad:
                    continue  # R is linear in field k
                for l, h in enumerate(torch.autograd.grad(d.sum(), fs, retain_graph=True, allow_unused=True)):
                    if h is not None:
                        curvature[(k, l)] = h.detach()
        slopes = [torch.zeros_like(f) if d is None else d.detach().expand_as(f) for d, f in zip(slopes, fields)]
        return r.detach(), slopes, curvature

    def pullback(self, w: Tensor, mu: Tensor, g_cost: Tensor, *tensors: Tensor, linearised: tuple | None = None,
                 wanted: frozenset[int] | None = None) -> tuple[Tensor | None, ...]:
        """Gradients of -mu . F + g_cost cost with respect to every argument, F = J^T r the
        optimality condition at w (what the implicit adjoint needs), in closed form.
        ``linearised``: the second item of :meth:`linearise` at the same w (saves recomputing the
        pointwise derivatives; its workspace becomes the first basis' gradient). ``wanted``: the
        indices of the arguments whose gradients are needed (default all); the rows' (A, b)
        are None when neither is wanted, A's alone when only b's is.

        Per point i, with fields f_k = M_k w + c_k, slopes d_k = dR/df_k, s = sum_k d_k (M_k mu)
        and q_k = sum_l d2R/df_k df_l (M_l mu):
        d/dM_k = alpha_k w^T - r d_k mu^T, d/dc_k = alpha_k, alpha_k = -(s d_k + r q_k) + g_cost r d_k;
        the rows: d/dA = -(A w - b) mu^T - (A mu) w^T + g_cost (A w - b) w^T, d/db = A mu - g_cost (A w - b).
        """
        bases, offsets, (a, b) = self._split(tensors)
        if linearised is None:
            (r, slopes, curvature), spare = self._second_order(self._fields(w, bases, offsets)), None
        else:
            r, slopes, curvature, spare = linearised
        along = [(m @ mu.unsqueeze(-1)).squeeze(-1) for m in bases]  # M_k mu
        s = sum(d * t for d, t in zip(slopes, along))
        g = g_cost.unsqueeze(-1)
        alphas = []
        for k, d in enumerate(slopes):
            q = sum((h * along[l] for (k_, l), h in curvature.items() if k_ == k), torch.zeros_like(r))
            alphas.append((g * r - s) * d - r * q)
        # Each gradient row is a combination of w and mu: two passes writing points x n once, into
        # the spare workspace for the first (fresh memory costs as much as the arithmetic).
        grad_bases = []
        for k, (alpha, d) in enumerate(zip(alphas, slopes)):
            if k == 0 and spare is not None and not torch.is_grad_enabled():
                grad = torch.mul(alpha.unsqueeze(-1), w.unsqueeze(-2), out=spare)
            else:
                grad = alpha.unsqueeze(-1) * w.unsqueeze(-2)
            grad_bases.append(grad.addcmul_((r * d).unsqueeze(-1), mu.unsqueeze(-2), value=-1))
        k = len(bases)
        if wanted is not None and not wanted & {2 * k, 2 * k + 1}:
            return (*grad_bases, *alphas, None, None)
        both = a @ torch.stack([w, mu], dim=-1)  # [A w, A mu]: one pass over the rows
        rows, a_mu = both[..., 0] - b, both[..., 1]
        grad_a = None
        if wanted is None or 2 * k in wanted:
            # Two outer products in place (a matrix product with an inner size of 2 runs ~7x slower).
            grad_a = ((g * rows - a_mu).unsqueeze(-1) * w.unsqueeze(-2)).addcmul_(rows.unsqueeze(-1), mu.unsqueeze(-2), value=-1)
        return (*grad_bases, *alphas, grad_a, a_mu - g * rows)

    def hessian(self, w: Tensor, *prepared: Tensor) -> Tensor:
        """d(J^T r)/dw [problems, n, n] (see :meth:`linearise`)."""
        return self.linearise(w, *prepared)[0]

    def linearise(self, w: Tensor, *prepared: Tensor) -> tuple[Tensor, tuple]:
        """(d(J^T r)/dw [problems, n, n], what :meth:`pullback` reuses at the same w).

        d(J^T r)/dw is J^T J plus the curvature sum_kl M_k^T diag(r h_kl) M_l,
        h_kl = d2R/df_k df_l (those not identically zero). The curvature is symmetric, so it is
        Y + Y^T with Y = sum_k M_k^T sum_{l >= k} diag(c_kl) M_l, c_kk = r h_kk / 2 and
        c_kl = r (h_kl + h_lk) / 2: one points x n pass and one product per field with curvature,
        in the Jacobian's workspace once J^T J is formed (no fresh points x n memory)."""
        *tensors, gram, _, _, _, _, workspace = prepared
        bases, offsets, _ = self._split(tensors)
        r, slopes, curvature = self._second_order(self._fields(w, bases, offsets))
        jac = self._combine(slopes, bases, workspace)
        hess = self._add_curvature(torch.baddbmm(gram, jac.transpose(-1, -2), jac), r, curvature, bases, workspace)
        return hess, (r, slopes, curvature, workspace)

    def _add_curvature(self, hess: Tensor, r: Tensor, curvature: Mapping[tuple[int, int], Tensor], bases: Sequence[Tensor],
                       workspace: Tensor) -> Tensor:
        """hess + sum_kl M_k^T diag(r h_kl) M_l (see :meth:`linearise`), the Jacobian's workspace
        reused (it is free once J^T J and J^T r are formed)."""
        zero = torch.zeros_like(r)
        for k, m_k in enumerate(bases):
            coefficients = {l: 0.5 * r * (curvature.get((k, l), zero) + (curvature.get((l, k), zero) if l != k else 0))
                            for l in range(k, len(bases)) if (k, l) in curvature or (l, k) in curvature}
            if not coefficients:
                continue
            combined = self._combine(list(coefficients.values()), [bases[l] for l in coefficients], workspace)
            half = m_k.transpose(-1, -2) @ combined
            hess = hess + half + half.transpose(-1, -2)
        return hess


def _row_groups(a: Tensor, b: Tensor) -> list[tuple[Tensor | None, int]]:
    """The problems grouped by how many rows they use: [(index of the problems or None for all,
    rows q)], rows q.. of every problem in the group being zero in A and b (the padding of
    experts with fewer rows than the longest, which adds nothing to any cost or Gram matrix).
    Lengths are rounded up to powers of two, so a batch has a few groups at most; one group (no
    indexing) when every problem uses more than half as many rows as the longest. A row counts
    as zero when its squared entries sum to zero (a NaN or inf counts as used); entries below
    1e-154, whose squares underflow, would have added less than float64 resolves to any cost."""
    q = a.shape[-2]
    if q == 0 or a.ndim != 3:
        return [(None, q)]
    used = (torch.linalg.vector_norm(a, dim=-1) != 0) | (b != 0)  # [problems, q], no temporary of A's size
    lengths = torch.where(used.any(-1), q - used.flip(-1).to(torch.uint8).argmax(-1), 0).tolist()
    longest = max(lengths)
    if min(lengths) * 2 > longest:
        return [(None, longest)]
    groups: dict[int, list[int]] = {}
    for i, length in enumerate(lengths):
        groups.setdefault((length - 1).bit_length() if length else -1, []).append(i)
    return [(torch.tensor(index, device=a.device), max(lengths[i] for i in index)) for index in groups.values()]


def _grouped_rows(a: Tensor, b: Tensor, groups: list[tuple[Tensor | None, int]]):
    """(index, A, b) of each group of :func:`_row_groups`: its problems' first q rows."""
    for index, q in groups:
        yield (index, a[..., :q, :], b[..., :q]) if index is None else (index, a[index, :q], b[index, :q])


class HardConstraint(nn.Module):
    """u = B w* + c with the PDE residual minimised at sampled points, per expert block.

    Args:
        pde: the PDE (its ``residual`` of named fields).
        grid: the space-time grid shape the bases live on, e.g. (n_t, n_x).
        splits: experts per grid axis, e.g. (1, 4) for 4 spatial experts; all ones = PI-HC.
        points: residual points sampled per expert and call.
        ridge: weight of the ridge rows on w.
        residual_scale: factor on the PDE residual rows, to bring them to the scale of the IC/BC
            rows (e.g. t_end when time is measured in seconds but the rows are O(1)).
        solver, adjoint, max_steps: see :func:`~sciml.constraints.least_squares`.
        dtype: precision of the solve (float64 by default, whatever the network's).
        executor: where the experts are solved (default: in this process, one batched call).
    """

    def __init__(self, pde: PDE, grid: Sequence[int], splits: Sequence[int] | None = None, points: int = 1000,
                 ridge: float = 1e-4, solver: AbstractSolver | None = None, adjoint: AbstractAdjoint | None = None,
                 max_steps: int = 50, dtype: torch.dtype | None = torch.float64, executor: Executor | None = None,
                 residual_scale: float = 1.0):
        super().__init__()
        if isinstance(points, bool) or not isinstance(points, int) or points < 1:
            raise ValueError(f"`points` (={points!r}) must be an integer >= 1.")
        if not ridge >= 0:
            raise ValueError(f"`ridge` (={ridge!r}) must be >= 0.")
        self.pde, self.points, self.ridge, self.residual_scale = pde, points, float(ridge), float(residual_scale)
        self.partition = Partition(tuple(grid), tuple(splits or (1,) * len(grid)))
        self.solver, self.adjoint, self.max_steps, self.dtype = solver, adjoint, max_steps, dtype
        self.executor = executor or LocalExecutor()
        # device copies of what does not change between steps (the expert labels, the padded
        # blocks, each rows set's grouping by expert): on a GPU each copy is a wait for the device
        self._on_device: dict[Any, Any] = {}
        self.last_solution: Solution | None = None
        self.reset_stats()

    def reset_stats(self) -> None:
        """Restart the counts :meth:`stats` reports."""
        self._solves, self._steps, self._problems, self._ok = 0, 0, 0, None

    def stats(self) -> dict[str, float]:
        """The solves since :meth:`reset_stats`: ``solves``, ``problems`` (batch x experts each),
        ``successful`` (the fraction of problems that converged) and ``steps`` (solver iterations
        per solve, mean). Counted on the device, read here: no host sync per solve."""
        ok = 0 if self._ok is None else int(self._ok)
        return {"solves": self._solves, "problems": self._problems, "successful": ok / max(self._problems, 1),
                "steps": self._steps / max(self._solves, 1)}

    def sample_points(self, generator: torch.Generator | None = None, device: torch.device | str | None = None) -> Tensor:
        """[experts, p] flat grid indices, p = min(points, smallest block), without replacement.
        On the CPU (or with a CPU ``generator``) by a permutation per block; on a GPU ``device``
        there, from its random stream (the p smallest of uniform keys per block), with no copy."""
        p = min(self.points, min(len(b) for b in self.partition.blocks))
        device = torch.device(device) if device is not None else torch.device("cpu")
        if device.type == "cpu" or generator is not None:
            return torch.stack([b[torch.randperm(len(b), generator=generator)[:p]] for b in self.partition.blocks])
        return _smallest_keys(*self._device_copy("blocks", device), p)

    def _device_copy(self, what: str, device: torch.device) -> Any:
        """The partition's labels or its blocks padded to [experts, longest] (with the padding
        mask), on ``device``, copied there once."""
        key = (what, str(device))
        if key not in self._on_device:
            if what == "label":
                self._on_device[key] = self.partition.label.to(device)
            else:
                blocks = self.partition.blocks
                longest = max(len(b) for b in blocks)
                padded = torch.stack([torch.cat([b, b.new_zeros(longest - len(b))]) for b in blocks])
                padding = torch.arange(longest)[None] >= torch.tensor([len(b) for b in blocks])[:, None]
                self._on_device[key] = (padded.to(device), padding.to(device))
        return self._on_device[key]

    def forward(self, bases: Mapping[str, Tensor] | GridFields, offsets: Mapping[str, Tensor] | None = None,
                rows: Rows | None = None, points: Tensor | None = None, return_fields: bool = False) -> Tensor | dict[str, Tensor]:
        """u [batch, *grid] from field bases {name: [batch, *grid, n]} (one per field the PDE
        needs, "u" included) or a :class:`GridFields` (which computes them at the sampled and row
        points only: the same values, for a fraction of the work), optional offsets
        {name: [batch, *grid]}, rows and sampled points [experts, p] (default: a fresh draw).
        With ``return_fields``, every field of ``bases`` the same way, {name: [batch, *grid]}:
        each grid point's field from its own expert's coefficients (an expert's derivatives, not
        those of the stitched u across a block edge)."""
        names = tuple(self.pde.fields)
        given = bases.names if isinstance(bases, GridFields) else tuple(bases)
        if missing := [n for n in (*names, "u") if n not in given]:
            raise ValueError(f"`bases` lacks the fields {missing} that {type(self.pde).__name__}'s residual needs.")
        u_basis = bases.b if isinstance(bases, GridFields) else bases["u"]
        batch, n = u_basis.shape[0], u_basis.shape[-1]
        if tuple(u_basis.shape[1:-1]) != self.partition.grid:
            raise ValueError(f"the basis grid {tuple(u_basis.shape[1:-1])} differs from the layer's `grid` {self.partition.grid}.")
        if isinstance(bases, GridFields) and return_fields:
            bases = bases.full()
        offs = {k: (offsets[k].reshape(batch, -1) if offsets and k in offsets else None) for k in given}
        if points is not None:
            self._check_points(points)
        idx = (self.sample_points(device=u_basis.device) if points is None else points).to(u_basis.device)
        k_exp, p = idx.shape
        # Every field at the sampled points and the rows' points, in one call.
        row_pts = rows.points.to(u_basis.device) if rows is not None else idx.new_zeros(0)
        wanted = tuple(dict.fromkeys((*names, *(rows.coefficients if rows is not None else ()))))
        if unknown := [k for k in wanted if k not in given]:
            raise ValueError(f"`rows` use the fields {unknown}, which `bases` lacks.")
        where = torch.cat([idx.reshape(-1), row_pts])
        if isinstance(bases, GridFields):
            at = bases.at(where, wanted)
        else:
            at = {k: bases[k].reshape(batch, -1, n)[:, where] for k in wanted}
        gathered = [at[name][:, : k_exp * p].reshape(batch, k_exp, p, n) for name in names]
        offset_pts = [offs[name][:, idx] if offs[name] is not None else torch.zeros(batch, k_exp, p, dtype=u_basis.dtype, device=u_basis.device) for name in names]
        a, b = self._rows({k: v[:, k_exp * p:] for k, v in at.items()}, rows, batch, n, u_basis, offs)
        args = [g.reshape(batch * k_exp, p, n) for g in gathered] + [o.reshape(batch * k_exp, p) for o in offset_pts] + [a, b]
        fn = _Residual(self.pde, names, self.ridge, self.residual_scale)
        y0 = torch.zeros(batch * k_exp, n, dtype=u_basis.dtype, device=u_basis.device)
        sol = self.executor.solve(fn, y0, args, solver=self.solver, adjoint=self.adjoint, max_steps=self.max_steps, dtype=self.dtype)
        self.last_solution = sol
        ok = sol.successful.sum()
        self._ok = ok if self._ok is None else self._ok + ok
        self._solves, self._steps, self._problems = self._solves + 1, self._steps + sol.steps, self._problems + len(sol.result)
        w = sol.value.reshape(batch, k_exp, n)
        label = self._device_copy("label", u_basis.device)
        if return_fields:
            return {name: _stitch(bases[name], w, label, offs[name], self.partition.grid) for name in given}
        return _stitch(u_basis, w, label, offs["u"], self.partition.grid)

    def _check_points(self, points: Tensor) -> None:
        """Given sampled points must be [experts, p] flat grid indices, row k in expert k's block."""
        k_exp = self.partition.experts
        if points.ndim != 2 or points.shape[0] != k_exp or points.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"`points` has {points.shape[0] if points.ndim else 0} rows but the layer has {k_exp} experts: "
                             f"pass integer grid indices [experts, p] (shape {tuple(points.shape)}, dtype {points.dtype} given), "
                             "e.g. from `layer.sample_points()`.")
        size = self.partition.label.numel()
        flat = points.cpu()
        if bool(((flat < 0) | (flat >= size)).any()):
            raise ValueError(f"`points` must be flat indices into the grid, 0 .. {size - 1}; got {int(flat.min())} .. {int(flat.max())}.")
        outside = self.partition.label[flat] != torch.arange(k_exp)[:, None]
        if bool(outside.any()):
            k = int(outside.any(-1).nonzero()[0])
            raise ValueError(f"expert {k}'s `points` lie outside its block ({int(outside[k].sum())} of {points.shape[1]}): "
                             "row k of `points` must sample expert k's block, as `layer.sample_points()` does.")

    def _rows(self, at_rows: Mapping[str, Tensor], rows: Rows | None, batch: int, n: int, like: Tensor,
              offsets: Mapping[str, Tensor | None]) -> tuple[Tensor, Tensor]:
        """(A [batch*K, q_max, n], b [batch*K, q_max]): each expert's rows, zero-padded, from the
        fields at the rows' points {name: [batch, q, n]}. The rows hold for the fields the layer
        returns, B w + c: the offsets' part of each row moves to the right-hand side."""
        k_exp = self.partition.experts
        if rows is None:
            return like.new_zeros(batch * k_exp, 0, n), like.new_zeros(batch * k_exp, 0)
        pts = rows.points.to(like.device)
        a = sum(torch.as_tensor(c, dtype=like.dtype, device=like.device)[..., None] * at_rows[name] for name, c in rows.coefficients.items())
        scale = torch.as_tensor(rows.scale, dtype=like.dtype, device=like.device)
        a = a / (scale[..., None] if scale.ndim else scale)
        target = rows.target.to(like).expand(batch, len(pts))
        for name, c in rows.coefficients.items():
            if offsets.get(name) is not None:
                target = target - torch.as_tensor(c, dtype=like.dtype, device=like.device) * offsets[name][:, pts].to(like)
        b = target / scale
        groups, q_max = self._row_groups(rows.points, like.device)
        a_out = like.new_zeros(batch, k_exp, q_max, n)
        b_out = like.new_zeros(batch, k_exp, q_max)
        for k, mine in enumerate(groups):
            a_out[:, k, : len(mine)] = a[:, mine]
            b_out[:, k, : len(mine)] = b[:, mine]
        return a_out.reshape(batch * k_exp, q_max, n), b_out.reshape(batch * k_exp, q_max)

    def _row_groups(self, points: Tensor, device: torch.device) -> tuple[list[Tensor], int]:
        """Each expert's rows (indices into ``points``, on ``device``) and the most any expert has.
        Counted on the CPU once per rows set (keyed by its points: a model builds the same rows
        every step), so a GPU step does not wait for a bincount and each expert's nonzero."""
        key = ("rows", str(device), tuple(points.shape), points.device.type, points.data_ptr(), points._version)  # _version: in-place edits
        cached = self._on_device.get(key)
        if cached is not None and cached[0] is points:
            return cached[1], cached[2]
        owner = self.partition.label[points.cpu()]
        q_max = int(torch.bincount(owner, minlength=self.partition.experts).max()) if len(points) else 0
        groups = [torch.nonzero(owner == k).flatten().to(device) for k in range(self.partition.experts)]
        self._on_device = {k: v for k, v in self._on_device.items() if k[0] != "rows"}  # one rows set at a time
        self._on_device[key] = (points, groups, q_max)  # the points kept: their memory is not reused while cached
        return groups, q_max


def _smallest_keys(blocks: Tensor, padding: Tensor, p: int) -> Tensor:
    """[experts, p]: p entries of each row of ``blocks`` [experts, longest] drawn without
    replacement, uniformly, where ``padding`` is False: the p smallest of uniform random keys
    (padding keyed above every draw), on the blocks' device."""
    keys = torch.rand(blocks.shape, device=blocks.device).masked_fill_(padding, 2.0)
    return blocks.gather(1, keys.topk(p, dim=1, largest=False, sorted=False).indices)


def _stitch(b: Tensor, w: Tensor, label: Tensor, offset: Tensor | None, grid: tuple[int, ...]) -> Tensor:
    """u [batch, *grid]: each grid point's basis row times the coefficients w [batch, K, n] of
    its expert ``label`` [points], plus the offset. Every expert's value at every point by one
    batched product (K values per point), then each point's own: no points x n temporary, forward
    or backward, which would cost several passes over the basis."""
    batch, n = b.shape[0], b.shape[-1]
    every = torch.bmm(b.reshape(batch, -1, n), w.to(b.dtype).transpose(1, 2))  # [batch, points, K]
    f = every.squeeze(-1) if w.shape[1] == 1 else every.gather(2, label.expand(batch, -1).unsqueeze(-1)).squeeze(-1)
    return (f if offset is None else f + offset).reshape(batch, *grid)
