"""Batched least squares: exactness, convergence status, and implicit gradients against finite
differences and against backpropagation through the iterations."""

from __future__ import annotations

import math

import pytest
import torch

from sciml.constraints import (
    GaussNewton, ImplicitAdjoint, LevenbergMarquardt, Result, SolveError, UnrolledAdjoint, least_squares,
)

F64 = torch.float64


def linear(y, a, b):
    return (a @ y.unsqueeze(-1)).squeeze(-1) - b


def nonlinear(y, a, b):
    """A residual with a nonzero minimum: m > n rows, nonlinear in y."""
    return (a @ torch.tanh(y).unsqueeze(-1)).squeeze(-1) + 0.1 * y.pow(3).sum(-1, keepdim=True) - b


def consistent(y, a, b):
    """Square (m = n) and solvable: the residual vanishes at the solution."""
    return (a @ y.unsqueeze(-1)).squeeze(-1) + 0.2 * torch.sin(y) - b


def problem(batch=3, m=30, n=4, seed=0, square=False):
    g = torch.Generator().manual_seed(seed)
    m = n if square else m
    a = torch.randn(batch, m, n, generator=g, dtype=F64)
    if square:  # well conditioned, so the solution is unique and the residual vanishes there
        a = 3 * torch.eye(n, dtype=F64) + 0.3 * a
    b = torch.randn(batch, m, generator=g, dtype=F64)
    return a, b


def test_linear_problem_is_solved_exactly_by_one_gauss_newton_step():
    a, b = problem()
    sol = least_squares(linear, torch.zeros(3, 4, dtype=F64), (a, b), solver=GaussNewton(), max_steps=1, throw=False)
    exact = torch.linalg.lstsq(a, b.unsqueeze(-1)).solution.squeeze(-1)
    torch.testing.assert_close(sol.value, exact, rtol=0, atol=1e-12)
    again = least_squares(linear, torch.zeros(3, 4, dtype=F64), (a, b), solver=GaussNewton())
    assert again.successful.all() and again.steps <= 2


@pytest.mark.parametrize("solver", [GaussNewton(), LevenbergMarquardt()])
def test_nonlinear_solution_is_stationary(solver):
    a, b = problem()
    sol = least_squares(nonlinear, torch.zeros(3, 4, dtype=F64), (a, b), solver=solver, max_steps=200)
    y = sol.value.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(0.5 * nonlinear(y, a, b).pow(2).sum(), y)
    assert grad.abs().max() < 1e-8


def test_consistent_system_reaches_zero_residual():
    a, b = problem(square=True)
    sol = least_squares(consistent, torch.zeros(3, 4, dtype=F64), (a, b))
    assert consistent(sol.value, a, b).abs().max() < 1e-10


def finite_difference(loss_of, tensor, index, eps=1e-6):
    plus, minus = tensor.detach().clone(), tensor.detach().clone()
    plus[index] += eps
    minus[index] -= eps
    return (loss_of(plus) - loss_of(minus)) / (2 * eps)


def _check_gradients(fn, adjoint, a, b, square):
    weights = torch.linspace(-1, 1, a.shape[-1], dtype=F64)

    def loss(a_, b_):
        sol = least_squares(fn, torch.zeros(a.shape[0], a.shape[-1], dtype=F64), (a_, b_), adjoint=adjoint, max_steps=200,
                            solver=LevenbergMarquardt(rtol=1e-13, atol=1e-15))  # tight: finite differences see the solve's error
        return (sol.value * weights).sum() + sol.value.pow(2).sum() + sol.cost.sum()

    a_, b_ = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    ga, gb = torch.autograd.grad(loss(a_, b_), (a_, b_))
    no_grad_loss_a = lambda t: float(loss(t, b))  # noqa: E731
    no_grad_loss_b = lambda t: float(loss(a, t))  # noqa: E731
    for index in [(0, 0, 0), (1, 2, 3), (2, a.shape[1] - 1, 1)]:
        fd = finite_difference(no_grad_loss_a, a, index)
        assert abs(ga[index] - fd) <= 1e-6 * max(1.0, abs(fd)), (index, float(ga[index]), fd)
    for index in [(0, 0), (2, b.shape[1] - 1)]:
        fd = finite_difference(no_grad_loss_b, b, index)
        assert abs(gb[index] - fd) <= 1e-6 * max(1.0, abs(fd)), (index, float(gb[index]), fd)


def test_implicit_gauss_newton_gradients_match_finite_differences_at_zero_residual():
    a, b = problem(square=True)
    _check_gradients(consistent, ImplicitAdjoint(), a, b, square=True)


def test_implicit_exact_hessian_gradients_match_finite_differences():
    a, b = problem()
    _check_gradients(nonlinear, ImplicitAdjoint("exact"), a, b, square=False)


def test_implicit_gradients_equal_unrolled_ones():
    a, b = problem(seed=3)
    grads = []
    for adjoint in (ImplicitAdjoint("exact"), UnrolledAdjoint()):
        a_, b_ = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
        sol = least_squares(nonlinear, torch.zeros(3, 4, dtype=F64), (a_, b_), adjoint=adjoint, max_steps=200)
        grads.append(torch.autograd.grad(sol.value.sum() + sol.cost.sum(), (a_, b_)))
    for implicit, unrolled in zip(*grads):
        torch.testing.assert_close(implicit, unrolled, rtol=1e-6, atol=1e-9)


