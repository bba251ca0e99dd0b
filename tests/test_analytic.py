"""ProbConserv's analytic 1D datasets: the exact solutions solve their PDEs, masses balance fluxes."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from scipy.special import erf

from sciml.data.generators.analytic import (
    ANALYTIC_GENERATORS,
    CASES,
    Advection1D,
    Diffusion1D,
    PorousMedium1D,
    Stefan1D,
    exact_mass,
    exact_solution,
    sample_context_target,
    stefan_constants,
    trapezoid_weights,
)
from sciml.data.generators.base import Generator
from sciml.data.schema import read_dataset, write_dataset
from sciml.errors import ConfigError

PARAMS = {"diffusion": 3.0, "pme": 2.0, "stefan": 0.6, "advection": 3.0, "burgers_ramp": 3.0}


def _grid(case, nx=1001, nt=1001):
    spec = CASES[case]
    return np.linspace(*spec.x_range, nx), np.linspace(*spec.t_range, nt)


def _derivatives(u, x, t):
    """Central differences u_t, u_x, u_xx at the interior nodes [nt-2, nx-2]."""
    dt, dx = t[1] - t[0], x[1] - x[0]
    u_t = (u[2:, 1:-1] - u[:-2, 1:-1]) / (2 * dt)
    u_x = (u[1:-1, 2:] - u[1:-1, :-2]) / (2 * dx)
    u_xx = (u[1:-1, 2:] - 2 * u[1:-1, 1:-1] + u[1:-1, :-2]) / dx**2
    return u_t, u_x, u_xx


def _residual(case, a, u, x, t):
    """(PDE residual, mask of the nodes at least a few cells from every front and corner)."""
    u_t, u_x, u_xx = _derivatives(u, x, t)
    X, T = np.meshgrid(x[1:-1], t[1:-1])
    far = np.ones_like(X, dtype=bool)
    if case == "diffusion":
        return u_t - a * u_xx, far
    if case == "pme":  # flux form with face values (u^m u_x)_{i+1/2}
        dx = x[1] - x[0]
        face = 0.5 * (u[1:-1, 1:] ** a + u[1:-1, :-1] ** a) * np.diff(u[1:-1], axis=1) / dx
        return u_t - np.diff(face, axis=1) / dx, (X < T - 0.05) & (T > 0.1)
    if case == "stefan":
        front = stefan_constants(a)[1] * np.sqrt(T)
        return u_t - u_xx, (T > 0.02) & (np.abs(X - front) > 0.02)
    h = 5 * (x[1] - x[0]) + 5 * a * (t[1] - t[0])
    if case == "advection":
        return u_t + a * u_x, np.abs(X - 0.25 - a * T) > h
    xl, xr = 0.2, 0.3
    t_break = (xr - xl) / a
    corners = (np.abs(X - xl - a * T) > h) & (np.abs(X - xr) > h) & (np.abs(X - xr - a * (T - t_break) / 2) > h)
    return u_t + u[1:-1, 1:-1] * u_x, corners & (np.abs(T - t_break) > 0.005)


@pytest.mark.parametrize("case", sorted(CASES))
def test_exact_solution_satisfies_its_pde_away_from_fronts(case):
    x, t = _grid(case)
    u = exact_solution(case, PARAMS[case], x, t)
    residual, far = _residual(case, PARAMS[case], u, x, t)
    scale = np.abs(_derivatives(u, x, t)[0][far]).max()
    assert far.mean() > 0.3
    assert np.abs(residual[far]).max() < 1e-3 * max(scale, 1.0)


def _boundary_flux(case, a, t):
    """Flux in at the left boundary minus flux out at the right: d/dt of the mass."""
    if case == "diffusion":
        return np.zeros_like(t)  # periodic
    if case == "pme":
        return (a * t) ** (1 / a)  # -u^m u_x at x = 0
    if case == "stefan":
        return stefan_constants(a)[2] / np.sqrt(np.pi * t)  # -u_x at x = 0
    if case == "advection":
        return a * np.ones_like(t)  # a u(t, 0), nothing has left through x = 1 yet
    return a * a / 2 * np.ones_like(t)  # u(t, 0)^2 / 2


@pytest.mark.parametrize("case", sorted(CASES))
def test_exact_mass_changes_by_the_boundary_flux(case):
    t = np.linspace(*CASES[case].t_range, 9)[1:-1]
    h = 1e-6
    rate = (exact_mass(case, PARAMS[case], t + h) - exact_mass(case, PARAMS[case], t - h)) / (2 * h)
    np.testing.assert_allclose(rate, _boundary_flux(case, PARAMS[case], t), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("which", ["low", "high"])
def test_exact_mass_is_the_integral_of_the_exact_solution(case, which):
    spec = CASES[case]
    param = spec.train_range[0 if which == "low" else 1]
    x, t = _grid(case, nx=40001, nt=11)
    mass = exact_solution(case, param, x, t) @ trapezoid_weights(x)
    # fronts are jumps: the trapezoid rule is first order there, (dx / 2) * jump at worst
    np.testing.assert_allclose(mass, exact_mass(case, param, t), rtol=0, atol=param * (x[1] - x[0]))


def test_stefan_front_and_constants():
    z1, alpha, c1 = stefan_constants(0.6)
    assert 0.6 * erf(z1) * z1 * math.exp(z1**2) == pytest.approx((1 - 0.6) / math.sqrt(math.pi), rel=1e-14)
    assert alpha * math.sqrt(0.05) == pytest.approx(0.235, abs=1e-3)
    x = np.linspace(0, 1, 100001)
    u = exact_solution("stefan", 0.6, x, [0.05])[0]
    last = x[u > 0].max()
    assert last == pytest.approx(alpha * math.sqrt(0.05), abs=1e-5)
    assert u[u > 0][-1] == pytest.approx(0.6, abs=1e-4)  # u = u* at the front
    np.testing.assert_allclose(exact_mass("stefan", 0.6, [0.05]), 2 * c1 * math.sqrt(0.05 / math.pi), rtol=1e-14)


def test_initial_conditions():
    x = np.linspace(0, 1, 101)
    np.testing.assert_array_equal(exact_solution("pme", 3.0, x, [0.0])[0], 0.0)
    np.testing.assert_array_equal(exact_solution("stefan", 0.6, x, [0.0])[0], (x == 0).astype(float))
    np.testing.assert_array_equal(exact_solution("advection", 2.0, x, [0.0])[0], (x < 0.25).astype(float))
    ramp = np.clip(2.0 * (0.3 - x) / 0.1, 0.0, 2.0)
    np.testing.assert_allclose(exact_solution("burgers_ramp", 2.0, x, [0.0])[0], ramp, atol=1e-12)
    # advection carries the step unchanged; the ramp breaks into a shock moving at a / 2
    np.testing.assert_array_equal(exact_solution("advection", 2.0, x, [0.1])[0], (x < 0.45).astype(float))
    after = exact_solution("burgers_ramp", 2.0, x, [0.1])[0]
    np.testing.assert_array_equal(after, np.where(x < 0.3 + (0.1 - 0.05), 2.0, 0.0))


def test_generators_are_registered_by_name():
    assert set(ANALYTIC_GENERATORS) == {"diffusion_1d", "pme_1d", "stefan_1d", "advection_1d", "burgers_ramp_1d"}
    for name, cls in ANALYTIC_GENERATORS.items():
        assert issubclass(cls, Generator) and cls.name == name
        assert cls.parameters()["nx"] == 201 and cls.parameters()["nt"] == 201


@pytest.mark.parametrize("name", sorted(ANALYTIC_GENERATORS))
def test_generator_samples_are_deterministic_and_in_the_training_range(name, tmp_path):
    gen = ANALYTIC_GENERATORS[name](nx=21, nt=11)
    spec = CASES[gen.case]
    samples = [gen.sample(i, seed=7) for i in range(3)]
    np.testing.assert_array_equal(gen.sample(1, seed=7).u, samples[1].u)
    values = [s.params[0] for s in samples]
    assert len(set(values)) == 3 and all(spec.train_range[0] <= v <= spec.train_range[1] for v in values)
    for s, v in zip(samples, values):
        np.testing.assert_array_equal(s.u, exact_solution(spec.name, v, gen.x, gen.t))
    layout = gen.layout(3)
    ds = dataclasses.replace(layout, u=np.stack([s.u for s in samples]), params=np.stack([s.params for s in samples]))
    back = read_dataset(write_dataset(tmp_path / f"{name}.h5", ds))
    assert back.u.shape == (3, 11, 21) and back.param_names == [spec.param]
    assert back.common_params["t_star"] == spec.t_star
    np.testing.assert_allclose(back.weights.sum(), spec.x_range[1] - spec.x_range[0])


def test_fixed_parameter_gives_the_test_set():
    gen = Diffusion1D(k=1.0)
    assert gen.config() == {"nx": 201, "nt": 201, "k": 1.0}
    sample = gen.sample(4, seed=0)
    assert sample.u.shape == (201, 201) and sample.params.tolist() == [1.0]
    np.testing.assert_allclose(sample.u[100], np.exp(-0.5) * np.sin(np.linspace(0, 2 * np.pi, 201)), atol=1e-15)
    assert Stefan1D(u_star=0.5).sample(0, 0).params.tolist() == [0.5]  # out of the training range


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda: Diffusion1D(k=-1.0), ["`k`", "-1.0"]),
        (lambda: PorousMedium1D(m=0), ["`m`", "=0"]),
        (lambda: Stefan1D(u_star=1.2), ["`u_star`", "1.2"]),
        (lambda: Advection1D(a="fast"), ["`a`", "'fast'"]),
        (lambda: Advection1D(nx=1), ["`nx`", "=1"]),
        (lambda: exact_solution("heat", 1.0, [0.0], [0.0]), ["`case`", "'heat'", "stefan"]),
        (lambda: exact_mass("pme", -2.0, [0.0]), ["`m`", "-2.0"]),
    ],
)
def test_bad_parameters_are_refused_by_name(make, words):
    with pytest.raises(ConfigError) as info:
        make()
    assert all(word in str(info.value) for word in words)


def test_context_and_target_points():
    x, t = _grid("pme", nx=201, nt=201)
    u = exact_solution("pme", 3.0, x, t)
    context, target = sample_context_target(u, x, t, np.random.default_rng(0))
    assert all(a.shape == (100,) for a in (*context, *target))
    assert len(np.unique(context.t)) == 10 and len(np.unique(context.x)) == 10
    assert len({(a, b) for a, b in zip(context.t, context.x)}) == 100  # the full 10 x 10 tensor grid
    assert len({(a, b) for a, b in zip(target.t, target.x)}) == 100
    for points in (context, target):
        np.testing.assert_array_equal(points.u, exact_solution("pme", 3.0, points.x, points.t).diagonal())
    again = sample_context_target(u, x, t, np.random.default_rng(0))
    np.testing.assert_array_equal(again[1].x, target.x)
    with pytest.raises(ValueError, match="n_context"):
        sample_context_target(u, x, t, np.random.default_rng(0), n_context=99)
    with pytest.raises(ValueError, match="`u`"):
        sample_context_target(u.T[:-1], x, t, np.random.default_rng(0))
