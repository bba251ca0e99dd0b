"""Conservation laws on a probabilistic prediction: ProbConserv's Bayesian update, differentiably.

A probabilistic model predicts the field at n points as N(mu, Sigma) (a mean and, usually, a
diagonal Sigma = diag(var)). A linear conservation law G u = b (G [m, n], m small: a total mass,
one balance per time slice), observed with noise N(0, sigma_G^2 I_m), conditions it (Hansen et
al., "Learning Physical Models that Can Respect Conservation Laws", ICML 2023):

    A      = sigma_G^2 I_m + G Sigma G^T                      (m x m)
    mu~    = mu - Sigma G^T A^-1 (G mu - b)
    Sigma~ = Sigma - Sigma G^T A^-1 G Sigma = Sigma - U A^-1 U^T,   U = Sigma G^T [n, m]

With sigma_G = 0 the posterior mean satisfies G mu~ = b exactly and every posterior sample does
too; sigma_G -> inf gives back the prior. For a diagonal prior nothing n x n is formed: with
A = L L^T and W = L^-1 U^T [m, n], var~ = var - sum_k W_k^2 and mu~ = mu - W^T L^-1 (G mu - b),
O(n m^2). Everything is computed in float64 whatever the input dtype and cast back to the mean's
dtype; gradients come from plain autograd (in mu, var or Sigma, b and G).

``hard_projection`` is the HardC baseline, the orthogonal projection
mu - G^T (G G^T)^-1 (G mu - b) (the update with the same variance everywhere; variance unchanged).

``bounded_update`` adds bounds (e.g. a density >= 0): the most likely field under the diagonal
prior N(mu, diag(var)) that satisfies the law and the bounds (the mode of the sigma_G = 0
posterior within the bounds),

    argmin_u sum_i (u_i - mu_i)^2 / var_i   s.t.   G u = b,   lower <= u <= upper.

Batching: every input may carry leading batch axes [...], broadcast against each other. A
conservation law per time slice (one row over the nx points of that slice) is best passed with
time as a batch axis, mean/var [B, nt, nx], G [1, nx], b [B, nt, 1]: O(points). One dense G
[nt, nt * nx] over all space-time points gives the same answer at O(points * rows) cost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import optional_import
from .convex import CLARABEL, INFEASIBLE

F64 = torch.float64
BACKENDS = ("auto", "active_set", "cvxpylayers")
PIVOT_RTOL = 1e-12  # a Cholesky pivot of A below this fraction of A's diagonal entry: A is singular
PSD_RTOL = 1e-10  # a covariance eigenvalue below -this fraction of the largest: not positive semidefinite
VAR_FLOOR_RTOL = 1e-12  # log_likelihood floors variances at this fraction of the largest prior variance
BISECTION_STEPS = 200  # halvings of the multiplier's bracket (stops early once no midpoint is left)


@dataclass
class ConservedPosterior:
    """The posterior N(mean, Sigma~) after a conservation update, Sigma~ = Sigma - U A^-1 U^T.

    ``mean`` and ``var`` (the diagonal of Sigma~) have the input mean's dtype; the other fields
    are the float64 pieces the update was computed from, kept so that nothing n x n is formed
    for a diagonal prior. ``gaussian_mean`` is the float64 Gaussian posterior mean (``mean``
    before the cast; ``ConservationLayer`` with bounds replaces ``mean`` by the bounded
    estimate, while ``var``, ``covariance`` and ``sample`` stay those of the Gaussian posterior).
    """

    mean: Tensor  # [..., n]
    var: Tensor  # [..., n]
    factor: Tensor  # U = Sigma G^T [..., n, m], float64
    chol: Tensor  # lower Cholesky factor L of A [..., m, m], float64
    G: Tensor  # [..., m, n], float64
    sigma_g: Tensor  # [m], float64
    gaussian_mean: Tensor  # [..., n], float64
    prior_var: Tensor | None = None  # [..., n] for a diagonal prior, float64
    prior_cov: Tensor | None = None  # [..., n, n] for a full prior, float64

    def _whitened(self) -> Tensor:
        """W = L^-1 U^T [..., m, n]: U A^-1 U^T = W^T W."""
        return torch.linalg.solve_triangular(self.chol, self.factor.mT, upper=False)

    def covariance(self) -> Tensor:
        """The dense posterior covariance [..., n, n] (for tests and small n only)."""
        w = self._whitened()
        prior = torch.diag_embed(self.prior_var) if self.prior_cov is None else self.prior_cov
        return (prior - w.mT @ w).to(self.mean.dtype)

    def sample(self, n_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """Exact posterior samples [n_samples, ..., n] by Matheron's rule, no posterior Cholesky.

        z ~ N(0, Sigma) (sqrt(var) * eps for a diagonal prior, a Cholesky factor of the full
        prior covariance otherwise), e ~ N(0, sigma_G^2 I_m), sample = mu~ + z - U A^-1 (G z + e).
        With sigma_G = 0 every sample satisfies G x = b to round-off.
        """
        if not (isinstance(n_samples, int) and n_samples >= 1):
            raise ValueError(f"`n_samples` (={n_samples!r}) must be an integer >= 1.")
        mu = self.gaussian_mean
        kw = {"dtype": F64, "device": mu.device, "generator": generator}
        eps = torch.randn(n_samples, *mu.shape, **kw)
        if self.prior_cov is None:
            z = self.prior_var.clamp_min(0).sqrt() * eps
        else:
            z = (_psd_sqrt(self.prior_cov) @ eps.unsqueeze(-1)).squeeze(-1)
        m = self.chol.shape[-1]
        e = self.sigma_g * torch.randn(n_samples, *mu.shape[:-1], m, **kw)
        r = (self.G @ z.unsqueeze(-1)).squeeze(-1) + e
        correction = (self.factor @ torch.cholesky_solve(r.unsqueeze(-1), self.chol)).squeeze(-1)
        return (mu + z - correction).to(self.mean.dtype)

    def log_likelihood(self, u_true: Tensor) -> Tensor:
        """Mean over the points of log N(u_i; mean_i, var_i) [...] (marginal Gaussian densities).

        Variances are floored at ``VAR_FLOOR_RTOL`` (1e-12) times the largest prior variance of
        the problem (at least the smallest positive float64): with sigma_G = 0 some posterior
        variances are exactly zero, where the density would be infinite.
        """
        u = _tensor("u_true", u_true, self.mean.device)
        mean, var = self.mean.to(F64), self.var.to(F64)
        if u.shape[-1:] != mean.shape[-1:]:
            raise ValueError(f"`u_true` has shape {tuple(u.shape)} but its last axis must have the {mean.shape[-1]} "
                             f"points of `mean` {tuple(mean.shape)}.")
        prior = self.prior_var if self.prior_cov is None else self.prior_cov.diagonal(dim1=-2, dim2=-1)
        floor = (VAR_FLOOR_RTOL * prior.detach().amax(-1, keepdim=True)).clamp_min(torch.finfo(F64).tiny)
        var = torch.maximum(var, floor)
        logp = -0.5 * (math.log(2 * math.pi) + var.log() + (u - mean) ** 2 / var)
        return logp.mean(-1).to(self.mean.dtype)


# ----------------------------------------------------------------------------- checks


def _tensor(name: str, x: Any, device: torch.device | None) -> Tensor:
    """`x` as a float64 tensor (autograd kept), with a clear error for anything else."""
    try:  # numbers and lists as float64, not torch's default float32
        t = x.to(device) if torch.is_tensor(x) else torch.as_tensor(x, dtype=F64, device=device)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"`{name}` must be a tensor or array of numbers, got {type(x).__name__}.") from exc
    if t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"`{name}` must be real-valued, got dtype {t.dtype}.")
    t = t.to(F64)
    if not bool(torch.isfinite(t.detach()).all()):
        raise ValueError(f"`{name}` {tuple(t.shape)} has non-finite entries (NaN or inf); check the model's output.")
    return t


def _first_index(mask: Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in torch.nonzero(mask)[0])


def _rows(mean: Tensor, G: Any, b: Any) -> tuple[Tensor, Tensor, Tensor]:
    """mean [..., n], G [..., m, n], b [..., m] as float64, shapes checked."""
    if not torch.is_tensor(mean) or mean.ndim < 1 or not mean.is_floating_point():
        what = tuple(mean.shape) if torch.is_tensor(mean) else type(mean).__name__
        raise ValueError(f"`mean` must be a floating-point tensor [..., n], got {what}.")
    n = mean.shape[-1]
    mu = _tensor("mean", mean, mean.device)
    if G is None or b is None:
        raise ValueError("`G` and `b` (the conservation law G u = b) are required.")
    G, b = _tensor("G", G, mean.device), _tensor("b", b, mean.device)
    if G.ndim < 2 or G.shape[-1] != n:
        raise ValueError(f"`G` has shape {tuple(G.shape)} but must be [m, n] or [..., m, n] with n = {n} from "
                         f"`mean` {tuple(mean.shape)}; a single row is G[None].")
    m = G.shape[-2]
    if m == 0:
        raise ValueError(f"`G` {tuple(G.shape)} has no rows; pass at least one conservation law.")
    if b.ndim < 1 or b.shape[-1] != m:
        raise ValueError(f"`b` has shape {tuple(b.shape)} but must be [m] or [..., m] with m = {m} rows of "
                         f"`G` {tuple(G.shape)}; for one row per batch element give b a trailing axis of 1.")
    return mu, G, b


def _batch(**shapes: torch.Size) -> torch.Size:
    try:
        return torch.broadcast_shapes(*shapes.values())
    except RuntimeError as exc:
        listed = ", ".join(f"{k} {tuple(s)}" for k, s in shapes.items())
        raise ValueError(f"the batch axes do not broadcast: {listed} (batch axes of `mean`/`var`/`b`: all but the "
                         f"last; of `G`/`cov`: all but the last two).") from exc


def _sigma(sigma_g: Any, m: int, device: torch.device) -> Tensor:
    s = _tensor("sigma_g", sigma_g, device)
    if s.ndim > 1 or (s.ndim == 1 and s.shape[0] not in (1, m)):
        raise ValueError(f"`sigma_g` has shape {tuple(s.shape)} but must be a number or [m] with m = {m} rows of `G`.")
    if bool((s.detach() < 0).any()):
        raise ValueError(f"`sigma_g` (={s.detach().min().item():.6g}) must be >= 0 (the constraint noise's "
                         f"standard deviation; 0 enforces G u = b exactly).")
    return s.expand(m)


def _check_singular(A: Tensor, chol: Tensor, info: Tensor, what: str, fix: str, noise: Tensor | None = None) -> None:
    """Raise if A (or its Cholesky factor) shows a singular matrix, naming batch index and row.
    Rows with ``noise`` > 0 (sigma_g^2 on A's diagonal: positive definite by construction) fail
    only where the factorisation itself does."""
    diag = A.detach().diagonal(dim1=-2, dim2=-1)
    pivots = chol.detach().diagonal(dim1=-2, dim2=-1) ** 2
    ratio = torch.where(diag > 0, pivots / diag.clamp_min(torch.finfo(F64).tiny), torch.zeros_like(diag))
    bad_rows = (ratio < PIVOT_RTOL) | torch.isnan(ratio)
    if noise is not None:
        bad_rows = bad_rows & ~(noise.detach() > 0)
    failed = info != 0
    bad = failed | bad_rows.any(-1)
    if not bool(bad.any()):
        return
    index = _first_index(bad) if bad.ndim else ()
    if bool(failed[index]):
        row, pivot = int(info[index]) - 1, "<= 0"
    else:
        row = int(torch.nonzero(bad_rows[index])[0])
        pivot = f"{float(ratio[index][row]):.3g}"
    where = f"batch index {index}, " if index else ""
    top = float(diag[index].amax())  # the largest row's prior variance of G u
    fix = fix.replace("{scale}", f"{1e-6 * top ** 0.5:.2g}: 1e-6 times the largest row's prior standard deviation of G u" if top > 0
                      else "1e-6 times the scale of b")
    raise ValueError(f"{what} is singular ({where}row {row} of `G`, relative Cholesky pivot {pivot}): {fix}")


def _prior(mu: Tensor, var: Any, cov: Any) -> tuple[Tensor | None, Tensor | None]:
    n = mu.shape[-1]
    if (var is None) == (cov is None):
        raise ValueError("pass exactly one of `var` [..., n] (diagonal prior) and `cov` [..., n, n] (full prior), "
                         f"got {'both' if var is not None else 'neither'}.")
    if var is not None:
        var = _tensor("var", var, mu.device)
        if var.ndim < 1 or var.shape[-1] != n:
            raise ValueError(f"`var` has shape {tuple(var.shape)} but must be [..., n] with n = {n} from `mean` "
                             f"{tuple(mu.shape)}.")
        if bool((var.detach() < 0).any()):
            bad = var.detach() < 0
            raise ValueError(f"`var` has negative entries (min {var.detach().min().item():.6g} at index "
                             f"{_first_index(bad)}); variances must be >= 0 (e.g. softplus the model's output).")
        return var, None
    cov = _tensor("cov", cov, mu.device)
    if cov.ndim < 2 or cov.shape[-2:] != (n, n):
        raise ValueError(f"`cov` has shape {tuple(cov.shape)} but must be [..., n, n] with n = {n} from `mean` "
                         f"{tuple(mu.shape)}.")
    c = cov.detach()
    asym = (c - c.mT).abs().amax()
    if asym > 1e-8 * c.abs().amax().clamp_min(torch.finfo(F64).tiny):
        raise ValueError(f"`cov` is not symmetric (largest |cov - cov^T| = {asym.item():.3g}); pass (cov + cov^T) / 2.")
    if bool((c.diagonal(dim1=-2, dim2=-1) < 0).any()):
        raise ValueError(f"`cov` has negative variances on its diagonal (min "
                         f"{c.diagonal(dim1=-2, dim2=-1).min().item():.6g}); it must be positive semidefinite.")
    return None, cov


def _psd_sqrt(cov: Tensor) -> Tensor:
    """A factor R with R R^T = cov: Cholesky, or from eigh for a singular PSD cov."""
    chol, info = torch.linalg.cholesky_ex(cov)
    if not bool((info != 0).any()):
        return chol
    vals, vecs = torch.linalg.eigh(cov)
    low, high = vals[..., 0], vals[..., -1]
    if bool((low < -PSD_RTOL * high.clamp_min(torch.finfo(F64).tiny)).any()):
        i = _first_index(low < -PSD_RTOL * high)
        where = f"batch index {i}: " if i else ""
        raise ValueError(f"`cov` is not positive semidefinite ({where}eigenvalue {float(low[i]):.3g} against "
                         f"largest {float(high[i]):.3g}); samples would not have its variances. Pass a covariance, "
                         "e.g. V diag(max(lambda, 0)) V^T from its eigendecomposition.")
    return vecs * vals.clamp_min(0).sqrt().unsqueeze(-2)


# ----------------------------------------------------------------------------- updates


def conservation_update(mean: Tensor, var: Tensor | None = None, G: Tensor | None = None, b: Tensor | None = None,
                        sigma_g: float | Tensor = 0.0, *, cov: Tensor | None = None) -> ConservedPosterior:
    """ProbConserv's update of N(mean, Sigma) by G u = b + N(0, sigma_g^2 I) (module docstring).

    Args:
        mean: the prior mean [..., n].
        var: the diagonal prior's variances [..., n] (>= 0); or else
        cov: a full prior covariance [..., n, n] (symmetric positive semidefinite).
        G: the law's rows [m, n] or [..., m, n].
        b: its right-hand side [m] or [..., m].
        sigma_g: the law's noise, a number or one per row [m], >= 0 (0: enforce G u = b exactly).

    Returns the posterior: mean and var in mean's dtype, float64 inside. Cost O(n m^2) with
    ``var``, O(n^2 m) with ``cov``.
    """
    mu, G, b = _rows(mean, G, b)
    var, cov = _prior(mu, var, cov)
    m = G.shape[-2]
    sigma = _sigma(sigma_g, m, mu.device)
    prior_shape = var.shape[:-1] if var is not None else cov.shape[:-2]
    batch = _batch(mean=mu.shape[:-1], var_or_cov=prior_shape, G=G.shape[:-2], b=b.shape[:-1])
    U = var.unsqueeze(-1) * G.mT if var is not None else cov @ G.mT  # [..., n, m]
    A = G @ U
    A = 0.5 * (A + A.mT) + torch.diag_embed(sigma**2)
    chol, info = torch.linalg.cholesky_ex(A)
    _check_singular(A, chol, info, "A = sigma_g^2 I + G Sigma G^T",
                    "the prior variance is zero on that row's support, or the row is a linear combination of "
                    "other rows (or of other rows' supports with zero variance); pass sigma_g > 0 "
                    "(e.g. {scale}) or drop the row.",
                    noise=sigma)
    w = torch.linalg.solve_triangular(chol, U.mT, upper=False)  # [..., m, n]
    resid = (G @ mu.unsqueeze(-1)).squeeze(-1) - b  # [..., m]
    v = torch.linalg.solve_triangular(chol, resid.unsqueeze(-1), upper=False)
    post_mean = (mu - (w.mT @ v).squeeze(-1)).expand(*batch, mu.shape[-1])
    prior_diag = var if var is not None else cov.diagonal(dim1=-2, dim2=-1)
    post_var = prior_diag - (w**2).sum(-2)
    # Round-off below 0 goes. torch.where, not clamp_min, whose derivative at an exact 0 (a point whose
    # variance the law takes entirely) differs between torch versions: an exact 0 keeps its derivative,
    # the one-sided derivative of a variance (e.g. d/dv1 of v0 - v0^2 / (v0 + v1) at v1 = 0 is 1).
    post_var = torch.where(post_var >= 0, post_var, torch.zeros_like(post_var)).expand(*batch, mu.shape[-1])
    return ConservedPosterior(mean=post_mean.to(mean.dtype), var=post_var.to(mean.dtype), factor=U, chol=chol, G=G,
                              sigma_g=sigma, gaussian_mean=post_mean, prior_var=var, prior_cov=cov)


def hard_projection(mean: Tensor, G: Tensor, b: Tensor) -> Tensor:
    """HardC: the orthogonal projection mean - G^T (G G^T)^-1 (G mean - b) [..., n], float64 inside.

    Shapes and broadcasting as in ``conservation_update``; returns mean's dtype.
    """
    mu, G, b = _rows(mean, G, b)
    batch = _batch(mean=mu.shape[:-1], G=G.shape[:-2], b=b.shape[:-1])
    gram = G @ G.mT
    chol, info = torch.linalg.cholesky_ex(gram)
    _check_singular(gram, chol, info, "G G^T", "the row is zero or a linear combination of other rows; drop it.")
    resid = (G @ mu.unsqueeze(-1)).squeeze(-1) - b
    mult = torch.cholesky_solve(resid.unsqueeze(-1), chol)
    out = mu - (G.mT @ mult).squeeze(-1)
    return out.expand(*batch, mu.shape[-1]).to(mean.dtype)


# ----------------------------------------------------------------------------- bounds


def _bound(name: str, value: Any, fill: float, like: Tensor) -> Tensor:
    if value is None:
        return torch.full_like(like, fill)
    t = value.to(like.device, F64) if torch.is_tensor(value) else torch.as_tensor(value, dtype=F64, device=like.device)
    if torch.isnan(t.detach()).any():
        raise ValueError(f"`{name}` has NaN entries; use -inf / inf (or None) for no bound.")
    try:
        shape = torch.broadcast_shapes(t.shape, like.shape)
    except RuntimeError:
        shape = None
    if shape != like.shape:
        raise ValueError(f"`{name}` has shape {tuple(t.shape)}, which does not broadcast to the problem's "
                         f"{tuple(like.shape)} (batch axes and n points of `mean`).")
    return t.expand_as(like)


def _unravel(flat: int, shape: torch.Size) -> tuple[int, ...]:
    out = []
    for size in reversed(shape):
        out.append(flat % size)
        flat //= size
    return tuple(reversed(out))


def _active_set(mu: Tensor, var: Tensor, g: Tensor, b: Tensor, lo: Tensor, up: Tensor, batch: torch.Size) -> Tensor:
    """m = 1: x(lam) = clip(mu - lam var g, lo, up), lam by bisection on G x(lam) = b, then recomputed
    in closed form on the free set so that autograd gives the solution's gradient. Rows [B, n]."""
    with torch.no_grad():
        vg = var * g

        def gap(lam: Tensor) -> Tensor:  # G x(lam) - b, non-increasing in lam
            x = torch.minimum(torch.maximum(mu - lam[:, None] * vg, lo), up)
            return (g * x).sum(-1) - b

        # The box's range of G u: the law is feasible iff b lies in it.
        zero = torch.zeros_like(g)
        g_min = torch.where(g > 0, g * lo, torch.where(g < 0, g * up, zero)).sum(-1)
        g_max = torch.where(g > 0, g * up, torch.where(g < 0, g * lo, zero)).sum(-1)
        ext = torch.where(torch.isfinite(lo), lo.abs(), zero) + torch.where(torch.isfinite(up), up.abs(), zero)
        tol = 1e-12 * (b.abs() + (g.abs() * ext).sum(-1))
        infeasible = (b < g_min - tol) | (b > g_max + tol)
        if bool(infeasible.any()):
            i = int(torch.nonzero(infeasible)[0])
            bi, lo_i, up_i = b[i].item(), g_min[i].item(), g_max[i].item()
            by = lo_i - bi if bi < lo_i else bi - up_i
            raise ValueError(f"the bounds make G u = b infeasible at batch index {_unravel(i, batch)}: b = "
                             f"{bi:.10g} is outside [{lo_i:.10g}, {up_i:.10g}] by {by:.3g}, the range of "
                             f"G u over lower <= u <= upper; loosen the bounds or check b.")
        # Bracket: all breakpoints and the unbounded solution, widened until the gap changes sign.
        vgg = (vg * g).sum(-1)
        lam0 = ((g * mu).sum(-1) - b) / vgg
        safe = torch.where(vg != 0, vg, torch.ones_like(vg))
        breaks = torch.cat([torch.where((vg != 0) & torch.isfinite(s), (mu - s) / safe, torch.nan) for s in (lo, up)], -1)
        low = torch.minimum(lam0, torch.nan_to_num(breaks, nan=math.inf).amin(-1))
        high = torch.maximum(lam0, torch.nan_to_num(breaks, nan=-math.inf).amax(-1))
        width = torch.maximum(high - low, lam0.abs())
        width = torch.where(width > 0, width, torch.ones_like(width))
        for _ in range(2100):  # doubling reaches float64's largest numbers
            need_low, need_high = gap(low) < 0, gap(high) > 0
            if not bool((need_low | need_high).any()):
                break
            low = torch.where(need_low, low - width, low)
            high = torch.where(need_high, high + width, high)
            width = 2 * width
        for step in range(BISECTION_STEPS):
            mid = low + 0.5 * (high - low)
            if step % 16 == 15 and not bool(((mid > low) & (mid < high)).any()):
                break  # no float64 left between the ends of any bracket
            above = gap(mid) > 0
            low, high = torch.where(above, mid, low), torch.where(above, high, mid)
        lam = low + 0.5 * (high - low)
        free_value = mu - lam[:, None] * vg
        at_lower, at_upper = free_value <= lo, free_value >= up
        free = ~(at_lower | at_upper)
    # Differentiable: the same clipping pattern, lam from the free set in closed form.
    clipped = torch.where(at_lower, lo, up)
    fixed = g * torch.where(free, torch.zeros_like(clipped), clipped)  # no inf * 0 in the gradient
    num = torch.where(free, g * mu, torch.zeros_like(g)).sum(-1) + fixed.sum(-1) - b
    den = torch.where(free, var * g * g, torch.zeros_like(g)).sum(-1)
    ok = den > 0  # den = 0: every point with g != 0 sits on a bound, and x does not depend on lam
    lam = torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), lam)
    return torch.where(free, mu - lam[:, None] * var * g, clipped)


