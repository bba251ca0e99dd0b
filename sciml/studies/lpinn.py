"""Studies of the Lagrangian PINN against the Eulerian PINN (``sciml run experiments/lpinn/*.yaml``).

- :func:`sweep`: error against the convection speed c, each model trained per c from its own
  experiment file (same network size and budget), as a table and a log-scale plot.
- :func:`compare`: several experiments on one problem (Burgers with a moving shock), their
  metrics side by side and their snapshots against the reference in one figure.
- :func:`landscape`: filter-normalised loss surfaces around the trained weights
  (:mod:`sciml.landscape`), one contour panel per model and speed.

Every trained model is an ordinary run folder (``OUT/<model>/c<speed>/``, or ``OUT/<model>/`` in
a comparison: config, checkpoint, metrics, plots) made by :func:`sciml.pipeline.run_experiment`. A model is given as the path of
an experiment file, or as ``{config: PATH, overrides: [key=value, ...]}`` for a variant of one.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from matplotlib.figure import Figure

from .._io import atomic_write_json, atomic_write_text
from ..config import instantiate, load_config
from ..errors import ConfigError
from ..landscape import loss_surface, plot_loss_surfaces
from ..models import load_model
from ..pipeline import run_experiment
from . import ModelSpec, model_specs
from ..plotting import _save



def sweep(
    out: Path,
    quick: bool,
    models: Mapping[str, ModelSpec],
    speeds: Sequence[float],
    overrides: Sequence[str] = (),
    paper: Mapping[str, Mapping[float, float]] | None = None,
) -> dict[str, Any]:
    """Train every model at every convection speed c (``pde.init_args.beta``) and tabulate rel. L2.

    Writes ``errors.md``, ``errors.json`` and ``error_vs_c.png`` (with ``paper``'s values, per
    model name and c, drawn as hollow markers). ``overrides`` apply to every run.
    """
    specs, speeds = model_specs(models), _speeds(speeds)
    rows, budgets = [], {}
    for c in speeds:
        for name, (config, extra) in specs.items():
            run = out / name / f"c{c:g}"
            report = _run_at_speed(config, run, quick, name, c, [*extra, *overrides])
            budgets.setdefault(name, _budget(run))
            rows.append({"model": name, "c": c, "rel_l2": report["metrics"]["rel_l2"], "train_s": report["seconds"]["train"],
                         "eval_s": report["seconds"]["eval"], "steps": report["steps"], "run": str(run.relative_to(out))})
    table = {name: {r["c"]: r for r in rows if r["model"] == name} for name in specs}
    atomic_write_json(out / "errors.json", {"speeds": speeds, "budget": budgets, "runs": rows, "paper": _plain(paper)})
    atomic_write_text(out / "errors.md", _sweep_markdown(speeds, table, budgets, paper or {}))
    _plot_sweep(speeds, table, paper or {}, out / "error_vs_c.png")
    metrics = {f"{r['model']}/rel_l2_c{r['c']:g}": r["rel_l2"] for r in rows}
    metrics |= {f"{name}/rel_l2_max": max(r["rel_l2"] for r in by_c.values()) for name, by_c in table.items()}
    return {"model": "+".join(specs), "metrics": metrics, "per_case": rows, "seconds": _seconds(rows)}


def compare(out: Path, quick: bool, models: Mapping[str, ModelSpec], overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Train each model on its experiment and compare them against the common reference.

    Writes ``comparison.md`` and ``compare.png`` (snapshots of every model and the reference,
    and the pointwise errors below them); each run keeps its own folder ``OUT/<model>/``.
    """
    specs = model_specs(models)
    metrics, rows, preds = {}, [], {}
    x = t = true = None
    for name, (config, extra) in specs.items():
        run = out / name
        report = run_experiment(config, out=run, quick=quick, overrides=[*extra, *overrides], reuse_finished=True)
        model, dm = _reload(run)
        if true is not None and not (np.array_equal(dm.x, x) and np.array_equal(dm.t, t) and np.allclose(dm.u, true)):
            raise ConfigError(f"the experiments compared in {out} solve different problems ({name}'s reference differs); give them the same pde and data.")
        x, t, true = dm.x, dm.t, dm.u
        preds[name] = model.predict_grid(x, t)
        metrics |= {f"{name}/{k}": v for k, v in report["metrics"].items()}
        rows.append({"model": name, **{k: report["metrics"][k] for k in ("rel_l2", "nrmse", "max_abs_err")}, "train_s": report["seconds"]["train"],
                     "eval_s": report["seconds"]["eval"], "steps": report["steps"]})
    lines = ["| model | rel. L2 | nRMSE | max abs. error | train (s) | steps |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['rel_l2']:.2e} | {r['nrmse']:.2e} | {r['max_abs_err']:.2e} | {r['train_s']:.0f} | {r['steps']} |" for r in rows]
    atomic_write_text(out / "comparison.md", "\n".join(lines) + "\n")
    _plot_compare(x, t, true, preds, out / "compare.png")
    return {"model": "+".join(specs), "metrics": metrics, "per_case": rows, "seconds": _seconds(rows)}


