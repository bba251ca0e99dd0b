"""ProbConserv's update on large meshes: ours vs the dense formula, side by side (``sciml bench conservation``).

The update of a diagonal prior N(mu, diag(var)) at n points by one conservation row G u = b
(sigma_G = 0), and 500 posterior samples (the Stefan shock sampler), timed two ways in float64:

- ``ours``: ``sciml.constraints.conservation_update`` (O(n) for one row, nothing n x n) and
  ``ConservedPosterior.sample`` (Matheron's rule: prior samples corrected by the low-rank term);
- ``dense``, the peer: the equations as written, Sigma = diag(var) as an n x n matrix,
  mu~ = mu - Sigma G^T A^-1 (G mu - b), Sigma~ = Sigma - Sigma G^T A^-1 G Sigma, and samples from
  a Cholesky factor of Sigma~ (+ 1e-12 jitter: Sigma~ is singular along G). O(n^2) memory and
  O(n^3) time for the samples; run only while n x n fits (n <= 4000 here).

Also the per-time-slice form of a space-time field (the 2D mesh case: [functions, slices, points]
with time as a batch axis) at growing sizes. Errors: max |mu~_ours - mu~_dense| and the same
for the variances; |G mu~ - b| of ours. Timings are best of a few repeats; read the ratios.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..constraints.conservation import conservation_update
from . import publish

N_SAMPLES = 500


def _best(fn, repeats: int = 3) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _problem(n: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    mean = torch.rand(n, generator=g, dtype=torch.float64)
    var = 1e-4 + torch.rand(n, generator=g, dtype=torch.float64) * 1e-2
    G = torch.full((1, n), 1.0 / n, dtype=torch.float64)  # trapezoid-like weights
    b = torch.tensor([0.3], dtype=torch.float64)
    return mean, var, G, b


def _dense(mean, var, G, b) -> tuple[torch.Tensor, torch.Tensor]:
    """The dense posterior (mean, covariance n x n) by the equations as written."""
    S = torch.diag(var)
    SG = S @ G.T
    A = G @ SG
    return mean - (SG @ torch.linalg.solve(A, G @ mean - b)), S - SG @ torch.linalg.solve(A, SG.T)


def _dense_samples(post_mean, post_cov) -> torch.Tensor:
    """N_SAMPLES draws from the dense posterior, through a Cholesky factor of its covariance."""
    L = torch.linalg.cholesky(post_cov + 1e-12 * torch.eye(len(post_mean), dtype=post_mean.dtype))
    return post_mean + torch.randn(N_SAMPLES, len(post_mean), dtype=post_mean.dtype) @ L.T


def single_row(quick: bool) -> list[dict[str, Any]]:
    sizes = [1000, 2000] if quick else [1000, 2000, 4000, 10**5, 10**6, 10**7]
    rows = []
    for n in sizes:
        mean, var, G, b = _problem(n)
        t_ours, post = _best(lambda: conservation_update(mean, var, G, b))
        # 500 draws of 1e6 points would be 4 GB: the sampler is timed up to 1e5 points
        t_samp, draws = _best(lambda: post.sample(N_SAMPLES, generator=torch.Generator().manual_seed(0)), repeats=2) \
            if n <= 10**5 else (float("nan"), None)
        row = {"n": n, "ours_update_s": t_ours, "ours_samples_s": t_samp, "ce": float((G @ post.mean - b).abs().max())}
        if draws is not None:
            row["sample_ce"] = float((draws @ G.T - b).abs().max())
        if n <= 4000:
            t_dense, dense = _best(lambda: _dense(mean, var, G, b))
            # both samplers timed alone, from their own posterior, best of the same repeats
            t_dense_s, _ = _best(lambda: _dense_samples(*dense), repeats=2)
            row |= {"dense_update_s": t_dense, "dense_samples_s": t_dense_s, "update_ratio": t_dense / t_ours,
                    "samples_ratio": t_dense_s / t_samp,
                    "mean_err": float((post.mean - dense[0]).abs().max()), "var_err": float((post.var - dense[1].diagonal()).abs().max())}
        rows.append(row)
        print(f"  n={n}: ours {t_ours * 1e3:.2f} ms" + (f", dense {row['dense_update_s'] * 1e3:.1f} ms" if "dense_update_s" in row else ""))
    return rows


def space_time(quick: bool) -> list[dict[str, Any]]:
    """[functions, slices, points] with one row per slice, as ProbConserv's evaluation runs it."""
    shapes = [(50, 21, 201)] if quick else [(50, 21, 201), (50, 101, 4225), (20, 101, 66049)]
    rows = []
    for f, s, p in shapes:
        g = torch.Generator().manual_seed(0)
        mean = torch.rand(f, s, p, generator=g, dtype=torch.float64)
        var = 1e-4 + torch.rand(f, s, p, generator=g, dtype=torch.float64) * 1e-2
        G = torch.full((1, p), 1.0 / p, dtype=torch.float64)
        b = torch.full((f, s, 1), 0.3, dtype=torch.float64)
        t, post = _best(lambda: conservation_update(mean, var, G, b), repeats=2)
        rows.append({"functions": f, "slices": s, "points": p, "values": f * s * p, "seconds": t,
                     "values_per_s": f * s * p / t, "ce": float((post.mean @ G[0] - b[..., 0]).abs().max())})
        print(f"  {f} x {s} x {p}: {t * 1e3:.1f} ms")
    return rows


def run(quick: bool, out_dir: Path) -> dict[str, Any]:
    print("ProbConserv update: ours vs the dense formula (float64, one row, sigma_G = 0)")
    report = {"quick": quick, "threads": torch.get_num_threads(), "torch": torch.__version__, "n_samples": N_SAMPLES,
              "single_row": single_row(quick), "space_time": space_time(quick)}
    return publish("conservation", report, markdown(report), out_dir)


def markdown(r: dict[str, Any]) -> str:
    f = lambda v, fmt: "-" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, fmt)  # noqa: E731
    lines = [f"ProbConserv update, one row, diagonal prior, float64, {r['threads']} torch thread(s); samples: {r['n_samples']} posterior draws.", "",
             "| n | ours update (ms) | dense update (ms) | ratio | ours samples (ms) | dense samples (ms) | ratio | max mean diff | max var diff | max CE (mean, samples) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in r["single_row"]:
        g = row.get
        lines.append(f"| {row['n']:.0e} | {row['ours_update_s'] * 1e3:.3g} | {f(g('dense_update_s', None) and g('dense_update_s') * 1e3, '.4g')} | "
                     f"{f(g('update_ratio'), '.0f')}{'x' if g('update_ratio') else ''} | {f(row['ours_samples_s'] * 1e3, '.4g')} | "
                     f"{f(g('dense_samples_s', None) and g('dense_samples_s') * 1e3, '.4g')} | {f(g('samples_ratio'), '.0f')}{'x' if g('samples_ratio') else ''} | "
                     f"{f(g('mean_err'), '.1e')} | {f(g('var_err'), '.1e')} | {row['ce']:.1e}, {f(g('sample_ce'), '.1e')} |")
    lines += ["", "Per-slice updates of space-time fields (time as a batch axis):", "",
              "| functions x slices x points | ms | values / s | max CE |", "|---|---|---|---|"]
    for row in r["space_time"]:
        lines.append(f"| {row['functions']} x {row['slices']} x {row['points']} | {row['seconds'] * 1e3:.4g} | {row['values_per_s']:.2e} | {row['ce']:.1e} |")
    return "\n".join(lines) + "\n"