_LAYERS: dict[tuple, Any] = {}


def _cvxpy_layer(n: int, m: int, lower_idx: tuple[int, ...], upper_idx: tuple[int, ...]):
    """A CvxpyLayer for min |z|^2 s.t. Gs z = r, z[lower_idx] >= zl, z[upper_idx] <= zu (z: standardized u)."""
    key = (n, m, lower_idx, upper_idx)
    if key not in _LAYERS:
        cp = optional_import("cvxpy", "convex", "bounded_update's cvxpylayers backend")
        layers = optional_import("cvxpylayers.torch", "convex", "bounded_update's cvxpylayers backend")
        z = cp.Variable(n)
        gs, r = cp.Parameter((m, n)), cp.Parameter(m)
        params, constraints = [gs, r], [gs @ z == r]
        if lower_idx:
            zl = cp.Parameter(len(lower_idx))
            params.append(zl)
            constraints.append(z[list(lower_idx)] >= zl)
        if upper_idx:
            zu = cp.Parameter(len(upper_idx))
            params.append(zu)
            constraints.append(z[list(upper_idx)] <= zu)
        problem = cp.Problem(cp.Minimize(cp.sum_squares(z)), constraints)
        _LAYERS[key] = layers.CvxpyLayer(problem, parameters=params, variables=[z])
    return _LAYERS[key]