def test_problems_of_a_batch_are_independent():
    a, b = problem(batch=4, seed=5)
    together = least_squares(nonlinear, torch.zeros(4, 4, dtype=F64), (a, b), max_steps=200).value
    alone = torch.cat([least_squares(nonlinear, torch.zeros(1, 4, dtype=F64), (a[i:i + 1], b[i:i + 1]), max_steps=200).value for i in range(4)])
    torch.testing.assert_close(together, alone, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("solver", [GaussNewton(), LevenbergMarquardt()])
def test_rank_deficient_basis_gives_finite_values_and_gradients(solver):
    a, b = problem()
    a = torch.cat([a[..., :2], a[..., :2]], dim=-1).requires_grad_(True)  # duplicated columns: rank 2 of 4
    sol = least_squares(linear, torch.zeros(3, 4, dtype=F64), (a, b), solver=solver, throw=False)
    assert torch.isfinite(sol.value).all()
    assert (sol.result == Result.successful).all()
    (grad,) = torch.autograd.grad(sol.value.sum(), a)
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(linear(sol.value, a, b).detach(), linear(torch.linalg.lstsq(a.detach(), b.unsqueeze(-1)).solution.squeeze(-1), a.detach(), b), rtol=1e-6, atol=1e-6)


def test_nonfinite_residual_is_reported_not_propagated():
    a, b = problem()
    b = b.clone()
    b[1, 0] = float("nan")
    sol = least_squares(linear, torch.zeros(3, 4, dtype=F64), (a, b), throw=False)
    assert sol.result.tolist() == [Result.successful, Result.nonfinite, Result.successful]
    assert torch.isfinite(sol.value).all()
    with pytest.raises(SolveError, match="1 nonfinite.*NaN/Inf"):
        least_squares(linear, torch.zeros(3, 4, dtype=F64), (a, b))


def test_max_steps_reached_is_a_status():
    a, b = problem()
    sol = least_squares(nonlinear, torch.zeros(3, 4, dtype=F64), (a, b), max_steps=1, throw=False)
    assert (sol.result == Result.max_steps_reached).all() and sol.steps == 1
    assert "max_steps" in Result.max_steps_reached.message
    with pytest.raises(SolveError, match="max_steps"):
        least_squares(nonlinear, torch.zeros(3, 4, dtype=F64), (a, b), max_steps=1)


def test_float64_solve_under_float32_inputs():
    a, b = problem()
    a32, b32 = a.float().requires_grad_(True), b.float()
    sol = least_squares(nonlinear, torch.zeros(3, 4), (a32, b32), dtype=F64, max_steps=200)
    assert sol.value.dtype == torch.float32
    (grad,) = torch.autograd.grad(sol.value.sum(), a32)
    assert grad.dtype == torch.float32 and torch.isfinite(grad).all()
    ref = least_squares(nonlinear, torch.zeros(3, 4, dtype=F64), (a32.detach().double(), b32.double()), max_steps=200).value
    torch.testing.assert_close(sol.value.double(), ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("solver", [GaussNewton(), LevenbergMarquardt()])
@pytest.mark.parametrize("fn", [linear, nonlinear])
def test_a_float32_solve_under_the_default_tolerances_converges(solver, fn):
    """rtol = 1e-8 is below float32's rounding: the solve must still stop, at float32 precision."""
    a, b = problem()
    sol = least_squares(fn, torch.zeros(3, 4), (a.float(), b.float()), solver=solver, max_steps=50)  # raises if not converged
    assert sol.successful.all() and sol.steps <= 10, (sol.result.tolist(), sol.steps)
    ref = least_squares(fn, torch.zeros(3, 4, dtype=F64), (a.float().double(), b.float().double()), max_steps=200).value
    torch.testing.assert_close(sol.value.double(), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    ({"y0": torch.zeros(4)}, r"`y0` must be \[batch, n\]"),
    ({"max_steps": 0}, r"`max_steps` \(=0\)"),
])
def test_bad_arguments_are_refused(kwargs, match):
    a, b = problem()
    call = {"y0": torch.zeros(3, 4, dtype=F64)} | kwargs
    with pytest.raises(ValueError, match=match):
        least_squares(linear, call.pop("y0"), (a, b), **call)


def test_unknown_hessian_is_refused():
    with pytest.raises(ValueError, match="`hessian`"):
        ImplicitAdjoint("newton")


def test_gauss_newton_implicit_gradients_are_exact_for_a_linear_residual_that_does_not_vanish():
    a, b = problem(seed=7)  # 30 rows, 4 unknowns: a nonzero least-squares residual
    _check_gradients(linear, ImplicitAdjoint(), a, b, square=False)


class _LinearWithPullback:
    """linear() with its closed-form pullback, in the form a user residual may have: without the
    ``wanted`` keyword the adjoint offers residuals that take it."""

    def __call__(self, y, a, b):
        return linear(y, a, b)

    def pullback(self, y, mu, g_cost, a, b):
        r, a_mu, g = linear(y, a, b), (a @ mu.unsqueeze(-1)).squeeze(-1), g_cost.unsqueeze(-1)
        grad_a = ((g * r - a_mu).unsqueeze(-1) * y.unsqueeze(-2)) - r.unsqueeze(-1) * mu.unsqueeze(-2)
        return grad_a, a_mu - g * r


def test_a_residuals_own_pullback_without_the_wanted_keyword_is_used():
    a, b = problem(seed=3)
    grads = []
    for fn in (linear, _LinearWithPullback()):
        leaves = [a.clone().requires_grad_(True), b.clone().requires_grad_(True)]
        sol = least_squares(fn, torch.zeros(3, 4, dtype=F64), leaves, solver=GaussNewton())
        grads.append(torch.autograd.grad((sol.value * torch.arange(4.0, dtype=F64)).sum() + sol.cost.sum(), leaves))
    for ours, autograd in zip(*reversed(grads)):
        torch.testing.assert_close(ours, autograd, rtol=1e-10, atol=1e-12)


def test_levenberg_marquardt_drops_its_damping_as_fast_as_the_model_proves_exact():
    """An ill-conditioned linear residual (singular values 1 .. 1e-4): the Gauss-Newton model is
    exact, every gain ratio is 1, and the damping falls by min_shrink per step until the small
    directions are solved. Nielsen's usual floor of 1/3 took 12 steps here."""
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(3, 40, 6, generator=g, dtype=F64))
    v, _ = torch.linalg.qr(torch.randn(3, 6, 6, generator=g, dtype=F64))
    a = q @ torch.diag_embed(torch.logspace(0, -4, 6, dtype=F64).expand(3, 6)) @ v.transpose(-1, -2)
    b = torch.randn(3, 40, generator=g, dtype=F64)
    exact = torch.linalg.lstsq(a, b.unsqueeze(-1)).solution.squeeze(-1)
    steps = {}
    for name, solver in (("nielsen", LevenbergMarquardt(rtol=1e-10, atol=1e-12, min_shrink=1 / 3)),
                         ("default", LevenbergMarquardt(rtol=1e-10, atol=1e-12))):
        sol = least_squares(linear, torch.zeros(3, 6, dtype=F64), (a, b), max_steps=100, solver=solver)
        torch.testing.assert_close(sol.value, exact, rtol=0, atol=1e-8 * float(exact.abs().max()))
        steps[name] = sol.steps
    assert steps["default"] <= 7 < steps["nielsen"]


