"""PI-SC / PI-HC / PI-HC-MoE on 2D Navier-Stokes: the FFT velocity fields, the vorticity residual on
exact and simulated flows, the output ansatz, the constraint with the solution in its span, the
experiments end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sciml.constraints import ImplicitAdjoint, grid_fields
from sciml.data.generators.navier_stokes import gaussian_random_field, solve_navier_stokes
from sciml.errors import ConfigError
from sciml.models import PhysicsFNO3d, load_model
from sciml.pdes import Convection, NavierStokes2D, pde_from_config

K = 2 * math.pi
SMALL = {"width": 8, "layers": 2, "modes": (2, 4, 4)}
SOLVER = {"points": 150, "ridge": 1e-12, "tol": 1e-10, "max_steps": 30}
EXPERIMENTS = Path(__file__).parents[1] / "experiments" / "hc"


def periodic(n):
    return np.arange(n) / n


def taylor_green(t, x, y, nu):
    """The decaying Taylor-Green vortex w = 2k cos kx cos ky e^{-2 nu k^2 t} [nt, nx, ny]."""
    space = 2 * K * np.cos(K * x)[:, None] * np.cos(K * y)[None, :]
    return np.exp(-2 * nu * K**2 * np.asarray(t))[:, None, None] * space


def shear(x, y):
    """phi = sin 2pi(x + y) + cos 2pi(x + y): a function of x + y, so u . grad phi = 0."""
    s = K * (x[:, None] + y[None, :])
    return np.sin(s) + np.cos(s)


def test_stream_function_fields_on_a_rectangular_grid():
    """psi with -lap psi = w for w of psi = sin(2 pi x) cos(4 pi y) + cos(6 pi x), n_x != n_y."""
    x, y = periodic(24), periodic(16)
    X, Y = np.meshgrid(x, y, indexing="ij")
    psi = np.sin(K * X) * np.cos(2 * K * Y) + np.cos(3 * K * X)
    w = 5 * K**2 * np.sin(K * X) * np.cos(2 * K * Y) + 9 * K**2 * np.cos(3 * K * X)
    b = torch.tensor(w)[None, None, ..., None].expand(2, 3, -1, -1, 1)  # [batch, t, x, y, n]
    f = grid_fields(b, ("psi", "psi_x", "psi_y"), {"t": 1.0, "x": 1 / 24, "y": 1 / 16}, {"x": True, "y": True}, {"t": 1, "x": 2, "y": 3})
    np.testing.assert_allclose(f["psi"][1, 2, ..., 0], psi, atol=1e-12)
    np.testing.assert_allclose(f["psi_x"][0, 0, ..., 0], K * np.cos(K * X) * np.cos(2 * K * Y) - 3 * K * np.sin(3 * K * X), atol=1e-11)
    np.testing.assert_allclose(f["psi_y"][0, 1, ..., 0], -2 * K * np.sin(K * X) * np.sin(2 * K * Y), atol=1e-11)
    with pytest.raises(ValueError, match="periodic axes x and y"):
        grid_fields(b, ("psi_x",), {"t": 1.0, "x": 1.0, "y": 1.0}, {"x": True}, {"t": 1, "x": 2, "y": 3})


def test_taylor_green_vortex_has_zero_residual():
    """The exact decaying vortex (nu > 0): its residual is the time differences' O(dt^2) only."""
    pde = NavierStokes2D(nu=1e-2)
    model = PhysicsFNO3d(pde, constraint="soft", **SMALL).double()
    x = periodic(16)
    rates = []
    for nt in (21, 41):
        t = np.linspace(0, 1, nt)
        w = torch.tensor(taylor_green(t, x, x, pde.nu))[None]
        rates.append(float(model.residual(w, t, x, x).abs().max()))
    w_t = 2 * pde.nu * K**2 * 2 * K  # max |w_t|
    assert rates[1] < 1e-3 * w_t and rates[0] / rates[1] > 3.5  # second order in dt


def test_residual_of_a_simulated_flow_and_the_advection_sign():
    """A pseudo-spectral solution from a GRF has a small residual; reversing the velocity does not."""
    pde = NavierStokes2D(nu=1e-3)
    model = PhysicsFNO3d(pde, constraint="soft", **SMALL).double()
    x, t = periodic(64), np.linspace(0, 0.5, 41)
    w = solve_navier_stokes(gaussian_random_field(64, np.random.default_rng(0)), t, pde.nu)[None]
    r = model.residual(w, t, x, x)
    reversed_flow = model.residual(w.flip(1), t, x, x)  # w(T - t) solves the flow run backwards
    assert float(r.abs().max()) < 3e-3 and float(reversed_flow.abs().max()) > 0.3


