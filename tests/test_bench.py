"""The benchmarks measure what they say: same problem for ours and the peer, tables written."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sciml.bench import run_benchmark
from sciml.bench.solver import cost, make_problem, markdown, time_optimistix, time_ours
from sciml.errors import ConfigError


def test_solver_benchmark_problem_and_peer_agree():
    p = make_problem(batch=2, experts=1, points=200, n=6, nt=11, nx=32)
    assert p["u"].shape == (2, 200, 6) and p["a"].shape == (2, 32 + 2 * 10, 6)
    _, w_ours = time_ours(p, backward=True, repeats=1)
    pytest.importorskip("optimistix")
    _, w_peer = time_optimistix(p, backward=False, repeats=1)
    assert cost(p, w_ours) == pytest.approx(cost(p, w_peer), rel=1e-6)  # both reach the same minimum


def test_theseus_peer_reaches_our_minimum():
    """theseus-ai (optional: it builds from source, see sciml/bench/theseus_peer.py) solves the same
    problems, backward included, to the same minimum at its tolerance."""
    pytest.importorskip("theseus")
    from sciml.bench.theseus_peer import time_theseus

    p = make_problem(batch=2, experts=2, points=300, nt=11, nx=64)
    _, w_ours = time_ours(p, backward=False, repeats=1)
    _, w_peer, steps = time_theseus(p, backward=True, repeats=1, max_steps=60)
    assert 1 <= steps < 60  # every problem converged
    assert cost(p, w_peer) == pytest.approx(cost(p, w_ours), rel=1e-6)
    assert np.abs(w_peer - w_ours).max() <= 1e-3 * np.abs(w_ours).max()


def test_solver_markdown_handles_a_missing_peer():
    text = markdown({"quick": True, "date": "d", "machine": "m", "versions": {"peer": "none"},
                     "versus_optimistix": [{"experts": 1, "points_per_expert": 10, "grid": "g", "ours_fwd_ms": 1.0}],
                     "moe_scaling": [{"points": 100, "k1_seconds": 1.0, "k1_peak_rss_mb": 10, "k4_seconds": 0.5, "k4_peak_rss_mb": 9, "moe_speedup": 2.0}],
                     "layer_fields": [{"experts": 4, "points_per_expert": 1000, "points_seconds": 0.1, "whole_grid_seconds": 0.55, "speedup": 5.5, "steps": 8}]})
    assert "| 1 | 10 | g | 1 | - | - | - | - | - | - | - | - | - |" in text and "| 100 | 1 | 10 | 0.5 | 9 | 2.00 |" in text
    assert "| 4 | 1000 | 0.1 | 0.55 | 5.5 | 8 |" in text


def test_unknown_benchmark_is_refused_with_a_suggestion(tmp_path):
    with pytest.raises(ConfigError, match="Did you mean `solver`"):
        run_benchmark("solvr", out_dir=tmp_path)


def test_conservation_benchmark_agrees_with_the_dense_formula(tmp_path):
    """Ours and the dense peer give the same posterior; every draw conserves; the table is written."""
    import json

    report = run_benchmark("conservation", quick=True, out_dir=tmp_path)
    for row in report["single_row"]:
        assert row["mean_err"] < 1e-12 and row["var_err"] < 1e-12
        assert row["ce"] < 1e-12 and row["sample_ce"] < 1e-12 and row["update_ratio"] > 0
    assert all(row["ce"] < 1e-12 for row in report["space_time"])
    assert json.loads((tmp_path / "conservation.json").read_text())["n_samples"] == 500
    assert "| 1e+03 |" in (tmp_path / "conservation.md").read_text()


def test_fields_benchmark_peer_computes_the_same_fields(tmp_path):
    """The per-field complex FFTs (the peer) and our shared real transform give the same six
    fields (float64: to round-off) on odd and even grids; the quick run writes its table."""
    import json

    from sciml.bench.fields import NAMES, ours, per_field

    for n_x, n_y in ((12, 16), (15, 10)):
        b = torch.randn(2, 5, n_x, n_y, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(n_x))
        a, p = ours(b, 0.1), per_field(b, 0.1)
        for k in NAMES:
            torch.testing.assert_close(a[k], p[k], rtol=1e-12, atol=1e-12 * float(p[k].abs().max()), msg=k)
    report = run_benchmark("fields", quick=True, out_dir=tmp_path)
    row = report["rows"][0]
    assert row["max_rel_difference"] < 1e-5 and row["ours_s"] > 0 and row["speedup"] > 0
    assert json.loads((tmp_path / "fields.json").read_text())["rows"][0]["grid"] == row["grid"]
    assert "shared rfft" in (tmp_path / "fields.md").read_text()


@pytest.mark.parametrize("name, device, match", [
    ("conservation", "cuda", r"runs on the CPU only \(--device cuda\); benchmarks with a GPU mode: fields, solver"),
    ("solver", "mps", r"--device \(='mps'\) must be cpu or cuda"),
    ("solver", "gpu0", r"--device \(='gpu0'\) is not a torch device"),
])
def test_bench_device_is_checked_before_anything_runs(tmp_path, name, device, match):
    with pytest.raises(ConfigError, match=match):
        run_benchmark(name, quick=True, out_dir=tmp_path / "out", device=device)
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_solver_bench_on_cuda_without_a_gpu_says_so(tmp_path):
    with pytest.raises(ConfigError, match=r"torch sees 0 CUDA device\(s\) here; run on the CPU \(drop --device\)"):
        run_benchmark("solver", quick=True, out_dir=tmp_path, device="cuda")


def test_optimistix_runs_where_torch_runs():
    """On the CPU the peer is pinned to JAX's CPU (a GPU-enabled JAX would otherwise take its GPU);
    asked for the GPU where JAX has none, the peer is reported missing, not timed on the CPU."""
    jax = pytest.importorskip("jax")
    pytest.importorskip("optimistix")
    from sciml.bench.solver import _jax_device

    assert _jax_device("cpu").platform == "cpu"
    p = make_problem(batch=1, experts=1, points=50, n=4, nt=6, nx=16)
    if not any(d.platform == "gpu" for d in jax.devices()):
        assert _jax_device("cuda") is None and time_optimistix(p, backward=False, repeats=1, device="cuda") is None
    assert time_optimistix(p, backward=False, repeats=1, device="cpu") is not None


def test_cpu_with_an_index_is_the_cpu(tmp_path, monkeypatch):
    import sciml.bench.conservation as conservation

    monkeypatch.setattr(conservation, "run", lambda quick, out_dir: {"ran": True})
    assert run_benchmark("conservation", quick=True, out_dir=tmp_path, device="cpu:0") == {"ran": True}


def test_solver_benchmark_problem_has_a_physical_solution():
    """The stand-in for a trained FNO's bases: the solve lands where u > 0 (the isotherm smooth),
    within the steps training sees, and the rows its positive combination was built from hold."""
    from sciml.bench.solver import RESIDUAL, residual_args
    from sciml.constraints import LevenbergMarquardt, least_squares

    p = make_problem(batch=2, experts=2, points=500, nt=26, nx=256, seed=3)
    args = residual_args(p)
    sol = least_squares(RESIDUAL, torch.zeros(4, 16, dtype=torch.float64), args, solver=LevenbergMarquardt(rtol=1e-4, atol=1e-4),
                        max_steps=100, throw=False)
    assert (sol.result == 0).all() and sol.steps <= 15
    u = torch.as_tensor(p["u"]) @ sol.value.unsqueeze(-1)
    assert 0.05 < float(u.min()) and float(u.max()) < 1.5
    rows = torch.as_tensor(p["a"]) @ sol.value.unsqueeze(-1) - torch.as_tensor(p["b"]).unsqueeze(-1)
    assert float(rows.abs().max()) < 0.05 * float(torch.as_tensor(p["b"]).abs().max())


def test_partitioned_problem_splits_one_problem_by_time_blocks():
    """MoE scaling's problem: experts share their batch element's bases, carry the rows of their
    own time block only (the IC rows with the first), zero rows after them; together they hold
    the boundary rows of the undivided problem."""
    nt, nx, k = 13, 16, 3
    whole = make_problem(batch=2, experts=1, points=50, n=5, nt=nt, nx=nx, partitioned=True)
    split = make_problem(batch=2, experts=k, points=50, n=5, nt=nt, nx=nx, partitioned=True)
    edges = np.arange(k + 1) * nt // k
    for e in range(k):
        a, b = split["a"][e], split["b"][e]  # batch element 0, expert e
        n_bc = 2 * (edges[e + 1] - max(edges[e], 1))
        mine = (nx if e == 0 else 0) + n_bc
        assert not a[mine:].any() and not b[mine:].any() and np.abs(a[:mine]).min(axis=1).all()
    boundary = np.concatenate([split["a"][e][(nx if e == 0 else 0):][: 2 * (edges[e + 1] - max(edges[e], 1))] for e in range(k)])
    want = whole["a"][0][nx:]
    assert sorted(map(tuple, boundary.round(12))) == sorted(map(tuple, want.round(12)))


def test_layer_benchmark_problem_solves_to_its_rows():
    """The whole-layer benchmark's problem: both ways of computing the fields give one solve, which
    meets the IC/BC rows it was built from and keeps u in the isotherm's smooth range."""
    from sciml.bench.solver import PDE, layer_problem
    from sciml.constraints import GridFields, HardConstraint

    b, rows, spacing = layer_problem(2, n=8, nt=11, nx=32, dtype=torch.float64)
    layer = HardConstraint(PDE, (11, 32), (2, 1), points=60, ridge=1e-8)
    points = layer.sample_points(torch.Generator().manual_seed(0))
    fields = GridFields(b, PDE.fields, spacing, {}, {"t": 1, "x": 2})
    u = layer(fields, rows=rows, points=points)
    torch.testing.assert_close(u, layer(fields.full(), rows=rows, points=points), rtol=1e-10, atol=1e-12)
    assert layer.last_solution.successful.all()
    at_rows = u.reshape(2, -1)[:, rows.points]
    assert float(((at_rows - rows.target) / rows.scale).abs().max()) < 0.05
    assert 0.05 < float(u.min()) and float(u.max()) < 1.5


