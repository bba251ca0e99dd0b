"""The generalised porous medium equation u_t = div(k(u) grad u) by P1 finite elements (DOLFINx).

Cases (REFERENCES.md section 2): heat (k constant), porous medium (k = u^m) and Stefan (k a step
at u*), on 1D intervals with the reference boundary conditions and exact solutions, and on an
unstructured triangle mesh of the unit square with no-flux boundaries and random initial data.

One scheme serves every case. It is written in the Kirchhoff variable K(u) = int_0^u k(s) ds,
whose gradient is minus the flux: find u_h in the P1 Lagrange space V_h with

    sum_i m_i (D_t u)_i v_i + int grad(I_h K(u_h)) . grad v dx = 0     for all v in V_h, v = 0 on Gamma_D,
    i.e.  M_L D_t u + A K(u) = 0  on the nodes off the Dirichlet boundary Gamma_D,

where m_i = int phi_i dx is the lumped mass (also the dataset's quadrature weights, so
weights . u = int u_h dx), A the stiffness matrix, I_h nodal interpolation and D_t backward Euler
(or BDF2). PETSc SNES (Newton, LU) solves each step with the Jacobian M_L a0/dt + A diag(k(u)).
Why this form rather than int k(u_h) grad u_h . grad v:
- in 1D the two coincide when that integral is exact, and no quadrature rule meets the step of k;
- with lumped mass and A an M-matrix (P1 on a Delaunay mesh, which is what ``square_space``
  builds) the scheme keeps a discrete maximum principle: PME solutions stay >= 0, no undershoot
  ahead of a front;
- the Stefan step becomes the Lipschitz K = (u - u*)_+; k sampled at quadrature points would
  instead hold a front still until the interpolated u passes u* inside the cell ahead of it.
The columns of A sum to zero, so the equations summed give D_t (weights . u) = inflow, where the
inflow is the sum of the residual rows of the Dirichlet nodes (the variationally consistent
boundary flux): mass balances to solver tolerance, and is conserved with no-flux boundaries.

Regularisation. PME: k = (u_+)^m + delta with delta >= 0 (default 0). The degenerate k = 0 at
u = 0 needs no regularisation here: the lumped mass keeps the Jacobian invertible where k = 0,
and K = (u_+)^{m+1}/(m+1) is C^1 for every m > 0. Stefan: the step is a linear ramp of
half-width eps, k_eps(u) = clip((u - u* + eps) / (2 eps), 0, 1), so that K_eps is C^1 and Newton
converges quadratically; |K_eps - (u - u*)_+| <= eps/4, and the solutions converge as eps -> 0.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import mpi4py.MPI as MPI  # before dolfinx: the wheel otherwise does not find libmpi

import dolfinx
import dolfinx.fem.petsc
import numpy as np
import ufl
from petsc4py import PETSc
from scipy.spatial import Delaunay

from .... import __version__
from ....errors import ConfigError, SciMLError
from ...schema import PDEDataset, shape_only
from ...xdmf import dolfinx_mesh
from ..analytic import CASES, exact_solution
from ..base import Generator, Sample, check_int, check_real, rng_for

# ---------------------------------------------------------------------------------------------
# Conductivity laws: k(u) and its Kirchhoff transform K(u) = int_0^u k, both nodal (numpy).


class Conductivity(Protocol):
    def conductivity(self, u: np.ndarray) -> np.ndarray: ...  # k(u)

    def kirchhoff(self, u: np.ndarray) -> np.ndarray: ...  # K(u), K' = k


@dataclass(frozen=True)
class Constant:
    """Heat: k(u) = k."""

    k: float

    def conductivity(self, u: np.ndarray) -> np.ndarray:
        return np.full_like(u, self.k)

    def kirchhoff(self, u: np.ndarray) -> np.ndarray:
        return self.k * u


@dataclass(frozen=True)
class PorousMedium:
    """PME: k(u) = (u_+)^m + delta."""

    m: float
    delta: float = 0.0

    def conductivity(self, u: np.ndarray) -> np.ndarray:
        return np.maximum(u, 0.0) ** self.m + self.delta

    def kirchhoff(self, u: np.ndarray) -> np.ndarray:
        return np.maximum(u, 0.0) ** (self.m + 1) / (self.m + 1) + self.delta * u


@dataclass(frozen=True)
class SmoothedStep:
    """Stefan: k = 1[u >= u*], smoothed to a linear ramp over [u* - eps, u* + eps]."""

    u_star: float
    eps: float

    def conductivity(self, u: np.ndarray) -> np.ndarray:
        return np.clip((u - self.u_star + self.eps) / (2 * self.eps), 0.0, 1.0)

    def kirchhoff(self, u: np.ndarray) -> np.ndarray:
        ramp = np.clip(u - self.u_star + self.eps, 0.0, 2 * self.eps)
        return ramp**2 / (4 * self.eps) + np.maximum(u - self.u_star - self.eps, 0.0)


# ---------------------------------------------------------------------------------------------
# The 2D exact solution (the 1D reference problems' are in `sciml.data.generators.analytic`).


def pme_barenblatt(points: np.ndarray, t: float, m: float, centre: Sequence[float] = (0.5, 0.5), r0: float = 0.2) -> np.ndarray:
    """The 2D Barenblatt solution of u_t = div(u^m grad u): a compactly supported spreading mound.

    With tau = tau0 + t/(m+1), a = 1/(m+1), b = a/2, kappa = m / (4 (m+1)^2):
    u = tau^{-a} (C - kappa |x - centre|^2 tau^{-2b})_+^{1/m}, supported on |x - centre| <= r0 at t = 0,
    with peak 1 there; the support radius grows like tau^b. `points` [n, 2] -> [n].
    """
    a, kappa = 1 / (m + 1), m / (4 * (m + 1) ** 2)
    tau0 = kappa * r0**2  # makes the peak 1 at t = 0
    tau = tau0 + t / (m + 1)
    r2 = ((np.asarray(points) - np.asarray(centre)) ** 2).sum(-1)
    C = kappa * r0**2 * tau0**-a
    return tau**-a * np.maximum(C - kappa * r2 * tau**-a, 0.0) ** (1 / m)


# ---------------------------------------------------------------------------------------------
# Discrete spaces.


@dataclass
class FEMSpace:
    """P1 Lagrange on a mesh, with the operators the scheme needs.

    Points are the dof coordinates sorted lexicographically (so a 1D mesh runs left to right);
    every array the solver takes or returns is in this order.
    """

    points: np.ndarray  # [n_points, dim] float64
    cells: np.ndarray  # [n_cells, dim + 1] int64, indices into points
    cell_type: str  # "interval" | "triangle"
    weights: np.ndarray  # [n_points] lumped mass m_i = int phi_i dx
    stiffness: Any  # PETSc Mat A_ij = int grad phi_j . grad phi_i dx, in points order

    @property
    def dim(self) -> int:
        return self.points.shape[1]

    @classmethod
    def from_mesh(cls, mesh: Any) -> FEMSpace:
        V = dolfinx.fem.functionspace(mesh, ("Lagrange", 1))
        dim = mesh.geometry.dim
        dofs = np.empty((V.dofmap.index_map.size_local, dim))
        # P1 dofs sit on the geometry nodes, in the same local order per cell: exact coordinates
        dofs[V.dofmap.list] = mesh.geometry.x[mesh.geometry.dofmaps[0], :dim]
        order = np.lexsort(dofs.T[::-1])
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        u, v = ufl.TrialFunction(V), ufl.TestFunction(V)
        stiffness = dolfinx.fem.petsc.assemble_matrix(dolfinx.fem.form(ufl.inner(ufl.grad(u), ufl.grad(v)) * ufl.dx))
        stiffness.assemble()
        index = PETSc.IS().createGeneral(order.astype(PETSc.IntType), comm=PETSc.COMM_SELF)
        stiffness = stiffness.permute(index, index)  # entry (i, j) is A[order[i], order[j]]
        mass = dolfinx.fem.assemble_vector(dolfinx.fem.form(v * ufl.dx)).array
        return cls(points=dofs[order].copy(), cells=rank[V.dofmap.list].astype(np.int64),
                   cell_type=mesh.topology.cell_name(), weights=mass[order].copy(), stiffness=stiffness)


def interval_space(nx: int, a: float, b: float) -> FEMSpace:
    """[a, b] cut into `nx` equal cells."""
    return FEMSpace.from_mesh(dolfinx.mesh.create_interval(MPI.COMM_SELF, nx, [a, b]))


def square_space(n: int, seed: int = 0, jitter: float = 0.25) -> FEMSpace:
    """An unstructured Delaunay triangulation of the unit square with about (n + 1)^2 vertices.

    The vertices of an n x n grid have their interior ones moved by up to `jitter` * h in each
    direction (a fixed `seed`, so every sample of a dataset shares the mesh); scipy's Delaunay
    triangulation connects them. Delaunay makes the P1 stiffness matrix an M-matrix.
    """
    g = np.linspace(0.0, 1.0, n + 1)
    points = np.stack(np.meshgrid(g, g, indexing="ij"), axis=-1).reshape(-1, 2)
    inner = np.all((points > 0) & (points < 1), axis=1)
    points[inner] += np.random.default_rng(seed).uniform(-jitter, jitter, (inner.sum(), 2)) / n
    cells = Delaunay(points).simplices.astype(np.int64)
    e1, e2 = points[cells[:, 1]] - points[cells[:, 0]], points[cells[:, 2]] - points[cells[:, 0]]
    cells = cells[np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]) > 1e-12 / n**2]  # no slivers on the hull
    return FEMSpace.from_mesh(dolfinx_mesh(points, cells, "triangle"))


# ---------------------------------------------------------------------------------------------
# Time stepping.


class SolverError(SciMLError):
    """Newton did not converge even after the step was halved `max_halvings` times."""

    exit_code = 3


@dataclass(frozen=True)
class Newton:
    """Expert knobs of the Newton solve of each time step (PETSc SNES, LU)."""

    rtol: float = 1e-10  # residual reduction
    atol: float = 1e-11  # absolute residual, relative to the size of the mass term M_L u / dt
    max_it: int = 25
    max_halvings: int = 8  # a failed step is retried as two half steps, recursively


@dataclass(frozen=True)
class Dirichlet:
    """u = value(t) on the points where `where(points)` is True."""

    where: Callable[[np.ndarray], np.ndarray]
    value: Callable[[float], float]


@dataclass
class GPMESolution:
    t: np.ndarray  # [n_frames]
    u: np.ndarray  # [n_frames, n_points]
    inflow: np.ndarray  # [n_frames] mass that entered through the Dirichlet boundary since t[0]
    newton_iterations: int
    halvings: int  # failed steps retried as half steps

    def mass(self, weights: np.ndarray) -> np.ndarray:
        """[n_frames] int u_h dx = weights . u."""
        return self.u @ weights


_BDF = {"euler": (1.0, -1.0, 0.0), "bdf2": (1.5, -2.0, 0.5)}  # D_t u = (a0 u + a1 u_n + a2 u_{n-1}) / dt


class _Integrator:
    """Implicit steps of M_L D_t u + A K(u) = 0 by Newton (PETSc SNES, LU); u = g on Dirichlet nodes.

    Keeps what the steps share: the previous state for BDF2, the inflow so far, counters.
    """

    def __init__(self, space: FEMSpace, law: Conductivity, dirichlet: Sequence[Dirichlet], newton: Newton):
        self.space, self.law, self.dirichlet, self.newton = space, law, list(dirichlet), newton
        self.masks = [np.asarray(bc.where(space.points), dtype=bool) for bc in self.dirichlet]
        self.fixed = np.logical_or.reduce(self.masks, axis=0) if self.masks else np.zeros(len(space.points), dtype=bool)
        self.fixed_is = PETSc.IS().createGeneral(np.flatnonzero(self.fixed).astype(PETSc.IntType), comm=PETSc.COMM_SELF)
        A = space.stiffness
        self.J = A.duplicate(copy=True)
        self.J.setOption(PETSc.Mat.Option.KEEP_NONZERO_PATTERN, True)  # zeroRows must keep it for the next copy
        self.x, self.F = A.createVecs()
        self.work, self.diag = A.createVecs()
        self.snes = PETSc.SNES().create(PETSc.COMM_SELF)
        self.snes.setType("newtonls")
        self.snes.getLineSearch().setType("bt")
        self.snes.getKSP().setType("preonly")
        self.snes.getKSP().getPC().setType("lu")
        self.snes.setFunction(self._residual, self.F)
        self.snes.setJacobian(self._jacobian, self.J)
        self.u_prev: np.ndarray | None = None  # u one step back; None: the next step is backward Euler
        self.inflow = self.inflow_prev = 0.0
        self.iterations = self.halvings = 0

    def advance(self, u: np.ndarray, t: float, dt: float, scheme: str, depth: int = 0) -> np.ndarray:
        """u at t + dt from u at t; a failed Newton solve is retried as two backward Euler half steps."""
        a0, a1, a2 = _BDF[scheme if self.u_prev is not None else "euler"]
        self.step = (a0, a1 * u + (a2 * self.u_prev if a2 else 0.0), self.space.weights / dt)
        self.g = np.zeros(len(u))
        for bc, mask in zip(self.dirichlet, self.masks):
            self.g[mask] = bc.value(t + dt)
        u_new = self._newton(u)
        if u_new is None:
            if depth >= self.newton.max_halvings:
                raise SolverError(f"Newton did not converge at t = {t + dt:.6g} (step {dt:.3g}, halved {depth} "
                                  f"times) for {self.law}. Use more time steps per frame, a finer mesh or a "
                                  "wider regularisation.")
            self.halvings += 1
            mid = self.advance(u, t, dt / 2, "euler", depth + 1)
            end = self.advance(mid, t + dt / 2, dt / 2, "euler", depth + 1)
            self.u_prev = None  # BDF2 restarts with an Euler step
            return end
        # The inflow obeys the mass's time discretisation, D_t I = sum of the Dirichlet rows, so
        # weights . u - I stays constant to solver tolerance.
        rate = self._rows(u_new, self.F)[self.fixed].sum()
        inflow = (dt * rate - a1 * self.inflow - a2 * self.inflow_prev) / a0
        self.u_prev, self.inflow_prev, self.inflow = u, self.inflow, inflow
        return u_new

    def _newton(self, guess: np.ndarray) -> np.ndarray | None:
        scale = self.step[2]
        size = np.linalg.norm(scale * np.maximum(np.abs(guess), 1.0))  # of the mass term M_L u / dt
        self.snes.setTolerances(rtol=self.newton.rtol, atol=self.newton.atol * size, stol=0.0,
                                max_it=self.newton.max_it)
        self.x.array[:] = np.where(self.fixed, self.g, guess)
        self.snes.solve(None, self.x)
        if self.snes.getConvergedReason() <= 0:
            return None
        self.iterations += self.snes.getIterationNumber()
        return self.x.array.copy()

    def _rows(self, u: np.ndarray, F: Any) -> np.ndarray:
        """The residual M_L (a0 u + history)/dt + A K(u) of every node into F, Dirichlet rows unchanged."""
        a0, history, scale = self.step
        self.work.array[:] = self.law.kirchhoff(u)
        self.space.stiffness.mult(self.work, F)
        f = F.array
        f += scale * (a0 * u + history)
        return f

    def _residual(self, snes: Any, x: Any, F: Any) -> None:
        u = x.array_r
        self._rows(u, F)[self.fixed] = u[self.fixed] - self.g[self.fixed]

    def _jacobian(self, snes: Any, x: Any, J: Any, P: Any) -> None:
        """P = M_L a0/dt + A diag(k(u)), identity rows on Dirichlet nodes."""
        a0, _, scale = self.step
        self.space.stiffness.copy(P, structure=PETSc.Mat.Structure.SAME_NONZERO_PATTERN)
        self.work.array[:] = self.law.conductivity(x.array_r)
        P.diagonalScale(None, self.work)
        self.diag.array[:] = scale * a0
        P.setDiagonal(self.diag, addv=PETSc.InsertMode.ADD_VALUES)
        P.zeroRows(self.fixed_is, diag=1.0)


def solve_gpme(
    space: FEMSpace,
    law: Conductivity,
    u0: np.ndarray,
    t: np.ndarray,
    *,
    dirichlet: Sequence[Dirichlet] = (),
    steps_per_frame: int = 1,
    scheme: str = "euler",
    newton: Newton = Newton(),
) -> GPMESolution:
    """Solve u_t = div(k(u) grad u) from u(t[0]) = u0 [n_points] and return u at the times t [n_frames].

    Each interval between frames takes `steps_per_frame` equal steps of `scheme` ("euler":
    backward Euler; "bdf2": second order, started by one Euler step); boundaries not in
    `dirichlet` are no-flux. A step whose Newton solve fails is retried as two half steps
    (backward Euler) up to `newton.max_halvings` times, then `SolverError` is raised.
    """
    if scheme not in _BDF:
        raise ConfigError(f"`scheme` (={scheme!r}) must be one of {list(_BDF)}.")
    steps_per_frame = check_int("solve_gpme", "steps_per_frame", steps_per_frame, 1)
    t = np.asarray(t, dtype=np.float64)
    u = np.array(u0, dtype=np.float64)
    if u.shape != (len(space.points),):
        raise ConfigError(f"`u0` has shape {list(u.shape)}; it must have one value per mesh point, [{len(space.points)}].")
    if t.ndim != 1 or len(t) < 1 or np.any(np.diff(t) <= 0):
        raise ConfigError(f"`t` (={t!r}) must be a 1-D array of increasing times.")
    integrator = _Integrator(space, law, dirichlet, newton)
    frames, inflow = [u.copy()], [0.0]
    for t_n, t_next in zip(t[:-1], t[1:]):
        dt = (t_next - t_n) / steps_per_frame
        for s in range(steps_per_frame):
            u = integrator.advance(u, t_n + s * dt, dt, scheme)
        frames.append(u.copy())
        inflow.append(integrator.inflow)
    return GPMESolution(t=t, u=np.array(frames), inflow=np.array(inflow),
                        newton_iterations=integrator.iterations, halvings=integrator.halvings)


# ---------------------------------------------------------------------------------------------
# Generators: one PDE parameter drawn per sample, everything else shared by the dataset.


def _bumps(points: np.ndarray, rng: np.random.Generator, count: int = 3) -> np.ndarray:
    """Random initial data in [0, 1] on the unit square: `count` Gaussian bumps, clipped at 1
    (so that most samples have hot cores at 1, above any Stefan u*)."""
    centres = rng.uniform(0.2, 0.8, (count, 2))
    widths = rng.uniform(0.05, 0.15, count)
    heights = rng.uniform(0.5, 1.5, count)
    r2 = ((points[:, None, :] - centres[None]) ** 2).sum(-1)
    return np.minimum((heights * np.exp(-r2 / (2 * widths**2))).sum(-1), 1.0)


def _value_range(owner: str, name: str, value: Any, check: Callable[[float], bool], need: str) -> tuple[float, float]:
    """A fixed number v -> (v, v); a pair [lo, hi] -> (lo, hi); each must pass `check`."""
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    fix = f"Give a number, or [low, high] to draw it uniformly per sample; each {need}."
    if len(values) not in (1, 2):
        raise ConfigError(f"{owner}: `{name}` (={value!r}) must be a number or a pair [low, high]. {fix}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not np.isfinite(v) or not check(v):
            raise ConfigError(f"{owner}: `{name}` (={value!r}) is not valid. {fix}")
    lo, hi = float(values[0]), float(values[-1])
    if lo > hi:
        raise ConfigError(f"{owner}: `{name}` (={value!r}) has low > high; write it as [{hi}, {lo}].")
    return lo, hi


class _GPMEGenerator(Generator):
    """The GPME with one parameter (`param`) per sample, on a 1D interval (the reference
    problem of REFERENCES.md, initial data from the exact solution) or on an unstructured mesh of
    the unit square (`dim=2`: no-flux boundaries, random Gaussian bumps as initial data).

    `nt` frames in [0, t_end], `substeps` time steps between frames; `nx` cells (1D) or grid
    cells per side of the square before its vertices are jittered and re-triangulated (2D).
    """

    pde: ClassVar[str]
    case: ClassVar[str]  # the 1D reference problem in `analytic.CASES`: domain, time span, exact solution
    param: ClassVar[str]  # the per-sample parameter's name
    need: ClassVar[str]  # what a valid value of it is, for error messages
    scheme: ClassVar[str] = "euler"
    t_end_2d: ClassVar[float]

    def _setup(self, value: Any, dim: int, nx: int | None, nt: int, substeps: int, t_end: float | None) -> None:
        if dim not in (1, 2) or isinstance(dim, bool):
            raise ConfigError(f"{self.name}: `dim` (={dim!r}) must be 1 (interval) or 2 (unit square).")
        self.dim = int(dim)
        self.nx = check_int(self.name, "nx", (256 if dim == 1 else 32) if nx is None else nx, 2)
        self.nt = check_int(self.name, "nt", nt, 2)
        self.substeps = check_int(self.name, "substeps", substeps, 1)
        default = CASES[self.case].t_range[1] if dim == 1 else self.t_end_2d
        self.t_end = check_real(self.name, "t_end", default if t_end is None else t_end, positive=True)
        self.bounds = _value_range(self.name, self.param, value, self._valid, self.need)
        setattr(self, self.param, self.bounds[0] if self.bounds[0] == self.bounds[1] else list(self.bounds))
        self._space: FEMSpace | None = None

    def _valid(self, value: float) -> bool:
        return value > 0

    @abstractmethod
    def law(self, value: float) -> Conductivity:
        """k(u) for the parameter `value`."""

    def exact(self, t: np.ndarray, value: float) -> np.ndarray:
        """[len(t), n_points] the 1D reference problem's exact solution (at t = 0: the initial data)."""
        return exact_solution(self.case, value, self.space.points[:, 0], t)

    @abstractmethod
    def dirichlet(self, value: float) -> list[Dirichlet]:
        """The 1D reference problem's Dirichlet boundaries."""

    @property
    def space(self) -> FEMSpace:
        if self._space is None:
            self._space = interval_space(self.nx, *CASES[self.case].x_range) if self.dim == 1 else square_space(self.nx)
        return self._space

    @property
    def times(self) -> np.ndarray:
        return np.linspace(0.0, self.t_end, self.nt)

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__ | {"_space": None}  # PETSc objects do not pickle; workers rebuild them

    def layout(self, n: int) -> PDEDataset:
        space, n_points = self.space, len(self.space.points)
        return PDEDataset(
            pde=self.pde, u=shape_only((n, self.nt, n_points)), grid={"t": self.times},
            params=shape_only((n, 1)), param_names=[self.param], u0=shape_only((n, n_points)),
            generator=f"sciml {__version__}, DOLFINx {dolfinx.__version__} P1 FEM, {self.scheme}, Newton (PETSc SNES)",
            mesh_points=space.points, mesh_cells=space.cells, cell_type=space.cell_type,
            weights=space.weights, common_params=self.config(),
        )

    def sample(self, i: int, seed: int) -> Sample:
        rng = rng_for(seed, i)
        value = float(rng.uniform(*self.bounds))
        space = self.space
        if self.dim == 1:
            u0, bcs = self.exact(np.zeros(1), value)[0], self.dirichlet(value)
        else:
            u0, bcs = _bumps(space.points, rng), []
        try:
            sol = solve_gpme(space, self.law(value), u0, self.times, dirichlet=bcs,
                             steps_per_frame=self.substeps, scheme=self.scheme)
        except SolverError as exc:
            raise SolverError(f"{self.name} sample {i} (seed {seed}, {self.param} = {value:.6g}): {exc}") from exc
        return Sample(u=sol.u, params=np.array([value]), u0=u0)


