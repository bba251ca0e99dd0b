"""The hard-constraint layer and its mixture of experts on a PDE whose solution the basis holds."""

from __future__ import annotations

import math

import pytest
import torch

from sciml.constraints import GridFields, HardConstraint, Partition, Rows, derivative, grid_fields, least_squares
from sciml.pdes import ConvectionDiffusion

F64 = torch.float64
NU = 0.1


def heat_setup(nt=41, nx=32, extra=4, seed=0):
    """A basis of exact heat modes e^{-nu k^2 t} (sin kx, cos kx), k = 1..3, plus random smooth
    functions that do not solve the PDE; IC rows for u0 = sin x + 0.5 cos 2x."""
    t = torch.linspace(0, 1, nt, dtype=F64)
    x = torch.arange(nx, dtype=F64) * 2 * math.pi / nx
    tt, xx = torch.meshgrid(t, x, indexing="ij")
    modes = []
    for k in (1, 2, 3):
        decay = torch.exp(-NU * k * k * tt)
        modes += [decay * torch.sin(k * xx), decay * torch.cos(k * xx)]
    g = torch.Generator().manual_seed(seed)
    for _ in range(extra):
        c = torch.randn(3, generator=g, dtype=F64)
        modes.append(torch.sin(xx + c[0]) * (1 + c[1] * tt) + c[2] * tt**2 * torch.cos(2 * xx))
    basis = torch.stack(modes, dim=-1)[None]  # [1, nt, nx, n]
    exact = torch.exp(-NU * tt) * torch.sin(xx) + 0.5 * torch.exp(-4 * NU * tt) * torch.cos(2 * xx)
    ic_points = torch.arange(nx)  # flat indices of t = 0
    rows = Rows(points=ic_points, coefficients={"u": 1.0}, target=exact[0][None])
    spacing = {"t": float(t[1] - t[0]), "x": float(x[1] - x[0])}
    fields = grid_fields(basis, ("u", "u_t", "u_x", "u_xx"), spacing, {"x": True}, {"t": 1, "x": 2})
    return fields, rows, exact


def test_fft_and_finite_difference_derivatives_are_accurate():
    x = torch.arange(64, dtype=F64) * 2 * math.pi / 64
    f = torch.sin(3 * x)[None]
    torch.testing.assert_close(derivative(f, 1, float(x[1]), 2, periodic=True), -9 * f, atol=1e-10, rtol=0)
    t = torch.linspace(0, 1, 201, dtype=F64)
    g = torch.exp(2 * t)
    torch.testing.assert_close(derivative(g, 0, float(t[1]), 1), 2 * g, atol=1e-3, rtol=0)
    errors = [float((derivative(torch.exp(2 * s), 0, float(s[1]), 2) - 4 * torch.exp(2 * s)).abs().max())
              for s in (torch.linspace(0, 1, 51, dtype=F64), torch.linspace(0, 1, 101, dtype=F64))]
    assert 3.5 < errors[0] / errors[1] < 4.5  # second order, boundaries included


def test_spectral_fields_share_one_transform_and_are_exact_for_trigonometric_polynomials():
    """Every spectral field at once (one shared forward transform): exact on an odd t size and even
    x and y sizes, including x's and y's Nyquist modes, which first derivatives drop and second
    ones keep; psi (-lap psi = u, mean zero) over x and y only, with a periodic t axis present."""
    nt, nx, ny = 5, 12, 16
    t, x, y = (torch.arange(n, dtype=F64) / n for n in (nt, nx, ny))
    T, X, Y = torch.meshgrid(t, x, y, indexing="ij")
    k = 2 * math.pi
    nyq, nyq_x = math.pi * ny, math.pi * nx  # the Nyquist wavenumbers
    mixed = torch.cos(nyq_x * X) * torch.cos(k * Y)  # x's Nyquist mode times a y mode: its x derivative is dropped
    u = torch.sin(k * X) * torch.cos(2 * k * Y) * torch.cos(k * T) + 0.5 * torch.cos(nyq * Y) + 0.3 * torch.cos(nyq_x * X) + 0.2 * mixed + 0.25
    names = ("u", "u_t", "u_x", "u_y", "u_xx", "u_yy", "psi", "psi_x", "psi_y")
    f = {n: v[0, ..., 0] for n, v in grid_fields(u[None, ..., None], names, {"t": 1 / nt, "x": 1 / nx, "y": 1 / ny},
                                                    {"t": True, "x": True, "y": True}, {"t": 1, "x": 2, "y": 3}).items()}
    smooth = torch.sin(k * X) * torch.cos(2 * k * Y) * torch.cos(k * T)
    expect = {
        "u_t": -k * torch.sin(k * X) * torch.cos(2 * k * Y) * torch.sin(k * T),
        "u_x": k * torch.cos(k * X) * torch.cos(2 * k * Y) * torch.cos(k * T),
        "u_y": -2 * k * torch.sin(k * X) * torch.sin(2 * k * Y) * torch.cos(k * T) - 0.2 * k * torch.cos(nyq_x * X) * torch.sin(k * Y),
        "u_xx": -k**2 * smooth - 0.3 * nyq_x**2 * torch.cos(nyq_x * X) - 0.2 * nyq_x**2 * mixed,
        "u_yy": -4 * k**2 * smooth - 0.5 * nyq**2 * torch.cos(nyq * Y) - 0.2 * k**2 * mixed,
        "psi": smooth / (5 * k**2) + 0.5 * torch.cos(nyq * Y) / nyq**2 + 0.3 * torch.cos(nyq_x * X) / nyq_x**2
        + 0.2 * mixed / (nyq_x**2 + k**2),  # the mean ignored
        "psi_x": k * torch.cos(k * X) * torch.cos(2 * k * Y) * torch.cos(k * T) / (5 * k**2),
        "psi_y": -2 * k * torch.sin(k * X) * torch.sin(2 * k * Y) * torch.cos(k * T) / (5 * k**2)
        - 0.2 * k * torch.cos(nyq_x * X) * torch.sin(k * Y) / (nyq_x**2 + k**2),
    }
    for name, want in expect.items():
        torch.testing.assert_close(f[name], want, atol=1e-10 * float(want.abs().max()), rtol=0, msg=name)
    torch.testing.assert_close(derivative(u, 2, 1 / ny, 2, periodic=True), expect["u_yy"], atol=1e-8, rtol=0)


