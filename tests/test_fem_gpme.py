"""DOLFINx GPME solver and generators: exact solutions at the expected rates, mass balance,
determinism, parameter checks and XDMF export."""

import pickle

import pytest

pytest.importorskip("mpi4py.MPI")  # before dolfinx, or the wheel does not find libmpi
pytest.importorskip("dolfinx")

import h5py  # noqa: E402
import numpy as np  # noqa: E402

from sciml.data.generators.analytic import exact_mass, exact_solution, stefan_constants  # noqa: E402
from sciml.data.generators.base import rng_for  # noqa: E402
from sciml.data.generators.fem import gpme  # noqa: E402
from sciml.data.generators.fem.gpme import (  # noqa: E402
    FEM_GENERATORS, Constant, Dirichlet, HeatFEM, Newton, PMEFEM, PorousMedium, SmoothedStep, SolverError,
    StefanFEM, interval_space, solve_gpme, square_space,
)
from sciml.data.schema import PDEDataset, read_dataset, write_dataset  # noqa: E402
from sciml.data.xdmf import export_xdmf  # noqa: E402
from sciml.errors import ConfigError, DataError  # noqa: E402


def l2(space, u, exact):
    """Discrete L2 norm with the dataset's quadrature weights (lumped mass)."""
    return float(np.sqrt(space.weights @ (u - exact) ** 2))


def l1(space, u, exact):
    return float(space.weights @ np.abs(u - exact))


def rates(errors):
    """Observed orders between successive halvings of h."""
    return np.log2(np.asarray(errors[:-1]) / np.asarray(errors[1:]))


def slope(errors, ns):
    """Least-squares order over the whole refinement (robust to a front that lands on a node)."""
    return np.polyfit(np.log(1.0 / np.asarray(ns)), np.log(errors), 1)[0]


def on(x):
    return lambda p: np.isclose(p[:, 0], x)


# --- the discrete space ----------------------------------------------------------------------


@pytest.mark.parametrize("make", [lambda: interval_space(8, 0.0, 2.0), lambda: square_space(8)], ids=["interval", "square"])
def test_space_operators_fit_its_points(make):
    space = make()
    x = space.points
    assert np.isclose(space.weights.sum(), 2.0 if space.dim == 1 else 1.0)
    assert np.all(np.diff(x[:, 0]) > 0) if space.dim == 1 else np.all(space.weights > 0)
    a_i, a_j, a_v = space.stiffness.getValuesCSR()
    rows = np.repeat(np.arange(len(x)), np.diff(a_i))
    A = np.zeros((len(x), len(x)))
    A[rows, a_j] = a_v
    interior = np.all((x > 1e-12) & (x < x.max(0) - 1e-12), axis=1)
    assert np.abs(A @ (1 + 2 * x.sum(1)))[interior].max() < 1e-12  # A in the points' order
    assert np.abs(A.sum(0)).max() < 1e-12  # columns sum to zero: the scheme conserves mass
    assert (A - np.diag(np.diag(A))).max() <= 1e-14  # M-matrix: Delaunay in 2D
    area = np.abs(np.linalg.det(np.stack([x[space.cells[:, i]] - x[space.cells[:, 0]] for i in range(1, space.dim + 1)], -1)))
    assert np.isclose(area.sum() / (1 if space.dim == 1 else 2), space.weights.sum())


# --- convergence against exact solutions -------------------------------------------------------


def heat_errors(scheme, ns, steps):
    errors = []
    for n in ns:
        space = interval_space(n, 0.0, 2 * np.pi)
        x = space.points[:, 0]
        zero = [Dirichlet(lambda p: on(0.0)(p) | on(2 * np.pi)(p), lambda t: 0.0)]
        sol = solve_gpme(space, Constant(1.0), np.sin(x), np.array([0.0, 0.5]), dirichlet=zero,
                         steps_per_frame=steps(n), scheme=scheme)
        errors.append(l2(space, sol.u[-1], exact_solution("diffusion", 1.0, x, [0.5])[0]))
    return errors


