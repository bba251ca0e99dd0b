"""The PI-HC constraint solve against the reference's solver, and MoE scaling (``sciml bench solver``).

1. Ours (``sciml.constraints.least_squares``, Levenberg-Marquardt, implicit adjoint) against
   optimistix's Levenberg-Marquardt with its implicit adjoint (JAX, jit-compiled, vmapped over
   batch x experts), the PI-HC reference's solver, and theseus-ai's where it is installed
   (:mod:`.theseus_peer`), on the same diffusion-sorption constraint:
   random smooth positive bases stand in for a trained FNO's; residual = [PDE residual at sampled points;
   (u_ic - u0) / u0; u(0, t) and u(1, t) rows; 1e-4 w], with u0 and the boundary values those of a
   positive combination of the bases, so that the solution stays in the physical range (u in
   0.1 .. 1, 5-6 Levenberg-Marquardt steps, as in training); float64, rtol = atol = 1e-4; best of
   repeats after a warm-up (compilation excluded; other jobs on a shared machine only add time). Forward, and forward + backward (gradient of a
   fixed linear functional of w with respect to every basis matrix).
2. MoE scaling: one expert with P points against 4 experts with P / 4 each, P from 1e2 to 1e5:
   forward + backward time (best of 5; 3 at 1e5) and peak memory (CPU: resident memory, each size in a fresh process;
   CUDA: the allocator's peak above the inputs).
3. The whole layer with the basis fields at the sampled points only against the whole grid first.
4. Gauss-Newton against Newton steps in the Navier-Stokes layer (:func:`newton_steps`).

``device="cuda"`` (``sciml bench solver --device cuda``) runs ours on the GPU (timed after a
synchronize) and optimistix on JAX's GPU; on the CPU JAX is pinned to its CPU too.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..errors import ConfigError
from ..constraints.hard import Rows, _Residual
from ..pdes import DiffusionSorption
from . import publish

PDE = DiffusionSorption()
T_END = PDE.t_end


def _basis_parameters(rng: np.random.Generator, owners: int, n: int) -> tuple[np.ndarray, ...]:
    """(a1, a2, ph, decay) [owners, 1, n] of :func:`basis_fields`' random bases."""
    a1 = np.arange(1, n + 1) / 2 + rng.uniform(-0.1, 0.1, (owners, 1, n))  # distinct frequencies: well posed
    a2, ph = rng.uniform(0.5, 3, (2, owners, 1, n))
    return a1, a2, ph, rng.uniform(0.1, 1.0, (owners, 1, n)) / T_END