def test_a_step_within_the_costs_rounding_is_taken_and_keeps_the_damping():
    """Near a small residual of large terms the cost rounds at eps |J y| |r|, far above
    eps * cost: a step predicted to gain less than that, whose cost comes out a rounding higher,
    is taken (y still converges to full precision) and says nothing about the damping. One that
    raises the cost beyond the rounding is refused and the damping grows."""
    solver = LevenbergMarquardt()
    y = torch.full((2, 4), 10.0, dtype=F64)
    gram = 1e4 * torch.eye(4, dtype=F64).expand(2, 4, 4)  # |J y| = 2e3
    state = solver.init(y)
    step = solver.step(y, torch.full((2, 4), 1e-9, dtype=F64), gram, state)
    cost = torch.full((2,), 1e-6, dtype=F64)  # |r| ~ 1.4e-3: rounding ~ eps * 2e3 * 1.4e-3 ~ 6e-16
    assert bool((step.predicted < 1e-15).all())
    new_cost = cost + torch.tensor([1e-16, 1e-12], dtype=F64)
    taken = solver.accept(cost, new_cost, step, state)
    assert taken.tolist() == [True, False]
    assert state["lambda"][0] == solver.damping and state["lambda"][1] > solver.damping


def curved(y, a, b):
    """A residual that stays large at its minimum, with strong curvature: Gauss-Newton, which
    leaves out sum_i r_i d2r_i/dy2, converges slowly here."""
    return (a @ torch.sin(y).unsqueeze(-1)).squeeze(-1) + y.pow(2).sum(-1, keepdim=True) - b


def test_newton_steps_converge_where_gauss_newton_crawls():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 30, 4, generator=g, dtype=F64), 3 * torch.randn(3, 30, generator=g, dtype=F64)
    newton = least_squares(curved, torch.zeros(3, 4, dtype=F64), (a, b), max_steps=60,
                           solver=LevenbergMarquardt(rtol=1e-10, atol=1e-12, hessian="exact"))
    gauss = least_squares(curved, torch.zeros(3, 4, dtype=F64), (a, b), max_steps=60, throw=False,
                          solver=LevenbergMarquardt(rtol=1e-10, atol=1e-12))
    assert newton.steps <= 20 and not bool(gauss.successful.all())
    y = newton.value.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(0.5 * curved(y, a, b).pow(2).sum(), y)
    assert grad.abs().max() < 1e-8  # a stationary point, where Gauss-Newton's iterates head
    torch.testing.assert_close(newton.cost, gauss.cost, rtol=1e-6, atol=0)


def test_newton_equations_of_a_structured_residual_equal_autograds():
    """The Hessian from a residual's own ``hessian`` and from autograd agree, and the loop takes
    Newton steps with either: same statuses and solution."""
    from sciml.constraints._solve import newton_equations

    class WithHessian:
        def __call__(self, y, a, b):
            return curved(y, a, b)

        def hessian(self, y, a, b):
            return torch.func.vmap(torch.func.hessian(lambda v, a_, b_: 0.5 * curved(v[None], a_[None], b_[None]).pow(2).sum()))(y, a, b)

    g = torch.Generator().manual_seed(1)
    a, b, y = torch.randn(3, 30, 4, generator=g, dtype=F64), torch.randn(3, 30, generator=g, dtype=F64), torch.randn(3, 4, generator=g, dtype=F64)
    for ours, ref in zip(newton_equations(WithHessian(), y, (a, b)), newton_equations(curved, y, (a, b))):
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
    solver = LevenbergMarquardt(rtol=1e-10, atol=1e-12, hessian="exact")
    one, other = (least_squares(fn, torch.zeros(3, 4, dtype=F64), (a, b), solver=solver, max_steps=60) for fn in (WithHessian(), curved))
    torch.testing.assert_close(one.value, other.value, rtol=1e-9, atol=1e-9)


def test_unknown_step_hessian_is_refused():
    with pytest.raises(ValueError, match="`hessian` \\(='newton'\\)"):
        LevenbergMarquardt(hessian="newton")


def test_a_step_that_raises_the_cost_brings_the_damping_to_where_it_bites():
    """After exact steps the damping may sit at its floor, 1e-10 of where it would shorten a step.
    When a step then raises the cost (beyond rounding), the damping jumps to the curvature along
    the step relative to the damping's metric, delta^T H delta / delta^T D delta, instead of
    doubling a dozen times; a rise within rounding only doubles it."""
    g = torch.Generator().manual_seed(0)
    j = torch.randn(2, 12, 4, generator=g, dtype=F64) * torch.tensor([1.0, 1e-2, 1e-3, 1e-4], dtype=F64)
    gram = j.transpose(-1, -2) @ j
    solver = LevenbergMarquardt(damping=1e-12)
    y = torch.ones(2, 4, dtype=F64)
    state = solver.init(y)
    step = solver.step(y, torch.randn(2, 4, generator=g, dtype=F64), gram, state)
    d = step.delta.unsqueeze(-1)
    bite = ((d.mT @ gram @ d) / (d.mT @ torch.diag_embed(gram.diagonal(dim1=-2, dim2=-1)) @ d)).flatten()
    assert bool((bite > 1e-8).all())
    cost = torch.ones(2, dtype=F64)
    taken = solver.accept(cost, cost + torch.tensor([1e-3, 1e-15], dtype=F64), step, state)
    assert not bool(taken.any())
    torch.testing.assert_close(state["lambda"], torch.stack([bite[0], torch.tensor(2e-12, dtype=F64)]), rtol=1e-9, atol=0)


