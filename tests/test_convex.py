"""Convex constraint layer: the closed form against the KKT system and finite differences, the
cvxpylayers backend against the closed form, inequalities, dispatch and bad inputs."""

from __future__ import annotations

import sys

import pytest
import torch

from sciml.constraints._solution import SolveError
from sciml.constraints.convex import Bounds, ConvexConstraint, equality_projection
from sciml.errors import SciMLError

F64 = torch.float64


def rows(batch=3, n=12, q=4, n_basis=6, seed=0):
    """u_hat [batch, n], A [q, n] shared, b [batch, q], basis [batch, n, N]."""
    g = torch.Generator().manual_seed(seed)
    u_hat = torch.randn(batch, n, generator=g, dtype=F64)
    a = torch.randn(q, n, generator=g, dtype=F64)
    b = torch.randn(batch, q, generator=g, dtype=F64)
    basis = torch.randn(batch, n, n_basis, generator=g, dtype=F64)
    return u_hat, a, b, basis


def kkt(u_hat, a, b, basis=None, ridge=0.0):
    """The constrained least-squares solution x from the full KKT system, solved densely."""
    m = torch.eye(u_hat.shape[-1], dtype=F64).expand(u_hat.shape[0], -1, -1) if basis is None else basis
    n_x, q = m.shape[-1], a.shape[-2]
    c = a.expand(u_hat.shape[0], -1, -1) @ m
    top = torch.cat([m.mT @ m + ridge * torch.eye(n_x, dtype=F64), c.mT], -1)
    bottom = torch.cat([c, torch.zeros(u_hat.shape[0], q, q, dtype=F64)], -1)
    rhs = torch.cat([(m.mT @ u_hat.unsqueeze(-1)).squeeze(-1), b], -1)
    return torch.linalg.solve(torch.cat([top, bottom], -2), rhs)[..., :n_x]


@pytest.mark.parametrize("ridge", [0.0, 0.3])
def test_closed_form_projection_is_the_kkt_solution_and_satisfies_the_rows(ridge):
    u_hat, a, b, _ = rows()
    u = equality_projection(u_hat, a, b, ridge=ridge)
    torch.testing.assert_close(u, kkt(u_hat, a, b, ridge=ridge), rtol=0, atol=1e-12)
    assert (u @ a.T - b).abs().max() < 1e-10


@pytest.mark.parametrize("ridge", [0.0, 1e-3])
def test_closed_form_basis_coefficients_are_the_kkt_solution(ridge):
    u_hat, a, b, basis = rows()
    w = ConvexConstraint(ridge, backend="closed_form").solve(u_hat, a, b, basis=basis)
    torch.testing.assert_close(w, kkt(u_hat, a, b, basis, ridge), rtol=0, atol=1e-10)
    u = equality_projection(u_hat, a, b, basis=basis, ridge=ridge)
    torch.testing.assert_close(u, (basis @ w.unsqueeze(-1)).squeeze(-1))
    assert (u @ a.T - b).abs().max() < 1e-10


def test_basis_without_rows_is_ridge_least_squares():
    u_hat, _, _, basis = rows(n=40)
    ridge = 0.1
    w = ConvexConstraint(ridge).solve(u_hat, basis=basis)
    stacked = torch.cat([basis, ridge**0.5 * torch.eye(6, dtype=F64).expand(3, -1, -1)], 1)
    target = torch.cat([u_hat, torch.zeros(3, 6, dtype=F64)], 1)
    exact = torch.linalg.lstsq(stacked, target.unsqueeze(-1)).solution.squeeze(-1)
    torch.testing.assert_close(w, exact, rtol=0, atol=1e-12)


def test_a_feasible_prediction_is_left_unchanged():
    u_hat, a, _, _ = rows()
    u = equality_projection(u_hat, a, u_hat @ a.T)
    torch.testing.assert_close(u, u_hat, rtol=0, atol=1e-13)


