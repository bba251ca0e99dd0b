"""1D diffusion-sorption (PDEBench) by DOLFINx P1 finite elements: the PI-HC test-set generator.

    R(u) u_t = D u_xx on (0, 1),  u(0, t) = 1,  u(1, t) + D u_x(1, t) = 0,
    R(u) = 1 + ((1 - phi) / phi) rho_s k n_f (max(u, 0) + eps)^(n_f - 1)

(the sign of the Robin condition is explained in :mod:`sciml.data.generators.fv`, which also
holds the parameters, the random initial conditions and the independent finite-volume solver).

Weak form, with the Robin condition natural (D u_x(1) = -u(1)):

    sum_i R(u_i) (d_t u)_i v_i m_i + int D u_x v_x dx + u(1) v(1) = 0,

the time-derivative term lumped (vertex quadrature, m_i the nodal masses) so that, as in the
finite-volume scheme, the nodal equations form an M-matrix: with a consistent mass matrix the
first, tiny steps undershoot below zero next to the inlet jump and Newton stalls there.

Time stepping: variable-step BDF2 (backward Euler for the first step), each step solved by PETSc
SNES Newton with a direct LU solve. The steps start tiny and grow geometrically up to ``dt``,
landing on every output time, so the initial layers (u0(0) != 1, u0(1) + D u0'(1) != 0) are
resolved without paying for small steps later.
Output: u at the cell centres, the mean of the two nodal values of each cell (exact for P1),
the same grid as the finite-volume solver.
"""

from __future__ import annotations

from collections.abc import Iterator

import mpi4py.MPI as MPI  # before dolfinx, which otherwise does not find libmpi.so.12

import dolfinx
import numpy as np
import ufl
from dolfinx import fem, mesh
from dolfinx.fem.petsc import NonlinearProblem

from ....errors import SciMLError
from ..base import Generator
from ..fv import (FV_GENERATORS, PDEBENCH, DiffusionSorptionGenerator, InitialCondition, SorptionParams,
                  cell_centres, check_times, initial_values)

_START = 1e-3  # the first step, relative to dt
_SNES_OPTIONS = {"snes_type": "newtonls", "snes_linesearch_type": "basic", "snes_rtol": 1e-8,
                 "snes_atol": 1e-10, "snes_max_it": 25, "ksp_type": "preonly", "pc_type": "lu"}


def solve_fem(u0: InitialCondition, t: np.ndarray, nx: int = 1024, params: SorptionParams = PDEBENCH,
              *, dt: float = 2.5, growth: float = 1.02) -> np.ndarray:
    """Solve diffusion-sorption with P1 elements on ``nx`` cells; u [len(t), nx] at the cell centres.

    ``u0`` is a function of x (interpolated at the nodes; u[0] is u0 at the cell centres).
    The steps start at ``1e-3 dt`` and grow by the factor ``growth`` per step up to ``dt``: while
    they grow, h ~ (growth - 1) t, the resolution the initial layer needs; ``growth`` sets the
    accuracy of the first frames, ``dt`` that of the late ones. The defaults give a relative L2
    error near 1e-5 on the 1024 x 101 grid (about 500 steps). Raises ``SciMLError`` if Newton
    fails to converge.
    """
    t = check_times(t)
    if isinstance(nx, bool) or not isinstance(nx, (int, np.integer)) or nx < 2:
        raise ValueError(f"`nx` (={nx!r}) must be an integer >= 2.")
    if not dt > 0:
        raise ValueError(f"`dt` (={dt!r}) must be > 0.")
    if not 1 < growth < 1 + np.sqrt(2):  # variable-step BDF2 is zero-stable below 1 + sqrt(2)
        raise ValueError(f"`growth` (={growth!r}) must lie in (1, 2.41).")
    domain = mesh.create_unit_interval(MPI.COMM_SELF, int(nx))
    V = fem.functionspace(domain, ("Lagrange", 1))
    u, u_old, u_older = fem.Function(V), fem.Function(V), fem.Function(V)
    v = ufl.TestFunction(V)

    def constant(value):
        return fem.Constant(domain, dolfinx.default_scalar_type(value))

    step = constant(1.0)
    bdf = fem.Constant(domain, np.array([1.0, -1.0, 0.0], dtype=dolfinx.default_scalar_type))
    D, exponent = constant(params.D), constant(params.n_f - 1)
    R = 1 + constant(params.sorption) * (ufl.max_value(u, 0) + constant(params.eps)) ** exponent
    u_t = (bdf[0] * u + bdf[1] * u_old + bdf[2] * u_older) / step
    lumped = ufl.dx(metadata={"quadrature_rule": "vertex", "quadrature_degree": 1})
    outlet = mesh.locate_entities_boundary(domain, 0, lambda x: np.isclose(x[0], 1.0))
    ds = ufl.Measure("ds", domain=domain,
                     subdomain_data=mesh.meshtags(domain, 0, outlet, np.ones(len(outlet), dtype=np.int32)))
    F = R * u_t * v * lumped + D * u.dx(0) * v.dx(0) * ufl.dx + u * v * ds(1)
    inlet = mesh.locate_entities_boundary(domain, 0, lambda x: np.isclose(x[0], 0.0))
    bc = fem.dirichletbc(dolfinx.default_scalar_type(1.0), fem.locate_dofs_topological(V, 0, inlet), V)
    problem = NonlinearProblem(F, u, bcs=[bc], petsc_options_prefix="diffusion_sorption_",
                               petsc_options=_SNES_OPTIONS)

    nodes = V.tabulate_dof_coordinates()[:, 0]
    order = np.argsort(nodes)
    u_old.x.array[:] = initial_values(u0, nodes)
    u.x.array[:] = u_old.x.array
    out = np.empty((t.size, nx))
    out[0] = initial_values(u0, cell_centres(nx))
    previous = None
    for k, h, lands in _time_steps(t, dt, growth):
        w = 0.0 if previous is None else h / previous  # variable-step BDF2; w = 0 is backward Euler
        bdf.value = ((1 + 2 * w) / (1 + w), -(1 + w), w * w / (1 + w))
        step.value = h
        u.x.array[:] = u_old.x.array + w * (u_old.x.array - u_older.x.array)  # linear predictor
        problem.solve()
        if (reason := problem.solver.getConvergedReason()) <= 0:
            raise SciMLError(f"the FEM diffusion-sorption Newton solve did not converge on the way to t={t[k]:.4g} "
                             f"(PETSc SNES reason {reason}, nx={nx}, dt={dt}); retry with a smaller `dt`.")
        u_older.x.array[:] = u_old.x.array
        u_old.x.array[:] = u.x.array
        previous = h
        if lands:
            nodal = u.x.array[order]
            out[k] = 0.5 * (nodal[1:] + nodal[:-1])
    return out