def basis_fields(t: np.ndarray, x: np.ndarray, parameters: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(u, u_t, u_xx) of n smooth positive analytic bases (0.04 .. 0.16) at times t and places x
    (broadcast against the parameters' [..., n])."""
    a1, a2, ph, decay = parameters
    wave, still = np.cos(np.pi * a1 * x + ph) * np.exp(-decay * t), np.sin(np.pi * a2 * x)
    u = 0.1 * (1 + 0.5 * wave + 0.1 * still)
    return u, -0.05 * decay * wave, 0.1 * (-0.5 * (np.pi * a1) ** 2 * wave - 0.1 * (np.pi * a2) ** 2 * still)


def make_problem(batch: int, experts: int, points: int, n: int = 16, nt: int = 101, nx: int = 1024, seed: int = 0,
                 partitioned: bool = False) -> dict[str, np.ndarray]:
    """One constraint per (batch x expert), all float64 numpy: the fields (u, u_t, u_xx) of random
    smooth positive bases at ``points`` sampled grid points, and IC/BC rows ``a w = b`` that a
    positive combination w_true of the bases satisfies (u0 = its initial values, the boundary
    targets its boundary values), so the least-squares solution u stays positive, where the
    isotherm is smooth. The bases are analytic, so they are evaluated at the points only.

    By default every problem is independent and carries every IC/BC row (as the reference's
    residual does: the peer comparison). ``partitioned``: as the MoE layer splits one problem,
    the experts of a batch element share its bases and w_true, expert k has the k-th of
    ``experts`` equal time blocks, its points are drawn there and it carries the rows there
    only (the IC rows go to the first), zero-padded to the longest."""
    rng = np.random.default_rng(seed)
    problems = batch * experts
    owners = batch if partitioned else problems  # who has bases of its own

    def per_problem(a: np.ndarray) -> np.ndarray:
        return np.repeat(a, experts, axis=0) if partitioned else a

    a1, a2, ph, decay = (per_problem(v) for v in _basis_parameters(rng, owners, n))

    def fields(t: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return basis_fields(t[..., None], x[..., None], (a1, a2, ph, decay))

    t_grid, x_grid = np.linspace(0, T_END, nt), (np.arange(nx) + 0.5) / nx
    block = np.tile(np.arange(experts), batch) if partitioned else np.zeros(problems, dtype=int)  # each problem's time block
    edges = np.arange(experts + 1) * nt // experts if partitioned else np.array([0, nt])
    t_index = rng.integers(edges[block, None], edges[block + 1, None], (problems, points))
    u, u_t, u_xx = fields(t_grid[t_index], x_grid[rng.integers(0, nx, (problems, points))])
    w_true = per_problem(rng.dirichlet(np.ones(n), owners) * rng.uniform(2, 8, (owners, 1)))  # u_true in ~0.1 .. 1
    ic = fields(np.zeros((problems, nx)), np.broadcast_to(x_grid, (problems, nx)))[0]
    left = fields(np.broadcast_to(t_grid[1:], (problems, nt - 1)), np.full((problems, nt - 1), x_grid[0]))[0]
    right = fields(np.broadcast_to(t_grid[1:], (problems, nt - 1)), np.full((problems, nt - 1), x_grid[-1]))[0]
    u0 = np.einsum("pxn,pn->px", ic, w_true)
    a = np.concatenate([ic / u0[..., None], left, right], axis=1)
    if partitioned:  # keep each problem's own rows, zero rows after them
        row_t = np.concatenate([np.zeros(nx, dtype=int), np.arange(1, nt), np.arange(1, nt)])
        mine = (row_t[None] >= edges[block, None]) & (row_t[None] < edges[block + 1, None])
        order = np.argsort(~mine, axis=1, kind="stable")
        a = np.take_along_axis(a * mine[..., None], order[..., None], axis=1)[:, : mine.sum(1).max()]
    return {"u": u, "u_t": u_t, "u_xx": u_xx, "a": a, "b": np.einsum("pqn,pn->pq", a, w_true)}


# The hard-constraint layer's own residual (structured normal equations, Gram of the linear rows
# once per solve): fields u, u_t, u_xx with zero offsets, then the rows a w = b.
RESIDUAL = _Residual(PDE, PDE.fields, ridge=1e-8, scale=1.0)


def residual_args(p: dict[str, Any]) -> list[torch.Tensor]:
    """RESIDUAL's arguments for problem ``p``: bases of u, u_t, u_xx, their zero offsets, and the rows."""
    bases = [torch.as_tensor(p[k]) for k in ("u", "u_t", "u_xx")]
    zero = torch.zeros(bases[0].shape[:2], dtype=torch.float64)
    return [*bases, zero, zero, zero, torch.as_tensor(p["a"]), torch.as_tensor(p["b"])]


def cost(p: dict[str, Any], w: np.ndarray) -> float:
    """The constraint's cost 0.5 |r|^2 summed over the problems at coefficients ``w``."""
    return float(0.5 * RESIDUAL(torch.as_tensor(w), *residual_args(p)).pow(2).sum())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_of(once: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """(the fastest of ``repeats`` calls of ``once`` after a warm-up call, in seconds; the last
    call's value)."""
    value = once()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        value = once()
        times.append(time.perf_counter() - t0)
    return min(times), value


def time_ours(p: dict[str, np.ndarray], backward: bool, repeats: int, device: str | torch.device = "cpu") -> tuple[float, np.ndarray]:
    from ..constraints import ImplicitAdjoint, LevenbergMarquardt, least_squares

    device = torch.device(device)
    weights = torch.linspace(-1, 1, p["u"].shape[-1], dtype=torch.float64, device=device)
    args = [a.to(device) for a in residual_args(p)]
    for basis in args[:3]:  # the gradient is taken with respect to the three bases
        basis.requires_grad_(backward)

    def once() -> np.ndarray:
        sol = least_squares(RESIDUAL, torch.zeros(len(args[0]), args[0].shape[-1], dtype=torch.float64, device=device), args,
                            solver=LevenbergMarquardt(rtol=1e-4, atol=1e-4), adjoint=ImplicitAdjoint("exact"), max_steps=100, throw=False)
        if backward:
            torch.autograd.grad((sol.value * weights).sum(), args[:3])
        _sync(device)
        return sol.value.detach().cpu().numpy()

    return best_of(once, repeats)


def _jax_device(device: str | torch.device):
    """JAX's device of the kind torch runs on (its GPU for cuda), or None where JAX has none."""
    import jax

    where = torch.device(device)
    try:
        devices = jax.devices("gpu" if where.type == "cuda" else "cpu")
    except RuntimeError:
        return None
    index = where.index or 0
    return devices[index] if index < len(devices) else None


def time_optimistix(p: dict[str, np.ndarray], backward: bool, repeats: int, device: str | torch.device = "cpu") -> tuple[float, np.ndarray] | None:
    try:
        import jax
        import optimistix  # noqa: F401
    except ImportError:
        return None
    where = _jax_device(device)
    if where is None:
        return None
    jax.config.update("jax_enable_x64", True)
    with jax.default_device(where):
        return _time_optimistix(p, backward, repeats)


def _time_optimistix(p: dict[str, np.ndarray], backward: bool, repeats: int) -> tuple[float, np.ndarray]:
    import jax
    import jax.numpy as jnp
    import optimistix as optx

    def residual(w, args):
        bu, bt, bxx, a, b = args
        u = bu @ w
        r_pde = bt @ w - PDE.D / PDE.retardation(u) * (bxx @ w)
        return jnp.concatenate([r_pde, a @ w - b, 1e-4 * w])

    solver = optx.LevenbergMarquardt(rtol=1e-4, atol=1e-4)
    n = p["u"].shape[-1]
    weights = jnp.linspace(-1, 1, n)

    def solve_one(bu, bt, bxx, a, b):
        sol = optx.least_squares(residual, solver, jnp.zeros(n), args=(bu, bt, bxx, a, b), adjoint=optx.ImplicitAdjoint(), max_steps=100, throw=False)
        return sol.value

    batched = jax.vmap(solve_one)
    args = tuple(jnp.asarray(p[k]) for k in ("u", "u_t", "u_xx", "a", "b"))
    if backward:
        fn = jax.jit(jax.value_and_grad(lambda bu, bt, bxx, a, b: (batched(bu, bt, bxx, a, b) * weights).sum(), argnums=(0, 1, 2)))
        value_fn = jax.jit(batched)
    else:
        fn = value_fn = jax.jit(batched)
    seconds, _ = best_of(lambda: jax.block_until_ready(fn(*args)), repeats)
    return seconds, np.asarray(value_fn(*args))


def time_theseus(p: dict[str, np.ndarray], backward: bool, repeats: int, device: str | torch.device = "cpu") -> tuple[float, np.ndarray, int] | None:
    """theseus-ai's Levenberg-Marquardt on the same problems (:mod:`.theseus_peer`), or None
    where theseus is not installed."""
    try:
        from .theseus_peer import time_theseus as timed
    except (ImportError, OSError):  # not installed, or a build whose extensions do not load
        return None
    return timed(p, backward, repeats, device)


def versus_optimistix(quick: bool, device: str = "cpu", done: Callable[[list[dict[str, Any]]], None] | None = None) -> list[dict[str, Any]]:
    """Ours against optimistix (and theseus where installed) on the same problems; ``done(rows)``
    after each row. The paper's setting (4 experts x 2e4 points) comes first."""
    grid = {"nt": 26, "nx": 256} if quick else {"nt": 101, "nx": 1024}
    cases = [(1, 1000), (4, 1000), (4, 4000)] if quick else [(4, 20000), (1, 1000), (1, 20000), (4, 1000)]
    repeats = 3 if quick else 5
    rows = []
    for experts, points in cases:
        p = make_problem(batch=6, experts=experts, points=points, **grid)
        row: dict[str, Any] = {"experts": experts, "points_per_expert": points, "batch": 6, "grid": f"{grid['nt']}x{grid['nx']}"}
        for backward in (False, True):
            key = "fwd_bwd" if backward else "fwd"
            ours, w_ours = time_ours(p, backward, repeats, device)
            row[f"ours_{key}_ms"], row["cost_ours"] = 1e3 * ours, cost(p, w_ours)
            peer = time_optimistix(p, backward, repeats, device)
            if peer is not None:
                row[f"optimistix_{key}_ms"] = 1e3 * peer[0]
                row[f"speedup_{key}"] = peer[0] / ours
                row["cost_optimistix"] = cost(p, peer[1])
            second = time_theseus(p, backward, repeats, device)
            if second is not None:
                row[f"theseus_{key}_ms"] = 1e3 * second[0]
                row[f"speedup_theseus_{key}"] = second[0] / ours
                row["cost_theseus"], row["theseus_steps"] = cost(p, second[1]), second[2]
        rows.append(row)
        if done is not None:
            done(rows)
    return rows


def _peak_rss_mb(reset: bool = False) -> float:
    """This process's peak resident memory (VmHWM) in MB; ``reset`` first restarts the peak at
    the current resident size (Linux: /proc/self/clear_refs), so the peak of what follows is
    measured, not that of building the inputs."""
    if reset:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _release_free_heap() -> None:
    """Return glibc's free heap to the kernel (malloc_trim), so that the resident size counts
    only live memory; nothing elsewhere."""
    import ctypes

    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _resident_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _moe_point(points: int, experts: int, n: int, backward: bool) -> dict[str, float]:
    """Time and peak memory of the solve alone on the CPU: the high-water mark above the
    resident size once the problem is built (imports and inputs excluded)."""
    time_ours(make_problem(batch=1, experts=1, points=10, n=n, nt=11, nx=32), backward, repeats=1)  # code paths loaded
    p = make_problem(batch=6, experts=experts, points=points // experts, n=n, nt=101, nx=1024, partitioned=True)
    _release_free_heap()  # or the solve reuses what building the inputs freed, unseen by the peak
    baseline = _resident_mb()
    _peak_rss_mb(reset=True)
    seconds, _ = time_ours(p, backward, repeats=5 if points < 100000 else 3)
    return {"seconds": seconds, "peak_rss_mb": max(0.0, _peak_rss_mb() - baseline)}


def _moe_point_cuda(points: int, experts: int, n: int, backward: bool, device: torch.device) -> dict[str, float]:
    """The same on a GPU: time, and the allocator's peak during the solves above what was
    allocated before them and the inputs' own copy on the GPU."""
    time_ours(make_problem(batch=1, experts=1, points=10, n=n, nt=11, nx=32), backward, repeats=1, device=device)
    p = make_problem(batch=6, experts=experts, points=points // experts, n=n, nt=101, nx=1024, partitioned=True)
    inputs = sum(a.nbytes for a in residual_args(p))
    torch.cuda.synchronize(device)
    baseline = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    seconds, _ = time_ours(p, backward, repeats=5 if points < 100000 else 3, device=device)
    return {"seconds": seconds, "peak_rss_mb": max(0.0, torch.cuda.max_memory_allocated(device) - baseline - inputs) / 2**20}


def moe_scaling(quick: bool, device: str = "cpu") -> list[dict[str, Any]]:
    sizes = [100, 1000, 10000] if quick else [100, 1000, 10000, 100000]
    rows = []
    for points in sizes:
        row: dict[str, Any] = {"points": points}
        for experts in (1, 4):
            if torch.device(device).type == "cuda":
                result = _moe_point_cuda(points, experts, 16, True, torch.device(device))
            else:
                code = (f"import json, torch; torch.set_num_threads({torch.get_num_threads()}); from sciml.bench.solver import _moe_point; "
                        f"print(json.dumps(_moe_point({points}, {experts}, 16, True)))")
                out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
                result = json.loads(out.strip().splitlines()[-1])
            row[f"k{experts}_seconds"], row[f"k{experts}_peak_rss_mb"] = result["seconds"], result["peak_rss_mb"]
        row["moe_speedup"] = row["k1_seconds"] / row["k4_seconds"]
        rows.append(row)
    return rows


def layer_problem(batch: int, n: int = 16, nt: int = 101, nx: int = 1024, seed: int = 0, dtype: torch.dtype = torch.float32,
                  device: str | torch.device = "cpu") -> tuple[torch.Tensor, Rows, dict[str, float]]:
    """The whole layer's input on the paper's grid: bases B [batch, nt, nx, n] (those of
    :func:`make_problem`, as a float32 network would give them), IC rows (u - u0) / u0 and
    boundary rows u(x_0, t), u(x_end, t) with the values of u_true = B w_true, and the spacing."""
    rng = np.random.default_rng(seed)
    parameters = tuple(v[:, None] for v in _basis_parameters(rng, batch, n))  # [batch, 1, 1, n]
    t, x = np.linspace(0, T_END, nt), (np.arange(nx) + 0.5) / nx
    b = basis_fields(t[None, :, None, None], x[None, None, :, None], parameters)[0]
    w_true = rng.dirichlet(np.ones(n), batch) * rng.uniform(2, 8, (batch, 1))
    u_true = np.einsum("btxn,bn->btx", b, w_true)
    left = np.arange(1, nt) * nx
    points = np.concatenate([np.arange(nx), left, left + nx - 1])
    target = u_true.reshape(batch, -1)[:, points]
    scale = np.concatenate([target[:, :nx], np.ones((batch, 2 * (nt - 1)))], axis=1)
    as_t = lambda a, dt=torch.float64: torch.as_tensor(a, dtype=dt, device=device)  # noqa: E731
    rows = Rows(points=torch.as_tensor(points, device=device), coefficients={"u": 1.0}, target=as_t(target), scale=as_t(scale))
    return as_t(b, dtype), rows, {"t": float(t[1] - t[0]), "x": float(x[1] - x[0])}


def time_layer(experts: int, points: int, lazy: bool, repeats: int, device: str | torch.device = "cpu", quick: bool = False) -> tuple[float, int]:
    """(seconds, solver steps) of the hard-constraint layer, forward + backward to the bases, on
    :func:`layer_problem` with ``experts`` time blocks of ``points`` each: the fields at the
    sampled and row points only (``lazy``, :class:`~sciml.constraints.GridFields`) or on the whole
    grid first (:func:`~sciml.constraints.grid_fields`)."""
    from ..constraints import GridFields, HardConstraint, ImplicitAdjoint, LevenbergMarquardt

    device = torch.device(device)
    grid = {"nt": 26, "nx": 256} if quick else {"nt": 101, "nx": 1024}
    b, rows, spacing = layer_problem(6, device=device, **grid)
    layer = HardConstraint(PDE, (grid["nt"], grid["nx"]), (experts, 1), points=points, ridge=1e-8, max_steps=100,
                           solver=LevenbergMarquardt(rtol=1e-4, atol=1e-4), adjoint=ImplicitAdjoint("exact"))
    sampled = layer.sample_points(torch.Generator().manual_seed(0))
    weights = torch.randn(b.shape[:-1], generator=torch.Generator().manual_seed(1)).to(device)
    b.requires_grad_(True)

    def once() -> None:
        fields = GridFields(b, PDE.fields, spacing, {}, {"t": 1, "x": 2})
        u = layer(fields if lazy else fields.full(), rows=rows, points=sampled)
        torch.autograd.grad((u * weights).sum(), b)
        _sync(device)

    seconds, _ = best_of(once, repeats)
    return seconds, int(layer.last_solution.steps)


def layer_fields(quick: bool, device: str = "cpu") -> list[dict[str, Any]]:
    """The whole layer with fields at the points only against fields on the whole grid first."""
    cases = [(1, 1000), (4, 1000)] if quick else [(1, 1000), (4, 1000), (1, 20000), (4, 5000)]
    rows = []
    for experts, points in cases:
        row: dict[str, Any] = {"experts": experts, "points_per_expert": points}
        for lazy in (True, False):
            key = "points" if lazy else "whole_grid"
            row[f"{key}_seconds"], row["steps"] = time_layer(experts, points, lazy, 2 if quick else 3, device, quick)
        row["speedup"] = row["whole_grid_seconds"] / row["points_seconds"]
        rows.append(row)
    return rows


def moe_training(quick: bool, device: str = "cpu") -> list[dict[str, Any]]:
    """The paper's scaling experiment, which timed training: one training step (FNO2d forward,
    the hard-constraint layer, the physics loss, backward to the weights) of PI-HC (one expert x
    P points) against PI-HC-MoE (4 time experts x P/4), the same network weights and batch,
    steps of the two interleaved (so a slower spell of a shared machine hits both), the best
    of ``repeats``. Paper scale (the diffusion-sorption config: width 64, 5 layers, modes 8,
    101 x 1024, batch 6); quick: a small network on a 26 x 256 grid."""
    from ..models import PhysicsFNO

    device = torch.device(device)
    if quick:
        nt, nx, net, sizes, repeats = 26, 256, {"width": 16, "layers": 3, "modes": (6, 6)}, [100, 1000], 2
    else:
        nt, nx, net, repeats = 101, 1024, {"width": 64, "layers": 5, "modes": (8, 8)}, 3
        sizes = [100, 1000, 20000, 100000] if device.type == "cuda" else [1000, 20000]
    t, x = np.linspace(0, T_END, nt), (np.arange(nx) + 0.5) / nx
    u0 = torch.as_tensor(0.01 + 0.29 * np.random.default_rng(0).random((6, nx)), dtype=torch.float32, device=device)
    rows = []
    for points in sizes:
        models = {}
        for experts in (1, 4):
            torch.manual_seed(0)
            models[experts] = PhysicsFNO(PDE, "hard", splits=(experts, 1), basis=16, **net,
                                         solver={"points": points // experts, "ridge": 1e-8, "tol": 1e-4, "max_steps": 50}).to(device)

        def step(model: PhysicsFNO) -> float:
            model.zero_grad()
            _sync(device)
            t0 = time.perf_counter()
            model.loss_terms(model(u0, t, x), u0, t, x)["loss"].backward()
            _sync(device)
            return time.perf_counter() - t0

        for model in models.values():
            step(model)  # warm-up
        times: dict[int, list[float]] = {1: [], 4: []}
        for _ in range(repeats):
            for experts, model in models.items():
                times[experts].append(step(model))
        row = {"points": points, "grid": f"{nt}x{nx}", "k1_seconds": min(times[1]), "k4_seconds": min(times[4])}
        row["moe_speedup"] = row["k1_seconds"] / row["k4_seconds"]
        rows.append(row)
    return rows


def newton_steps(quick: bool, device: str = "cpu") -> list[dict[str, Any]]:
    """Gauss-Newton against Newton steps (``LevenbergMarquardt(hessian="exact")``) in the
    Navier-Stokes layer, whose advection term keeps the residual large at the minimum: an
    untrained FNO3d's bases (seeded, float32, the solve in float64) for Gaussian-random-field
    vorticities, 2 x 2 spatial experts, rtol 1e-7 as the NS configs; LM steps, problems solved
    within 200 steps, forward + backward time (gradient to the bases) and the costs reached."""
    from ..constraints import LevenbergMarquardt
    from ..data.generators.navier_stokes import gaussian_random_field
    from ..models import PhysicsFNO3d
    from ..pdes import NavierStokes2D

    device = torch.device(device)
    n, nt, basis, points = (32, 17, 16, 500) if quick else (64, 33, 32, 2000)
    x, t = np.arange(n) / n, np.linspace(0, 5, nt)
    rows = []
    for seed in range(3):
        torch.manual_seed(seed)
        model = PhysicsFNO3d(NavierStokes2D(), splits=(1, 2, 2), basis=basis, width=16, layers=4, modes=(4, 8, 8),
                             solver={"points": points, "ridge": 1e-8, "tol": 1e-7, "max_steps": 200}).to(device)
        rng = np.random.default_rng(seed)
        w0 = torch.tensor(np.stack([gaussian_random_field(n, rng, length_scale=0.8) for _ in range(2)]), dtype=torch.float32, device=device)
        with torch.no_grad():
            b = model._bases(w0, t)
        b.requires_grad_(True)
        layer = model._layer((nt, n, n))
        sampled = layer.sample_points(torch.Generator().manual_seed(seed))
        weights = torch.randn(b.shape[:-1], generator=torch.Generator().manual_seed(seed)).to(device)
        row: dict[str, Any] = {"seed": seed, "grid": f"{nt}x{n}x{n}", "basis": basis, "points_per_expert": points}
        for hessian in ("gauss-newton", "exact"):
            layer.solver = LevenbergMarquardt(rtol=1e-7, atol=1e-10, hessian=hessian)

            def once() -> None:
                torch.autograd.grad((model.constrain(b, w0, t, x, x, sampled) * weights).sum(), b)
                _sync(device)

            seconds, _ = best_of(once, 2 if quick else 3)
            sol = layer.last_solution
            row[hessian] = {"seconds": seconds, "steps": int(sol.steps), "solved": int(sol.successful.sum()),
                            "problems": len(sol.result), "cost": float(sol.cost.detach().sum())}
        row["speedup"] = row["gauss-newton"]["seconds"] / row["exact"]["seconds"]
        rows.append(row)
    return rows


SECTIONS = ("versus_optimistix", "moe_scaling", "layer_fields", "moe_training", "newton_steps")


def run(quick: bool, out_dir: Path, device: str = "cpu", sections: list[str] | None = None) -> dict[str, Any]:
    """Measure ``sections`` (default all, in SECTIONS' order; else in the order given) and publish
    them; ``solver.json`` is rewritten after each section (and each row of ``versus_optimistix``),
    so a run stopped part-way keeps what it measured."""
    from .._io import atomic_write_json

    report = measure(quick, device, sections, partial=lambda r: atomic_write_json(Path(out_dir) / "solver.json", r))
    return publish("solver", report, markdown(report), out_dir)


def measure(quick: bool, device: str = "cpu", sections: list[str] | None = None,
            partial: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """The report: our solve vs optimistix, MoE against one expert as points grow, the layer's
    fields, the paper's training step, Newton steps on Navier-Stokes (``sections`` of them)."""
    chosen = list(SECTIONS) if sections is None else list(sections)
    unknown = [name for name in chosen if name not in SECTIONS]
    if unknown or not chosen:
        raise ConfigError(f"--sections (={','.join(chosen)!r}) must name some of {', '.join(SECTIONS)}.")
    if torch.device(device).type == "cuda":  # JAX would otherwise reserve 75% of the GPU for itself
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    try:
        import jax
        import optimistix
        where = _jax_device(device)
        peer = f"jax {jax.__version__} on {where.platform if where else 'no ' + ('GPU' if device != 'cpu' else 'CPU')}, optimistix {optimistix.__version__}"
    except ImportError:
        peer = "optimistix not installed (install the `bench` extra)"
    try:
        import theseus
        peer += f", theseus-ai {theseus.__version__}"
    except (ImportError, OSError):
        peer += ", theseus-ai not installed (see sciml/bench/theseus_peer.py)"
    if torch.device(device).type == "cuda":
        machine = f"{torch.cuda.get_device_name(torch.device(device))}, CUDA {torch.version.cuda}"
    else:
        machine = f"{platform.machine()}, torch threads {torch.get_num_threads()}"
    report: dict[str, Any] = {
        "benchmark": "solver", "quick": quick, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": device,
        "machine": machine, "versions": {"sciml": __version__, "torch": torch.__version__, "peer": peer},
    }
    measures = {"moe_scaling": moe_scaling, "layer_fields": layer_fields, "moe_training": moe_training, "newton_steps": newton_steps}
    def save(name: str, rows: list[dict[str, Any]]) -> None:
        report[name] = rows
        if partial is not None:
            partial(report)

    for name in dict.fromkeys(chosen):  # in the order asked for
        if name == "versus_optimistix":
            save(name, versus_optimistix(quick, device, done=lambda rows: save("versus_optimistix", rows)))
        else:
            save(name, measures[name](quick, device))
    return report


def markdown(r: dict[str, Any]) -> str:
    lines = [f"PI-HC constraint solve ({'quick' if r['quick'] else 'full'}), {r['date']}, {r['machine']}, {r['versions']['peer']}"]
    if r.get("versus_optimistix"):
        lines += ["", "| experts | points/expert | grid | ours fwd (ms) | optimistix fwd (ms) | theseus fwd (ms) | ours fwd+bwd (ms) | "
                  "optimistix fwd+bwd (ms) | theseus fwd+bwd (ms) | speed-up fwd+bwd vs optimistix | vs theseus | cost ours / optimistix | cost ours / theseus |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in r.get("versus_optimistix", []):
        g = lambda k: f"{row[k]:.3g}" if k in row else "-"  # noqa: E731
        ratio = lambda peer: f"{row['cost_ours'] / row[peer]:.8f}" if peer in row else "-"  # noqa: E731
        lines.append(f"| {row['experts']} | {row['points_per_expert']} | {row['grid']} | {g('ours_fwd_ms')} | {g('optimistix_fwd_ms')} | "
                     f"{g('theseus_fwd_ms')} | {g('ours_fwd_bwd_ms')} | {g('optimistix_fwd_bwd_ms')} | {g('theseus_fwd_bwd_ms')} | "
                     f"{g('speedup_fwd_bwd')} | {g('speedup_theseus_fwd_bwd')} | {ratio('cost_optimistix')} | {ratio('cost_theseus')} |")
    memory = "GPU peak MB" if r.get("device", "cpu") != "cpu" else "extra peak MB"
    if r.get("moe_scaling"):
        lines += ["", f"| points (total) | 1 expert: s | 1 expert: {memory} | 4 experts: s | 4 experts: {memory} | MoE speed-up |", "|---|---|---|---|---|---|"]
    for row in r.get("moe_scaling", []):
        lines.append(f"| {row['points']} | {row['k1_seconds']:.3g} | {row['k1_peak_rss_mb']:.0f} | {row['k4_seconds']:.3g} | {row['k4_peak_rss_mb']:.0f} | {row['moe_speedup']:.2f} |")
    if r.get("layer_fields"):
        lines += ["", "| experts | points/expert | layer fwd+bwd, fields at the points (s) | fields on the whole grid first (s) | speed-up | LM steps |",
                  "|---|---|---|---|---|---|"]
        for row in r["layer_fields"]:
            lines.append(f"| {row['experts']} | {row['points_per_expert']} | {row['points_seconds']:.3g} | {row['whole_grid_seconds']:.3g} | "
                         f"{row['speedup']:.1f} | {row['steps']} |")
    if r.get("moe_training"):
        lines += ["", "| training step (FNO2d + layer + loss, fwd+bwd), points (total) | grid | 1 expert: s | 4 experts: s | MoE speed-up |",
                  "|---|---|---|---|---|"]
        for row in r["moe_training"]:
            lines.append(f"| {row['points']} | {row['grid']} | {row['k1_seconds']:.3g} | {row['k4_seconds']:.3g} | {row['moe_speedup']:.2f} |")
    if r.get("newton_steps"):
        lines += ["", "| Navier-Stokes layer, seed | grid, N, points/expert | Gauss-Newton: steps, solved, fwd+bwd (s) | "
                  "Newton: steps, solved, fwd+bwd (s) | speed-up | cost Newton / Gauss-Newton |", "|---|---|---|---|---|---|"]
        for row in r["newton_steps"]:
            gn, nt = row["gauss-newton"], row["exact"]
            lines.append(f"| {row['seed']} | {row['grid']}, {row['basis']}, {row['points_per_expert']} | {gn['steps']}, {gn['solved']}/{gn['problems']}, "
                         f"{gn['seconds']:.3g} | {nt['steps']}, {nt['solved']}/{nt['problems']}, {nt['seconds']:.3g} | {row['speedup']:.2f} | "
                         f"{nt['cost'] / gn['cost']:.8f} |")
    return "\n".join(lines) + "\n"