def _on(x: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda points: np.isclose(points[:, 0], x)


class HeatFEM(_GPMEGenerator):
    """Heat equation u_t = k u_xx. 1D: x in [0, 2 pi], u0 = sin x, u = 0 at both ends, exact
    e^{-kt} sin x, t in [0, 1]; BDF2 in time. `k`: a number or [low, high] (default the
    ProbConserv training range U[1, 5])."""

    name = "heat_fem"
    description = "heat equation u_t = div(k grad u), P1 FEM (DOLFINx), 1D exact-solution problem or 2D unstructured no-flux"
    pde, case, param, need, scheme, t_end_2d = "heat", "diffusion", "k", "must be > 0", "bdf2", 0.1

    def __init__(self, k: float | Sequence[float] = CASES["diffusion"].train_range, dim: int = 1, nx: int | None = None,
                 nt: int = 101, substeps: int = 4, t_end: float | None = None):
        self._setup(k, dim, nx, nt, substeps, t_end)

    def law(self, value: float) -> Conductivity:
        return Constant(value)

    def dirichlet(self, value: float) -> list[Dirichlet]:
        return [Dirichlet(_on(end), lambda t: 0.0) for end in CASES[self.case].x_range]


class PMEFEM(_GPMEGenerator):
    """Porous medium equation, k(u) = (u_+)^m + delta. 1D: x, t in [0, 1], u0 = 0,
    u(t, 0) = (m t)^{1/m}, no flux at x = 1, exact (m (t - x)_+)^{1/m}. `m`: a number or
    [low, high] (default U[1, 6]); `delta` >= 0 an optional background diffusivity."""

    name = "pme_fem"
    description = "porous medium equation u_t = div(u^m grad u), P1 FEM (DOLFINx), 1D travelling front or 2D unstructured no-flux"
    pde, case, param, need, t_end_2d = "pme", "pme", "m", "must be > 0", 1.0

    def __init__(self, m: float | Sequence[float] = CASES["pme"].train_range, delta: float = 0.0, dim: int = 1,
                 nx: int | None = None, nt: int = 101, substeps: int = 4, t_end: float | None = None):
        self._setup(m, dim, nx, nt, substeps, t_end)
        self.delta = check_real(self.name, "delta", delta, nonnegative=True)

    def law(self, value: float) -> Conductivity:
        return PorousMedium(value, self.delta)

    def dirichlet(self, value: float) -> list[Dirichlet]:
        return [Dirichlet(_on(CASES[self.case].x_range[0]), lambda t: (value * t) ** (1.0 / value))]


class StefanFEM(_GPMEGenerator):
    """Stefan problem, k(u) = 1 for u >= u*, else 0, smoothed over u* +- eps. 1D: x in [0, 1],
    t in [0, 0.1], u0 = 0, u(t, 0) = 1, no flux at x = 1, exact erf similarity solution.
    `u_star`: a number or [low, high] in (eps, 1 - eps) (default U[0.55, 0.7])."""

    name = "stefan_fem"
    description = "Stefan problem u_t = div(1[u >= u*] grad u) smoothed over u* +- eps, P1 FEM (DOLFINx), 1D erf similarity solution or 2D unstructured no-flux"
    pde, case, param, need, t_end_2d = "stefan", "stefan", "u_star", "must lie in (eps, 1 - eps)", 0.1

    def __init__(self, u_star: float | Sequence[float] = CASES["stefan"].train_range, eps: float = 0.01, dim: int = 1,
                 nx: int | None = None, nt: int = 101, substeps: int = 4, t_end: float | None = None):
        self.eps = check_real(self.name, "eps", eps, positive=True)
        if self.eps >= 0.5:
            raise ConfigError(f"{self.name}: `eps` (={eps!r}) must be < 0.5 so that the smoothed step "
                              "stays inside (0, 1); the default is 0.01.")
        self._setup(u_star, dim, nx, nt, substeps, t_end)

    def _valid(self, value: float) -> bool:
        return self.eps < value < 1 - self.eps

    def law(self, value: float) -> Conductivity:
        return SmoothedStep(value, self.eps)

    def dirichlet(self, value: float) -> list[Dirichlet]:
        return [Dirichlet(_on(CASES[self.case].x_range[0]), lambda t: 1.0)]


FEM_GENERATORS: dict[str, type[Generator]] = {cls.name: cls for cls in (HeatFEM, PMEFEM, StefanFEM)}

__all__ = [
    "FEM_GENERATORS", "Constant", "Conductivity", "Dirichlet", "FEMSpace", "GPMESolution", "HeatFEM", "Newton",
    "PMEFEM", "PorousMedium", "SmoothedStep", "SolverError", "StefanFEM", "interval_space", "pme_barenblatt",
    "solve_gpme", "square_space",
]