def _time_steps(t: np.ndarray, dt: float, growth: float) -> Iterator[tuple[int, float, bool]]:
    """(k, h, lands) for each step from t[0] to t[-1]: it lies in (t[k-1], t[k]] and ends on
    t[k] if `lands`.

    The steps follow the density h(tau) = min(dt, h0 + ln(growth) tau), h0 = _START dt: in the
    "step count" s(tau) = int_0^tau dtau' / h(tau'), each output interval gets the fewest equal
    parts of at most 1, mapped back to time. Within an interval consecutive steps grow by at most
    ``growth``; where an interval switches from two steps to one they may double.
    """
    h0, rate = dt * _START, np.log(growth)
    knee = (dt - h0) / rate  # where the ramp reaches dt
    s_knee = np.log(dt / h0) / rate

    def count(tau: float) -> float:
        return np.log1p(rate * tau / h0) / rate if tau < knee else s_knee + (tau - knee) / dt

    def time_at(s: np.ndarray) -> np.ndarray:
        return np.where(s < s_knee, h0 * np.expm1(rate * np.minimum(s, s_knee)) / rate, knee + (s - s_knee) * dt)

    for k in range(1, t.size):
        start, end = count(t[k - 1]), count(t[k])
        n = max(1, int(np.ceil(end - start - 1e-9)))
        times = time_at(np.linspace(start, end, n + 1))
        times[0], times[-1] = t[k - 1], t[k]
        for j, h in enumerate(np.diff(times)):
            yield k, float(h), j == n - 1


class DiffusionSorptionFEM(DiffusionSorptionGenerator):
    """Diffusion-sorption by DOLFINx P1 elements, lumped mass, variable-step BDF2 + Newton."""

    name = "diffusion_sorption"
    description = "R(u) u_t = D u_xx (PDEBench), DOLFINx P1 + BDF2/Newton; random smooth u0"
    solver = f"DOLFINx {dolfinx.__version__} P1, lumped mass, variable-step BDF2 (dt <= 2.5, growth 1.02), SNES Newton"

    def solve(self, u0: InitialCondition) -> np.ndarray:
        return solve_fem(u0, self.t, self.nx)


DS_GENERATORS: dict[str, type[Generator]] = {DiffusionSorptionFEM.name: DiffusionSorptionFEM} | FV_GENERATORS

__all__ = ["DS_GENERATORS", "DiffusionSorptionFEM", "solve_fem"]