def test_forcing_enters_the_residual():
    """w = (a + F t) phi with f = F phi solves the forced inviscid equation exactly (also in t)."""
    pde = NavierStokes2D(nu=0.0, forcing=0.1)
    model = PhysicsFNO3d(pde, constraint="soft", **SMALL).double()
    x, t = periodic(16), np.linspace(0, 2, 9)
    np.testing.assert_allclose(pde.forcing_field(x, x), 0.1 * shear(x, x))
    w = torch.tensor((0.3 + 0.1 * t)[:, None, None] * shear(x, x))[None]
    assert float(model.residual(w, t, x, x).abs().max()) < 1e-12
    assert float(PhysicsFNO3d(NavierStokes2D(nu=0.0), constraint="soft", **SMALL).double().residual(w, t, x, x).abs().max()) > 0.05
    assert pde.fields[-1] == "f" and "f" not in NavierStokes2D().fields
    assert pde_from_config(pde.to_config()) == pde


@pytest.mark.parametrize("constraint, splits", [("soft", (1, 1, 1)), ("hard", (1, 2, 2))])
def test_ansatz_meets_the_initial_condition_and_keeps_the_mean(constraint, splits):
    torch.manual_seed(0)
    model = PhysicsFNO3d(NavierStokes2D(), constraint=constraint, splits=splits, basis=5, solver=SOLVER, **SMALL).double().eval()
    x, t = periodic(16), np.linspace(0, 5, 9)
    w0 = np.stack([gaussian_random_field(16, np.random.default_rng(i)) for i in range(2)])
    w = model.predict_samples(w0, t, x)
    assert w.shape == (2, 9, 16, 16)
    np.testing.assert_array_equal(w[:, 0], w0)
    np.testing.assert_allclose(w.mean(axis=(2, 3)), 0.0, atol=1e-13)
    assert np.abs(w[:, -1] - w0).max() > 1e-3  # and it does move
    np.testing.assert_array_equal(model.predict_samples(w0, t, x), w)  # fixed points in evaluation