def test_newton_steps_in_the_navier_stokes_layer_reach_gauss_newtons_cost_in_fewer_steps():
    """The bench's Navier-Stokes case at its quick size, three seeds: Newton steps solve every
    problem in fewer steps than Gauss-Newton, to the same cost; the table renders."""
    from sciml.bench import solver

    rows = solver.newton_steps(quick=True)
    for row in rows:
        gn, newton = row["gauss-newton"], row["exact"]
        assert newton["solved"] == newton["problems"] == gn["solved"] == 8
        assert newton["steps"] < gn["steps"]
        assert abs(newton["cost"] / gn["cost"] - 1) < 1e-6
    text = markdown({"quick": True, "date": "d", "machine": "m", "versions": {"peer": "none"}, "versus_optimistix": [],
                     "moe_scaling": [], "newton_steps": rows})
    assert f"| 0 | 17x32x32, 16, 500 | {rows[0]['gauss-newton']['steps']}, 8/8," in text


def test_moe_training_step_table_times_both_models_at_each_size():
    """The paper's scaling experiment (a training step of PI-HC against PI-HC-MoE) at its quick
    size: both models train a step at every size and the table renders their ratio."""
    from sciml.bench import solver

    rows = solver.moe_training(quick=True)
    assert [row["points"] for row in rows] == [100, 1000]
    for row in rows:
        assert row["k1_seconds"] > 0 and row["k4_seconds"] > 0
        assert row["moe_speedup"] == pytest.approx(row["k1_seconds"] / row["k4_seconds"])
    text = markdown({"quick": True, "date": "d", "machine": "m", "versions": {"peer": "none"}, "versus_optimistix": [],
                     "moe_scaling": [], "moe_training": rows})
    assert f"| 1000 | 26x256 | {rows[1]['k1_seconds']:.3g} | {rows[1]['k4_seconds']:.3g} | {rows[1]['moe_speedup']:.2f} |" in text


