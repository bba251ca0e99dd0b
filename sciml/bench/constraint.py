"""Constraint layer vs cvxpylayers, forward + backward, side by side (``sciml bench constraint``).

One problem all three can express, the hard-constraint solve of a linear PDE (residual rows at m
points, N basis functions, a small ridge), for every problem of a batch:

    w* = argmin_w |M w - y|^2 + ridge |w|^2,    M [batch, m, N], y [batch, m],   ridge = 1e-4,

with M Gaussian, its columns scaled over two decades (condition number ~1e2), y = M w_true +
noise (a nonzero residual). Timed: the forward solve and the backward pass of L = sum(g * w*) to
M and y, with the torch threads the caller set (diffcp's thread pool gets as many); every method,
ours and the peer, the best of a few repeats after one untimed warm-up call at the size timed
(cvxpylayers' first call at a new batch size is 1.4-1.9x slower than its next). Methods:

- ``least_squares``: ``sciml.constraints.least_squares`` with GaussNewton and ImplicitAdjoint on
  the residual [M w - y; sqrt(ridge) w] (what PI-HC runs);
- ``closed_form``: ``ConvexConstraint(backend="closed_form")`` (Cholesky of M^T M + ridge I);
- ``cvxpylayers``, the peer, through ``ConvexConstraint(backend="cvxpylayers")``: with SCS at its
  defaults (what the issue measured) and with Clarabel at tolerance 1e-10 (our layer's default).
  It solves problem after problem on the CPU, so where a batch would exceed the time budget it is
  timed on the first k problems and scaled by batch / k (column "k"); where even one problem
  would not fit, it is skipped with a note.

Errors are against Householder QR of [M; sqrt(ridge) I] in float64: max |w - w_exact| / max |w_exact|,
and the same for the gradients (exact: dL/dy = M z, dL/dM = (y - M w) z^T - M z w^T, H z = g).
Timings on a shared machine are noisy; the ratios are what to read.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import math
import os
import platform
import time
import warnings
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .. import __version__
from . import publish
from ..constraints import GaussNewton, ImplicitAdjoint, least_squares
from ..constraints.convex import CLARABEL, ConvexConstraint

RIDGE = 1e-4
GOAL_SPEEDUP, GOAL_ERROR = 100.0, 1e-8
# Peak memory in bytes of M, measured: least_squares' Jacobian (vmap over N jvps) holds ~2N
# copies of M; the closed form and the QR reference a few.
PEAK_PER_M = {"least_squares": lambda n: 2.5 * n, "closed_form": lambda n: 5.0}
PEERS = {"cvxpylayers_scs": {"solve_method": "SCS"}, "cvxpylayers_clarabel": CLARABEL}
QUICK = {"sizes": [(1, 1_000, 16), (64, 1_000, 16), (64, 10_000, 16), (8, 10_000, 64)], "repeats": 2, "peer_budget_s": 4.0, "peer_max_m_n": 10_000 * 64}
FULL = {"sizes": [(b, m, n) for n in (16, 64) for m in (1_000, 10_000, 100_000) for b in (1, 8, 64)], "repeats": 4,
        "peer_budget_s": 120.0, "peer_max_m_n": 100_000 * 16}


def problem(batch: int, m: int, n: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """(M [batch, m, n], y [batch, m], g [batch, n]) in float64."""
    gen = torch.Generator().manual_seed(seed)
    M = torch.randn(batch, m, n, generator=gen, dtype=torch.float64) * torch.logspace(0, -2, n, dtype=torch.float64)
    w_true = torch.randn(batch, n, 1, generator=gen, dtype=torch.float64)
    y = (M @ w_true).squeeze(-1) + 0.1 * torch.randn(batch, m, generator=gen, dtype=torch.float64)
    return M, y, torch.randn(batch, n, generator=gen, dtype=torch.float64)


def exact(M: Tensor, y: Tensor, g: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """w*, dL/dM, dL/dy for L = sum(g * w*), by QR of the stacked system (no normal equations)."""
    n = M.shape[-1]
    stacked = torch.cat([M, math.sqrt(RIDGE) * torch.eye(n, dtype=M.dtype).expand(M.shape[0], n, n)], 1)
    q, r = torch.linalg.qr(stacked)
    w = torch.linalg.solve_triangular(r, q[:, : M.shape[1]].mT @ y.unsqueeze(-1), upper=True)
    z = torch.linalg.solve_triangular(r, torch.linalg.solve_triangular(r.mT, g.unsqueeze(-1), upper=False), upper=True)
    mz = M @ z
    return w.squeeze(-1), (y.unsqueeze(-1) - M @ w) @ z.mT - mz @ w.mT, mz.squeeze(-1)


def _residual(w: Tensor, M: Tensor, y: Tensor) -> Tensor:
    return torch.cat([(M @ w.unsqueeze(-1)).squeeze(-1) - y, math.sqrt(RIDGE) * w], -1)


def _least_squares(M: Tensor, y: Tensor) -> Tensor:
    sol = least_squares(_residual, M.new_zeros(M.shape[0], M.shape[-1]), (M, y), solver=GaussNewton(), adjoint=ImplicitAdjoint(), throw=False)
    if not bool(sol.successful.all()):
        raise RuntimeError(f"least_squares did not converge: {sol.summary()}")
    return sol.value


def _forward_backward(solve: Callable[[Tensor, Tensor], Tensor], M: Tensor, y: Tensor, g: Tensor) -> tuple[float, Tensor, Tensor, Tensor]:
    """(seconds, w*, dL/dM, dL/dy) of one forward + backward."""
    M_, y_ = M.clone().requires_grad_(True), y.clone().requires_grad_(True)
    t0 = time.perf_counter()
    w = solve(M_, y_)
    (w * g).sum().backward()
    return time.perf_counter() - t0, w.detach(), M_.grad, y_.grad


def _errors(got: tuple[Tensor, Tensor, Tensor], want: tuple[Tensor, Tensor, Tensor]) -> dict[str, float]:
    def rel(a: Tensor, b: Tensor) -> float:
        return float((a - b).abs().max() / b.abs().max())

    return {"error_w": rel(got[0], want[0]), "error_grad": max(rel(got[1], want[1]), rel(got[2], want[2]))}


def _best_of(solve: Callable, M: Tensor, y: Tensor, g: Tensor, repeats: int) -> tuple[float, list[float], tuple]:
    """(best seconds, every timed run's seconds, the last run's (w, dL/dM, dL/dy)) of ``repeats``
    forward + backward runs after one untimed warm-up run at the same size: the protocol of every
    method, ours and the peers alike (a first call at a new batch size costs cvxpylayers 1.4-1.9x
    a later one)."""
    _forward_backward(solve, M, y, g)
    runs = [_forward_backward(solve, M, y, g) for _ in range(repeats)]
    return min(r[0] for r in runs), [r[0] for r in runs], runs[-1][1:]


def _ours(name: str, solve: Callable, M: Tensor, y: Tensor, g: Tensor, want: tuple, repeats: int) -> dict[str, Any]:
    best, every, got = _best_of(solve, M, y, g, repeats)
    return {"method": name, "seconds": best, "seconds_all": every, **_errors(got, want)}


def _peer(name: str, solver_args: dict[str, Any], M: Tensor, y: Tensor, g: Tensor, want: tuple, cfg: dict) -> dict[str, Any]:
    batch, m, n = M.shape
    row: dict[str, Any] = {"method": name, "solver_args": dict(solver_args)}
    if m * n > cfg["peer_max_m_n"]:
        return row | {"note": f"skipped: m*N = {m * n} > {cfg['peer_max_m_n']} (building and solving the cone program takes minutes)"}
    threads = torch.get_num_threads()
    layer = ConvexConstraint(RIDGE, backend="cvxpylayers", solver_args=solver_args | {"n_jobs_forward": threads, "n_jobs_backward": threads})

    def solve(M_: Tensor, y_: Tensor) -> Tensor:
        return layer.solve(y_, basis=M_)

    first, *_ = _forward_backward(solve, M[:1], y[:1], g[:1])  # builds the layer (cvxpy canonicalisation, once per shape)
    one, *_ = _forward_backward(solve, M[:1], y[:1], g[:1])
    row["setup_s"] = first - one
    k = batch if one * batch <= cfg["peer_budget_s"] else int(cfg["peer_budget_s"] // one)
    if k < 1:
        return row | {"note": f"skipped: one problem took {one:.1f} s, over the {cfg['peer_budget_s']:.0f} s budget"}
    seconds, every, got = _best_of(solve, M[:k], y[:k], g[:k], cfg["repeats"])
    row |= {"seconds": seconds * batch / k, "seconds_all": [t * batch / k for t in every], "k": k,
            **_errors(got, tuple(t[:k] for t in want))}
    if k < batch:
        row["note"] = f"timed on {k} of {batch} problems, scaled by {batch}/{k}"
    return row


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            model = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{platform.machine()}, {model}, {os.cpu_count()} cores"


def run(quick: bool, out_dir: Path) -> dict[str, Any]:
    cfg = QUICK if quick else FULL
    budget = 0.4 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")  # of the memory free now: the machine is shared
    try:
        importlib.import_module("cvxpylayers.torch")
        have_peer = True
    except ImportError:
        have_peer = False
    result: dict[str, Any] = {
        "benchmark": "constraint", "quick": quick, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(), "threads": torch.get_num_threads(), "memory_budget_gib": budget / 2**30,
        "versions": {"sciml": __version__, "python": platform.python_version(), "torch": torch.__version__,
                     **{p: _version(p) for p in ("cvxpylayers", "cvxpy", "diffcp", "scs", "clarabel")}},
        "problem": f"min_w |M w - y|^2 + {RIDGE:g} |w|^2, M [batch, points, N] Gaussian with column scales 1..1e-2, float64; "
                   "forward + backward of sum(g * w) to M and y",
        "cases": [],
    }
    for batch, m, n in cfg["sizes"]:
        case: dict[str, Any] = {"batch": batch, "points": m, "basis": n, "methods": []}
        result["cases"].append(case)
        need = {name: peak(n) * batch * m * n * 8 for name, peak in PEAK_PER_M.items()}
        if need["closed_form"] > budget:
            case["note"] = f"skipped: needs ~{need['closed_form'] / 2**30:.1f} GiB, over the budget of {budget / 2**30:.1f} GiB"
            continue
        M, y, g = problem(batch, m, n)
        want = exact(M, y, g)
        closed = ConvexConstraint(RIDGE, backend="closed_form")
        if need["least_squares"] > budget:
            case["methods"].append({"method": "least_squares", "note": f"skipped: needs ~{need['least_squares'] / 2**30:.0f} GiB "
                                    f"(its Jacobian holds ~2N copies of M), over the budget of {budget / 2**30:.1f} GiB"})
        else:
            case["methods"].append(_ours("least_squares", _least_squares, M, y, g, want, cfg["repeats"]))
        case["methods"].append(_ours("closed_form", lambda M_, y_: closed.solve(y_, basis=M_), M, y, g, want, cfg["repeats"]))
        for name, solver_args in PEERS.items():
            if not have_peer:
                case["methods"].append({"method": name, "note": "skipped: cvxpylayers is not installed (pip install 'sciml[convex]')"})
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # SCS's "Solved/Inaccurate" is reported by the error columns
                case["methods"].append(_peer(name, solver_args, M, y, g, want, cfg))
        seconds = {r["method"]: r.get("seconds") for r in case["methods"]}
        case["ratios"] = {f"{peer}/{ours}": seconds[peer] / seconds[ours] for peer in PEERS for ours in ("least_squares", "closed_form")
                          if seconds.get(peer) and seconds.get(ours)}
    result["goal"] = _goal(result["cases"])
    # The nonlinear solve vs optimistix and the MoE scaling (sciml.bench.solver) belong to the same
    # question, the constraint layer's cost: run them here too so one command prints every ratio.
    from . import solver

    result["solver"] = solver.measure(quick)
    return publish("constraint", result, markdown(result) + "\n" + solver.markdown(result["solver"]), out_dir)


def _goal(cases: list[dict[str, Any]]) -> dict[str, Any]:
    """Issue 4's goal at batch 64: >= 100x faster than cvxpylayers (SCS, as measured there) and
    accurate to 1e-8, per method of ours, over the sizes where the peer ran."""
    out: dict[str, Any] = {"speedup": GOAL_SPEEDUP, "error": GOAL_ERROR}
    for ours in ("least_squares", "closed_form"):
        rows = [(c, {m["method"]: m for m in c["methods"]}) for c in cases if c["batch"] == 64 and "ratios" in c]
        checks = [{"points": c["points"], "basis": c["basis"], "speedup": c["ratios"][f"cvxpylayers_scs/{ours}"],
                   "error": max(by[ours]["error_w"], by[ours]["error_grad"])} for c, by in rows if f"cvxpylayers_scs/{ours}" in c["ratios"]]
        met = all(x["speedup"] >= GOAL_SPEEDUP and x["error"] <= GOAL_ERROR for x in checks) if checks else None
        out[ours] = {"met": met, "checks": checks}
    return out


_MET = {True: "met", False: "not met", None: "not measured"}


def _fmt_s(row: dict[str, Any]) -> str:
    if "seconds" not in row:
        return "skipped"
    s = row["seconds"]
    text = f"{s * 1e3:.3g} ms" if s < 1 else f"{s:.3g} s"
    return text + (f" (k={row['k']})" if "k" in row and "note" in row else "")


def _fmt_err(row: dict[str, Any]) -> str:
    return f"{row['error_w']:.1e} / {row['error_grad']:.1e}" if "error_w" in row else "-"


def markdown(r: dict[str, Any]) -> str:
    names = ["least_squares", "closed_form", *PEERS]
    head = ["least_squares GN+implicit", "closed form", "cvxpylayers SCS", "cvxpylayers Clarabel"]
    lines = [f"Constraint layer vs cvxpylayers ({'quick' if r['quick'] else 'full'}), {r['date']}, {r['machine']}, "
             f"torch threads {r['threads']}; torch {r['versions']['torch']}, cvxpylayers {r['versions']['cvxpylayers']}, "
             f"cvxpy {r['versions']['cvxpy']}, diffcp {r['versions']['diffcp']}", "", f"Problem: {r['problem']}.", "",
             "Forward + backward time (cvxpylayers timed on k problems of the batch and scaled where marked):", "",
             "| batch | points | N | " + " | ".join(head) + " | SCS / closed | SCS / GN | Clarabel / closed | Clarabel / GN |",
             "|" + "---|" * (3 + len(head) + 4)]
    notes = []
    for c in r["cases"]:
        rows = {m["method"]: m for m in c["methods"]}
        size = f"| {c['batch']} | {c['points']:.0e} | {c['basis']} | "
        if "note" in c:
            lines.append(size + " | ".join(["skipped"] * (len(head) + 4)) + " |")
            notes.append(f"batch {c['batch']}, {c['points']:.0e} points, N={c['basis']}: {c['note']}")
            continue
        ratios = [c["ratios"].get(f"{p}/{o}") for p in PEERS for o in ("closed_form", "least_squares")]
        lines.append(size + " | ".join(_fmt_s(rows[n]) for n in names) + " | "
                     + " | ".join("-" if x is None else f"{x:,.0f}x" for x in ratios) + " |")
        notes += [f"batch {c['batch']}, {c['points']:.0e} points, N={c['basis']}, {n}: {rows[n]['note']}" for n in names if "note" in rows[n]]
    lines += ["", "Relative error against QR in float64, solution / gradient (max abs error / max abs value):", "",
              "| batch | points | N | " + " | ".join(head) + " |", "|" + "---|" * (3 + len(head))]
    for c in r["cases"]:
        if "note" not in c:
            rows = {m["method"]: m for m in c["methods"]}
            lines.append(f"| {c['batch']} | {c['points']:.0e} | {c['basis']} | " + " | ".join(_fmt_err(rows[n]) for n in names) + " |")
    goal = r["goal"]
    lines += ["", f"Goal (issue 4), at batch 64: >= {goal['speedup']:.0f}x faster than cvxpylayers with SCS and error <= {goal['error']:.0e}: "
              + "; ".join(f"{ours}: {_MET[goal[ours]['met']]} ("
                          + ", ".join(f"{x['points']:.0e} points N={x['basis']}: {x['speedup']:,.0f}x, {x['error']:.0e}" for x in goal[ours]["checks"]) + ")"
                          for ours in ("least_squares", "closed_form")) + "."]
    if notes:
        lines += ["", "Notes:", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"
