"""PDE definitions: residuals vanish on exact solutions, reference solvers match closed forms,
configs round-trip and bad parameters are refused."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from sciml.data.generators import spectral
from sciml.errors import ConfigError
from sciml.pdes import (
    Burgers,
    PDE,
    Convection,
    ConvectionDiffusion,
    DiffusionSorption,
    Reaction,
    ReactionDiffusion,
    autograd_fields,
    pde_from_config,
)

F64 = torch.float64


def points(n_x: int = 33, n_t: int = 17) -> tuple[torch.Tensor, torch.Tensor]:
    """A flattened (t, x) grid on [0, 2 pi] x [0, 1], float64."""
    x = torch.linspace(0, 2 * math.pi, n_x, dtype=F64)
    t = torch.linspace(0, 1, n_t, dtype=F64)
    tt, xx = torch.meshgrid(t, x, indexing="ij")
    return xx.reshape(-1), tt.reshape(-1)


def logistic(u0, rho: float, t):
    """Closed form of u_t = rho u (1 - u)."""
    growth = torch.exp(rho * t)
    return u0 * growth / (u0 * growth + 1 - u0)


def fisher_kpp_wave(rho: float, nu: float):
    """Ablowitz-Zeppetella travelling wave of u_t = nu u_xx + rho u (1 - u):
    u = (1 + exp(k x - 5 rho t / 6))^-2 with k = sqrt(rho / (6 nu))."""
    k = math.sqrt(rho / (6 * nu))
    return lambda x, t: (1 + torch.exp(k * x - 5 * rho * t / 6)) ** -2


def burgers_front(nu: float, c: float = 1.0, a: float = 0.5):
    """Viscous Burgers travelling front u = c - a tanh(a (x - c t) / (2 nu))."""
    return lambda x, t: c - a * torch.tanh(a * (x - c * t) / (2 * nu))


# (PDE, an exact solution of it, the same PDE with one parameter changed)
EXACT = {
    "convection": (Convection(beta=3.0), lambda x, t: torch.sin(x - 3 * t), Convection(beta=3.3)),
    "convection_diffusion": (
        ConvectionDiffusion(beta=2.0, nu=0.3),
        lambda x, t: torch.exp(-0.3 * t) * torch.sin(x - 2 * t),
        ConvectionDiffusion(beta=2.0, nu=0.4),
    ),
    "convection_diffusion_wrong_beta": (
        ConvectionDiffusion(beta=2.0, nu=0.3),
        lambda x, t: torch.exp(-0.3 * t) * torch.sin(x - 2 * t),
        ConvectionDiffusion(beta=2.2, nu=0.3),
    ),
    "reaction": (
        Reaction(rho=2.0),
        lambda x, t: logistic(0.2 + 0.6 * torch.sin(x) ** 2, 2.0, t),
        Reaction(rho=2.5),
    ),
    "reaction_diffusion_wave": (ReactionDiffusion(rho=2.0, nu=0.5), fisher_kpp_wave(2.0, 0.5), ReactionDiffusion(rho=2.0, nu=0.6)),
    "reaction_diffusion_wave_wrong_rho": (ReactionDiffusion(rho=2.0, nu=0.5), fisher_kpp_wave(2.0, 0.5), ReactionDiffusion(rho=2.4, nu=0.5)),
    # u depends on t only: its x-derivatives are zero, not an autograd error
    "reaction_diffusion_uniform": (
        ReactionDiffusion(rho=3.0, nu=0.1),
        lambda x, t: logistic(torch.tensor(0.1, dtype=F64), 3.0, t),
        ReactionDiffusion(rho=2.0, nu=0.1),
    ),
    "burgers": (Burgers(nu=0.1), burgers_front(0.1), Burgers(nu=0.15)),
}


@pytest.mark.parametrize("case", EXACT)
def test_residual_vanishes_on_an_exact_solution_and_not_for_other_parameters(case):
    pde, u, wrong = EXACT[case]
    x, t = points()
    fields = autograd_fields(u, x, t, pde.fields)
    assert set(fields) >= set(pde.fields)
    residual = pde.residual(fields)
    assert residual.shape == x.shape and residual.dtype == F64
    assert residual.abs().max().item() < 1e-12
    assert wrong.residual(fields).abs().max().item() > 1e-2


def test_diffusion_sorption_closed_form_slopes_equal_autograds_and_stay_differentiable():
    """The closed-form slopes (the hard-constraint layer's hot path) against the generic
    vector-Jacobian product, across the clipped region u < 0, the guard near u = 0 and u > 0."""
    gen = torch.Generator().manual_seed(0)
    u = torch.cat([-torch.rand(48, generator=gen, dtype=F64), torch.tensor([-0.0, 0.0], dtype=F64), torch.logspace(-8, 0, 50, dtype=F64)])
    f = {"u": u.requires_grad_(True), "u_t": torch.randn(100, generator=gen, dtype=F64).requires_grad_(True),
         "u_xx": torch.randn(100, generator=gen, dtype=F64).requires_grad_(True)}
    for pde in (DiffusionSorption(D=0.0), DiffusionSorption()):  # D = 0 is allowed: no division by it
        r, slopes = pde.residual_slopes(f)
        r_ref, ref = PDE.residual_slopes(pde, {k: v.detach() for k, v in f.items()})
        torch.testing.assert_close(r, r_ref, rtol=1e-13, atol=0)
        assert set(slopes) == {"u", "u_t", "u_xx"}
        for name in slopes:
            torch.testing.assert_close(slopes[name].expand_as(r), ref[name], rtol=1e-12, atol=1e-300)
    assert (slopes["u"][:50] == 0).all() and (slopes["u"][50:] != 0).all()  # the isotherm is frozen where u <= 0
    # Differentiable: the slope of u_xx's slope in u is the slope of u's slope in u_xx (a symmetric Hessian).
    (d_uxx_du,) = torch.autograd.grad(slopes["u_xx"].sum(), f["u"], retain_graph=True)
    (d_u_duxx,) = torch.autograd.grad(slopes["u"].sum(), f["u_xx"])
    torch.testing.assert_close(d_uxx_du, d_u_duxx, rtol=1e-12, atol=1e-300)


def test_autograd_fields_match_analytic_derivatives():
    x, t = points()
    fields = autograd_fields(lambda x, t: torch.sin(2 * x) * torch.exp(-t) + x**2 * t, x, t, ["u", "u_t", "u_x", "u_xx"])
    e = torch.exp(-t)
    expected = {
        "u": torch.sin(2 * x) * e + x**2 * t,
        "u_t": -torch.sin(2 * x) * e + x**2,
        "u_x": 2 * torch.cos(2 * x) * e + 2 * x * t,
        "u_xx": -4 * torch.sin(2 * x) * e + 2 * t,
    }
    for name, value in expected.items():
        torch.testing.assert_close(fields[name], value, rtol=0, atol=1e-12)


def test_autograd_fields_computes_only_what_is_asked_and_zero_for_absent_dependence():
    x, t = points(5, 3)
    fields = autograd_fields(lambda x, t: 3 * x + t**2, x, t, ["u_t", "u_xx"])
    assert set(fields) == {"u", "u_t", "u_x", "u_xx"}  # u_x is on the way to u_xx
    torch.testing.assert_close(fields["u_t"], 2 * t)
    torch.testing.assert_close(fields["u_x"], torch.full_like(x, 3.0))
    torch.testing.assert_close(fields["u_xx"], torch.zeros_like(x))
    assert set(autograd_fields(lambda x, t: x * t, x, t, ["u_t"])) == {"u", "u_t"}


def test_autograd_fields_are_exactly_zero_where_a_derivative_does_not_depend_on_its_variable():
    """u_x of u = x t + x depends on t but not on x, so autograd returns no gradient (None) for
    u_xx, and u = sin x has none for u_t: both are exactly zero (ones would make every PDE with a
    u_xx term see curvature in a field linear in x)."""
    x, t = points(5, 3)
    fields = autograd_fields(lambda x, t: x * t + x, x, t, ["u_xx"])
    torch.testing.assert_close(fields["u_x"], t + 1, rtol=0, atol=0)
    assert fields["u_x"].requires_grad  # the None path, not the "no graph at all" one
    assert fields["u_xx"].shape == x.shape and (fields["u_xx"] == 0).all()
    still = autograd_fields(lambda x, t: torch.sin(x), x, t, ["u_t"])
    assert still["u_t"].shape == t.shape and (still["u_t"] == 0).all()


def test_autograd_fields_keep_the_graph_to_parameters():
    """A loss on the derivative fields can be minimised: d/da sum(u_x) for u = a sin(x t)."""
    x, t = points(9, 5)
    a = torch.tensor(1.5, dtype=F64, requires_grad=True)
    fields = autograd_fields(lambda x, t: a * torch.sin(x * t), x, t, ["u_x"])
    (d_a,) = torch.autograd.grad(fields["u_x"].sum(), a)
    torch.testing.assert_close(d_a, (t * torch.cos(x * t)).sum())


def test_autograd_fields_rejects_unknown_names():
    x, t = points(3, 2)
    with pytest.raises(ValueError, match="u_tt"):
        autograd_fields(lambda x, t: x * t, x, t, ["u", "u_tt"])


# -- reference solutions against closed forms -------------------------------------------------

X = spectral.periodic_grid(64)
T = np.array([0.0, 0.1, 0.45, 1.0])


def reference(pde, u0=None):
    u0 = pde.initial_condition(X) if u0 is None else u0
    u = pde.reference_solution(u0, X, T)
    assert u.shape == (T.size, X.size)
    return u


def closed_logistic(u0, rho, t):
    return u0 * np.exp(rho * t) / (u0 * np.exp(rho * t) + 1 - u0)


def test_convection_reference_is_the_translated_sine():
    u = reference(Convection(beta=4.0))
    np.testing.assert_allclose(u, np.sin(X[None] - 4.0 * T[:, None]), atol=1e-12)


def test_convection_diffusion_reference_decays_and_translates():
    u = reference(ConvectionDiffusion(beta=2.0, nu=0.1))
    np.testing.assert_allclose(u, np.exp(-0.1 * T[:, None]) * np.sin(X[None] - 2.0 * T[:, None]), atol=1e-12)


def test_reaction_reference_is_the_logistic_closed_form():
    pde = Reaction(rho=3.0)
    gaussian = np.exp(-((X - np.pi) ** 2) / (2 * (np.pi / 4) ** 2))
    np.testing.assert_allclose(pde.initial_condition(X), gaussian)
    np.testing.assert_allclose(reference(pde), closed_logistic(gaussian[None], 3.0, T[:, None]), rtol=1e-12, atol=1e-14)


def test_reaction_diffusion_reference_of_a_uniform_state_is_logistic():
    u = reference(ReactionDiffusion(rho=3.0, nu=0.05), u0=np.full(X.size, 0.2))
    np.testing.assert_allclose(u, np.broadcast_to(closed_logistic(0.2, 3.0, T[:, None]), u.shape), rtol=1e-10)


def test_reaction_diffusion_reference_without_reaction_is_the_heat_equation():
    """rho = 0 from a sine: u = exp(-nu t) sin x. The uniform-state test above cannot see nu at
    all; solving with 2 nu, or nu dropped, fails here."""
    u = reference(ReactionDiffusion(rho=0.0, nu=0.3, ic="sine"))
    np.testing.assert_allclose(u, np.exp(-0.3 * T[:, None]) * np.sin(X[None]), atol=1e-12)


def test_taylor_green_initial_condition_is_the_documented_vortex():
    """w0 = 4 pi cos(2 pi x) cos(2 pi y) on the square grid x by x (the amplitude the PI-HC
    problem B starts from, and whose exact decay test_navier_stokes.py checks)."""
    from sciml.pdes import NavierStokes2D

    x = np.arange(8) / 8
    w0 = NavierStokes2D().initial_condition(x)
    assert w0.shape == (8, 8)
    np.testing.assert_allclose(w0, 4 * np.pi * np.cos(2 * np.pi * x)[:, None] * np.cos(2 * np.pi * x)[None, :], rtol=0, atol=1e-13)
    assert w0[0, 0] == pytest.approx(4 * np.pi, rel=1e-15)  # the peak, at the origin
    assert w0[2, 0] == pytest.approx(0.0, abs=1e-14)  # cos(pi / 2)


def test_burgers_reference_matches_cole_hopf():
    x = spectral.periodic_grid(128)  # 64 points resolve nu = 0.1 only to ~4e-5
    pde = Burgers(nu=0.1)
    u = pde.reference_solution(pde.initial_condition(x), x, T)
    np.testing.assert_allclose(u, spectral.burgers_sine_exact(x, T, nu=0.1), atol=1e-8)


def test_burgers_reference_refuses_the_inviscid_limit():
    with pytest.raises(ConfigError, match="nu"):
        reference(Burgers(nu=0.0))


def test_burgers_offset_initial_condition():
    np.testing.assert_allclose(Burgers(ic="sine_offset", offset=0.5).initial_condition(X), 0.5 + np.sin(X))
    np.testing.assert_allclose(Burgers().initial_condition(X), np.sin(X))


# -- configs and validation -------------------------------------------------------------------

ALL = [
    Convection(beta=30.0, ic="gaussian"),
    ConvectionDiffusion(beta=5.0, nu=0.02),
    Reaction(rho=5.0),
    ReactionDiffusion(rho=4.0, nu=3.0, ic="sine"),
    Burgers(nu=0.01, ic="sine_offset", offset=0.3),
]


@pytest.mark.parametrize("pde", ALL, ids=lambda p: p.name)
def test_config_round_trips_through_json(pde):
    config = json.loads(json.dumps(pde.to_config()))
    rebuilt = pde_from_config(config)
    assert type(rebuilt) is type(pde) and rebuilt == pde
    assert rebuilt.params() == pde.params()


@pytest.mark.parametrize("pde", ALL, ids=lambda p: p.name)
def test_every_allowed_initial_condition_evaluates(pde):
    assert set(pde.initial_conditions) <= set(spectral.INITIAL_CONDITIONS)
    x = spectral.periodic_grid(8)
    for ic in pde.initial_conditions:
        extra = {"offset": 0.5} if ic == "sine_offset" else {}
        u0 = type(pde)(ic=ic, **extra).initial_condition(x)
        assert u0.shape == x.shape and np.all(np.isfinite(u0))


def test_numpy_and_integer_parameters_are_stored_as_plain_floats():
    pde = ConvectionDiffusion(beta=np.float32(30), nu=0)
    assert type(pde.beta) is float and type(pde.nu) is float
    assert json.dumps(pde.params()) == '{"beta": 30.0, "nu": 0.0, "ic": "sine"}'


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda: ConvectionDiffusion(nu=-0.1), ["`nu`", "-0.1", ">= 0"]),
        (lambda: ReactionDiffusion(nu=-2), ["`nu`", "-2"]),
        (lambda: Burgers(nu=-1e-3), ["`nu`", "-0.001"]),
        (lambda: Convection(ic="square"), ["`ic`", "'square'", "sine"]),
        (lambda: Reaction(ic="sine_offset"), ["`ic`", "'sine_offset'", "gaussian"]),
        (lambda: Reaction(rho="fast"), ["`rho`", "'fast'", "real number"]),
        (lambda: Convection(beta=float("nan")), ["`beta`", "nan", "finite"]),
        (lambda: Convection(beta=True), ["`beta`", "True"]),
        (lambda: Burgers(offset=0.5), ["`offset`", "0.5", "sine_offset"]),
        # a porosity outside (0, 1): phi = 0 divides by zero, phi >= 1 zeroes or flips the sorption term
        (lambda: DiffusionSorption(phi=1.2), ["`phi`", "1.2", "(0, 1)"]),
        (lambda: DiffusionSorption(phi=1.0), ["`phi`", "1.0", "(0, 1)"]),
        (lambda: DiffusionSorption(phi=0.0), ["`phi`", "0.0", "(0, 1)"]),
    ],
)
def test_bad_parameters_are_refused_naming_the_value(make, words):
    with pytest.raises(ConfigError) as info:
        make()
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize(
    "config, words",
    [
        ({"class_path": "sciml.pdes.Convektion", "init_args": {}}, ["Convektion"]),
        ({"class_path": "os.system"}, ["os.system", "not a concrete sciml PDE"]),
        ({"class_path": "this.Nope"}, ["'this.Nope'", "outside sciml and its module is not imported"]),
        ({"class_path": "sciml.pdes.PDE"}, ["sciml.pdes.PDE", "not a concrete sciml PDE"]),
        ({"class_path": "sciml.pdes.Convection", "init_args": {"nu": 0.1}}, ["'nu'", "beta, ic"]),
        ({"class_path": "sciml.pdes.Convection", "init_args": [1.0]}, ["init_args", "[1.0]"]),
        ({"class_path": "sciml.pdes.Burgers", "init_args": {"nu": -1}}, ["`nu`", "-1"]),
        ("convection", ["'convection'", "mapping"]),
    ],
)
def test_bad_configs_are_refused_naming_the_value(config, words, capsys):
    with pytest.raises(ConfigError) as info:
        pde_from_config(config)
    for word in words:
        assert word in str(info.value)
    assert "Zen of Python" not in capsys.readouterr().out  # a file cannot make us import a module
