"""2D Navier-Stokes generator: exact decaying vortices, the stepper's order, resolution, the GRF."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy.special import ive

from sciml.data.generators.base import Generator, rng_for
from sciml.data.generators.navier_stokes import (
    NS_GENERATORS,
    NavierStokes2D,
    gaussian_random_field,
    periodic_kernel_spectrum,
    solve_navier_stokes,
    velocity,
)
from sciml.data.schema import read_dataset, write_dataset
from sciml.errors import ConfigError

TWO_PI = 2 * math.pi


def _grid(n):
    x = np.arange(n) / n
    return np.meshgrid(x, x, indexing="ij")


def _rel(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


def test_velocity_is_the_curl_of_the_stream_function():
    x, y = _grid(32)
    psi = np.cos(TWO_PI * x) * np.cos(TWO_PI * y)
    w = 2 * TWO_PI**2 * psi  # -lap psi
    u, v = velocity(torch.tensor(w)).numpy()
    np.testing.assert_allclose(u, -TWO_PI * np.cos(TWO_PI * x) * np.sin(TWO_PI * y), atol=1e-12)  # psi_y
    np.testing.assert_allclose(v, TWO_PI * np.sin(TWO_PI * x) * np.cos(TWO_PI * y), atol=1e-12)  # -psi_x


@pytest.mark.parametrize("nu", [1e-4, 1e-2])
def test_taylor_green_vortex_decays_exactly(nu):
    x, y = _grid(64)
    k = TWO_PI
    w0 = 2 * k * np.cos(k * x) * np.cos(k * y)
    t = np.linspace(0.0, 1.0, 6)
    w = solve_navier_stokes(w0, t, nu).numpy()
    exact = w0 * np.exp(-2 * nu * k**2 * t)[:, None, None]
    assert _rel(w, exact) < 1e-6


def test_euler_steady_mix_of_modes_decays_exactly():
    # Modes with one |m|^2 = 5: u . grad w = 0, but not term by term, so a sign error would show.
    x, y = _grid(32)
    w0 = np.cos(TWO_PI * (x + 2 * y)) + 0.7 * np.sin(TWO_PI * (2 * x - y)) + 0.4 * np.cos(TWO_PI * (2 * x + y) + 1.0)
    nu, t = 1e-3, np.array([0.5, 2.0])
    w = solve_navier_stokes(w0, t, nu).numpy()
    assert _rel(w, w0 * np.exp(-nu * 5 * TWO_PI**2 * t)[:, None, None]) < 1e-5  # Crank-Nicolson error


def test_forcing_holds_a_steady_state():
    x, y = _grid(32)
    w_s = np.sin(TWO_PI * x) * np.cos(TWO_PI * y)
    nu = 1e-2
    w = solve_navier_stokes(w_s, [1.0], nu, forcing=nu * 2 * TWO_PI**2 * w_s).numpy()
    assert _rel(w[0], w_s) < 1e-10


@pytest.mark.parametrize("nu, orders", [(1e-4, (2.5, 3.3)), (1e-2, (1.8, 2.4))])
def test_stepper_order_by_self_convergence(nu, orders):
    # Nonlinear flow from a strong GRF: third order while advection dominates the error, second
    # order (Crank-Nicolson) once the viscous part does.
    w0 = 4.0 * gaussian_random_field(32, np.random.default_rng(1))
    ref = solve_navier_stokes(w0, [1.0], nu, dt=1 / 1024).numpy()
    errors = [_rel(solve_navier_stokes(w0, [1.0], nu, dt=1 / m).numpy(), ref) for m in (64, 128, 256)]
    measured = np.log2(np.array(errors[:-1]) / errors[1:])
    assert orders[0] < measured.min() and measured.max() < orders[1], (errors, measured)


def test_coarse_and_fine_grids_agree_on_a_smooth_flow():
    t = np.linspace(0.0, 0.5, 3)
    w64 = solve_navier_stokes(gaussian_random_field(64, rng_for(0, 3)), t, 1e-4).numpy()
    w256 = solve_navier_stokes(gaussian_random_field(256, rng_for(0, 3)), t, 1e-4).numpy()[:, ::4, ::4]
    np.testing.assert_allclose(w64[0], w256[0], rtol=0, atol=1e-12)  # one continuous field
    assert _rel(w64, w256) < 1e-4


def test_energy_decays_and_mean_vorticity_stays_zero():
    w = solve_navier_stokes(gaussian_random_field(64, np.random.default_rng(2)), np.linspace(0, 5, 11), 1e-4)
    u, v = velocity(w).numpy()
    energy = 0.5 * (u**2 + v**2).mean(axis=(-2, -1))
    assert np.all(np.diff(energy) < 0) and energy[-1] > 0.9 * energy[0]
    assert np.abs(w.numpy().mean(axis=(-2, -1))).max() < 1e-13


def test_batch_members_do_not_affect_each_other():
    w0 = np.stack([gaussian_random_field(32, np.random.default_rng(i)) for i in range(2)])
    w0[1] *= 3  # faster flow: more steps per interval than sample 0
    t = np.linspace(0.0, 1.0, 3)
    together = solve_navier_stokes(w0, t, 1e-3).numpy()
    for i in range(2):
        np.testing.assert_allclose(together[i], solve_navier_stokes(w0[i], t, 1e-3).numpy(), rtol=0, atol=1e-12)


def test_grf_covariance_is_the_periodic_kernel():
    ell, n = 0.8, 16
    a = 1 / ell**2

    def kernel_1d(d):
        return np.exp(-2 * np.sin(np.pi * d) ** 2 / ell**2)

    d = np.arange(64) / 64  # fine enough that the sampled kernel's FFT has no aliasing
    np.testing.assert_allclose(np.fft.fft(kernel_1d(d)).real / 64, periodic_kernel_spectrum(np.fft.fftfreq(64, 1 / 64), ell), atol=1e-15)
    fields = np.stack([gaussian_random_field(n, np.random.default_rng(i), ell) for i in range(400)])
    assert np.abs(fields.mean(axis=(-2, -1))).max() < 1e-13
    lag_cov = np.mean(fields * np.roll(fields, shift=(3, 0), axis=(1, 2)))
    exact = kernel_1d(3 / n) - ive(0, a) ** 2  # C(dx = 3/16, dy = 0) without the mean mode
    assert abs(lag_cov - exact) < 0.05 and abs(np.mean(fields**2) - (1 - ive(0, a) ** 2)) < 0.05


def test_generator_writes_a_valid_deterministic_dataset(tmp_path):
    gen = NS_GENERATORS["navier_stokes_2d"](n=16, nt=3, t_end=0.2)
    assert isinstance(gen, Generator) and gen.config()["nu"] == 1e-4
    first, again, other = gen.sample(0, seed=5), gen.sample(0, seed=5), gen.sample(1, seed=5)
    np.testing.assert_array_equal(first.u, again.u)
    assert not np.allclose(first.u, other.u)
    assert first.u.shape == (3, 16, 16) and first.u.dtype == np.float32
    np.testing.assert_array_equal(first.u0, first.u[0])
    layout = gen.layout(2)
    samples = [gen.sample(i, 5) for i in range(2)]
    ds = dataclasses.replace(layout, u=np.stack([s.u for s in samples]), u0=np.stack([s.u0 for s in samples]),
                             params=np.stack([s.params for s in samples]))
    back = read_dataset(write_dataset(tmp_path / "ns.h5", ds))
    np.testing.assert_allclose(back.weights.sum(), 1.0)
    np.testing.assert_allclose(back.grid["t"], [0.0, 0.1, 0.2])
    assert back.u.shape == (2, 3, 16, 16) and back.param_names == ["nu", "length_scale"]


def test_generator_forcing_is_the_pdes_and_is_recorded(tmp_path):
    from sciml.data.generators import spec_sha
    from sciml.data.schema import check_physics
    from sciml.pdes import NavierStokes2D as Vorticity

    forced = NavierStokes2D(n=16, nt=3, t_end=0.2, nu=1e-3, forcing=0.5)
    x = np.arange(16) / 16
    sample = forced.sample(0, seed=2)
    f = Vorticity(nu=1e-3, forcing=0.5, t_end=0.2).forcing_field(x, x)
    expected = solve_navier_stokes(sample.u0.astype(np.float64), forced.times, 1e-3, forcing=f).numpy()
    np.testing.assert_allclose(sample.u, expected, rtol=0, atol=1e-5)
    unforced = NavierStokes2D(n=16, nt=3, t_end=0.2, nu=1e-3)
    assert np.abs(unforced.sample(0, seed=2).u[-1] - sample.u[-1]).max() > 1e-2  # the source acts
    assert forced.layout(1).common_params["forcing"] == 0.5 and unforced.layout(1).common_params["forcing"] == 0.0
    # unforced files keep the digest they had before `forcing` existed
    assert "forcing" not in unforced.config_for(1) and forced.config_for(1)["forcing"] == 0.5
    assert spec_sha("navier_stokes_2d", forced, 1, 0) != spec_sha("navier_stokes_2d", unforced, 1, 0)
    layout = unforced.layout(1)
    with pytest.raises(ConfigError, match=r"pde.init_args.forcing \(=0.1\) differs from the 0.0"):
        check_physics("ns.h5", layout, Vorticity(nu=1e-3, forcing=0.1, t_end=0.2))
    check_physics("ns.h5", layout, Vorticity(nu=1e-3, t_end=0.2))


@pytest.mark.parametrize(
    "kwargs, words",
    [({"n": 4}, ["`n`", "4"]), ({"nu": -1e-3}, ["`nu`", "-0.001"]), ({"length_scale": 0.0}, ["`length_scale`", "0.0"]),
     ({"t_end": "long"}, ["`t_end`", "'long'"]), ({"device": "tpu9"}, ["`device`", "'tpu9'"]),
     ({"forcing": float("nan")}, ["`forcing`", "nan"])],
)
def test_generator_refuses_bad_parameters(kwargs, words):
    with pytest.raises(ConfigError) as info:
        NavierStokes2D(**kwargs)
    assert all(word in str(info.value) for word in words)


def test_solver_refuses_bad_input():
    with pytest.raises(ValueError, match="cfl"):
        solve_navier_stokes(np.zeros((8, 8)), [1.0], cfl=2.0)
    with pytest.raises(ValueError, match="`t`"):
        solve_navier_stokes(np.zeros((8, 8)), [1.0, 0.5])