def landscape(
    out: Path,
    quick: bool,
    models: Mapping[str, ModelSpec],
    speeds: Sequence[float],
    overrides: Sequence[str] = (),
    span: float = 1.0,
    steps: int = 25,
    seed: int = 0,
) -> dict[str, Any]:
    """Train each model at each speed, then its loss on a filter-normalised random plane through
    the trained weights, a, b in [-span, span] on ``steps`` points each (the same random seed
    for every model). Writes ``landscape.png`` (rows: models, columns: speeds) and
    ``landscape.json`` (the surfaces)."""
    specs, speeds = model_specs(models), _speeds(speeds)
    surfaces, saved, metrics, rows = {}, {}, {}, []
    for name, (config, extra) in specs.items():
        for c in speeds:
            run = out / name / f"c{c:g}"
            report = _run_at_speed(config, run, quick, name, c, [*extra, *overrides])
            t0 = time.perf_counter()
            model, dm = _reload(run)
            dtype = next(model.parameters()).dtype
            batch = {k: v.to(dtype) for k, v in dm.batch().items()}
            surface = loss_surface(model, lambda: model.loss_terms(batch)["loss"], span=span, steps=steps, seed=seed)
            surfaces[f"{name}, c = {c:g}"] = surface
            saved.setdefault(name, {})[f"{c:g}"] = surface.to_dict()
            # How far the loss climbs on the plane, in decades: a crude sharpness.
            rise = float(np.log10(np.median(surface.loss) / surface.center))
            metrics |= {f"{name}/rel_l2_c{c:g}": report["metrics"]["rel_l2"], f"{name}/loss_c{c:g}": surface.center, f"{name}/log10_rise_c{c:g}": rise}
            rows.append({"model": name, "c": c, "rel_l2": report["metrics"]["rel_l2"], "loss": surface.center, "log10_rise": rise,
                         "train_s": report["seconds"]["train"], "eval_s": report["seconds"]["eval"] + time.perf_counter() - t0})
    atomic_write_json(out / "landscape.json", {"span": span, "steps": steps, "seed": seed, "surfaces": saved})
    plot_loss_surfaces(surfaces, out / "landscape.png", ncols=len(speeds))
    return {"model": "+".join(specs), "metrics": metrics, "per_case": rows, "seconds": _seconds(rows)}