def _polish(z: Tensor, gs: Tensor, r: Tensor, zl: Tensor, zu: Tensor) -> Tensor | None:
    """The exact solution on the active set that the cone program's z suggests, or None.

    Interior-point answers of this problem are often good to only ~1e-5 (Clarabel through
    diffcp), but their active set is right: with the points on a bound fixed there, the rest
    solves min |z_F|^2 s.t. Gs_F z_F = r - Gs_notF z_notF in closed form (in torch, so autograd
    gives its gradient). It is returned when the KKT conditions hold at it (free points within
    their bounds, bound multipliers >= 0), trying looser and looser activity tolerances.
    zl, zu: [n] standardized bounds, -inf / inf where there is none.
    """
    zd = z.detach()
    scale = 1 + float(zd.abs().max())
    lo_c = torch.where(torch.isfinite(zl), zl, torch.zeros_like(zl))  # no inf * 0 in gradients
    up_c = torch.where(torch.isfinite(zu), zu, torch.zeros_like(zu))
    for tol in (1e-8, 1e-6, 1e-4, 1e-2):
        at_lower = torch.isfinite(zl) & (zd <= zl.detach() + tol * scale)
        at_upper = torch.isfinite(zu) & (zd >= zu.detach() - tol * scale) & ~at_lower
        free = ~(at_lower | at_upper)
        fixed = torch.where(at_lower, lo_c, torch.where(at_upper, up_c, torch.zeros_like(zl)))
        gs_free = gs * free
        chol, info = torch.linalg.cholesky_ex(gs_free @ gs_free.mT)
        if bool(info != 0):
            continue
        nu = -torch.cholesky_solve((r - gs @ fixed).unsqueeze(-1), chol).squeeze(-1)
        out = torch.where(free, -(gs_free.mT @ nu), fixed)
        with torch.no_grad():  # KKT: z = -Gs^T nu + mult_lower - mult_upper, multipliers >= 0
            mult = out + gs.mT @ nu
            slack = 1e-9 * (1 + float(out.abs().max()))
            ok = bool(((out >= zl - slack) & (out <= zu + slack)).all()
                      and (mult[at_lower] >= -slack).all() and (mult[at_upper] <= slack).all())
        if ok:
            return out
    return None