@pytest.mark.parametrize("periodic", [{}, {"x": True}])
def test_grid_fields_at_points_equal_the_whole_grid_fields_there(periodic):
    """Values and gradients at interior, edge and corner points, finite-difference and spectral axes."""
    b = torch.randn(2, 7, 9, 3, dtype=F64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    names, spacing, axes = ("u", "u_t", "u_x", "u_xx", "u_tt"), {"t": 0.3, "x": 0.1}, {"t": 1, "x": 2}
    full = grid_fields(b, names, spacing, periodic, axes)
    index = torch.stack([torch.arange(9), torch.arange(54, 63), torch.arange(0, 63, 7), torch.randint(0, 63, (9,), generator=torch.Generator().manual_seed(1))])
    at = GridFields(b, names, spacing, periodic, axes).at(index)
    weights = {k: torch.randn(2, *index.shape, 3, dtype=F64, generator=torch.Generator().manual_seed(i)) for i, k in enumerate(names)}
    for k in names:
        assert at[k].shape == (2, *index.shape, 3)
        want = full[k].reshape(2, -1, 3)[:, index]
        torch.testing.assert_close(at[k], want, rtol=1e-12, atol=1e-12 * float(want.abs().max()))
    (got,) = torch.autograd.grad(sum((at[k] * weights[k]).sum() for k in names), b)
    (want,) = torch.autograd.grad(sum((full[k].reshape(2, -1, 3)[:, index] * weights[k]).sum() for k in names), b)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-9)


def test_grid_fields_refuse_unknown_fields():
    b = torch.zeros(1, 5, 6, 2, dtype=F64)
    with pytest.raises(ValueError, match="unknown field 'u_y'"):
        GridFields(b, ("u", "u_y"), {"t": 1.0, "x": 1.0}, {}, {"t": 1, "x": 2})
    with pytest.raises(ValueError, match=r"fields \['u_tt'\] were not declared"):
        GridFields(b, ("u", "u_t"), {"t": 1.0, "x": 1.0}, {}, {"t": 1, "x": 2}).at(torch.arange(3), ("u_tt",))
    with pytest.raises(ValueError, match="needs >= 3 points"):
        GridFields(torch.zeros(1, 2, 6, 2), ("u_t",), {"t": 1.0, "x": 1.0}, {}, {"t": 1, "x": 2}).at(torch.arange(3))