def test_a_training_window_keeps_physical_time():
    """On a window t <= 2.5 of the 0..5 span (data.train_t_max) the ansatz's s(t) and the
    network's time input are those of the same times on the whole span, not stretched to [0, 1]:
    training on the window and predicting the whole span extrapolates in time."""
    torch.manual_seed(0)
    model = PhysicsFNO3d(NavierStokes2D(), splits=(1, 1, 1), basis=3, solver=SOLVER, **SMALL).double()
    x, full = periodic(8), np.linspace(0, 5, 9)
    window = full[:5]  # 0 .. 2.5
    w0 = torch.randn(1, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(model._time(window, w0), model._time(full, w0)[:5], rtol=0, atol=0)
    assert float(model._time(window, w0)[-1]) == 0.5
    b = torch.ones(1, 5, 8, 8, 3, dtype=torch.float64) * torch.randn(1, 1, 8, 8, 3, dtype=torch.float64)  # constant in time
    bases, _ = model.ansatz_fields(b, w0, window, x, x)
    centred = b[:, 0] - b[:, 0].mean(dim=(1, 2), keepdim=True)
    torch.testing.assert_close(bases["u"][:, -1], 0.5 * centred)  # s(2.5) = 0.5, not 1
    seen = []
    model.net.register_forward_hook(lambda module, inputs, out: seen.append(inputs[0]))
    model._bases(w0, window)
    model._bases(w0, full)
    torch.testing.assert_close(seen[0][:, 1], seen[1][:, 1, :5])  # the time channel


@pytest.mark.parametrize("splits, step_hessian", [((1, 1, 1), "gauss-newton"), ((1, 2, 2), "gauss-newton"),
                                                  ((2, 1, 2), "gauss-newton"), ((1, 2, 2), "exact")])
@pytest.mark.parametrize("flow", ["taylor_green", "forced_shear"])
def test_hard_constraint_finds_the_solution_in_its_span(flow, splits, step_hessian):
    """Bases: one whose ansatz term is the exact solution's change, plus random smooth fields. Every
    expert solves its own nonlinear least squares from c = 0 and must land on that solution, with
    Gauss-Newton or Newton steps."""
    x = periodic(16)
    if flow == "taylor_green":
        pde, t = NavierStokes2D(nu=1e-2), np.linspace(0, 1, 33)
        exact = taylor_green(t, x, x, pde.nu)
    else:
        pde, t = NavierStokes2D(nu=0.0, forcing=0.2), np.linspace(0, 2, 9)
        exact = (0.5 + 0.2 * t)[:, None, None] * shear(x, x)
    s = t / t[-1]
    change = np.divide(exact - exact[:1], s[:, None, None], out=np.zeros_like(exact), where=s[:, None, None] > 0)
    T, X, Y = torch.tensor(np.array(np.meshgrid(t, x, x, indexing="ij")))
    extra = [torch.sin(K * (a * X + c * Y) + d * T) for a, c, d in ((1, 2, 0.5), (-2, 1, 1.0), (0, 1, -0.7))]
    b = torch.stack([torch.tensor(change), *extra], dim=-1)[None]
    model = PhysicsFNO3d(pde, splits=splits, basis=4, solver=SOLVER | {"step_hessian": step_hessian}, **SMALL).double()
    w0 = torch.tensor(exact[0])[None]
    points = model._layer((len(t), 16, 16)).sample_points(torch.Generator().manual_seed(0))
    w = model.constrain(b, w0, t, x, x, points)
    rms = lambda v: float(model.residual(v, t, x, x).pow(2).mean().sqrt())  # noqa: E731
    assert bool(model._layers[(len(t), 16, 16)].last_solution.successful.all())
    assert model._layers[(len(t), 16, 16)].solver.hessian == step_hessian  # model.solver.step_hessian reaches the solver
    # Taylor-Green's residual is the time differences' error (~1e-3 of |w_t|), which the solve may
    # trade against a small departure from the exact field; the forced shear is exact on the grid.
    tol = 2e-4 if flow == "taylor_green" else 1e-9
    assert rms(w) <= 1.05 * rms(torch.tensor(exact)[None]) + 1e-10
    np.testing.assert_allclose(w[0].numpy(), exact, atol=tol * np.abs(exact).max())
    # The experts' own fields (model.loss_fields = "experts"): the same solution, and with one
    # expert the same residual as the derivatives of w.
    fields = model.constrain(b, w0, t, x, x, points, fields=True)
    np.testing.assert_allclose(fields["u"][0].numpy(), exact, atol=tol * np.abs(exact).max())
    assert rms(fields) <= 1.05 * rms(torch.tensor(exact)[None]) + 1e-10
    if splits == (1, 1, 1):
        torch.testing.assert_close(model.residual(fields, t, x, x), model.residual(w, t, x, x), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("splits", [(1, 1, 1), (1, 2, 1)])
def test_gradient_through_the_solve_matches_finite_differences(splits):
    """d(loss)/d(bases) by the implicit adjoint, along a random direction, against central differences.
    The residual is quadratic in c and does not vanish here, so the exact Hessian is needed for
    agreement to 1e-5 (Gauss-Newton, the default, is off by ~0.5% on this problem)."""
    torch.manual_seed(0)
    pde, x, t = NavierStokes2D(nu=1e-2, forcing=0.1), periodic(8), np.linspace(0, 1, 5)
    model = PhysicsFNO3d(pde, splits=splits, basis=3, solver={"points": 60, "ridge": 1e-6, "tol": 1e-13, "max_steps": 60}, **SMALL).double()
    w0 = torch.tensor(gaussian_random_field(8, np.random.default_rng(0)))[None]
    layer = model._layer((5, 8, 8))
    layer.adjoint = ImplicitAdjoint(hessian="exact")
    points = layer.sample_points(torch.Generator().manual_seed(0))
    weight = torch.randn(1, 5, 8, 8, dtype=torch.float64)
    loss = lambda b: (weight * model.constrain(b, w0, t, x, x, points)).sum()  # noqa: E731
    b = (0.3 * torch.randn(1, 5, 8, 8, 3, dtype=torch.float64)).requires_grad_()
    direction = torch.randn_like(b)
    (grad,) = torch.autograd.grad(loss(b), b)
    eps = 1e-6
    with torch.no_grad():
        fd = (loss(b + eps * direction) - loss(b - eps * direction)) / (2 * eps)
    np.testing.assert_allclose(float((grad * direction).sum()), float(fd), rtol=1e-5)


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="NavierStokes2D"):
        PhysicsFNO3d(Convection())
    with pytest.raises(ConfigError, match="model.splits"):
        PhysicsFNO3d(NavierStokes2D(), splits=(2, 2), **SMALL)
    with pytest.raises(ConfigError, match="model.loss_fields"):
        PhysicsFNO3d(NavierStokes2D(), loss_fields="blocks", **SMALL)
    with pytest.raises(ValueError, match="hard constraint"):
        model = PhysicsFNO3d(NavierStokes2D(), constraint="soft", **SMALL)
        model.constrain(torch.zeros(1, 3, 4, 4, 1), torch.zeros(1, 4, 4), np.linspace(0, 1, 3), periodic(4), periodic(4), fields=True)
    with pytest.raises(ConfigError, match="t_end"):
        NavierStokes2D(t_end=0.0)


@pytest.mark.parametrize("variant, extra", [("sc", []), ("hc", []), ("moe", []), ("moe", ["model.loss_fields=experts"])])
def test_quick_experiment_runs_end_to_end(tmp_path, variant, extra, monkeypatch):
    from sciml.pipeline import run_experiment

    monkeypatch.chdir(tmp_path)  # the quick data file is written under data/
    report = run_experiment(EXPERIMENTS / f"navier_stokes_{variant}.yaml", out=tmp_path / "run", quick=True,
                            overrides=["trainer.max_steps=8", *extra])
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["model"] == {"sc": "pi_sc", "hc": "pi_hc", "moe": "pi_hc_moe"}[variant]
    assert np.isfinite(report["metrics"]["rel_l2"]) and report["metrics"]["rel_l2"] < 1.5
    if variant == "sc":
        assert not any(k.startswith("solver/") for k in saved["metrics"])
    else:  # the evaluation's constraint solves: how many converged, in how many steps
        assert 0 <= saved["metrics"]["solver/successful"] <= 1 and saved["metrics"]["solver/steps"] >= 1
        layers = load_model(tmp_path / "run" / "checkpoints" / "last.ckpt").constraint_layers()
        assert layers == []  # built on first use
    model = load_model(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert isinstance(model, PhysicsFNO3d)
    assert model.loss_fields == ("experts" if extra else "stitched")