def test_solver_sections_run_alone_and_each_is_saved_as_it_finishes(tmp_path, monkeypatch):
    """`--sections` runs only those parts, and solver.json is rewritten after each one, so a run
    stopped part-way (a device's time limit) keeps what it measured."""
    import json

    from sciml.bench import solver

    seen = []

    def fake(name):
        def measure(quick, device, done=None):
            if name == "moe_scaling":  # asked for first, so nothing is on disk yet
                assert not (tmp_path / "solver.json").exists()
            else:  # by now the first section is on disk
                seen.append(json.loads((tmp_path / "solver.json").read_text()))
            return [{"points": 100, "k1_seconds": 2.0, "k1_peak_rss_mb": 1, "k4_seconds": 1.0, "k4_peak_rss_mb": 1, "moe_speedup": 2.0}] \
                if name == "moe_scaling" else [{"experts": 1, "points_per_expert": 10, "grid": "g", "ours_fwd_ms": 1.0}]
        return measure

    monkeypatch.setattr(solver, "versus_optimistix", fake("versus_optimistix"))
    monkeypatch.setattr(solver, "moe_scaling", fake("moe_scaling"))
    monkeypatch.setattr(solver, "layer_fields", lambda *a: pytest.fail("not asked for"))
    report = run_benchmark("solver", out_dir=tmp_path, sections=["moe_scaling", "versus_optimistix"])
    assert set(report) & set(solver.SECTIONS) == {"versus_optimistix", "moe_scaling"}
    assert "moe_scaling" in seen[0] and "versus_optimistix" not in seen[0]
    assert "| 100 | 2 | 1 | 1 | 1 | 2.00 |" in (tmp_path / "solver.md").read_text()
    only_moe = solver.markdown({k: v for k, v in report.items() if k != "versus_optimistix"})
    assert "optimistix fwd" not in only_moe and "MoE speed-up" in only_moe
    with pytest.raises(ConfigError, match=r"--sections \(='moe'\) must name some of versus_optimistix, moe_scaling"):
        run_benchmark("solver", out_dir=tmp_path, sections=["moe"])
    with pytest.raises(ConfigError, match="`sciml bench fields` has no sections"):
        run_benchmark("fields", out_dir=tmp_path, sections=["x"])