@pytest.mark.parametrize("splits", [(1, 1), (2, 2)])
def test_layer_on_grid_fields_equals_the_layer_on_whole_grid_fields(splits):
    """GridFields computes the fields at the sampled and row points only: same u, same gradient."""
    fields, rows, exact = heat_setup(nt=21, nx=16, extra=3)
    spacing, axes = {"t": 1 / 20, "x": 2 * math.pi / 16}, {"t": 1, "x": 2}
    layer = HardConstraint(ConvectionDiffusion(beta=0.0, nu=NU), grid=exact.shape, splits=splits, points=40, ridge=1e-3)
    pts = layer.sample_points(torch.Generator().manual_seed(0))
    weight = torch.randn(exact.shape, generator=torch.Generator().manual_seed(2), dtype=F64)
    for periodic in ({}, {"x": True}):
        outputs = []
        for lazy in (False, True):
            basis = fields["u"].detach().clone().requires_grad_(True)
            f = (GridFields if lazy else grid_fields)(basis, ("u", "u_t", "u_x", "u_xx"), spacing, periodic, axes)
            u = layer(f, rows=rows, points=pts)
            full = layer(f, rows=rows, points=pts, return_fields=True)
            outputs.append((u, full, *torch.autograd.grad((u * weight).sum() + (full["u_xx"] * weight).sum(), basis)))
        (u1, f1, g1), (u2, f2, g2) = outputs
        torch.testing.assert_close(u2, u1, rtol=1e-10, atol=1e-12)
        for k in f1:
            torch.testing.assert_close(f2[k], f1[k], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(g2, g1, rtol=1e-8, atol=1e-9)


def test_layer_recovers_the_exact_solution_held_by_the_basis():
    fields, rows, exact = heat_setup()
    layer = HardConstraint(ConvectionDiffusion(beta=0.0, nu=NU), grid=exact.shape, points=300, ridge=1e-10, max_steps=200)
    u = layer(fields, rows=rows, points=layer.sample_points(torch.Generator().manual_seed(0)))
    assert layer.last_solution.successful.all()
    rel = float((u[0] - exact).norm() / exact.norm())
    assert rel < 2e-3, rel  # limited by the second-order time differences


@pytest.mark.parametrize("splits", [(1, 2), (1, 4)])
def test_spatial_experts_recover_the_exact_solution_too(splits):
    fields, rows, exact = heat_setup()
    layer = HardConstraint(ConvectionDiffusion(beta=0.0, nu=NU), grid=exact.shape, splits=splits, points=200, ridge=1e-10, max_steps=200)
    u = layer(fields, rows=rows, points=layer.sample_points(torch.Generator().manual_seed(0)))
    assert layer.last_solution.value.shape[0] == splits[1]
    assert float((u[0] - exact).norm() / exact.norm()) < 2e-3


def test_rows_hold_for_the_returned_fields_with_offsets():
    """With offsets c the layer returns B w + c; the IC rows must hold for that field, not for B w."""
    fields, rows, exact = heat_setup(nt=21, nx=16, extra=3)
    t = torch.linspace(0, 1, 21, dtype=F64)
    x = torch.arange(16, dtype=F64) * 2 * math.pi / 16
    tt, xx = torch.meshgrid(t, x, indexing="ij")
    c = 0.7 * torch.exp(-NU * tt) * torch.sin(xx)  # an exact heat solution: the offset keeps the PDE exact
    offsets = {"u": c[None], "u_t": (-NU * c)[None], "u_x": (0.7 * torch.exp(-NU * tt) * torch.cos(xx))[None], "u_xx": (-c)[None]}
    truth = exact + c
    layer = HardConstraint(ConvectionDiffusion(beta=0.0, nu=NU), grid=exact.shape, splits=(1, 2), points=50, ridge=1e-10, max_steps=200)
    rows = Rows(points=rows.points, coefficients={"u": 1.0}, target=truth[0][None])
    u = layer(fields, offsets=offsets, rows=rows, points=layer.sample_points(torch.Generator().manual_seed(0)))
    assert layer.last_solution.successful.all()
    assert float((u[0, 0] - truth[0]).abs().max()) < 1e-6  # off by c(0) = 0.7 sin x when the offsets are left out
    assert float((u[0] - truth).norm() / truth.norm()) < 2e-3


def test_one_expert_is_plain_least_squares_on_the_same_points():
    fields, rows, exact = heat_setup(extra=6)
    pde = ConvectionDiffusion(beta=0.0, nu=NU)
    layer = HardConstraint(pde, grid=exact.shape, points=150, ridge=1e-4)
    pts = layer.sample_points(torch.Generator().manual_seed(1))
    u = layer(fields, rows=rows, points=pts)
    flat = {k: v.reshape(1, -1, v.shape[-1]) for k, v in fields.items()}

    def residual(w, ut, uxx, a, b):
        r = (ut @ w[..., None])[..., 0] - NU * (uxx @ w[..., None])[..., 0]
        return torch.cat([r, (a @ w[..., None])[..., 0] - b, 1e-2 * w], -1)

    a = flat["u"][:, rows.points]
    w = least_squares(residual, torch.zeros(1, a.shape[-1], dtype=F64), (flat["u_t"][:, pts[0]], flat["u_xx"][:, pts[0]], a, rows.target)).value
    torch.testing.assert_close(u.reshape(1, -1), (flat["u"] @ w[..., None])[..., 0], rtol=1e-8, atol=1e-10)


def test_gradients_through_the_layer_match_finite_differences():
    fields, rows, exact = heat_setup(nt=21, nx=16, extra=3)
    pde = ConvectionDiffusion(beta=0.0, nu=NU)
    layer = HardConstraint(pde, grid=exact.shape, splits=(1, 2), points=60, ridge=1e-3)
    pts = layer.sample_points(torch.Generator().manual_seed(0))
    spacing, axes = {"t": 1 / 20, "x": 2 * math.pi / 16}, {"t": 1, "x": 2}
    weight = torch.randn(exact.shape, generator=torch.Generator().manual_seed(2), dtype=F64)

    def loss(basis):
        f = grid_fields(basis, ("u", "u_t", "u_x", "u_xx"), spacing, {"x": True}, axes)
        return (layer(f, rows=rows, points=pts) * weight).sum()

    basis = fields["u"].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(basis), basis)
    for index in [(0, 0, 0, 0), (0, 5, 3, 6), (0, 20, 15, 8), (0, 10, 9, 2)]:
        plus, minus = basis.detach().clone(), basis.detach().clone()
        plus[index] += 1e-6
        minus[index] -= 1e-6
        fd = (float(loss(plus)) - float(loss(minus))) / 2e-6
        assert abs(float(grad[index]) - fd) <= 1e-6 * max(1.0, abs(fd)), (index, float(grad[index]), fd)