def _cvxpylayers(mu: Tensor, var: Tensor, G: Tensor, b: Tensor, lo: Tensor, up: Tensor, batch: torch.Size) -> Tensor:
    """One cone program per problem, in standardized units z = (u - mu) / sqrt(var), polished on
    its active set (``_polish``). Rows [B, ...]."""
    out = []
    for i in range(mu.shape[0]):
        sd = var[i].sqrt()
        gs = G[i] * sd
        r = b[i] - G[i] @ mu[i]
        lower, upper = torch.isfinite(lo[i].detach()), torch.isfinite(up[i].detach())
        zl = torch.where(lower, (torch.where(lower, lo[i], 0) - mu[i]) / sd, -math.inf)
        zu = torch.where(upper, (torch.where(upper, up[i], 0) - mu[i]) / sd, math.inf)
        lower_idx = tuple(torch.nonzero(lower).flatten().tolist())
        upper_idx = tuple(torch.nonzero(upper).flatten().tolist())
        args = [gs, r] + ([zl[list(lower_idx)]] if lower_idx else []) + ([zu[list(upper_idx)]] if upper_idx else [])
        layer = _cvxpy_layer(mu.shape[-1], G.shape[-2], lower_idx, upper_idx)
        hint = f"at batch index {_unravel(i, batch)}; the bounds may make G u = b infeasible"
        try:
            (z,) = layer(*(a.cpu() for a in args), solver_args=dict(CLARABEL))
        except Exception as exc:  # diffcp and cvxpy raise their own SolverError types
            if type(exc).__name__ != "SolverError":
                raise
            raise ValueError(f"cvxpylayers could not solve the bounded update {hint} ({exc}).") from exc
        z = z.to(device=mu.device, dtype=F64)
        with torch.no_grad():
            violation = torch.cat([(gs @ z - r).abs(), (zl - z).clamp_min(0), (z - zu).clamp_min(0)]).amax()
        if violation > INFEASIBLE * (1 + z.detach().abs().amax()):
            raise ValueError(f"the bounded update is infeasible {hint} (violation {violation.item():.3g}).")
        polished = _polish(z, gs, r, zl, zu)
        out.append(mu[i] + sd * (z if polished is None else polished))
    return torch.stack(out)