def test_newton_steps_model_the_cost_with_the_hessian_where_it_is_positive_definite():
    """Problem 0's Hessian is positive definite: the step solves with it and predicts the decrease
    of the Newton model; problem 1's is indefinite: Gauss-Newton's step and model stand in."""
    gram = torch.stack([torch.diag(torch.tensor([2.0, 1.0], dtype=F64))] * 2)
    hessian = torch.stack([torch.tensor([[3.0, 0.5], [0.5, 1.5]], dtype=F64), torch.tensor([[1.0, 0.0], [0.0, -2.0]], dtype=F64)])
    grad = torch.tensor([[1.0, -1.0], [1.0, -1.0]], dtype=F64)
    solver = LevenbergMarquardt(damping=1e-12, hessian="exact")
    step = solver.step(torch.zeros(2, 2, dtype=F64), grad, gram, solver.init(torch.zeros(2, 2, dtype=F64)), hessian)
    for i, model in enumerate((hessian[0], gram[1])):
        expected = -torch.linalg.solve(model, grad[i])
        torch.testing.assert_close(step.delta[i], expected, rtol=1e-9, atol=0)
        torch.testing.assert_close(step.predicted[i], -(grad[i] @ expected) - 0.5 * expected @ model @ expected, rtol=1e-9, atol=0)


def test_newton_steps_where_the_hessian_is_not_finite_fall_back_to_gauss_newton():
    """|y|^1.5 is once but not twice differentiable at 0, where the solve starts: Gauss-Newton's
    model steers there, and the problem is solved, not reported non-finite."""
    def kinked(y, a, b):
        return (a @ y.unsqueeze(-1)).squeeze(-1) + 0.01 * y.abs().pow(1.5).sum(-1, keepdim=True) - b

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 6, 2, generator=g, dtype=F64), torch.randn(2, 6, generator=g, dtype=F64)
    y0 = torch.tensor([[0.0, 0.0], [0.3, 0.3]], dtype=F64)
    newton = least_squares(kinked, y0, (a, b), solver=LevenbergMarquardt(hessian="exact"), max_steps=100)
    gauss = least_squares(kinked, y0, (a, b), max_steps=100)
    torch.testing.assert_close(newton.cost, gauss.cost, rtol=1e-8, atol=0)


class _Prepared:
    """A residual with its own ``prepare`` and normal equations but no Hessian: the prepared
    arguments go to ``normal_equations`` only, so Newton steps differentiate those."""

    def __call__(self, y, a, b):
        return curved(y, a, b)

    def prepare(self, a, b):
        return a, b, a.transpose(-1, -2) @ a  # an extra argument ``__call__`` does not take

    def normal_equations(self, y, a, b, gram):
        r = curved(y, a, b)
        jac = torch.func.vmap(torch.func.jacrev(lambda v, a_, b_: curved(v[None], a_[None], b_[None])[0]))(y, a, b)
        return 0.5 * r.pow(2).sum(-1), (jac.mT @ r.unsqueeze(-1)).squeeze(-1), jac.mT @ jac


def test_newton_steps_for_a_residual_with_prepared_arguments():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(2, 30, 4, generator=g, dtype=F64), 3 * torch.randn(2, 30, generator=g, dtype=F64)
    solver = LevenbergMarquardt(rtol=1e-10, atol=1e-12, hessian="exact")
    ours = least_squares(_Prepared(), torch.zeros(2, 4, dtype=F64), (a, b), solver=solver, max_steps=60)
    plain = least_squares(curved, torch.zeros(2, 4, dtype=F64), (a, b), solver=solver, max_steps=60)
    torch.testing.assert_close(ours.value, plain.value, rtol=1e-8, atol=1e-8)


