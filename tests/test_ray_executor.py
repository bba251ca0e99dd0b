"""RayExecutor: the experts solved in chunks on Ray workers give the local solve's values,
statuses and implicit gradients."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch

from sciml.constraints import HardConstraint, LocalExecutor, RayExecutor, Result, Rows, UnrolledAdjoint, grid_fields
from sciml.errors import ConfigError, SciMLError
from sciml.models import PhysicsFNO
from sciml.models.hard_constrained import SolverConfig
from sciml.pdes import ConvectionDiffusion, DiffusionSorption

F64 = torch.float64
NU = 0.1
SPACING, AXES = {"t": 1 / 20, "x": 2 * math.pi / 16}, {"t": 1, "x": 2}


@pytest.fixture(scope="module")
def ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def heat_moe(batch=2, nt=21, nx=16, n=7):
    """Heat-equation bases (three exact modes and random smooth functions) for `batch` ICs, their
    IC rows, and a 4-expert layer with fixed points: batch x 4 = 8 least-squares problems."""
    t = torch.linspace(0, 1, nt, dtype=F64)
    x = torch.arange(nx, dtype=F64) * 2 * math.pi / nx
    tt, xx = torch.meshgrid(t, x, indexing="ij")
    g = torch.Generator().manual_seed(0)
    modes = [torch.exp(-NU * k * k * tt) * torch.sin(k * xx) for k in (1, 2, 3)]
    modes += [torch.sin(xx + c[0]) * (1 + c[1] * tt) + c[2] * tt**2 * torch.cos(2 * xx) for c in torch.randn(n - 3, 3, generator=g, dtype=F64)]
    basis = torch.stack(modes, -1)[None] * (1 + 0.1 * torch.randn(batch, 1, 1, n, generator=g, dtype=F64))
    u0 = torch.stack([torch.sin(x) + 0.3 * b * torch.sin(2 * x) for b in range(batch)])
    rows = Rows(points=torch.arange(nx), coefficients={"u": 1.0}, target=u0)
    layer = HardConstraint(ConvectionDiffusion(beta=0.0, nu=NU), grid=(nt, nx), splits=(1, 4), points=40, ridge=1e-3, max_steps=100)
    return basis, rows, layer, layer.sample_points(torch.Generator().manual_seed(1))


def solve_with(executor, basis, rows, layer, points, weight):
    """(u, d(sum u * weight)/d basis, the layer's Solution) with `executor`."""
    layer.executor = executor
    basis = basis.clone().requires_grad_(True)
    u = layer(grid_fields(basis, ("u", "u_t", "u_x", "u_xx"), SPACING, {"x": True}, AXES), rows=rows, points=points)
    (grad,) = torch.autograd.grad((u * weight).sum(), basis)
    return u.detach(), grad, layer.last_solution


def test_ray_chunks_give_the_local_values_statuses_and_gradients(ray):
    basis, rows, layer, points = heat_moe()
    weight = torch.randn(2, 21, 16, generator=torch.Generator().manual_seed(2), dtype=F64)
    u_local, g_local, s_local = solve_with(LocalExecutor(), basis, rows, layer, points, weight)
    u_ray, g_ray, s_ray = solve_with(RayExecutor(num_workers=3), basis, rows, layer, points, weight)  # chunks of 3, 3, 2
    assert s_local.successful.all() and s_local.value.shape[0] == 8
    torch.testing.assert_close(u_ray, u_local, rtol=0, atol=1e-10)
    # The local backward takes G = R^T R + ridge from the forward's QR of the rows; the Ray forward keeps nothing,
    # so the backward forms A^T A + ridge from the rows: the same matrix up to round-off (~1e-11 relative here).
    torch.testing.assert_close(g_ray, g_local, rtol=1e-9, atol=1e-12)
    assert float(g_local.abs().max()) > 1e-3  # the comparison is not between two zeros
    assert s_ray.result.tolist() == s_local.result.tolist() and s_ray.steps == s_local.steps
    torch.testing.assert_close(s_ray.cost, s_local.cost, rtol=1e-12, atol=1e-14)


def test_statuses_come_back_in_problem_order(ray):
    basis, rows, layer, points = heat_moe()
    fields = grid_fields(basis, ("u", "u_t", "u_x", "u_xx"), SPACING, {"x": True}, AXES)
    fields["u_t"][1].view(-1, basis.shape[-1])[points[2, 0]] = float("nan")  # batch 1, expert 2: problem 6
    results = []
    for executor in (LocalExecutor(), RayExecutor(num_workers=3)):
        layer.executor = executor
        u = layer(fields, rows=rows, points=points)
        results.append(layer.last_solution.result.tolist())
        assert torch.isfinite(u).all()
    assert results[0] == results[1] == [Result.successful] * 6 + [Result.nonfinite, Result.successful]


def test_physics_fno_with_the_ray_executor_predicts_as_locally(ray):
    kwargs = {"constraint": "hard", "splits": (1, 2), "width": 8, "layers": 2, "modes": (4, 4), "basis": 6}
    solver = {"points": 60, "ridge": 1e-8, "tol": 1e-6, "max_steps": 30}
    t, x = np.linspace(0, 500, 11), (np.arange(16) + 0.5) / 16
    u0 = np.full((3, 16), 0.1)
    preds = []
    for executor in ("local", "ray"):
        torch.manual_seed(0)
        model = PhysicsFNO(DiffusionSorption(), solver={**solver, "executor": executor}, **kwargs).double().eval()
        preds.append(model.predict_samples(u0, t, x))
        assert type(model._layer((11, 16)).executor) is (RayExecutor if executor == "ray" else LocalExecutor)
    np.testing.assert_allclose(preds[1], preds[0], rtol=0, atol=1e-10)


def test_bad_executor_settings_are_refused():
    with pytest.raises(ConfigError, match=r"model.solver.executor \(='dask'\) must be 'local'.*or 'ray'"):
        PhysicsFNO(DiffusionSorption(), solver={"executor": "dask"})
    with pytest.raises(ConfigError, match=r"ray_workers \(=0\)"):
        SolverConfig(executor="ray", ray_workers=0)
    with pytest.raises(ValueError, match=r"`num_workers` \(=0\)"):
        RayExecutor(num_workers=0)
    basis, rows, layer, points = heat_moe(batch=1)
    layer.adjoint, layer.executor = UnrolledAdjoint(), RayExecutor()
    with pytest.raises(ValueError, match="use LocalExecutor for UnrolledAdjoint"):
        layer(grid_fields(basis, ("u", "u_t", "u_x", "u_xx"), SPACING, {"x": True}, AXES), rows=rows, points=points)


def test_missing_ray_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails
    with pytest.raises(SciMLError, match=r"pip install 'sciml\[ray\]'"):
        RayExecutor()._ray()


def test_tensors_shared_by_the_batch_go_whole_to_every_chunk(ray):
    """A 0-dim scalar and a [3] vector shared by a batch of 4 (the local executor broadcasts them):
    only per-problem tensors are split, so the chunks give the local solution."""
    from sciml.constraints import least_squares

    def fn(y, a, scale, shift):  # a per problem [4, 3, 2]; scale 0-dim; shift [3], shared
        return scale * (a @ y.unsqueeze(-1)).squeeze(-1) - shift

    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 3, 2, generator=g, dtype=F64)
    args = (a, torch.tensor(2.0, dtype=F64), torch.tensor([1.0, -1.0, 0.5], dtype=F64))
    local = least_squares(fn, torch.zeros(4, 2, dtype=F64), args)
    far = RayExecutor(num_workers=3).solve(fn, torch.zeros(4, 2, dtype=F64), args, solver=None, adjoint=None, max_steps=50, dtype=None)
    torch.testing.assert_close(far.value, local.value, rtol=0, atol=1e-12)
    assert far.result.tolist() == local.result.tolist()