def bounded_update(mean: Tensor, var: Tensor, G: Tensor, b: Tensor, lower: float | Tensor | None = None,
                   upper: float | Tensor | None = None, *, backend: str = "auto") -> Tensor:
    """argmin_u sum_i (u_i - mean_i)^2 / var_i  s.t.  G u = b, lower <= u <= upper; [..., n].

    The most likely field under the diagonal prior N(mean, diag(var)) (equivalently, under the
    exact posterior with sigma_G = 0) that keeps the law and the bounds.

    Args:
        mean, var: the prior [..., n]; var > 0.
        G, b: the law, [m, n] or [..., m, n] and [m] or [..., m].
        lower, upper: numbers or tensors broadcasting to [..., n]; None or +-inf: unbounded.
        backend: "active_set" (m = 1 only; batched torch: bisection on the multiplier, then the
            multiplier in closed form on the free set so that autograd gives the exact gradient
            almost everywhere; G x = b to round-off), "cvxpylayers" (any m; one cone program per
            problem (Clarabel), whose active set then gives the exact answer in closed form, see
            ``_polish``; cvxpylayers' own answer, good to ~1e-5, if that fails) or "auto"
            (active_set when m = 1).
    """
    if backend not in BACKENDS:
        raise ValueError(f"`backend` (={backend!r}) must be one of {BACKENDS}.")
    mu, G, b = _rows(mean, G, b)
    if var is None:
        raise ValueError("`var` [..., n] (the diagonal prior's variances) is required by bounded_update.")
    var, _ = _prior(mu, var, None)
    if bool((var.detach() == 0).any()):
        raise ValueError(f"`var` has zero entries (index {_first_index(var.detach() == 0)}); bounded_update weighs "
                         f"points by 1 / var and needs var > 0.")
    m, n = G.shape[-2], mu.shape[-1]
    batch = _batch(mean=mu.shape[:-1], var=var.shape[:-1], G=G.shape[:-2], b=b.shape[:-1])
    if backend == "active_set" and m != 1:
        raise ValueError(f"backend='active_set' handles one row (m = 1), but `G` {tuple(G.shape)} has m = {m}; use "
                         f"backend='cvxpylayers' or 'auto'.")
    flat = batch.numel()
    mu_f = mu.expand(*batch, n).reshape(flat, n)
    var_f = var.expand(*batch, n).reshape(flat, n)
    G_f = G.expand(*batch, m, n).reshape(flat, m, n)
    b_f = b.expand(*batch, m).reshape(flat, m)
    lo = _bound("lower", lower, -math.inf, mu_f.reshape(*batch, n)).reshape(flat, n)
    up = _bound("upper", upper, math.inf, mu_f.reshape(*batch, n)).reshape(flat, n)
    if bool((lo.detach() > up.detach()).any()):
        i, j = _first_index(lo.detach() > up.detach())
        raise ValueError(f"`lower` > `upper` at batch index {_unravel(i, batch)}, point {j} "
                         f"({lo[i, j].item():.6g} > {up[i, j].item():.6g}); the bounds are infeasible.")
    zero_rows = (G_f.detach() == 0).all(-1)
    if bool(zero_rows.any()):
        i, row = _first_index(zero_rows)
        raise ValueError(f"row {row} of `G` is zero (batch index {_unravel(i, batch)}); drop it.")
    if backend == "active_set" or (backend == "auto" and m == 1):
        x = _active_set(mu_f, var_f, G_f[:, 0], b_f[:, 0], lo, up, batch)
    else:
        x = _cvxpylayers(mu_f, var_f, G_f, b_f, lo, up, batch)
    return x.reshape(*batch, n).to(mean.dtype)