def test_every_newton_step_uses_the_hessian_at_its_own_point():
    """The loop carries the Hessian with y: a rejected trial's Hessian must not steer the next
    step. Each step's Hessian is checked against autograd's at the point it steps from, on a
    problem with rejections."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 30, 4, generator=g, dtype=F64), 3 * torch.randn(2, 30, generator=g, dtype=F64)
    exact = torch.func.vmap(torch.func.hessian(lambda v, a_, b_: 0.5 * curved(v[None], a_[None], b_[None]).pow(2).sum()))
    seen = {"steps": 0, "rejected": 0}

    class Checked(LevenbergMarquardt):
        def step(self, y, grad, gram, state, hessian=None):
            torch.testing.assert_close(hessian, exact(y, a, b), rtol=1e-9, atol=1e-9)  # (no compaction: a plain residual)
            seen["steps"] += 1
            return super().step(y, grad, gram, state, hessian)

        def accept(self, cost, new_cost, step, state):
            taken = super().accept(cost, new_cost, step, state)
            seen["rejected"] += int((~taken).sum())
            return taken

    least_squares(curved, torch.zeros(2, 4, dtype=F64), (a, b), solver=Checked(rtol=1e-10, atol=1e-12, hessian="exact"), max_steps=60)
    assert seen["steps"] > 3 and seen["rejected"] > 0


def test_the_singular_fallback_gives_the_minimum_norm_solution():
    from sciml.constraints.solvers import min_norm_solve

    g = torch.Generator().manual_seed(0)
    u = torch.randn(4, 5, 2, generator=g, dtype=F64)
    a = u @ u.mT  # rank 2 of 5
    b = (a @ torch.randn(4, 5, 1, generator=g, dtype=F64)).squeeze(-1)
    x = min_norm_solve(a, b)
    torch.testing.assert_close(x, (torch.linalg.pinv(a, hermitian=True) @ b.unsqueeze(-1)).squeeze(-1))
    assert x.device == b.device and x.dtype == F64


def _rosenbrock(y):
    return torch.stack([10 * (y[:, 1] - y[:, 0] ** 2), 1 - y[:, 0]], -1)


@pytest.mark.parametrize("hessian", ["gauss-newton", "exact"])
def test_the_fast_damping_fall_does_not_saw_in_rosenbrocks_valley(hessian):
    """320 starts in [-2, 2]^2: where the model misleads (rejected steps), falling by 100x per step
    would alternate too little and too much damping (96 and 59 steps for the batch, against
    Nielsen's 38 and 37); after a rejection the floor is Nielsen's until a step is exact again."""
    y0 = torch.rand(320, 2, generator=torch.Generator().manual_seed(0), dtype=F64) * 4 - 2
    steps = {}
    for name, min_shrink in (("default", 1e-2), ("nielsen", 1 / 3)):
        solver = LevenbergMarquardt(rtol=1e-10, atol=1e-12, hessian=hessian, min_shrink=min_shrink)
        sol = least_squares(_rosenbrock, y0, (), solver=solver, max_steps=200)
        torch.testing.assert_close(sol.value, torch.ones_like(y0), rtol=0, atol=1e-8)
        steps[name] = sol.steps
    assert steps["default"] <= 1.2 * steps["nielsen"], steps


@pytest.mark.parametrize("min_shrink, cautious", [(1e-2, 1 / 3), (0.5, 0.5)])
def test_after_a_rejection_the_damping_falls_by_a_third_until_a_step_is_exact_again(min_shrink, cautious):
    """... or by min_shrink where that is slower: caution never makes the damping fall faster."""
    from sciml.constraints.solvers import Step

    solver = LevenbergMarquardt(min_shrink=min_shrink)
    y = torch.zeros(1, 1, dtype=F64)
    state = {**solver.init(y), "size": torch.zeros(1, dtype=F64), "bite": torch.zeros(1, dtype=F64)}
    step = Step(torch.ones(1, 1, dtype=F64), torch.ones(1, dtype=F64))  # predicts a decrease of 1
    shrinks = []
    for new_cost in (9.0, 11.0, 9.0, 9.0):  # exact, rejected, exact, exact (from cost 10)
        before = float(state["lambda"])
        solver.accept(torch.full((1,), 10.0, dtype=F64), torch.full((1,), new_cost, dtype=F64), step, state)
        shrinks.append(float(state["lambda"]) / before)
    assert shrinks[0] == pytest.approx(min_shrink) and shrinks[1] > 1
    assert shrinks[2] == pytest.approx(cautious) and shrinks[3] == pytest.approx(min_shrink)


def test_the_singular_fallback_keeps_the_solve_differentiable():
    """A zero matrix fails Cholesky, then its ridged retry (a ridge of the zero scale): the last
    fallback must not write into a tensor autograd still needs (the unrolled adjoint's path;
    the gradient of so degenerate a solve is not meaningful, but the backward must run)."""
    from sciml.constraints.solvers import spd_solve

    a = torch.zeros(2, 3, 3, dtype=F64, requires_grad=True)
    b = torch.randn(2, 3, generator=torch.Generator().manual_seed(0), dtype=F64, requires_grad=True)
    x = spd_solve(a, b)
    assert torch.isfinite(x).all()
    x.sum().backward()  # raised "modified by an inplace operation" before
    assert a.grad is not None and b.grad is not None


def test_the_gpu_fallbacks_agree_with_the_cpu_ones():
    """spd_solve on a GPU takes every fallback for every problem and keeps the first finite one
    (no wait for the device to say which need them); run here on the CPU, it must give what the
    CPU's branches give: Cholesky, the ridged retry, the minimum-norm solution."""
    from sciml.constraints.solvers import _spd_solve_fallbacks, spd_solve

    g = torch.Generator().manual_seed(3)
    m = torch.randn(6, 4, 4, generator=g, dtype=F64)
    a = m @ m.transpose(-1, -2)  # SPD
    a[1] = torch.diag(torch.tensor([1.0, 2.0, 0.0, 0.0], dtype=F64))  # singular: Cholesky fails, the ridge rescues it
    a[2] = torch.zeros(4, 4, dtype=F64)  # zero: a ridge of its zero scale does not
    a[3] = torch.diag(torch.tensor([1.0, -2.0, 3.0, 0.5], dtype=F64))  # indefinite: only the minimum-norm solution
    a[4, 0, 0] = float("nan")  # non-finite input: treated as zeros there
    b = torch.randn(6, 4, generator=g, dtype=F64)
    clean = torch.nan_to_num(a, nan=0.0)
    chol, info = torch.linalg.cholesky_ex(clean)
    x = torch.cholesky_solve(b.unsqueeze(-1), chol).squeeze(-1)
    bad = (info != 0) | ~torch.isfinite(x).all(-1)
    assert bad.tolist() == [False, True, True, True, True, False]
    scale = clean.diagonal(dim1=-2, dim2=-1).abs().mean(-1).clamp_min(torch.finfo(F64).tiny)
    gpu = _spd_solve_fallbacks(clean, b, x, bad, scale * 1e-10, torch.eye(4, dtype=F64))
    torch.testing.assert_close(gpu, spd_solve(a, b), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(gpu[3], b[3] / torch.tensor([1.0, -2.0, 3.0, 0.5], dtype=F64))
    # without the ridge (an adjoint's solve): straight to the minimum-norm solution, on both paths
    plain = _spd_solve_fallbacks(clean, b, x, bad, 0.0 * scale, torch.eye(4, dtype=F64))
    torch.testing.assert_close(plain, spd_solve(a, b, ridge=False), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(plain[1], b[1] * torch.tensor([1.0, 0.5, 0.0, 0.0], dtype=F64))


@pytest.mark.parametrize("name", ["log", "sqrt"])
def test_a_rejected_nonfinite_trial_leaves_the_unrolled_gradient_finite(name):
    """Levenberg-Marquardt's first trial lands at y < 0, where log and sqrt are NaN; the trial is
    rejected, the solve converges, and backpropagating through the iterations must give
    dy*/dc, not 0 * NaN from the rejected branch (nor from the damping's gain ratio)."""
    # y*(c) = exp(c) and c^2: dy*/dc = exp(c) and 2c
    fn, c0, slope = {"log": (lambda y, c: torch.log(y) - c, -3.0, math.exp),
                     "sqrt": (lambda y, c: torch.sqrt(y) - c, 0.05, lambda c: 2 * c)}[name]
    theta = torch.tensor(1.0, dtype=F64, requires_grad=True)  # shared by both problems: a NaN would reach both
    c = torch.tensor([[c0], [0.5]], dtype=F64) * theta
    for adjoint in (UnrolledAdjoint(), ImplicitAdjoint()):
        sol = least_squares(fn, torch.ones(2, 1, dtype=F64), (c,), solver=LevenbergMarquardt(), adjoint=adjoint, max_steps=60)
        (g,) = torch.autograd.grad(sol.value.sum(), theta, retain_graph=True)
        want = c0 * slope(c0) + 0.5 * slope(0.5)
        assert math.isfinite(float(g)) and abs(float(g) - want) < 1e-7 * abs(want), (type(adjoint).__name__, float(g), want)


def test_levenberg_marquardt_reaches_the_weak_directions_of_an_ill_conditioned_problem():
    """cond(A) = 1e7, so cond(J^T J) = 1e14: a damping floor of 1e-12 diag(J^T J) swamped the
    smallest eigenvalue, the steps along it crawled and half the problems reported success with
    y off by up to 6e-2 (the rest ran out of steps). Gauss-Newton solves them in 3 steps."""
    g = torch.Generator().manual_seed(0)
    batch, m, n = 8, 40, 8
    u, _ = torch.linalg.qr(torch.randn(batch, m, n, generator=g, dtype=F64))
    v, _ = torch.linalg.qr(torch.randn(batch, n, n, generator=g, dtype=F64))
    a = u @ torch.diag_embed(torch.logspace(0, -7, n, dtype=F64).expand(batch, n)) @ v.mT
    b = torch.randn(batch, m, generator=g, dtype=F64)
    exact = torch.linalg.lstsq(a, b.unsqueeze(-1)).solution.squeeze(-1)
    sol = least_squares(linear, torch.zeros(batch, n, dtype=F64), (a, b), solver=LevenbergMarquardt(rtol=1e-4, atol=1e-7), max_steps=20)
    assert sol.successful.all() and sol.steps <= 10, (sol.result.tolist(), sol.steps)
    assert float(((sol.value - exact).norm(dim=-1) / exact.norm(dim=-1)).max()) < 1e-4


@pytest.mark.parametrize("adjoint", [ImplicitAdjoint(), ImplicitAdjoint("exact"), UnrolledAdjoint()])
def test_a_problem_nonfinite_from_the_start_adds_no_gradient(adjoint):
    """Problem 0 starts where log is NaN and keeps its start point (status nonfinite), which does
    not depend on the parameter; the other's gradient must come through unharmed."""
    theta = torch.tensor(1.0, dtype=F64, requires_grad=True)
    c = torch.tensor([[-3.0], [0.5]], dtype=F64) * theta
    y0 = torch.tensor([[-1.0], [1.0]], dtype=F64)
    sol = least_squares(lambda y, c: torch.log(y) - c, y0, (c,), solver=LevenbergMarquardt(), adjoint=adjoint, max_steps=60, throw=False)
    assert sol.result.tolist() == [Result.nonfinite, Result.successful]
    (g,) = torch.autograd.grad(sol.value.sum(), theta)
    assert abs(float(g) - 0.5 * math.exp(0.5)) < 1e-7, float(g)  # d exp(0.5 theta)/dtheta; 0 from problem 0


def test_the_singular_spd_solve_is_the_pseudo_inverse_solution_for_a_right_side_in_its_range():
    """Cholesky fails on these singular PSD matrices (an exact zero pivot); the ridged retry, a
    ridge of 1e-10 of the matrix's scale, must then give the pseudo-inverse solution to ~1e-10
    relative where b is in the range: a ridge of 1e-2 would shrink it by ~1e-2."""
    from sciml.constraints.solvers import spd_solve

    a = torch.stack([torch.diag(torch.tensor([1.0, 2.0, 0.0], dtype=F64)),
                     torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 2.0]], dtype=F64)])
    assert torch.linalg.cholesky_ex(a)[1].tolist() == [3, 2]  # the fallback is what is tested
    b = (a @ torch.tensor([[1.0, -2.0, 3.0], [0.5, 0.25, -1.0]], dtype=F64).unsqueeze(-1)).squeeze(-1)
    x = spd_solve(a, b)
    pinv = (torch.linalg.pinv(a, hermitian=True) @ b.unsqueeze(-1)).squeeze(-1)  # [1, -2, 0], [0.375, 0.375, -1]
    assert float(((x - pinv).norm(dim=-1) / pinv.norm(dim=-1)).max()) < 1e-8