@pytest.mark.parametrize("with_basis", [False, True])
def test_closed_form_gradients_match_finite_differences(with_basis):
    u_hat, a, b, basis = rows(batch=2, n=7, q=3, n_basis=5)
    inputs = [t.clone().requires_grad_(True) for t in (u_hat, a, b, basis)]
    if with_basis:
        fn = lambda u_, a_, b_, m_: equality_projection(u_, a_, b_, basis=m_, ridge=1e-2)  # noqa: E731
    else:
        fn = lambda u_, a_, b_, m_: equality_projection(u_, a_, b_, ridge=0.5) + 0 * m_.sum()  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("ridge", [1e-2, 0.0])
def test_ridge_least_squares_has_its_closed_form_gradient(ridge):
    """The basis-only solve (no rows) carries its own backward: gradients to the basis and to the
    prediction against finite differences, also without ridge (B^T B positive definite here)."""
    u_hat, _, _, basis = rows(batch=2, n=9, n_basis=4)
    inputs = (u_hat.clone().requires_grad_(True), basis.clone().requires_grad_(True))
    assert torch.autograd.gradcheck(lambda u_, m_: ConvexConstraint(ridge).solve(u_, basis=m_), inputs, eps=1e-6, atol=1e-8, rtol=1e-6)
    # the field u = B w* too (the layer's forward), and only what is asked for
    (g,) = torch.autograd.grad(ConvexConstraint(ridge)(inputs[0], basis=basis).sum(), inputs[0])
    assert g.shape == u_hat.shape and torch.isfinite(g).all()


def test_a_rank_deficient_basis_without_ridge_stays_finite():
    u_hat, _, _, basis = rows(batch=2, n=9, n_basis=4)
    basis = torch.cat([basis, basis[..., :1]], -1).requires_grad_(True)  # a repeated column: B^T B singular
    w = ConvexConstraint(0.0).solve(u_hat, basis=basis)
    (g,) = torch.autograd.grad(w.sum(), basis)
    assert torch.isfinite(w).all() and torch.isfinite(g).all()


def test_redundant_rows_stay_finite_and_satisfied():
    u_hat, a, b, _ = rows()
    a2 = torch.cat([a, a[:1]])  # a repeated row with a consistent target: rank q - 1
    b2 = torch.cat([b, b[:, :1]], -1)
    u = equality_projection(u_hat, a2, b2)
    assert torch.isfinite(u).all()
    assert (u @ a.T - b).abs().max() < 1e-6