class ConservationLayer(nn.Module):
    """ProbConserv as a layer: ``forward(mean, var, G, b)`` -> ``ConservedPosterior``.

    Args:
        sigma_g: the law's noise, a number or [m], >= 0 (0: exact).
        lower, upper: optional bounds (needs sigma_g = 0): the posterior's ``mean`` is then
            ``bounded_update``'s estimate; ``var``, ``covariance`` and ``sample`` stay those of
            the Gaussian posterior, which ignores the bounds.
        backend: ``bounded_update``'s backend.
    """

    def __init__(self, sigma_g: float | Tensor = 0.0, lower: float | Tensor | None = None,
                 upper: float | Tensor | None = None, backend: str = "auto"):
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"`backend` (={backend!r}) must be one of {BACKENDS}.")
        s = torch.as_tensor(sigma_g, dtype=F64)
        if not bool(((s >= 0) & torch.isfinite(s)).all()):
            raise ValueError(f"`sigma_g` (={sigma_g!r}) must be finite and >= 0.")
        if (lower is not None or upper is not None) and bool((s != 0).any()):
            raise ValueError(f"bounds enforce G u = b exactly, but `sigma_g` (={sigma_g!r}) is not 0; use sigma_g=0 "
                             f"with bounds, or drop the bounds.")
        self.sigma_g, self.lower, self.upper, self.backend = sigma_g, lower, upper, backend

    def forward(self, mean: Tensor, var: Tensor, G: Tensor, b: Tensor) -> ConservedPosterior:
        post = conservation_update(mean, var, G, b, self.sigma_g)
        if self.lower is not None or self.upper is not None:
            post.mean = bounded_update(mean, var, G, b, self.lower, self.upper, backend=self.backend)
        return post