def test_partition_blocks_cover_the_grid_once():
    part = Partition((10, 7), (2, 3))
    assert part.experts == 6
    covered = torch.cat(part.blocks).sort().values
    assert covered.tolist() == list(range(70))
    with pytest.raises(ValueError, match="`splits`"):
        Partition((10, 7), (2, 8))


def test_bad_layer_inputs_are_refused():
    fields, rows, exact = heat_setup(nt=11, nx=8, extra=1)
    pde = ConvectionDiffusion(beta=0.0, nu=NU)
    with pytest.raises(ValueError, match="`points`"):
        HardConstraint(pde, grid=exact.shape, points=0)
    layer = HardConstraint(pde, grid=(11, 9), points=10)
    with pytest.raises(ValueError, match="basis grid"):
        layer(fields, rows=rows)
    with pytest.raises(ValueError, match="u_xx"):
        HardConstraint(pde, grid=exact.shape, points=10)({"u": fields["u"], "u_t": fields["u_t"], "u_x": fields["u_x"]})
    two = HardConstraint(pde, grid=exact.shape, splits=(1, 2), points=10)
    with pytest.raises(ValueError, match=r"`points` has 1 rows but the layer has 2 experts"):
        two(fields, rows=rows, points=two.sample_points()[:1])
    swapped = two.sample_points().flip(0)
    with pytest.raises(ValueError, match="expert 0's `points` lie outside its block"):
        two(fields, rows=rows, points=swapped)


def test_structured_jacobian_equals_forward_mode_products():
    """The layer's residual supplies its Jacobian analytically; it must equal torch's."""
    from sciml.constraints._solve import jacobian
    from sciml.constraints.hard import _Residual
    from sciml.pdes import Burgers

    g = torch.Generator().manual_seed(0)
    pde = Burgers(nu=0.05)  # a residual nonlinear in the fields: u u_x
    names = tuple(pde.fields)
    bases = [torch.randn(3, 40, 5, generator=g, dtype=F64) for _ in names]
    offsets = [torch.randn(3, 40, generator=g, dtype=F64) for _ in names]
    a, b = torch.randn(3, 7, 5, generator=g, dtype=F64), torch.randn(3, 7, generator=g, dtype=F64)
    fn = _Residual(pde, names, 1e-3, 2.0)
    w = torch.randn(3, 5, generator=g, dtype=F64)
    r, jac = fn.jacobian(w, *bases, *offsets, a, b)

    def plain(y, *t):
        return fn(y, *t)

    r_ref, jac_ref = jacobian(plain, w, [*bases, *offsets, a, b])
    torch.testing.assert_close(r, r_ref)
    torch.testing.assert_close(jac, jac_ref)


def _structured_problem(pde, batch=3, points=40, n=5, rows=7, seed=0):
    from sciml.constraints.hard import _Residual

    g = torch.Generator().manual_seed(seed)
    names = tuple(pde.fields)
    bases = [torch.randn(batch, points, n, generator=g, dtype=F64) for _ in names]
    offsets = [0.3 + 0.1 * torch.rand(batch, points, generator=g, dtype=F64) for _ in names]  # u > 0 for the isotherm
    a, b = torch.randn(batch, rows, n, generator=g, dtype=F64), torch.randn(batch, rows, generator=g, dtype=F64)
    return _Residual(pde, names, 1e-3, 2.0), [*bases, *offsets, a, b], 0.02 * torch.randn(batch, n, generator=g, dtype=F64)


