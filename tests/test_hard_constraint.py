"""The hard-constraint layer and its mixture of experts on a PDE whose solution the basis holds."""

from __future__ import annotations

import math

import pytest
import torch

from sciml.constraints import HardConstraint, Partition, Rows, derivative, grid_fields, least_squares
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
