"""Diffusion-sorption: the finite-volume solver, the DOLFINx solver that it cross-checks, and
their dataset generators.

The measured numbers behind the tolerances (seed 0, sample 0): the FV self-differences fall by
4.0x per halving of h (second order); FEM minus FV is 5.8e-4, 1.4e-4, 3.6e-5 at nx = 64, 128,
256 (t up to 500) and 1.4e-5 at the production 1024 x 101 grid; the boundary conditions
extrapolated from the cell centres hold to ~1e-6 at nx = 256.
"""

import dataclasses

import numpy as np
import pytest

from sciml.data.generators.base import rng_for
from sciml.data.generators.fv import (PDEBENCH, DiffusionSorptionFV, cell_centres,
                                      random_initial_condition, solve_fv)
from sciml.data.schema import read_dataset, validate_dataset, write_dataset
from sciml.errors import ConfigError

T = np.linspace(0.0, 500.0, 6)


@pytest.fixture(scope="module")
def fem():
    pytest.importorskip("mpi4py.MPI")
    pytest.importorskip("dolfinx")
    from sciml.data.generators.fem import diffusion_sorption

    return diffusion_sorption


def rel_l2(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def coarsen(u):
    """Cell-centre values on a grid twice as coarse: the mean of each pair (second order)."""
    return 0.5 * (u[..., 0::2] + u[..., 1::2])


def u0_of(i=0):
    return random_initial_condition(rng_for(0, i))


def test_retardation_is_pdebenchs_freundlich_isotherm():
    """R(u) = 1 + ((1 - phi) / phi) rho_s k n_f (u + 1e-6)^(n_f - 1) with PDEBench's phi = 0.29,
    rho_s = 2880, k = 3.5e-4, n_f = 0.874 (REFERENCES.md), as numbers worked out by hand: both
    solvers and the layer use this R, so they could all agree on a wrong one."""
    from sciml.pdes import DiffusionSorption

    pde = DiffusionSorption()
    assert (pde.D, pde.phi, pde.rho_s, pde.k, pde.n_f, pde.t_end) == (5e-4, 0.29, 2880.0, 3.5e-4, 0.874, 500.0)
    assert pde.sorption == pytest.approx(2.1569114482758622, rel=1e-12)  # 0.71 / 0.29 * 2880 * 3.5e-4 * 0.874
    u = np.array([0.0, 0.1, 1.0, -0.5])
    # 1 + 2.15691 * (u + 1e-6)^-0.126; u < 0 is frozen at u = 0
    np.testing.assert_allclose(pde.retardation(u), [13.297938, 3.882915, 3.156911, 13.297938], rtol=1e-6)


def test_initial_conditions_are_smooth_positive_and_grid_independent():
    x = np.linspace(0, 1, 2001)
    for i in range(50):
        u0 = u0_of(i)
        values = u0(x)
        assert 0.01 <= values.min() and values.max() <= 0.3
        assert np.isclose(np.abs(u0.weights).sum(), 1.0)
        np.testing.assert_allclose(u0(x[::7]), values[::7], rtol=1e-14)  # a function of x, not of the grid
    assert u0_of(0) == u0_of(0) and u0_of(0) != u0_of(1)


def test_fv_converges_at_second_order():
    u0 = u0_of()
    u = {nx: solve_fv(u0, T, nx, rtol=1e-9, atol=1e-12) for nx in (64, 128, 256, 512)}
    errors = [rel_l2(u[nx][1:], coarsen(u[2 * nx])[1:]) for nx in (64, 128, 256)]
    orders = np.log2(np.array(errors[:-1]) / errors[1:])
    assert np.all((1.8 < orders) & (orders < 2.2)), (errors, orders)
    assert errors[-1] < 3e-5


def boundary_values(u, nx):
    """(u(0), u(1), u_x(1)) per frame from the quadratic through the three cells at each end."""
    x = cell_centres(nx)
    left = np.polyfit(x[:3], u[:, :3].T, 2)
    a, b, c = np.polyfit(x[-3:], u[:, -3:].T, 2)
    return left[2], a + b + c, 2 * a + b


@pytest.mark.parametrize("solver", ["fv", "fem"])
def test_boundary_conditions_hold(solver, request):
    solve = solve_fv if solver == "fv" else request.getfixturevalue("fem").solve_fem
    nx = 256
    u = solve(u0_of(3), T, nx)[1:]  # t = 0 is the initial condition, which need not meet them
    inlet, outlet, slope = boundary_values(u, nx)
    assert np.abs(inlet - 1).max() < 1e-5
    # u(1) + D u_x(1) = 0: u(1) > 0 leaves through x = 1 while u falls towards it.
    assert np.all(outlet > 0) and np.all(slope < 0)
    assert np.all(np.abs(outlet + PDEBENCH.D * slope) < 0.02 * outlet)


@pytest.mark.parametrize("solver", ["fv", "fem"])
def test_solutions_stay_in_bounds_and_constant_data_give_monotone_profiles(solver, request):
    solve = solve_fv if solver == "fv" else request.getfixturevalue("fem").solve_fem
    for i in range(3):
        u = solve(u0_of(i), T, 128)
        assert u.min() >= 0 and u.max() <= 1
    # PDEBench's own initial data, a constant: u_x solves a parabolic equation with u_x <= 0 on
    # the boundary, so u decreases in x at every time; monotone schemes keep that exactly.
    u = solve(lambda x: np.full_like(x, 0.1), T, 128)
    assert np.all(np.diff(u[1:], axis=1) <= 1e-12)
    assert u.min() >= 0 and u.max() <= 1


def test_fem_and_fv_agree_and_converge_towards_each_other(fem):
    u0 = u0_of()
    gaps = []
    for nx, dt, growth in ((64, 2.0, 1.1), (128, 1.0, 1.05), (256, 0.5, 1.025)):  # h, dt and growth - 1 halved
        fem_u = fem.solve_fem(u0, T, nx, dt=dt, growth=growth)
        gaps.append(rel_l2(fem_u[1:], solve_fv(u0, T, nx, rtol=1e-9, atol=1e-12)[1:]))
    assert gaps[-1] < 1e-4, gaps
    assert gaps[0] / gaps[1] > 3 and gaps[1] / gaps[2] > 3, gaps


def test_generators_agree_at_the_production_grid(fem):
    fv_sample = DiffusionSorptionFV().sample(0, 0)
    fem_sample = fem.DiffusionSorptionFEM().sample(0, 0)
    assert fv_sample.u.shape == fem_sample.u.shape == (101, 1024)
    assert np.array_equal(fv_sample.u0, fem_sample.u0)
    assert rel_l2(fem_sample.u, fv_sample.u) < 5e-5


@pytest.mark.slow
def test_generators_agree_at_the_production_grid_over_many_samples(fem):
    fv_gen, fem_gen = DiffusionSorptionFV(), fem.DiffusionSorptionFEM()
    gaps = [rel_l2(fem_gen.sample(i, 7).u, fv_gen.sample(i, 7).u) for i in range(10)]
    assert max(gaps) < 5e-5, gaps


@pytest.mark.parametrize("which", ["fv", "fem"])
def test_samples_are_deterministic(which, request):
    cls = DiffusionSorptionFV if which == "fv" else request.getfixturevalue("fem").DiffusionSorptionFEM
    gen = cls(nx=64, nt=6)
    a, b, other = gen.sample(3, 11), gen.sample(3, 11), gen.sample(4, 11)
    assert np.array_equal(a.u, b.u) and np.array_equal(a.u0, b.u0) and np.array_equal(a.params, b.params)
    assert not np.array_equal(a.u0, other.u0)
    assert np.array_equal(a.u[0], a.u0)


@pytest.mark.parametrize("params", [{"nx": 0}, {"nx": 10.5}, {"nx": True}, {"nt": 1}, {"t_end": 0.0},
                                    {"t_end": -5}, {"t_end": float("nan")}, {"t_end": "500"}])
def test_bad_parameters_are_config_errors(params):
    key = next(iter(params))
    with pytest.raises(ConfigError, match=f"`{key}`"):
        DiffusionSorptionFV(**params)


def test_bad_solver_inputs_name_the_argument(fem):
    with pytest.raises(TypeError, match="`u0`"):
        solve_fv(np.zeros(64), T, 64)
    with pytest.raises(ValueError, match="`t`"):
        solve_fv(u0_of(), np.array([0.0, 10.0, 5.0]), 64)
    with pytest.raises(ValueError, match="`growth`"):
        fem.solve_fem(u0_of(), T, 64, growth=3.0)
    with pytest.raises(ConfigError, match="`nx`"):
        fem.DiffusionSorptionFEM(nx=1)


def test_registries_list_both_solvers(fem):
    from sciml.data.generators.fv import FV_GENERATORS

    assert FV_GENERATORS == {"diffusion_sorption_fv": DiffusionSorptionFV}
    assert set(fem.DS_GENERATORS) == {"diffusion_sorption", "diffusion_sorption_fv"}
    assert DiffusionSorptionFV.parameters() == {"nx": 1024, "nt": 101, "t_end": 500.0}


def test_written_dataset_validates(tmp_path):
    gen = DiffusionSorptionFV(nx=64, nt=11, t_end=100.0)
    samples = [gen.sample(i, 5) for i in range(3)]
    ds = dataclasses.replace(gen.layout(3), u=np.stack([s.u for s in samples]),
                             u0=np.stack([s.u0 for s in samples]), params=np.stack([s.params for s in samples]))
    path = write_dataset(tmp_path / "ds.h5", ds)
    meta = validate_dataset(path)
    assert meta.pde == "diffusion_sorption" and meta.param_names == ["D", "phi", "rho_s", "k", "n_f"]
    back = read_dataset(path)
    np.testing.assert_array_equal(back.u, ds.u)
    np.testing.assert_array_equal(back.grid["x"], cell_centres(64))
    np.testing.assert_allclose(back.grid["t"], np.linspace(0, 100, 11))
    assert np.isclose(back.weights.sum(), 1.0)
    assert back.common_params["D"] == PDEBENCH.D and back.common_params["grid"] == "cell centres"


def test_fem_time_steps_grow_geometrically_and_land_on_every_output_time(fem):
    steps = list(fem._time_steps(T, dt=2.5, growth=1.02))
    h = np.array([s[1] for s in steps])
    assert h[0] <= 1.02 * 2.5e-3 and h.max() <= 2.5 * (1 + 1e-12)
    ratios = h[1:] / h[:-1]
    within = np.array([a[0] == b[0] for a, b in zip(steps, steps[1:])])  # both steps in one interval
    assert np.all(ratios[within] <= 1.02 * (1 + 1e-9)) and np.all(ratios < 2.0)
    ends = np.cumsum(h)[[s[2] for s in steps]]
    np.testing.assert_allclose(ends, T[1:], rtol=1e-12)
    assert [s[0] for s in steps if s[2]] == list(range(1, T.size))