def test_a_step_is_small_relative_to_the_largest_entry_of_y():
    """max|delta| <= atol + rtol max|y|: y = [1e3, 0] tolerates a step of 1e-5, not of 2e-5
    (rtol max|y|, not rtol min|y| = 0, which would ask for atol = 1e-10)."""
    solver = GaussNewton(rtol=1e-8, atol=1e-10)
    y = torch.tensor([[1e3, 0.0], [1e3, 0.0], [0.0, -1e3]], dtype=F64)
    delta = torch.tensor([[1e-7, 0.0], [2e-5, 0.0], [0.0, 1e-7]], dtype=F64)
    zero, cost = torch.zeros(3, dtype=F64), torch.ones(3, dtype=F64)  # no decrease, a large residual
    assert solver.converged(y, delta, {}, zero, cost).tolist() == [True, False, True]


def test_the_residual_vanishes_at_its_norm_not_at_the_square_root_of_the_cost():
    """|r| = sqrt(2 cost) <= atol: |r| = 1.2 atol has not vanished (sqrt(cost) = 0.85 atol
    would say it has), 0.8 atol has."""
    solver = GaussNewton(rtol=1e-8, atol=1e-3)
    cost = 0.5 * (torch.tensor([1.2, 0.8], dtype=F64) * 1e-3) ** 2
    assert solver.vanished(cost).tolist() == [False, True]
    big_step = torch.ones(2, 1, dtype=F64)
    assert solver.converged(torch.zeros(2, 1, dtype=F64), big_step, {}, torch.zeros(2, dtype=F64), cost).tolist() == [False, True]


def test_a_flat_cost_stops_the_solve_where_the_step_never_gets_small_relative_to_y():
    """r = (y, 1 + 0.1 y^2): the minimum is at y = 0 with cost 0.5, and Gauss-Newton contracts y
    by -0.2 per step, so with atol = 0 the step, 1.2 |y|, never falls below rtol |y|. Only the
    flat-cost criterion (0 < cost - cost_new <= rtol^2 cost after an accepted step) can stop it:
    the loop must hand the solver the decrease, old cost minus new."""
    fn = lambda y: torch.cat([y, 1 + 0.1 * y.pow(2)], -1)  # noqa: E731
    sol = least_squares(fn, torch.tensor([[1.0], [-0.5]], dtype=F64), (), solver=GaussNewton(rtol=1e-4, atol=0.0), max_steps=50, throw=False)
    assert sol.successful.all() and sol.steps <= 10, (sol.result.tolist(), sol.steps)
    assert float(sol.value.abs().max()) < 1e-4  # |y| ~ rtol: the cost 0.5 + 0.6 y^2 is flat to rtol^2
    torch.testing.assert_close(sol.cost, torch.full((2,), 0.5, dtype=F64), rtol=1e-8, atol=0)