def test_an_address_is_not_swapped_silently_for_the_running_instance(ray, tmp_path):
    """With Ray already running here, an executor (or a generation) told to join another cluster
    refuses instead of using the local instance."""
    from sciml.data.generators import generate

    with pytest.raises(ConfigError, match=r"`address` \(='10.255.255.1:6379'\) names a Ray cluster, but this process is already connected"):
        RayExecutor(address="10.255.255.1:6379")._ray()
    with pytest.raises(ConfigError, match=r"--ray-address \(='10.255.255.1:6379'\) names a Ray cluster"):
        generate("convection", tmp_path / "never_written.h5", n=2, params={"nx": 16, "nt": 4}, workers=2,
                 ray_address="10.255.255.1:6379", progress=False)


def test_the_solve_reports_the_slowest_chunks_steps(ray):
    """Chunks that converge at different speeds: the gathered solution reports the slowest
    chunk's step count (what the local solve of the whole batch reports), not the fastest's."""
    from sciml.constraints import least_squares

    def fn(y, c):  # y^3 + y = c: zero steps from y = 0 where c = 0, several where c is large
        return y.pow(3) + y - c

    c = torch.tensor([[0.0, 0.0]] * 4 + [[5.0, 40.0]] * 2, dtype=F64)  # chunks of 2: two already solved, one hard
    y0 = torch.zeros(6, 2, dtype=F64)
    local = least_squares(fn, y0, (c,), max_steps=100)
    far = RayExecutor(num_workers=3).solve(fn, y0, (c,), solver=None, adjoint=None, max_steps=100, dtype=None)
    assert local.steps >= 3  # the hard chunk needs several steps, the others none
    assert far.steps == local.steps
    torch.testing.assert_close(far.value, local.value, rtol=0, atol=1e-12)
    assert far.result.tolist() == local.result.tolist() == [Result.successful] * 6