def test_float32_in_float32_out():
    u_hat, a, b, basis = rows()
    u = ConvexConstraint(1e-3)(u_hat.float(), a.float(), b.float(), basis=basis.float())
    assert u.dtype == torch.float32
    torch.testing.assert_close(u.double(), equality_projection(u_hat, a, b, basis=basis, ridge=1e-3), rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- cvxpylayers

def _cvxpylayers():
    pytest.importorskip("cvxpylayers.torch")


@pytest.mark.parametrize("with_basis", [False, True])
def test_cvxpylayers_and_closed_form_agree_on_equality_rows(with_basis):
    _cvxpylayers()
    u_hat, a, b, basis = rows()
    ridge = 1e-2 if with_basis else 0.0
    g = torch.randn(3, 12, generator=torch.Generator().manual_seed(1), dtype=F64)
    out = {}
    for backend in ("closed_form", "cvxpylayers"):
        inputs = [t.clone().requires_grad_(True) for t in (u_hat, a, b, basis)]
        u = ConvexConstraint(ridge, backend=backend)(*inputs[:3], basis=inputs[3] if with_basis else None)
        grads = torch.autograd.grad((u * g).sum() + u.pow(2).sum(), inputs[:4 if with_basis else 3])
        out[backend] = (u.detach(), grads)
    (u_fast, g_fast), (u_cvx, g_cvx) = out["closed_form"], out["cvxpylayers"]
    torch.testing.assert_close(u_cvx, u_fast, rtol=0, atol=1e-7)
    for fast, cvx in zip(g_fast, g_cvx):
        torch.testing.assert_close(cvx, fast, rtol=1e-5, atol=1e-5)


def test_lower_bounds_hold_and_keep_the_rows():
    _cvxpylayers()
    u_hat, a, _, _ = rows()
    b = u_hat.abs() @ a.T  # |u_hat| >= 0 satisfies the rows: feasible
    layer = ConvexConstraint()
    u = layer(u_hat, a, b, bounds=Bounds(lower=0.0))
    assert layer.last_violation.max() < 1e-8
    assert equality_projection(u_hat, a, b).min() < -0.1  # the bound is active
    assert u.min() >= -1e-7
    assert (u @ a.T - b).abs().max() < 1e-7


def test_bounds_at_points_and_general_inequalities_hold():
    _cvxpylayers()
    u_hat, a, b, basis = rows()
    points = torch.tensor([0, 3, 5, 11])
    g_rows = torch.ones(1, 12, dtype=F64)  # sum(u) <= -1
    layer = ConvexConstraint(1e-3)
    u = layer(u_hat, a[:2], b[:, :2], G=g_rows, h=torch.tensor([-1.0], dtype=F64),
              bounds=Bounds(lower=-0.5, upper=torch.full((4,), 0.5, dtype=F64), points=points), basis=basis)
    assert u[:, points].min() >= -0.5 - 1e-7 and u[:, points].max() <= 0.5 + 1e-7
    assert u.sum(-1).max() <= -1 + 1e-7
    assert (u @ a[:2].T - b[:, :2]).abs().max() < 1e-7


def test_inactive_inequalities_do_not_change_the_answer():
    _cvxpylayers()
    u_hat, a, _, basis = rows()
    u_hat = 10 + u_hat
    basis[..., 0] = 1.0  # a constant basis function: the fit of u_hat ~ 10 stays far above 0
    b = (u_hat + 0.1) @ a.T
    fast = equality_projection(u_hat, a, b, basis=basis, ridge=1e-3)
    assert fast.min() > 1.0
    for bounds in (Bounds(lower=0.0, upper=100.0), Bounds(lower=-1e3)):
        cvx = ConvexConstraint(1e-3)(u_hat, a, b, bounds=bounds, basis=basis)
        torch.testing.assert_close(cvx, fast, rtol=1e-5, atol=0)  # interior-point accuracy with inequalities


def test_auto_takes_the_closed_form_without_inequalities():
    _cvxpylayers()
    u_hat, a, b, _ = rows()
    b = u_hat.abs() @ a.T
    layer = ConvexConstraint()
    torch.testing.assert_close(layer(u_hat, a, b), equality_projection(u_hat, a, b), rtol=0, atol=0)
    assert not layer._layers
    layer(u_hat, a, b, bounds=Bounds(lower=0.0))
    layer(u_hat + 1, a, b, bounds=Bounds(lower=0.0))
    assert len(layer._layers) == 1  # one CvxpyLayer per structure, reused


def test_infeasible_bounds_raise_a_solve_error():
    _cvxpylayers()
    u_hat, a, b, _ = rows()
    with pytest.raises(SolveError, match="infeasible"):
        ConvexConstraint()(u_hat, a, b, bounds=Bounds(lower=1.0, upper=-1.0))


def test_missing_cvxpylayers_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "cvxpylayers.torch", None)
    u_hat, a, b, _ = rows()
    with pytest.raises(SciMLError, match=r"sciml\[convex\]"):
        ConvexConstraint(backend="cvxpylayers")(u_hat, a, b)


# ----------------------------------------------------------------------------- bad input

U, A, B, BASIS = rows()


