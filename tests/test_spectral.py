"""Reference solvers of the 1D periodic family against exact solutions and measured orders."""

import warnings

import numpy as np
import pytest
from scipy.integrate import solve_ivp
from scipy.special import ive

from sciml.data.generators.spectral import (
    INITIAL_CONDITIONS,
    burgers_sine_exact,
    initial_condition,
    periodic_grid,
    random_initial_conditions,
    solve_burgers,
    solve_convection_diffusion,
    solve_reaction,
    solve_reaction_diffusion,
)

X = periodic_grid(256)
SINE = np.sin(X)
T = np.linspace(0.0, 1.0, 11)


def _order(steps, errors):
    """Slope of log(error) against log(step): the measured order of accuracy."""
    return np.polyfit(np.log(steps), np.log(errors), 1)[0]


def test_periodic_grid_excludes_endpoint():
    x = periodic_grid(8, length=2.0)
    np.testing.assert_allclose(x, np.arange(8) * 0.25, rtol=0, atol=0)


@pytest.mark.parametrize("beta", [1.0, 30.0, 40.0])
def test_convection_is_exact_translation(beta):
    u = solve_convection_diffusion(np.sin(X), T, beta)
    assert u.shape == (T.size, X.size)
    np.testing.assert_allclose(u, np.sin(X - beta * T[:, None]), rtol=0, atol=1e-12)


def test_convection_diffusion_decays_and_translates():
    t = np.array([0.3, 0.7, 2.0])  # t[0] > 0: times are measured from u0 at t = 0
    u = solve_convection_diffusion(np.sin(X), t, beta=5.0, nu=0.5)
    exact = np.exp(-0.5 * t[:, None]) * np.sin(X - 5.0 * t[:, None])
    np.testing.assert_allclose(u, exact, rtol=0, atol=1e-12)


def test_convection_diffusion_uses_domain_length():
    x = periodic_grid(64, length=1.0)
    k = 2 * np.pi
    u = solve_convection_diffusion(np.sin(k * x), T, beta=2.0, nu=0.01, length=1.0)
    exact = np.exp(-0.01 * k**2 * T[:, None]) * np.sin(k * (x - 2.0 * T[:, None]))
    np.testing.assert_allclose(u, exact, rtol=0, atol=1e-12)


def test_reaction_matches_ode_integration():
    x = periodic_grid(64)
    u0 = initial_condition("gaussian", x)
    rho = 5.0
    u = solve_reaction(u0, T, rho)
    ode = solve_ivp(
        lambda _, v: rho * v * (1 - v), (0.0, T[-1]), u0, t_eval=T,
        method="DOP853", rtol=1e-13, atol=1e-14,
    )
    np.testing.assert_allclose(u, ode.y.T, rtol=0, atol=1e-10)