def test_levenberg_marquardt_refuses_a_rise_or_a_poor_gain_beyond_rounding():
    """From cost 1 with a predicted decrease of 1e-3 (far above the cost's rounding, 64 eps):
    a rise of 1e-6 is refused; a decrease of 1e-8, a gain ratio of 1e-5 < 1e-4, is refused too;
    a ratio of 1e-3 and an unchanged cost are taken."""
    from sciml.constraints.solvers import Step

    solver = LevenbergMarquardt()
    y = torch.zeros(4, 1, dtype=F64)
    state = {**solver.init(y), "size": torch.zeros(4, dtype=F64), "bite": torch.zeros(4, dtype=F64)}
    step = Step(torch.ones(4, 1, dtype=F64), torch.full((4,), 1e-3, dtype=F64))
    cost = torch.ones(4, dtype=F64)
    new_cost = torch.tensor([1 + 1e-6, 1 - 1e-8, 1 - 1e-6, 1.0], dtype=F64)
    assert solver.accept(cost, new_cost, step, state).tolist() == [False, False, True, True]


def test_rejections_in_a_row_multiply_the_damping_by_a_doubling_nu():
    """From cost 1 a step predicts a decrease of 1e-10, far above the cost's rounding (64 eps =
    1.4e-14), and raises the cost by 1e-12, also beyond rounding: refused, twice. Nielsen's rule
    (where the damping's bite is below lam * nu): lambda -> lambda nu, nu -> 2 nu, so lambda is
    2 and then 8 times the initial 1e-6, nu 4 then 8; an exact step then divides lambda by 3
    (Nielsen's floor after a rejection) and resets nu to 2."""
    from sciml.constraints.solvers import Step

    solver = LevenbergMarquardt()
    y = torch.zeros(1, 1, dtype=F64)
    state = {**solver.init(y), "size": torch.zeros(1, dtype=F64), "bite": torch.zeros(1, dtype=F64)}
    step = Step(torch.ones(1, 1, dtype=F64), torch.full((1,), 1e-10, dtype=F64))
    cost = torch.ones(1, dtype=F64)
    seen = []
    for new_cost in (1 + 1e-12, 1 + 1e-12, 1 - 1e-10):
        taken = solver.accept(cost, torch.full((1,), new_cost, dtype=F64), step, state)
        seen.append((bool(taken), float(state["lambda"]), float(state["nu"])))
    want = [(False, 2e-6, 4.0), (False, 8e-6, 8.0), (True, 8e-6 / 3, 2.0)]
    for (t, lam, nu), (t0, lam0, nu0) in zip(seen, want):
        assert t == t0 and lam == pytest.approx(lam0, rel=1e-6) and nu == nu0, (seen, want)


def test_gauss_newton_gives_up_on_a_nonfinite_trial():
    """r = sqrt(y) - 1/2 from y = 4: the full Gauss-Newton step lands at y = -2, where sqrt is
    NaN. Gauss-Newton has no damping to retry with: the problem is marked nonfinite at once and
    keeps its start point, while the other problem (from y = 0.3) converges to 1/4."""
    fn = lambda y, c: torch.sqrt(y) - c  # noqa: E731
    c = torch.full((2, 1), 0.5, dtype=F64)
    sol = least_squares(fn, torch.tensor([[4.0], [0.3]], dtype=F64), (c,), solver=GaussNewton(), max_steps=50, throw=False)
    assert sol.result.tolist() == [Result.nonfinite, Result.successful]
    assert sol.steps <= 10, sol.steps
    torch.testing.assert_close(sol.value, torch.tensor([[4.0], [0.25]], dtype=F64), rtol=1e-8, atol=0)
    single = least_squares(fn, torch.tensor([[4.0]], dtype=F64), (c[:1],), solver=GaussNewton(), max_steps=50, throw=False)
    assert single.result.tolist() == [Result.nonfinite] and single.steps == 1


def test_a_small_step_into_nonfinite_territory_does_not_count_as_converged():
    """r = sqrt(y - 1e4) - 1e-4 from 4e-6 above the edge of sqrt's domain: the first step, -7.6e-6,
    is small next to rtol |y| = 1e-4 but lands outside the domain. That NaN trial is refused and
    must not end the solve as converged at the start point: the retried, damped step is taken
    and the solve converges after it."""
    s = 1e4
    fn = lambda y, c: torch.sqrt(y - s) - c  # noqa: E731
    trials = []

    class Recorded(LevenbergMarquardt):
        def accept(self, cost, new_cost, step, state):
            taken = super().accept(cost, new_cost, step, state)
            trials.append((float(new_cost[0]), bool(taken[0])))
            return taken

    y0 = torch.tensor([[s + 4e-6]], dtype=F64)
    sol = least_squares(fn, y0, (torch.full((1, 1), 1e-4, dtype=F64),), solver=Recorded(), max_steps=50, throw=False)
    assert trials[0] == (math.inf, False)  # the first trial is not finite
    assert sol.successful.all() and sol.steps >= 2 and any(taken for _, taken in trials)
    assert float(sol.value[0, 0]) > s and float(sol.value[0, 0]) != float(y0[0, 0])
    torch.testing.assert_close(sol.cost, 0.5 * fn(sol.value, 1e-4).pow(2).sum(-1), rtol=1e-12, atol=0)