@pytest.mark.parametrize("call, match", [
    (lambda: equality_projection(U[0], A, B[0]), r"`u_hat` must be .*\[batch, n\], got \(12,\)"),
    (lambda: equality_projection(U, A[:, :5], B), r"`A` has shape \(4, 5\) .* n = 12 from `u_hat` \(3, 12\)"),
    (lambda: equality_projection(U, A.expand(2, -1, -1), B), r"`A` has shape \(2, 4, 12\) .*\[3, 4, 12\].*`u_hat` \(3, 12\)"),
    (lambda: equality_projection(U, A, B[:, :3]), r"`b` has shape \(3, 3\) .*\[4\] or \[3, 4\].*`A` \(3, 4, 12\)"),
    (lambda: equality_projection(U, A), r"`A` was given without `b`"),
    (lambda: equality_projection(U, torch.randn(13, 12, dtype=F64), torch.zeros(13, dtype=F64)), r"13 equality rows .* on 12 unknowns"),
    (lambda: equality_projection(U, A, B, basis=BASIS[..., :3]), r"4 equality rows .* on 3 unknowns .*more basis functions"),
    (lambda: equality_projection(U, A, B, basis=BASIS[:, :5]), r"`basis` has shape \(3, 5, 6\) .* n = 12"),
    (lambda: equality_projection(U, A, B, ridge=-1.0), r"`ridge` \(=-1.0\) must be >= 0"),
    (lambda: ConvexConstraint(backend="scs"), r"`backend` \(='scs'\) must be one of"),
    (lambda: ConvexConstraint(backend="closed_form")(U, A, B, bounds=Bounds(lower=0.0)), r"closed form handles equality rows only"),
    (lambda: ConvexConstraint()(U, bounds=Bounds(lower=0.0, points=torch.tensor([0, 12]))), r"`bounds.points` .* in \[0, 12\)"),
    (lambda: ConvexConstraint()(U, bounds=Bounds(lower=torch.zeros(5), points=torch.tensor([0, 1]))), r"`bounds.lower` has shape \(5,\)"),
])
def test_bad_inputs_are_refused(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ----------------------------------------------------------------------------- benchmark

def test_benchmark_reference_gradients_are_those_of_the_solution():
    from sciml.bench.constraint import RIDGE, exact, problem

    M, y, g = problem(2, 40, 5)
    w, dM, dy = exact(M, y, g)
    M_, y_ = M.clone().requires_grad_(True), y.clone().requires_grad_(True)
    w_ = ConvexConstraint(RIDGE).solve(y_, basis=M_)
    torch.testing.assert_close(w_.detach(), w, rtol=0, atol=1e-12)
    for got, want in zip(torch.autograd.grad((w_ * g).sum(), (M_, y_)), (dM, dy)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_benchmark_writes_json_and_table(tmp_path, monkeypatch, capsys):
    import json

    from sciml.bench import constraint

    from sciml.bench import solver

    monkeypatch.setitem(constraint.QUICK, "sizes", [(2, 30, 4)])  # without cvxpylayers its columns say "skipped"
    # the optimistix / MoE part has its own tests (test_bench.py); here only that it is included
    stub = {"quick": True, "date": "today", "machine": "m", "versions": {"peer": "optimistix stub"}, "versus_optimistix": [], "moe_scaling": []}
    monkeypatch.setattr(solver, "measure", lambda quick: stub)
    result = constraint.run(quick=True, out_dir=tmp_path)
    saved = json.loads((tmp_path / "constraint.json").read_text())
    assert saved["threads"] == torch.get_num_threads() and saved["versions"]["torch"] == torch.__version__
    methods = {m["method"]: m for m in saved["cases"][0]["methods"]}
    assert methods["closed_form"]["error_w"] < 1e-12 and methods["least_squares"]["error_grad"] < 1e-10
    assert "| 2 | 3e+01 | 4 |" in (tmp_path / "constraint.md").read_text()
    assert "closed form" in capsys.readouterr().out and result["goal"]["closed_form"]["checks"] == []
    assert saved["solver"] == stub and "optimistix stub" in (tmp_path / "constraint.md").read_text()
