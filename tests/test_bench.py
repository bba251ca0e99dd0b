"""The benchmarks measure what they say: same problem for ours and the peer, tables written."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sciml.bench import run_benchmark
from sciml.bench.solver import cost, make_problem, markdown, time_ours, time_optimistix
from sciml.errors import ConfigError


def test_solver_benchmark_problem_and_peer_agree():
    p = make_problem(batch=2, experts=1, points=200, n=6, nt=11, nx=32)
    assert p["u"].shape == (2, 200, 6) and p["a"].shape == (2, 32 + 2 * 10, 6)
    _, w_ours = time_ours(p, backward=True, repeats=1)
    pytest.importorskip("optimistix")
    _, w_peer = time_optimistix(p, backward=False, repeats=1)
    assert cost(p, w_ours) == pytest.approx(cost(p, w_peer), rel=1e-6)  # both reach the same minimum


def test_solver_markdown_handles_a_missing_peer():
    text = markdown({"quick": True, "date": "d", "machine": "m", "versions": {"peer": "none"},
                     "versus_optimistix": [{"experts": 1, "points_per_expert": 10, "grid": "g", "ours_fwd_ms": 1.0}],
                     "moe_scaling": [{"points": 100, "k1_seconds": 1.0, "k1_peak_rss_mb": 10, "k4_seconds": 0.5, "k4_peak_rss_mb": 9, "moe_speedup": 2.0}]})
    assert "| 1 | 10 | g | 1 | - |" in text and "| 100 | 1 | 10 | 0.5 | 9 | 2.00 |" in text


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