@pytest.mark.parametrize("adjoint", [ImplicitAdjoint(), ImplicitAdjoint("exact"), UnrolledAdjoint()])
def test_each_finite_problem_gets_its_own_gradient_next_to_a_nonfinite_one(adjoint):
    """r = log(y) - c: y* = exp(c), dy*/dc = exp(c), different for every problem. Problem 1 starts
    where log is NaN and gets no gradient; the backward runs on problems 0 and 2 alone and must
    scatter their gradients back to their own rows."""
    c = torch.tensor([[0.5], [-3.0], [-1.0]], dtype=F64, requires_grad=True)
    y0 = torch.tensor([[1.0], [-1.0], [1.0]], dtype=F64)
    sol = least_squares(lambda y, c: torch.log(y) - c, y0, (c,), solver=LevenbergMarquardt(), adjoint=adjoint, max_steps=60, throw=False)
    assert sol.result.tolist() == [Result.successful, Result.nonfinite, Result.successful]
    weights = torch.tensor([[1.0], [1.0], [2.0]], dtype=F64)
    (g,) = torch.autograd.grad((sol.value * weights).sum(), c)
    want = torch.tensor([[math.exp(0.5)], [0.0], [2 * math.exp(-1.0)]], dtype=F64)
    torch.testing.assert_close(g, want, rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("solver", [GaussNewton(), LevenbergMarquardt()])
def test_the_gpu_fallbacks_keep_an_unrolled_gradient_finite(solver, monkeypatch):
    """spd_solve's GPU path, run on the CPU, under the unrolled adjoint: the minimum-norm branch
    it computes for every problem and discards for a well-posed one must not send NaN through
    torch.where (eigh's backward divides by eigenvalue gaps; A = s I repeats its eigenvalue).
    r = s y - c: y* = c / s, d sum(y*) / ds = -sum(c) / s^2 = -1 at s = 2, c = (1, 3)."""
    import sciml.constraints.solvers as solvers

    def gpu_path(a, b, ridge=True):
        eye = torch.eye(a.shape[-1], dtype=a.dtype)
        scale = a.diagonal(dim1=-2, dim2=-1).abs().mean(-1)
        chol, info = torch.linalg.cholesky_ex(a)
        x = torch.cholesky_solve(b.unsqueeze(-1), chol).squeeze(-1)
        return solvers._spd_solve_fallbacks(a, b, x, (info != 0) | ~torch.isfinite(x).all(-1), scale * 1e-10, eye)

    monkeypatch.setattr(solvers, "spd_solve", gpu_path)
    theta = torch.tensor([[2.0, 0.0]], dtype=F64, requires_grad=True)
    fn = lambda y, th: th[:, :1] * y - torch.tensor([[1.0, 3.0]], dtype=F64)  # noqa: E731
    sol = least_squares(fn, torch.zeros(1, 2, dtype=F64), (theta,), solver=solver, adjoint=UnrolledAdjoint())
    (grad,) = torch.autograd.grad(sol.value.sum(), theta)
    torch.testing.assert_close(grad, torch.tensor([[-1.0, 0.0]], dtype=F64))


def test_gauss_newton_gradients_of_a_rank_deficient_problem_are_the_minimum_norm_ones():
    """The Gauss-Newton adjoint on the same singular J^T J: mu = (J^T J)^+ g, as the exact one
    takes, not the ridged solve's mu of size 1 / ridge (entries ~1e9) along what J cannot reach."""
    a, b = problem()
    a = torch.cat([a[..., :2], a[..., :2]], dim=-1)  # rank 2 of 4
    weights = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=F64)
    a_, b_ = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    sol = least_squares(linear, torch.zeros(3, 4, dtype=F64), (a_, b_), adjoint=ImplicitAdjoint("gauss-newton"),
                        solver=LevenbergMarquardt(rtol=1e-13, atol=1e-15), max_steps=100)
    ga, gb = torch.autograd.grad((sol.value * weights).sum() + sol.cost.sum(), (a_, b_))
    mu = (torch.linalg.pinv(a.mT @ a, hermitian=True) @ weights.expand(3, 4).unsqueeze(-1)).squeeze(-1)
    want_a, want_b = _LinearWithPullback().pullback(sol.value.detach(), mu, torch.ones(3, dtype=F64), a, b)
    torch.testing.assert_close(ga, want_a, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(gb, want_b, rtol=1e-6, atol=1e-8)


def test_exact_hessian_gradients_of_a_rank_deficient_problem_are_the_minimum_norm_ones():
    """Duplicated columns make the exact Hessian (= J^T J for a linear residual) singular and its
    LU solve fail: the fallback takes the minimum-norm mu = H^+ g, so the gradient equals the
    closed-form pullback with that mu, and along perturbations that keep the columns duplicated
    (where y* moves smoothly) it matches finite differences. Zeros for mu would leave only the
    cost's part of the gradient."""
    a, b = problem()
    a = torch.cat([a[..., :2], a[..., :2]], dim=-1)  # rank 2 of 4
    weights = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=F64)  # g not in the range of H: mu's choice matters

    def solve(a_, b_):
        return least_squares(linear, torch.zeros(3, 4, dtype=F64), (a_, b_), adjoint=ImplicitAdjoint("exact"),
                             solver=LevenbergMarquardt(rtol=1e-13, atol=1e-15), max_steps=100)

    a_, b_ = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    sol = solve(a_, b_)
    ga, gb = torch.autograd.grad((sol.value * weights).sum() + sol.cost.sum(), (a_, b_))
    y = sol.value.detach()
    hess = a.mT @ a
    mu = (torch.linalg.pinv(hess, hermitian=True) @ weights.expand(3, 4).unsqueeze(-1)).squeeze(-1)
    want_a, want_b = _LinearWithPullback().pullback(y, mu, torch.ones(3, dtype=F64), a, b)
    torch.testing.assert_close(ga, want_a, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(gb, want_b, rtol=1e-6, atol=1e-8)
    # y* = A^+ b, the minimum-norm solution the solver converges to from 0 (differentiated here
    # in closed form: the solve's 1e-11 error in the null space would swamp the differences)
    loss = lambda t: float(((torch.linalg.pinv(t) @ b.unsqueeze(-1)).squeeze(-1) * weights).sum()  # noqa: E731
                           + 0.5 * linear((torch.linalg.pinv(t) @ b.unsqueeze(-1)).squeeze(-1), t, b).pow(2).sum())
    eps = 1e-5
    for k, col in ((0, 0), (7, 1)):  # a[1, k, col] and its duplicate a[1, k, col + 2] together
        plus, minus = a.clone(), a.clone()
        plus[1, k, [col, col + 2]] += eps
        minus[1, k, [col, col + 2]] -= eps
        fd = (loss(plus) - loss(minus)) / (2 * eps)
        got = float(ga[1, k, col] + ga[1, k, col + 2])
        assert abs(got - fd) <= 1e-6 * max(1.0, abs(fd)), (k, col, got, fd)