@pytest.mark.parametrize("pde_name", ["burgers", "diffusion_sorption"])
def test_structured_normal_equations_hessian_and_pullback_equal_autograd(pde_name):
    """The layer's residual gives its normal equations (linear rows' Gram once per solve), exact
    Hessian and implicit-adjoint pullback in closed form; each must equal what autograd gets from
    the plain residual."""
    from sciml.constraints._solve import normal_equations, prepare
    from sciml.pdes import Burgers, DiffusionSorption

    pde = Burgers(nu=0.05) if pde_name == "burgers" else DiffusionSorption()
    fn, args, w = _structured_problem(pde)
    plain = lambda y, *t: fn(y, *t)  # noqa: E731  (no structure: autograd only)
    for grad_mode in (True, False):  # the unrolled adjoint's path, and the forward solve's (condensed rows)
        with torch.set_grad_enabled(grad_mode):
            for ours, ref in zip(normal_equations(fn, w, prepare(fn, args)), normal_equations(plain, w, args)):
                torch.testing.assert_close(ours, ref, rtol=1e-11, atol=1e-11)

    cost = lambda y, *t: 0.5 * plain(y, *t).pow(2).sum()  # noqa: E731
    hess = torch.stack([torch.func.hessian(lambda y: cost(y[None], *(t[i:i + 1] for t in args)))(w[i]) for i in range(len(w))])
    torch.testing.assert_close(fn.hessian(w, *prepare(fn, args)), hess, rtol=1e-10, atol=1e-10)
    with torch.no_grad():  # the backward's path: the curvature written into the Jacobian's workspace
        torch.testing.assert_close(fn.hessian(w, *prepare(fn, args)), hess, rtol=1e-10, atol=1e-10)
    for grad_mode in (True, False):  # Newton steps: the normal equations and the Hessian from one pass
        with torch.set_grad_enabled(grad_mode):
            newton = fn.newton_equations(w, *prepare(fn, args))
        for ours, ref in zip(newton, (*normal_equations(plain, w, args), hess)):
            torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)

    g = torch.Generator().manual_seed(1)
    mu, g_cost = torch.randn(w.shape, generator=g, dtype=F64), torch.randn(len(w), generator=g, dtype=F64)
    leaves = [t.clone().requires_grad_(True) for t in args]
    y = w.clone().requires_grad_(True)
    r = plain(y, *leaves)
    c = 0.5 * r.pow(2).sum(-1)
    (f,) = torch.autograd.grad(c.sum(), y, create_graph=True)
    ref = torch.autograd.grad([f, c], leaves, [-mu, g_cost])
    for ours, expected in zip(fn.pullback(w, mu, g_cost, *args), ref):
        torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-10)
    bases_only = fn.pullback(w, mu, g_cost, *args, wanted=frozenset(range(len(args) - 2)))
    assert bases_only[-2:] == (None, None)  # the rows' gradients skipped when not wanted
    for ours, expected in zip(bases_only[:-2], ref):
        torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("ridge", [0.0, 1e-3])