def test_reaction_does_not_overflow_for_large_rho_t():
    u0 = np.array([0.0, 1e-3, 0.5, 1.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        grow = solve_reaction(u0, np.array([100.0]), rho=1e3)
        decay = solve_reaction(u0, np.array([100.0]), rho=-1e3)
    np.testing.assert_allclose(grow[0], [0.0, 1.0, 1.0, 1.0], rtol=0, atol=1e-300)
    np.testing.assert_allclose(decay[0], [0.0, 0.0, 0.0, 1.0], rtol=0, atol=1e-300)


def test_reaction_diffusion_without_diffusion_is_the_reaction_closed_form():
    u0 = initial_condition("gaussian", X)
    u = solve_reaction_diffusion(u0, T, rho=5.0, nu=0.0, dt=0.03)  # 0.03 does not divide 0.1
    np.testing.assert_allclose(u, solve_reaction(u0, T, 5.0), rtol=0, atol=1e-12)


def test_reaction_diffusion_without_reaction_is_the_heat_flow():
    u = solve_reaction_diffusion(np.sin(X), T, rho=0.0, nu=2.0, dt=0.03)
    np.testing.assert_allclose(u, np.exp(-2.0 * T[:, None]) * np.sin(X), rtol=0, atol=1e-13)


def test_reaction_diffusion_is_second_order_in_dt():
    x = periodic_grid(128)
    u0 = initial_condition("gaussian", x)
    t = np.array([0.25, 0.5])
    reference = solve_reaction_diffusion(u0, t, rho=5.0, nu=0.5, dt=1e-4)
    dts = np.array([0.05, 0.025, 0.0125, 0.00625])
    errors = [
        np.abs(solve_reaction_diffusion(u0, t, 5.0, 0.5, dt=dt) - reference).max() for dt in dts
    ]
    assert 1.8 < _order(dts, errors) < 2.2


@pytest.mark.parametrize(("nu", "nx"), [(0.1, 256), (0.01, 1024)])
def test_burgers_matches_cole_hopf(nu, nx):
    x = periodic_grid(nx)
    u = solve_burgers(np.sin(x), T, nu, dt=1e-3)
    np.testing.assert_allclose(u, burgers_sine_exact(x, T, nu), rtol=0, atol=1e-9)


def test_burgers_is_fourth_order_in_dt():
    x = periodic_grid(128)
    t = np.array([0.5, 1.0])
    reference = solve_burgers(np.sin(x), t, nu=0.1, dt=1e-3)
    dts = np.array([0.05, 0.025, 0.0125, 0.00625])
    errors = [np.abs(solve_burgers(np.sin(x), t, 0.1, dt=dt) - reference).max() for dt in dts]
    assert _order(dts, errors) > 3.5


def test_inviscid_burgers_before_the_shock_follows_characteristics():
    t = np.array([0.5])
    u = solve_burgers(np.sin(X), t, nu=0.0, dt=1e-3)[0]
    # u = sin(x - u t) along characteristics; the fixed point contracts for t < 1
    exact = np.sin(X)
    for _ in range(200):
        exact = np.sin(X - exact * t[0])
    np.testing.assert_allclose(u, exact, rtol=0, atol=1e-11)


def test_burgers_never_excites_modes_above_the_two_thirds_cutoff():
    x = periodic_grid(64)
    u = solve_burgers(np.sin(x), T, nu=0.01)  # under-resolved: the cascade reaches the cutoff
    spectrum = np.abs(np.fft.rfft(u, axis=-1))
    assert spectrum[-1, 15:22].max() > 1e-3
    assert spectrum[:, 22:].max() < 1e-13  # 22 = first mode with m >= nx / 3


def test_burgers_batch_equals_per_sample_solves():
    rng = np.random.default_rng(0)
    x = periodic_grid(64)
    u0 = random_initial_conditions(3, x, rng) + np.array([[0.0], [0.5], [-0.3]])
    batched = solve_burgers(u0, T, nu=0.05)
    assert batched.shape == (3, T.size, x.size)
    for sample, u0_i in zip(batched, u0):
        np.testing.assert_allclose(sample, solve_burgers(u0_i, T, nu=0.05), rtol=0, atol=1e-14)


@pytest.mark.parametrize(
    "solve",
    [
        lambda u0, t: solve_burgers(u0, t, nu=0.02),
        lambda u0, t: solve_convection_diffusion(u0, t, beta=7.0, nu=0.3),
    ],
    ids=["burgers", "convection_diffusion"],
)
def test_mass_is_conserved(solve):
    x = periodic_grid(128)
    u0 = random_initial_conditions(2, x, np.random.default_rng(1)) + 0.7
    u = solve(u0, T)
    drift = np.abs(u.mean(axis=-1) - u0.mean(axis=-1)[:, None]).max()
    assert drift < 1e-12


def _cole_hopf_series(x, t, nu, n_terms=60):
    """Independent Fourier-series evaluation, accurate only for moderate nu (here nu = 0.5)."""
    a, n = 1 / (2 * nu), np.arange(1, n_terms + 1)
    w = ive(n, a) * np.exp(-nu * n**2 * t[:, None, None])  # [nt, 1, n_terms]
    numerator = 4 * nu * (w * n * np.sin(np.outer(x, n))).sum(-1)
    return numerator / (ive(0, a) + 2 * (w * np.cos(np.outer(x, n))).sum(-1))


def test_cole_hopf_exact_solution_matches_bessel_series():
    t = np.array([0.0, 1e-6, 0.3, 1.0, 3.0])
    np.testing.assert_allclose(
        burgers_sine_exact(X, t, 0.5), _cole_hopf_series(X, t, 0.5), rtol=0, atol=1e-14
    )


@pytest.mark.parametrize("nu", [0.01, 0.001])
def test_cole_hopf_exact_solution_starts_at_sine_and_stays_bounded(nu):
    u = burgers_sine_exact(X, np.array([0.0, 0.5, 1.0, 2.0]), nu)
    np.testing.assert_allclose(u[0], np.sin(X), rtol=0, atol=1e-15)
    assert np.all(np.abs(u) <= 1.0 + 1e-14)
    assert np.all(np.diff(np.abs(u).max(axis=1)) <= 1e-14)  # maximum principle


def test_named_initial_conditions():
    assert sorted(INITIAL_CONDITIONS) == ["gaussian", "sine", "sine_offset"]
    x = np.array([0.0, np.pi / 2, np.pi])
    np.testing.assert_allclose(initial_condition("sine", x), np.sin(x))
    np.testing.assert_allclose(initial_condition("sine_offset", x, C=0.5), 0.5 + np.sin(x))
    gaussian = initial_condition("gaussian", x)
    assert gaussian[2] == 1.0
    np.testing.assert_allclose(gaussian[1], np.exp(-2.0))


def test_random_initial_conditions_are_reproducible_smooth_and_scaled():
    x = periodic_grid(128)
    u = random_initial_conditions(5, x, np.random.default_rng(3), n_modes=4, amplitude=2.0)
    again = random_initial_conditions(5, x, np.random.default_rng(3), n_modes=4, amplitude=2.0)
    np.testing.assert_array_equal(u, again)
    assert u.shape == (5, 128)
    np.testing.assert_allclose(np.abs(u).max(axis=1), 2.0)
    spectrum = np.abs(np.fft.rfft(u, axis=1))
    assert spectrum[:, 0].max() < 1e-12 and spectrum[:, 5:].max() < 1e-12


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: solve_convection_diffusion(SINE, T, 1.0, nu=-0.1),
            r"`nu` \(=-0.1\) must be >= 0",
        ),
        (lambda: solve_burgers(SINE, T, nu=-1.0), r"`nu` \(=-1.0\) must be >= 0"),
        (lambda: solve_burgers(SINE, T[::-1], nu=0.1), r"`t` .* strictly increasing"),
        (lambda: solve_reaction(SINE, np.array([-0.1, 0.5]), 1.0), r"t\[0\] >= 0"),
        (lambda: solve_reaction(SINE, 0.5, 1.0), r"`t` must be a non-empty 1D array"),
        (
            lambda: solve_reaction_diffusion(SINE, T, 1.0, 0.1, dt=0.0),
            r"`dt` \(=0.0\) must be > 0",
        ),
        (lambda: solve_burgers(SINE, T, 0.1, dt=-1e-3), r"`dt` \(=-0.001\) must be > 0"),
        (
            lambda: solve_burgers(np.zeros((2, 3, 8)), T, 0.1),
            r"`u0` must have shape \[nx\] or \[batch, nx\]",
        ),
        (
            lambda: solve_convection_diffusion(SINE, T, 1.0, length=0.0),
            r"`length` \(=0.0\) must be > 0",
        ),
        (lambda: burgers_sine_exact(X, T, 0.0), r"`nu` \(=0.0\) must be > 0"),
        (
            lambda: initial_condition("square", X),
            r"'square'.*\['gaussian', 'sine', 'sine_offset'\]",
        ),
        (
            lambda: initial_condition("sine_offset", X),
            r"'sine_offset' takes keyword arguments \['C'\]",
        ),
        (
            lambda: random_initial_conditions(0, X, np.random.default_rng()),
            r"`n` \(=0\) must be a positive",
        ),
    ],
)
def test_bad_inputs_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_rng_must_be_a_generator():
    with pytest.raises(TypeError, match="np.random.default_rng"):
        random_initial_conditions(2, X, rng=0)