# -- helpers ---------------------------------------------------------------------------------
def _seconds(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """metrics.json's seconds of a study: its runs' training and evaluation (the landscape's
    surfaces count as evaluation), summed."""
    return {"train": sum(r["train_s"] or 0.0 for r in rows), "eval": sum(r["eval_s"] or 0.0 for r in rows)}


def _speeds(speeds: Sequence[float]) -> list[float]:
    if isinstance(speeds, (str, bytes)) or not isinstance(speeds, Sequence) or not speeds:
        raise ConfigError(f"`speeds` (={speeds!r}) must be a non-empty list of convection speeds, e.g. speeds=[5,30].")
    try:
        return [float(c) for c in speeds]
    except (TypeError, ValueError):
        raise ConfigError(f"`speeds` (={speeds!r}) must hold numbers, e.g. speeds=[5,30].") from None


def _run_at_speed(config: str, run: Path, quick: bool, name: str, c: float, overrides: list[str]) -> dict[str, Any]:
    """One run of a model's experiment with the convection speed set to c, named after both."""
    return run_experiment(config, out=run, quick=quick, overrides=[f"name={name}_c{c:g}", f"pde.init_args.beta={c}", *overrides],
                          reuse_finished=True)


def _reload(run: Path):
    """The trained model (from ``last.ckpt``) and the set-up data module of a finished run."""
    parser, cfg = load_config(run / "config.yaml")
    dm = instantiate(parser, cfg).data
    dm.prepare_data()
    dm.setup()
    return load_model(run / "checkpoints" / "last.ckpt"), dm


def _budget(run: Path) -> dict[str, Any]:
    """What one run of a model was given: optimiser steps, collocation points, weights."""
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    model = load_model(run / "checkpoints" / "last.ckpt")
    return {
        "optimizer": cfg["model"]["init_args"]["optimizer"],
        "n_collocation": cfg["data"]["init_args"]["n_collocation"],
        "n_params": sum(p.numel() for p in model.parameters()),
    }


def _plain(paper: Mapping | None) -> dict:
    return {str(m): {f"{float(c):g}": float(v) for c, v in by_c.items()} for m, by_c in (paper or {}).items()}


def _sweep_markdown(speeds, table, budgets, paper) -> str:
    names = list(table)
    head = ["c", *(f"{n} rel. L2" for n in names), *(f"{n} (paper)" for n in names if n in paper), *(f"{n} train (s)" for n in names)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in speeds:
        cells = [f"{c:g}", *(f"{table[n][c]['rel_l2']:.2e}" for n in names)]
        cells += [_paper_value(paper[n], c) for n in names if n in paper]
        cells += [f"{table[n][c]['train_s']:.0f}" for n in names]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for n, b in budgets.items():
        opt = b["optimizer"]
        lines.append(f"- {n}: {b['n_params']} weights, {b['n_collocation']} collocation points, Adam {opt['adam_steps']} steps "
                     f"(lr {opt['adam_lr']:g}) then L-BFGS up to {opt['lbfgs_steps']} steps")
    return "\n".join(lines) + "\n"


def _paper_value(by_c: Mapping, c: float) -> str:
    values = {float(k): float(v) for k, v in by_c.items()}
    return f"{values[c]:.2g}" if c in values else "-"


def _plot_sweep(speeds, table, paper, path: Path) -> Path:
    fig = Figure(figsize=(8.0, 4.2), layout="constrained")
    ax = fig.subplots()
    for k, (name, by_c) in enumerate(table.items()):
        colour = f"C{k}"
        ax.plot(speeds, [by_c[c]["rel_l2"] for c in speeds], marker="o", color=colour, label=name)
        if name in paper:
            cs = sorted(float(c) for c in paper[name])
            values = {float(c): float(v) for c, v in paper[name].items()}
            ax.plot(cs, [values[c] for c in cs], marker="o", mfc="none", linestyle=":", color=colour, label=f"{name} (Mojgani et al.)")
    ax.set_yscale("log")
    ax.set_xlabel("convection speed c")
    ax.set_ylabel("relative L2 error")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    return _save(fig, path)


def _plot_compare(x, t, true, preds: Mapping[str, np.ndarray], path: Path, n: int = 4) -> Path:
    times = np.unique(np.linspace(0, len(t) - 1, n).round().astype(int))
    fig = Figure(figsize=(3.6 * len(times), 6.0), layout="constrained")
    axes = fig.subplots(2, len(times), sharex=True, sharey="row")
    for col, i in enumerate(times):
        top, bottom = axes[0, col], axes[1, col]
        top.plot(x, true[i], color="k", linewidth=2.2, label="reference")
        for k, (name, pred) in enumerate(preds.items()):
            top.plot(x, pred[i], color=f"C{k}", linestyle="--", label=name)
            bottom.semilogy(x, np.abs(pred[i] - true[i]) + 1e-16, color=f"C{k}", label=name)
        top.set_title(f"t = {t[i]:.3g}")
        bottom.set_xlabel("x")
    worst = max(float(np.abs(pred - true).max()) for pred in preds.values())
    axes[1, 0].set_ylim(bottom=max(worst, 1e-300) * 1e-6)  # six decades: round-off at t = 0 would stretch it
    axes[0, 0].set_ylabel("u")
    axes[1, 0].set_ylabel("|prediction - reference|")
    axes[0, 0].legend()
    return _save(fig, path)


__all__ = ["compare", "landscape", "sweep"]
