"""PNG figures of a run: solution maps, snapshots and loss curves.

Figures are built with ``matplotlib.figure.Figure`` rather than ``pyplot``, so no backend is
selected, nothing global is touched and no figure outlives its function (works headless and in
worker threads). Each PNG is written to a temporary file beside its target and renamed into
place, so a run folder never holds a half-written image.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from sciml.metrics import rel_l2

__all__ = ["plot_loss_curve", "plot_snapshots", "plot_solution_maps"]

DPI = 120


def plot_solution_maps(
    x: np.ndarray,
    t: np.ndarray,
    pred: np.ndarray,
    true: np.ndarray,
    path: str | os.PathLike,
    title: str | None = None,
    *,
    y: np.ndarray | None = None,
) -> Path:
    """Heat maps of the prediction, the exact solution and ``|pred - true|``, side by side.

    ``x`` [n_x], ``t`` [n_t], ``pred`` and ``true`` [n_t, n_x]. As in Krishnapriyan et al.
    (2021), x runs up the vertical axis and t along the horizontal one. Fields in 2D space,
    [n_t, n_x, n_y] on ``y`` [n_y] (default: y = x on a square grid), are shown in the (x, y)
    plane at the last time. Prediction and exact share one colour scale; the figure title
    carries the relative L2 error (over all times). Returns the path.
    """
    x, t, pred, true, y = _check_field(x, t, pred, true, y)
    vmin, vmax = min(pred.min(), true.min()), max(pred.max(), true.max())
    error = rel_l2(pred[None], true[None])
    if y is not None:
        fig = Figure(figsize=(15, 4), layout="constrained")
        axes = fig.subplots(1, 3, sharex=True, sharey=True)
        _xy_panels(fig, axes, x, y, (("prediction", pred[-1], vmin, vmax), ("exact", true[-1], vmin, vmax),
                                      ("|prediction - exact|", np.abs(pred - true)[-1], None, None)))
        fig.suptitle(f"{title + ': ' if title else ''}t = {t[-1]:.3g}, rel. L2 error = {error:.3e}")
        return _save(fig, path)

    fig = Figure(figsize=(15, 4), layout="constrained")
    axes = fig.subplots(1, 3, sharex=True, sharey=True)
    panels = (
        ("prediction", pred, "viridis", vmin, vmax),
        ("exact", true, "viridis", vmin, vmax),
        ("|prediction - exact|", np.abs(pred - true), "magma", None, None),
    )
    for ax, (name, field, cmap, lo, hi) in zip(axes, panels):
        mesh = ax.pcolormesh(t, x, field.T, cmap=cmap, vmin=lo, vmax=hi, shading="nearest")
        fig.colorbar(mesh, ax=ax)
        ax.set_title(name)
        ax.set_xlabel("t")
    axes[0].set_ylabel("x")
    fig.suptitle(f"{title + ': ' if title else ''}rel. L2 error = {error:.3e}")
    return _save(fig, path)


def plot_snapshots(
    x: np.ndarray,
    t: np.ndarray,
    pred: np.ndarray,
    true: np.ndarray,
    path: str | os.PathLike,
    n: int = 4,
    *,
    y: np.ndarray | None = None,
) -> Path:
    """Line plots of prediction against exact solution at ``n`` evenly spaced times.

    ``x`` [n_x], ``t`` [n_t], ``pred`` and ``true`` [n_t, n_x]. The times include the first and
    the last; ``n`` larger than ``n_t`` shows every time once. Fields in 2D space,
    [n_t, n_x, n_y] on ``y`` (default: y = x on a square grid), are shown as (x, y) maps, exact
    above prediction. Returns the path.
    """
    x, t, pred, true, y = _check_field(x, t, pred, true, y)
    if n < 1:
        raise ValueError(f"`n` (={n}) is the number of snapshots and must be at least 1.")
    times = np.unique(np.linspace(0, len(t) - 1, n).round().astype(int))
    if y is not None:
        vmin, vmax = min(pred.min(), true.min()), max(pred.max(), true.max())
        fig = Figure(figsize=(3.5 * len(times), 6.4), layout="constrained")
        axes = np.asarray(fig.subplots(2, len(times), sharex=True, sharey=True)).reshape(2, len(times))
        for col, i in enumerate(times):
            _xy_panels(fig, axes[:, col], x, y, ((f"exact, t = {t[i]:.3g}", true[i], vmin, vmax),
                                                  (f"prediction, t = {t[i]:.3g}", pred[i], vmin, vmax)))
        return _save(fig, path)

    fig = Figure(figsize=(3.5 * len(times), 3.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(times), sharey=True))
    for ax, i in zip(axes, times):
        ax.plot(x, true[i], color="k", label="exact")
        ax.plot(x, pred[i], color="tab:red", linestyle="--", label="prediction")
        ax.set_title(f"t = {t[i]:.3g}")
        ax.set_xlabel("x")
    axes[0].set_ylabel("u")
    axes[0].legend()
    return _save(fig, path)


def plot_loss_curve(
    history: Mapping[str, Sequence[float] | np.ndarray],
    path: str | os.PathLike,
    steps: Sequence[int] | np.ndarray | None = None,
    *,
    switch_step: int | None = None,
) -> Path:
    """Loss terms against training step, on a log-scale y axis, one line per term.

    ``history`` maps a term's name (``"pde"``, ``"bc"``, ``"total"``...) to its values, one per
    logged step; ``steps`` gives those steps (default ``0, 1, 2, ...``) and must then match
    every term's length. ``switch_step`` marks with a dashed line the step where the optimizer
    changed (e.g. Adam -> L-BFGS). Non-positive values cannot appear on a log axis and are left
    out of the line. Returns the path.
    """
    if not history:
        raise ValueError("`history` is empty; pass at least one loss term, e.g. {'total': [...]}.")
    curves = {}
    for name, values in history.items():
        curve = np.asarray(values, dtype=np.float64)
        if curve.ndim != 1 or curve.size == 0:
            raise ValueError(
                f"`history[{name!r}]` (shape {curve.shape}) must be a non-empty 1-D sequence of "
                f"loss values; pass an optimizer switch as `switch_step=`, not as a history entry."
            )
        if steps is not None and len(steps) != curve.size:
            raise ValueError(
                f"`steps` has {len(steps)} entries but `history[{name!r}]` has {curve.size}; "
                f"they must match, or leave `steps=None` to number the values 0, 1, 2, ..."
            )
        curves[name] = curve

    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.subplots()
    for name, curve in curves.items():
        x = np.arange(curve.size) if steps is None else np.asarray(steps)
        ax.plot(x, np.where(curve > 0, curve, np.nan), label=name)
    if switch_step is not None:
        ax.axvline(switch_step, color="0.3", linestyle="--", label="optimizer switch")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    return _save(fig, path)


def _check_field(
    x: np.ndarray, t: np.ndarray, pred: np.ndarray, true: np.ndarray, y: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """(x, t, pred, true, y) as float64; y is None for fields in 1D space, else the y axis."""
    x, t = np.asarray(x, dtype=np.float64).ravel(), np.asarray(t, dtype=np.float64).ravel()
    pred, true = np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64)
    if pred.ndim == 3 and y is None and pred.shape[2] == x.size:
        y = x  # a square grid, as the pipeline passes it (x only)
    if y is not None:
        y = np.asarray(y, dtype=np.float64).ravel()
    expected = (t.size, x.size) if y is None else (t.size, x.size, y.size)
    if pred.shape != expected or true.shape != expected:
        axes = "[n_t, n_x]" if y is None else "[n_t, n_x, n_y]"
        raise ValueError(
            f"`pred` has shape {pred.shape} and `true` has shape {true.shape}; both must be "
            f"{axes} = {expected} for `t` of {t.size} and `x` of {x.size} points"
            + ("." if y is None else f" and `y` of {y.size}.")
        )
    return x, t, pred, true, y


def _xy_panels(fig: Figure, axes, x: np.ndarray, y: np.ndarray, panels) -> None:
    """(title, field [n_x, n_y], vmin, vmax) panels as (x, y) heat maps, x along the horizontal."""
    for ax, (name, field, lo, hi) in zip(axes, panels):
        mesh = ax.pcolormesh(x, y, field.T, cmap="viridis" if lo is not None else "magma", vmin=lo, vmax=hi, shading="nearest")
        fig.colorbar(mesh, ax=ax)
        ax.set_title(name)
        ax.set_xlabel("x")
        ax.set_ylabel("y")


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` as a PNG to ``path`` atomically: a temporary file, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format="png", dpi=DPI)
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; a run folder is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path