def test_heat_1d_bdf2_is_second_order_with_dt_like_h():
    errors = heat_errors("bdf2", [16, 32, 64, 128], lambda n: n // 4)
    assert errors[-1] < 3e-4
    assert np.all((rates(errors) > 1.9) & (rates(errors) < 2.1)), errors


def test_heat_1d_backward_euler_is_first_order_in_time_and_second_in_space():
    with_h = heat_errors("euler", [16, 32, 64, 128], lambda n: n // 4)  # dt ~ h: O(dt) dominates
    with_h2 = heat_errors("euler", [16, 32, 64], lambda n: n * n // 64)  # dt ~ h^2: O(h^2)
    assert np.all((rates(with_h) > 0.9) & (rates(with_h) < 1.15)), with_h
    assert np.all((rates(with_h2) > 1.85) & (rates(with_h2) < 2.15)), with_h2


def test_heat_2d_unstructured_mesh_is_second_order():
    errors = []
    for n in [8, 16, 32]:
        space = square_space(n)
        p = space.points

        def exact(t):  # the slowest no-flux mode on the unit square, about the mean 1
            return 1 + np.cos(np.pi * p[:, 0]) * np.cos(np.pi * p[:, 1]) * np.exp(-2 * np.pi**2 * t)

        sol = solve_gpme(space, Constant(1.0), exact(0.0), np.array([0.0, 0.05]), steps_per_frame=n // 2, scheme="bdf2")
        errors.append(l2(space, sol.u[-1], exact(0.05)))
    assert errors[-1] < 7e-4
    assert np.all((rates(errors) > 1.8) & (rates(errors) < 2.3)), errors


def pme_run(n, m, t_end=0.5):
    space = interval_space(n, 0.0, 1.0)
    bc = [Dirichlet(on(0.0), lambda t: (m * t) ** (1 / m))]
    sol = solve_gpme(space, PorousMedium(m), np.zeros(len(space.points)), np.linspace(0.0, t_end, 3),
                     dirichlet=bc, steps_per_frame=n // 2)
    return space, sol


@pytest.mark.parametrize("m, l2_order, l1_order", [
    (1.0, (0.9, 1.1), (0.95, 1.15)), (3.0, (0.65, 0.85), (1.0, 1.2)), (6.0, (0.55, 0.7), (1.0, 1.2)),
])
def test_pme_travelling_front_converges(m, l2_order, l1_order):
    """u = (m (t - x)_+)^{1/m} is only Hoelder-1/m at the front: L2 order about 1/m + 1/2 (at most 1)."""
    e2, e1, mass = [], [], []
    for n in [32, 64, 128, 256]:
        space, sol = pme_run(n, m)
        exact = exact_solution("pme", m, space.points[:, 0], [0.5])[0]
        e2.append(l2(space, sol.u[-1], exact))
        e1.append(l1(space, sol.u[-1], exact))
        mass.append(abs(sol.mass(space.weights)[-1] - exact_mass("pme", m, [0.5])[0]))
        assert sol.u.min() >= 0.0  # discrete maximum principle: no undershoot ahead of the front
    assert np.all((rates(e2) > l2_order[0]) & (rates(e2) < l2_order[1])), e2
    assert np.all((rates(e1) > l1_order[0]) & (rates(e1) < l1_order[1])), e1
    assert np.all(rates(mass) > 0.9), mass  # the mass b(t) of REFERENCES.md, at first order


def test_pme_2d_barenblatt_on_unstructured_mesh():
    m, errors = 1.0, []
    t_end = (m + 1) * (m / (4 * (m + 1) ** 2) * 0.2**2) * (4 ** (m + 1) - 1)  # support radius 0.2 -> 0.4
    for n in [16, 32, 64]:
        space = square_space(n)
        u0 = gpme.pme_barenblatt(space.points, 0.0, m)
        sol = solve_gpme(space, PorousMedium(m), u0, np.array([0.0, t_end]), steps_per_frame=n)
        errors.append(l2(space, sol.u[-1], gpme.pme_barenblatt(space.points, t_end, m)))
        mass = sol.mass(space.weights)
        assert abs(mass[-1] - mass[0]) <= 1e-12 * mass[0] and sol.u.min() >= 0.0
    assert np.all((rates(errors) > 1.0) & (rates(errors) < 1.4)), errors


def stefan_run(n, eps, u_star=0.6, times=np.linspace(0.0, 0.05, 11)):
    space = interval_space(n, 0.0, 1.0)
    x = space.points[:, 0]
    exact = exact_solution("stefan", u_star, x, times)
    sol = solve_gpme(space, SmoothedStep(u_star, eps), exact[0], times, dirichlet=[Dirichlet(on(0.0), lambda t: 1.0)],
                     steps_per_frame=n // 10)
    return space, sol, exact


def spacetime(space, u, exact, p):
    """(mean over frames of the L^p error)^(1/p): the front jumps cell by cell, so a single frame's
    error depends on where the front sits between nodes; the time average does not."""
    return float(np.mean(space.weights @ (np.abs(u[1:] - exact[1:]) ** p).T) ** (1 / p))


def test_stefan_erf_similarity_solution_converges():
    """The exact solution jumps from u* to 0 at the front: L1 order about 1, L2 about 1/2."""
    _, alpha, _ = stefan_constants(0.6)
    assert abs(alpha * np.sqrt(0.05) - 0.235) < 1e-3  # REFERENCES.md: the front at t = 0.05
    ns, e1, e2 = [50, 100, 200, 400], [], []
    for n in ns:
        space, sol, exact = stefan_run(n, eps=0.01)
        e1.append(spacetime(space, sol.u, exact, 1))
        e2.append(spacetime(space, sol.u, exact, 2))
        assert 0.0 <= sol.u.min() and sol.u.max() <= 1.0
    assert e1[-1] < 6e-4
    assert 0.8 < slope(e1, ns) < 1.1 and 0.3 < slope(e2, ns) < 0.6, (e1, e2)


def test_stefan_regularisation_converges_as_eps_goes_to_zero():
    """At a fixed mesh, u_eps -> u_0 at O(eps^2) in L1; the error to the exact solution falls
    with eps to the discretisation error."""
    space, limit, exact = stefan_run(400, eps=1e-3)
    to_limit, to_exact = [], []
    for eps in [0.16, 0.08, 0.04, 0.02]:
        _, sol, _ = stefan_run(400, eps)
        to_limit.append(spacetime(space, sol.u, limit.u, 1))
        to_exact.append(spacetime(space, sol.u, exact, 1))
    assert np.all((rates(to_limit) > 1.6) & (rates(to_limit) < 2.3)), to_limit
    assert np.all(np.diff(to_exact) < 0) and to_exact[-1] < 1.1 * spacetime(space, limit.u, exact, 1), to_exact


# --- mass balance --------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["heat_bdf2", "pme", "stefan"])
def test_mass_change_equals_time_integrated_boundary_flux(case):
    """weights . u(t) - weights . u(0) against the inflow through the Dirichlet nodes (the summed
    residual rows there, integrated by the same time scheme): equal to solver tolerance."""
    if case == "heat_bdf2":
        space = interval_space(64, 0.0, 2 * np.pi)
        x = space.points[:, 0]
        bcs = [Dirichlet(on(0.0), lambda t: np.sin(3 * t)), Dirichlet(on(2 * np.pi), lambda t: 0.0)]
        sol = solve_gpme(space, Constant(2.0), np.sin(x) ** 2, np.linspace(0, 1, 11), dirichlet=bcs,
                         steps_per_frame=5, scheme="bdf2")
    elif case == "pme":
        space, sol = pme_run(128, 2.0, t_end=0.5)
    else:
        space, sol, _ = stefan_run(200, eps=0.01)
    mass = sol.mass(space.weights)
    assert np.abs(sol.inflow).max() > 1e-2  # something flowed in or out
    assert np.abs(mass - mass[0] - sol.inflow).max() <= 1e-10 * np.abs(mass).max()


def test_2d_heat_no_flux_conserves_mass_over_the_whole_run():
    """Acceptance: 2D heat on an unstructured mesh with no-flux boundaries, relative drift <= 1e-10."""
    gen = HeatFEM(dim=2, nx=24, nt=21)
    ds = gen.layout(1)
    u = gen.sample(0, 3).u
    mass = u @ ds.weights
    assert ds.cell_type == "triangle" and np.std(u[0]) > 0.05 and np.std(u[-1]) < np.std(u[0]) / 2
    assert np.abs(mass - mass[0]).max() <= 1e-10 * mass[0]


# --- generators ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(FEM_GENERATORS))
@pytest.mark.parametrize("dim", [1, 2])
def test_generator_writes_a_valid_deterministic_dataset(name, dim, tmp_path):
    cls = FEM_GENERATORS[name]
    gen = cls(dim=dim, nx=32 if dim == 1 else 8, nt=6, substeps=8)
    ds = gen.layout(2)
    samples = [gen.sample(i, seed=5) for i in range(2)]
    again = pickle.loads(pickle.dumps(gen)).sample(1, seed=5)  # as a worker process would get it
    assert np.array_equal(again.u, samples[1].u) and np.array_equal(again.params, samples[1].params)
    assert np.array_equal(cls(dim=dim, nx=32 if dim == 1 else 8, nt=6, substeps=8).sample(0, 5).u, samples[0].u)
    assert not np.array_equal(gen.sample(0, seed=6).params, samples[0].params)
    lo, hi = gen.bounds
    expected = rng_for(5, 1).uniform(lo, hi)
    assert samples[1].params[0] == expected and lo <= expected <= hi
    ds.u = np.stack([s.u for s in samples])
    ds.u0 = np.stack([s.u0 for s in samples])
    ds.params = np.stack([s.params for s in samples])
    back = read_dataset(write_dataset(tmp_path / f"{name}.h5", ds))
    assert back.is_mesh and back.cell_type == ("interval" if dim == 1 else "triangle")
    assert back.param_names == [cls.param] and back.common_params == gen.config()
    assert np.array_equal(back.u[:, 0], back.u0) and np.array_equal(back.u, ds.u)


def test_1d_generators_match_their_exact_solutions():
    for gen, tol in [(HeatFEM(k=2.0), 5e-5), (PMEFEM(m=2.0), 1e-2), (StefanFEM(u_star=0.6), 5e-2)]:
        s = gen.sample(0, 0)
        exact = gen.exact(gen.times, s.params[0])
        err = np.sqrt((exact - s.u) ** 2 @ gen.space.weights).max() / np.sqrt(exact**2 @ gen.space.weights).max()
        assert s.params[0] == getattr(gen, gen.param) and err < tol, (gen.name, err)


@pytest.mark.parametrize("cls, params", [
    (HeatFEM, {"k": 0.0}), (HeatFEM, {"k": [5.0, 1.0]}), (HeatFEM, {"k": [1.0, 2.0, 3.0]}), (HeatFEM, {"k": "1"}),
    (HeatFEM, {"dim": 3}), (HeatFEM, {"nx": 1}), (HeatFEM, {"nt": 1}), (HeatFEM, {"substeps": 0}),
    (HeatFEM, {"t_end": -1.0}), (PMEFEM, {"m": -1.0}), (PMEFEM, {"m": float("nan")}), (PMEFEM, {"delta": -1e-3}),
    (StefanFEM, {"u_star": 0.995}), (StefanFEM, {"u_star": [0.0, 0.5]}), (StefanFEM, {"eps": 0.0}),
    (StefanFEM, {"eps": 0.6}),
])
def test_bad_parameters_raise_config_error(cls, params):
    with pytest.raises(ConfigError, match=f"`{next(iter(params))}`"):
        cls(**params)


def test_solver_rejects_bad_input_and_reports_non_convergence():
    space = interval_space(16, 0.0, 1.0)
    with pytest.raises(ConfigError, match="scheme"):
        solve_gpme(space, Constant(1.0), np.zeros(17), np.array([0.0, 1.0]), scheme="rk4")
    with pytest.raises(ConfigError, match="u0"):
        solve_gpme(space, Constant(1.0), np.zeros(5), np.array([0.0, 1.0]))
    with pytest.raises(SolverError, match="did not converge"):
        solve_gpme(space, SmoothedStep(0.6, 1e-3), np.zeros(17), np.array([0.0, 0.05]),
                   dirichlet=[Dirichlet(on(0.0), lambda t: 1.0)], newton=Newton(max_it=1, max_halvings=1))


# --- XDMF export ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [1, 2])
def test_xdmf_export_round_trips(dim, tmp_path):
    gen = StefanFEM(dim=dim, nx=16 if dim == 1 else 6, nt=4, substeps=4)
    ds = gen.layout(2)
    samples = [gen.sample(i, 0) for i in range(2)]
    ds.u, ds.params = np.stack([s.u for s in samples]), np.stack([s.params for s in samples])
    ds.u0 = None
    data = write_dataset(tmp_path / "d.h5", ds)
    out = export_xdmf(data, tmp_path / "view" / "d.xdmf", sample=1)
    assert out.exists() and out.with_suffix(".h5").exists() and "d.h5:/Mesh" in out.read_text()
    assert sorted(p.name for p in out.parent.iterdir()) == ["d.h5", "d.xdmf"]  # nothing staged left over
    with h5py.File(out.with_suffix(".h5"), "r") as f:
        geometry = f["Mesh/mesh/geometry"][()]
        frames = [f["Function/u"][k][()][:, 0] for k in sorted(f["Function/u"], key=lambda k: float(k.replace("_", ".")))]
        assert f["Mesh/mesh/topology"].shape == ds.mesh_cells.shape
    assert geometry.shape[0] == len(ds.mesh_points) and len(frames) == gen.nt
    # match each written node to the dataset point at the same place, then compare the values
    match = [int(np.argmin(((ds.mesh_points - g[:dim]) ** 2).sum(1))) for g in geometry]
    assert np.allclose(ds.mesh_points[match], geometry[:, :dim]) and len(set(match)) == len(match)
    assert np.array_equal(np.array(frames), ds.u[1][:, match])


def test_xdmf_export_refuses_grid_datasets(tmp_path):
    x, t = np.linspace(0, 1, 5), np.linspace(0, 1, 3)
    grid = PDEDataset(pde="heat", u=np.zeros((1, 3, 5)), grid={"x": x, "t": t}, params=np.zeros((1, 1)),
                      param_names=["k"], generator="test")
    path = write_dataset(tmp_path / "grid.h5", grid)
    with pytest.raises(DataError, match="tensor grid"):
        export_xdmf(path, tmp_path / "grid.xdmf")
    assert not (tmp_path / "grid.xdmf").exists()