def test_condensed_rows_give_the_cost_of_the_rows_evaluated(ridge):
    """The forward solve condenses the linear rows to their QR factor once per solve; its cost
    must equal the plain residual's where A^T A is singular: an expert with no rows (all zero
    padding), fewer rows than coefficients, two equal columns; at random points and at the
    solution, where the cost is smallest."""
    from sciml.constraints._solve import normal_equations, prepare
    from sciml.constraints.hard import _Residual

    pde, names, g, bases, offsets, a, b = _burgers_problem(seed=4, rows=9)
    a[1], b[1] = 0.0, 0.0  # no rows: all padding
    a[2, 3:], b[2, 3:] = 0.0, 0.0  # 3 rows for 5 coefficients
    a[3, :, 4] = a[3, :, 0]  # rank 4
    fn = _Residual(pde, names, ridge, 2.0)
    args = [*bases, *offsets, a, b]
    solution = least_squares(fn, torch.zeros(4, 5, dtype=F64), args, max_steps=200, throw=False).value
    for w in (torch.randn(4, 5, generator=g, dtype=F64), solution):
        with torch.no_grad():
            cost = normal_equations(fn, w, prepare(fn, args))[0]
        torch.testing.assert_close(cost, 0.5 * fn(w, *args).pow(2).sum(-1), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("tiny, ridge, noise", [(3e-8, 0.0, 0.1), (3e-7, 0.0, 1.0), (1e-6, 1e-10, 1.0)])
def test_condensed_rows_keep_the_precision_of_the_rows_evaluated(tiny, ridge, noise):
    """Rows with two nearly equal columns and targets they cannot fit: the rows' own least-squares
    solution is huge (|w| ~ 1e6), far from the whole problem's. A cost condensed through A^T A
    about that point lost ~1e-2 of the cost and Levenberg-Marquardt stalled; the QR factor keeps
    the precision of the rows evaluated directly (the path autograd takes): same statuses, steps,
    solution and cost."""
    from sciml.constraints import LevenbergMarquardt, UnrolledAdjoint
    from sciml.constraints.hard import _Residual
    from sciml.pdes import Burgers

    pde = Burgers(nu=0.05)
    names = tuple(pde.fields)
    g = torch.Generator().manual_seed(0)
    bases = [torch.randn(6, 60, 8, generator=g, dtype=F64) for _ in names]
    w_true = torch.randn(6, 8, generator=g, dtype=F64)
    offsets = [-(m @ w_true[..., None])[..., 0] + 0.01 * torch.randn(6, 60, generator=g, dtype=F64) for m in bases]
    a = torch.randn(6, 30, 8, generator=g, dtype=F64)
    a[:, :, 7] = a[:, :, 0] + tiny * torch.randn(6, 30, generator=g, dtype=F64)
    b = (a @ w_true[..., None])[..., 0] + noise * torch.randn(6, 30, generator=g, dtype=F64)
    fn, args, y0 = _Residual(pde, names, ridge, 1.0), [*bases, *offsets, a, b], torch.zeros(6, 8, dtype=F64)
    condensed = least_squares(fn, y0, args, solver=LevenbergMarquardt(), max_steps=100, throw=False)
    with torch.enable_grad():  # the unrolled adjoint's path: the rows evaluated at every step
        direct = least_squares(fn, y0, args, solver=LevenbergMarquardt(), adjoint=UnrolledAdjoint(), max_steps=100, throw=False)
    assert bool(condensed.successful.all()) and condensed.steps == direct.steps
    torch.testing.assert_close(condensed.value, direct.value.detach(), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(condensed.cost, 0.5 * fn(condensed.value, *args).pow(2).sum(-1), rtol=1e-12, atol=1e-14)


def test_dropping_converged_problems_changes_nothing():
    """The loop drops converged problems from the working set (the layer's residual allows it):
    values, statuses and implicit or unrolled gradients equal each problem solved alone."""
    from sciml.constraints import ImplicitAdjoint, LevenbergMarquardt, UnrolledAdjoint
    from sciml.pdes import DiffusionSorption

    fn, args, _ = _structured_problem(DiffusionSorption(), batch=6, points=60, n=4, rows=9, seed=3)
    scales = torch.tensor([1.0, 30.0, 1.0, 300.0, 3.0, 1.0], dtype=F64)[:, None, None]
    args = [t * scales if i < 3 else t for i, t in enumerate(args)]  # stiffer problems need more steps
    solver = LevenbergMarquardt(rtol=1e-12, atol=1e-14)
    y0 = torch.zeros(6, 4, dtype=F64)
    together = least_squares(fn, y0, args, solver=solver, max_steps=200)
    alone = [least_squares(fn, y0[i:i + 1], [t[i:i + 1] for t in args], solver=solver, max_steps=200) for i in range(6)]
    assert len({s.steps for s in alone}) > 1  # the problems do converge at different steps
    torch.testing.assert_close(together.value, torch.cat([s.value for s in alone]), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(together.cost, torch.cat([s.cost for s in alone]), rtol=1e-12, atol=0)
    grads = []
    for adjoint in (ImplicitAdjoint("exact"), UnrolledAdjoint()):
        leaves = [t.clone().requires_grad_(True) for t in args]
        sol = least_squares(fn, y0, leaves, solver=solver, adjoint=adjoint, max_steps=200)
        grads.append(torch.autograd.grad(sol.value.pow(2).sum() + sol.cost.sum(), leaves[:3] + leaves[-2:]))
    for implicit, unrolled in zip(*grads):
        torch.testing.assert_close(implicit, unrolled, rtol=1e-6, atol=1e-8)


def test_each_block_of_the_output_uses_its_own_experts_coefficients():
    fields, rows, exact = heat_setup(nt=21, nx=16, extra=3)
    layer = HardConstraint(ConvectionDiffusion(beta=0.0, nu=NU), grid=exact.shape, splits=(2, 2), points=30, ridge=1e-3)
    u = layer(fields, rows=rows, points=layer.sample_points(torch.Generator().manual_seed(0)))
    w = layer.last_solution.value.reshape(1, 4, -1)
    assert float((w[0, 0] - w[0, 3]).abs().max()) > 1e-3  # the experts differ, so a mix-up would show
    basis = fields["u"].reshape(1, -1, w.shape[-1])
    for k, block in enumerate(layer.partition.blocks):
        torch.testing.assert_close(u.reshape(1, -1)[:, block], (basis[:, block] @ w[:, k, :, None])[..., 0], rtol=1e-12, atol=1e-12)


def test_padding_rows_are_left_out_and_change_nothing():
    """Experts with fewer rows than the longest are zero-padded; the solve's condensation and the
    backward's Gram matrix skip the padding (problems grouped by rows used) and must equal those of
    each problem's own rows. A NaN in a trailing row is not padding: it reaches the cost."""
    from sciml.constraints._solve import normal_equations, prepare
    from sciml.constraints.hard import _Residual, _row_groups
    from sciml.pdes import Burgers

    pde = Burgers(nu=0.05)
    names = tuple(pde.fields)
    g = torch.Generator().manual_seed(2)
    lengths = [40, 3, 0, 17, 40, 4]
    bases = [torch.randn(6, 20, 5, generator=g, dtype=F64) for _ in names]
    offsets = [torch.randn(6, 20, generator=g, dtype=F64) for _ in names]
    a, b = torch.randn(6, 40, 5, generator=g, dtype=F64), torch.randn(6, 40, generator=g, dtype=F64)
    for i, q in enumerate(lengths):
        a[i, q:], b[i, q:] = 0.0, 0.0
    a[3, 5] = 0.0  # a zero row inside an expert's rows, with a target: not padding
    groups = _row_groups(a, b)
    assert sorted(sorted(index.tolist()) for index, _ in groups) == [[0, 4], [1, 5], [2], [3]]
    assert {tuple(index.tolist()): q for index, q in groups}[(1, 5)] == 4  # 3 and 4 rows: one group of 4
    fn = _Residual(pde, names, 1e-3, 2.0)
    w = torch.randn(6, 5, generator=g, dtype=F64)
    with torch.no_grad():
        padded = prepare(fn, [*bases, *offsets, a, b])
        cost = normal_equations(fn, w, padded)[0]
        backward = prepare(fn, [*bases, *offsets, a, b], backward=True)
        for i, q in enumerate(lengths):
            own = [t[i:i + 1] for t in (*bases, *offsets)] + [a[i:i + 1, :q], b[i:i + 1, :q]]
            alone = prepare(fn, own)
            for ours, ref in zip(normal_equations(fn, w[i:i + 1], [t[i:i + 1] if torch.is_tensor(t) else t for t in padded]),
                                 normal_equations(fn, w[i:i + 1], alone)):
                torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
            gram = a[i, :q].T @ a[i, :q] + 1e-3 * torch.eye(5, dtype=F64)
            torch.testing.assert_close(backward[-6][i], gram, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(backward[-5][i], a[i, :q].T @ b[i, :q], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(cost, 0.5 * fn(w, *bases, *offsets, a, b).pow(2).sum(-1), rtol=1e-12, atol=1e-14)
        a[2, 39, 1] = float("nan")
        assert [q for index, q in _row_groups(a, b) if 2 in index.tolist()] == [40]
        assert bool(torch.isnan(normal_equations(fn, w, prepare(fn, [*bases, *offsets, a, b]))[0][2]))


def test_the_backward_reuses_the_forward_gram_with_the_same_gradients():
    """The implicit backward takes G and A^T b as the forward solve condensed them (QR, padding
    skipped); a forward run elsewhere (Ray) keeps nothing and the backward forms them from the
    rows. Both give the same gradients, of every argument."""
    from sciml.constraints import ImplicitAdjoint, LevenbergMarquardt
    from sciml.constraints._solution import Solution
    from sciml.constraints._solve import solve
    from sciml.constraints.hard import _Residual

    pde, names, _, bases, offsets, a, b = _burgers_problem(seed=5, rows=12)
    a[1:, 3:], b[1:, 3:] = 0.0, 0.0  # padded experts
    fn = _Residual(pde, names, 1e-3, 1.0)
    seen = []

    def kept(*args):
        sol = solve(*args)
        seen.append(sol.kept)
        return sol

    def elsewhere(*args):
        sol = solve(*args)
        return Solution(value=sol.value, result=sol.result, steps=sol.steps, cost=sol.cost)

    grads = []
    for forward in (kept, elsewhere):
        inputs = [t.clone().requires_grad_(True) for t in (*bases, *offsets, a, b)]
        sol = least_squares(fn, torch.zeros(4, 5, dtype=F64), inputs, solver=LevenbergMarquardt(rtol=1e-12, atol=1e-12),
                            adjoint=ImplicitAdjoint("exact", forward=forward), max_steps=100)
        weights = torch.randn(4, 5, generator=torch.Generator().manual_seed(6), dtype=F64)
        grads.append(torch.autograd.grad((sol.value * weights).sum() + sol.cost.sum(), inputs))
    gram, atb = seen[0]
    torch.testing.assert_close(gram[1], a[1, :3].T @ a[1, :3] + 1e-3 * torch.eye(5, dtype=F64), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(atb[0], a[0].T @ b[0], rtol=1e-12, atol=1e-12)
    for ours, ref in zip(*grads):
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)


def test_the_layer_keeps_its_sampled_points_on_the_bases_device():
    """With no GPU here, torch's fake tensors stand in for CUDA ones: they run every operation's
    device checks without data. The layer's own sampling (training: no points given) draws on
    the CPU and must move to the bases' device before it meets the rows' points; the first
    thing fake tensors cannot do is count the rows per expert (a data-dependent shape), which
    the layer reaches only past every gather."""
    fake = pytest.importorskip("torch._subclasses.fake_tensor")
    nt, nx = 9, 16
    layer = HardConstraint(ConvectionDiffusion(beta=0.0, nu=NU), grid=(nt, nx), splits=(1, 2), points=20)
    points = torch.arange(nx)
    with fake.FakeTensorMode(allow_non_fake_inputs=True):
        basis = torch.randn(1, nt, nx, 5, dtype=F64, device="cuda")
        rows = Rows(points=points, coefficients={"u": 1.0}, target=torch.zeros(1, nx, dtype=F64, device="cuda"))
        fields = grid_fields(basis, ("u", "u_t", "u_x", "u_xx"), {"t": 0.1, "x": 0.1}, {"x": True}, {"t": 1, "x": 2})
        with pytest.raises(Exception) as raised:
            layer(fields, rows=rows)
    assert "DynamicOutputShape" in type(raised.value).__name__, raised.value


def test_sampling_on_the_device_draws_within_each_block_uniformly_without_replacement():
    """The GPU path of sample_points (p smallest uniform keys per block, padding excluded), run
    on the CPU: every draw lies in its own block, none repeats, and every point of a block is
    drawn about equally often."""
    from sciml.constraints.hard import _smallest_keys

    layer = HardConstraint(ConvectionDiffusion(beta=0.0, nu=NU), grid=(7, 10), splits=(2, 1), points=30)
    blocks, padding = layer._device_copy("blocks", torch.device("cpu"))
    assert blocks.shape == (2, 40) and padding.sum() == 40 - 30  # blocks of 40 (4 x 10) and 30 (3 x 10) points
    torch.manual_seed(0)
    counts = torch.zeros(70)
    for _ in range(400):
        idx = _smallest_keys(blocks, padding, 30)
        assert all(len(set(row.tolist())) == 30 for row in idx)
        assert (layer.partition.label[idx] == torch.arange(2)[:, None]).all()
        counts += torch.bincount(idx.flatten(), minlength=70)
    assert counts[40:].eq(400).all()  # the 30-point block: every point every time
    assert (counts[:40] / 400 - 0.75).abs().max() < 0.1  # the 40-point block: each 3 in 4 draws (binomial sd 0.022)


def test_a_models_rows_are_grouped_by_expert_once():
    """The model hands the layer the same row points every step, so the rows' grouping by expert
    (a count on the CPU) is made once per grid and device."""
    layer = HardConstraint(ConvectionDiffusion(beta=0.0, nu=NU), grid=(9, 16), splits=(2, 1), points=20)
    points = torch.cat([torch.arange(16), torch.arange(1, 9) * 16])
    groups, q_max = layer._row_groups(points, torch.device("cpu"))
    assert q_max == 16 + 4 and [g.tolist() for g in groups] == [list(range(20)), list(range(20, 24))]
    again, _ = layer._row_groups(points, torch.device("cpu"))
    assert all(a is b for a, b in zip(groups, again))  # cached
    points[16:] = torch.arange(8)  # edited in place (all now in the first block): the same tensor, other rows
    edited, q_edited = layer._row_groups(points, torch.device("cpu"))
    assert q_edited == 24 and len(edited[1]) == 0
    other, q_other = layer._row_groups(points[:16].clone(), torch.device("cpu"))
    assert q_other == 16 and len(other[1]) == 0  # another rows set is grouped anew


def _burgers_problem(seed: int, rows: int, problems: int = 4, points: int = 30, n: int = 5):
    """(pde, names, generator, bases, offsets, A, b): random fields of the layer's residual for
    Burgers at ``points`` points and ``rows`` linear rows per problem, float64."""
    from sciml.pdes import Burgers

    pde = Burgers(nu=0.05)
    names = tuple(pde.fields)
    g = torch.Generator().manual_seed(seed)
    bases = [torch.randn(problems, points, n, generator=g, dtype=F64) for _ in names]
    offsets = [torch.randn(problems, points, generator=g, dtype=F64) for _ in names]
    a, b = torch.randn(problems, rows, n, generator=g, dtype=F64), torch.randn(problems, rows, generator=g, dtype=F64)
    return pde, names, g, bases, offsets, a, b


def test_the_layer_counts_its_solves_and_how_many_converged():
    fields, rows, exact = heat_setup(nt=11, nx=8, extra=1)
    layer = HardConstraint(ConvectionDiffusion(beta=0.0, nu=NU), grid=exact.shape, splits=(1, 2), points=20, ridge=1e-10, max_steps=1)
    layer(fields, rows=rows)  # one step: not converged
    layer.max_steps = 200
    layer(fields, rows=rows)
    stats = layer.stats()
    assert stats["solves"] == 2 and stats["problems"] == 4 and stats["successful"] == 0.5
    assert stats["steps"] == (1 + layer.last_solution.steps) / 2
    layer.reset_stats()
    assert layer.stats() == {"solves": 0, "problems": 0, "successful": 0.0, "steps": 0.0}


def test_stencil_tables_made_under_fake_tensors_are_not_kept():
    """The finite-difference tables are cached per device; tables made under torch's fake
    tensors (the GPU-path checks) must not be served to a real computation later."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    import sciml.constraints.fields as fields

    fields._STENCILS.clear()
    with FakeTensorMode():
        fields._stencil(torch.arange(5), 5, 1)
    assert fields._STENCILS == {}
    offsets, weights = fields._stencil(torch.arange(5), 5, 1)
    assert type(offsets) is torch.Tensor and weights[0].tolist() == [-1.5, 2.0, -0.5]
    assert (1, "cpu") in fields._STENCILS
