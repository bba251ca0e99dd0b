"""ProbConserv's evaluation (Hansen et al., ICML 2023) and the study that compares its variants.

:func:`evaluate_conservation` judges one trained probabilistic model (:class:`sciml.models.
NeuralProcessModel`) on each test set of its data module. For every test function it draws
``n_test_functions`` context sets (the same for every model), predicts the mean and variance on
every spatial point of a few time slices (t* and an even spread over the time range), and derives:

- ``{kind}``: the model itself (ANP or the cheap CNP);
- ``hardc``: HardC, the orthogonal projection of the mean onto G u = b (variance unchanged);
- ``probconserv``: the Bayesian update with sigma_G (mean and diagonal variance);
- ``probconserv_bounded`` (when the model has ``bounds``): the most likely field under the
  update's variances that meets G u = b and the bounds (u >= 0 for densities).

Variants built on the cheap model carry its name (``probconserv_cnp``). A SoftC model (trained
with the PDE penalty) is judged as itself, ``softc``. G is one row of the test set's quadrature
weights per time slice and b the exact mass (``ContextTargetDataModule.mass``). Metrics at t*,
mean and standard error over the test functions: ``mse``, ``ce`` = G u - b, ``ll`` (mean
Gaussian log density of the truth over the points), and for the Stefan problem
``shock_pos_err``: the distance between the mean shock position of 500 posterior samples
(first x where a sample is <= 0) and the exact front alpha sqrt(t*), and ``shock_abs_err``: the
mean over those samples of each one's distance to the front (a spread-out or two-peaked histogram
can have its mean on the front and every sample off it; this one counts that). Several test sets name
their metrics ``variant/metric_SET`` (``anp/mse_k1``), one test set ``variant/metric``.

:func:`compare` runs several experiments (ANP, SoftC-ANP, the cheap model) and writes the paper's
table: rows ANP, SoftC-ANP, HardC-ANP, ProbConserv-ANP; columns CE, LL, MSE.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from .._io import atomic_write, atomic_write_json, atomic_write_text
from ..constraints.conservation import bounded_update, conservation_update, hard_projection
from ..errors import ConfigError, TrainingError
from ..plotting import _save
from . import ModelSpec, model_specs

N_SHOCK_SAMPLES = 500
N_SLICES = 21
LOG_2PI = math.log(2 * math.pi)
LABELS = {"anp": "ANP", "cnp": "CNP", "softc": "SoftC-ANP", "hardc": "HardC-ANP", "probconserv": "ProbConserv-ANP",
          "probconserv_bounded": "ProbConserv-ANP + bounds"}


def variant_label(name: str) -> str:
    """The paper's row name of a variant (``probconserv_cnp`` -> ``ProbConserv-CNP``)."""
    if name in LABELS:
        return LABELS[name]
    for base, label in sorted(LABELS.items(), key=lambda item: -len(item[0])):  # longest prefix first
        if name.startswith(base + "_"):
            return label.replace("ANP", name[len(base) + 1:].upper())
    return name


# -- one model -----------------------------------------------------------------------------------------
def _slices(n_t: int, i_star: int) -> np.ndarray:
    return np.unique(np.concatenate([np.linspace(0, n_t - 1, min(N_SLICES, n_t)).round().astype(int), [i_star]]))


def _predict(model, dm, name: str, k: int, slices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance [n_functions, n_slices, n_points] (float64) of test function k."""
    f = dm.tests[name]
    xt = torch.as_tensor(f.coords[slices].reshape(-1, f.coords.shape[-1]), dtype=torch.float32)
    means, variances = [], []
    for xc, yc in dm.test_contexts(name, k):
        p = model.predict(xc[None], yc[None], xt[None])
        means.append(p.mean[0, :, 0].double().cpu().numpy())
        variances.append(p.var[0, :, 0].double().cpu().numpy())
    shape = (-1, len(slices), f.n_points)
    return np.stack(means).reshape(shape), np.stack(variances).reshape(shape)


def _variants(model, mean: np.ndarray, var: np.ndarray, weights: np.ndarray, b: np.ndarray) -> dict[str, dict[str, Any]]:
    """{variant: {"mean", "var"[, "posterior_at"]}} [n_functions, n_slices, n_points] for one
    model; ``posterior_at(s)``: ProbConserv's posterior at slice s alone, for sampling."""
    kind = model.kind
    if model.softc_weight > 0:
        return {"softc" if kind == "anp" else f"softc_{kind}": {"mean": mean, "var": var}}
    suffix = "" if kind == "anp" else f"_{kind}"
    m, v = torch.from_numpy(mean), torch.from_numpy(var)
    G = torch.from_numpy(weights)[None]  # one row per time slice: the time axis is a batch axis
    rhs = torch.from_numpy(b).expand(len(mean), -1)[..., None]
    post = conservation_update(m, v, G, rhs, sigma_g=model.sigma_g)
    out = {
        kind: {"mean": mean, "var": var},
        f"hardc{suffix}": {"mean": hard_projection(m, G, rhs).numpy(), "var": var},
        f"probconserv{suffix}": {"mean": post.mean.numpy(), "var": post.var.numpy(),
                                 "posterior_at": lambda s: conservation_update(m[:, s], v[:, s], G, rhs[:, s], sigma_g=model.sigma_g)},
    }
    if model.bounds is not None:
        lower, upper = model.bounds
        bounded = bounded_update(m, v, G, rhs, lower=lower, upper=upper)
        out[f"probconserv_bounded{suffix}"] = {"mean": bounded.numpy(), "var": post.var.numpy()}
    return out


def _shock_positions(samples: np.ndarray, x: np.ndarray) -> np.ndarray:
    """First x where each sample [..., n_x] is <= 0 (the last x where none is)."""
    below = samples <= 0
    first = np.where(below.any(-1), below.argmax(-1), len(x) - 1)
    return x[first]


def shock_errors(positions: np.ndarray, front: float) -> dict[str, np.ndarray]:
    """Shock metrics of sampled positions [n_samples, ...] against the exact front: the mean
    position (``shock_pos``), its distance to the front (``shock_pos_err``) and the mean distance
    of each sample to the front (``shock_abs_err``), one value per trailing index."""
    return {"shock_pos_err": np.abs(positions.mean(0) - front), "shock_abs_err": np.abs(positions - front).mean(0),
            "shock_pos": positions.mean(0)}


def _samples_at(variant: dict[str, Any], s: int, n: int, seed: int) -> np.ndarray:
    """n samples [n, n_functions, n_points] at slice s: the update's posterior (low rank, no
    dense Cholesky) where there is one, independent Gaussians otherwise. Only slice s is
    sampled (the slices are independent problems): all of them would take n times the
    predictions' memory, several GB at the paper's sizes."""
    gen = torch.Generator().manual_seed(seed)
    if "posterior_at" in variant:
        return variant["posterior_at"](s).sample(n, generator=gen).numpy()
    mean, std = variant["mean"][:, s], np.sqrt(variant["var"][:, s])
    eps = torch.randn((n, *mean.shape), generator=gen, dtype=torch.float64).numpy()
    return mean + std * eps


def evaluate_conservation(model, dm, out: str | Path, name: str, train_seconds: float | None = None) -> dict[str, Any]:
    """Metrics, tables and plots of one model on every test set of ``dm`` (see the module doc)."""
    from ..pipeline import _device_name, versions

    out = Path(out)
    model.eval()
    torch.manual_seed(0)  # the latent samples: `sciml evaluate RUN` reproduces metrics.json
    dm.prepare_data()
    dm.setup("test")
    if not dm.tests:
        raise ConfigError("the data module has no test sets; give data.test: {NAME: FILE} (with data.test_params to generate them).")
    t0 = time.perf_counter()
    metrics: dict[str, float] = {}
    per_case: list[dict[str, Any]] = []
    pooled: dict[tuple[str, str], dict[str, list[np.ndarray]]] = {}
    for set_name, f in dm.tests.items():
        i_star = dm.t_index(set_name)
        slices = _slices(len(f.t), i_star)
        s = int(np.searchsorted(slices, i_star))
        for k in range(len(f.u)):
            mean, var = _predict(model, dm, set_name, k, slices)
            if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(var))):
                raise TrainingError(f"{model.model_name} predicts NaN/Inf on test set {set_name!r}: training diverged; lower model.lr or check {out}/loss.png.")
            b = dm.mass(set_name, k)[slices]
            true = f.u[k][slices]
            variants = _variants(model, mean, var, f.weights, b)
            case = {"test_set": set_name, "function": k, "param": {n: float(v) for n, v in zip(f.meta.param_names, f.params[k])},
                    "t_star": float(f.t[i_star])}
            shock = _shock_truth(f, k, float(f.t[i_star]))
            for variant, v in variants.items():
                raw = _raw_stats(v["mean"][:, s], v["var"][:, s], true[s], f.weights, b[s])
                if shock is not None:
                    pos = _shock_positions(_samples_at(v, s, N_SHOCK_SAMPLES, seed=k), f.coords[0, :, 1])
                    v["shock"] = pos
                    raw |= shock_errors(pos, shock)
                v["drift"] = (v["mean"] @ f.weights - b).mean(0)  # G u - b per slice, mean over functions
                per_case.append({**case, "variant": variant, **_summary(raw)})
                for m, values in raw.items():
                    pooled.setdefault((set_name, variant), {}).setdefault(m, []).append(values)
            if k == 0:
                _plot_case(f, k, slices, s, variants, true, shock, out, set_name, title=f"{name}: {set_name}")
    # Metrics of a test set: over every (test function, context draw) pair of it.
    single, summary = len(dm.tests) == 1, []
    for (set_name, variant), raw in pooled.items():
        stats = _summary({m: np.concatenate(v) for m, v in raw.items()})
        suffix = "" if single else f"_{set_name}"
        metrics |= {f"{variant}/{m}{suffix}": val for m, val in stats.items()}
        f = dm.tests[set_name]
        params = {n: float(v) for n, v in zip(f.meta.param_names, f.params[0])} if len(f.u) == 1 else {"functions": len(f.u)}
        summary.append({"test_set": set_name, "variant": variant, "param": params, "t_star": float(f.t[dm.t_index(set_name)]), **stats})
    report = {
        "experiment": name, "model": model.model_name, "metrics": metrics, "summary": summary, "per_case": per_case,
        "seconds": {"train": train_seconds, "eval": time.perf_counter() - t0},
        "steps": len(model.history.get("loss", [])), "device": _device_name(model), "versions": versions(),
    }
    if model.history.get("loss"):
        from ..plotting import plot_loss_curve

        plot_loss_curve({k: v for k, v in model.history.items() if v and any(v)}, out / "loss.png")
    atomic_write_text(out / "results.md", results_table([report]))
    export_weights(model, out / "model.ckpt")
    atomic_write_json(out / "metrics.json", report)
    return report


def export_weights(model, path: Path) -> Path:
    """The trained model alone (class, hyperparameters, weights; no optimiser state): a small
    file that :func:`sciml.models.load_model` rebuilds, for shipping as a pretrained solver."""
    ckpt = {"sciml_model": f"{type(model).__module__}.{type(model).__qualname__}", "hyper_parameters": dict(model.hparams),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    return atomic_write(path, lambda fh: torch.save(ckpt, fh))


def _shock_truth(f, k: int, t_star: float) -> float | None:
    """The exact Stefan front alpha sqrt(t*) of test function k (None for other cases)."""
    from ..data.generators.analytic import stefan_constants

    if f.meta.common_params.get("case") != "stefan":
        return None
    _, alpha, _ = stefan_constants(float(f.params[k, 0]))
    return alpha * math.sqrt(t_star)


def _raw_stats(mean: np.ndarray, var: np.ndarray, true: np.ndarray, weights: np.ndarray, b: float) -> dict[str, np.ndarray]:
    """CE, MSE and LL of [n_functions, n_points] predictions at one time, one value per function."""
    var = np.maximum(var, 1e-300)
    ll = -0.5 * (LOG_2PI + np.log(var) + (true - mean) ** 2 / var).mean(-1)
    return {"ce": mean @ weights - b, "mse": ((mean - true) ** 2).mean(-1), "ll": ll}


def _summary(raw: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Mean and standard error (``NAME_se``) of each metric; ``shock_pos`` as a plain mean."""
    out: dict[str, float] = {}
    for name, values in raw.items():
        values = np.asarray(values, dtype=np.float64)
        out[name] = float(values.mean())
        if name != "shock_pos":
            out[f"{name}_se"] = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0
    return out


# -- plots ----------------------------------------------------------------------------------------------
def _plot_case(f, k, slices, s, variants, true, shock, out: Path, set_name: str, title: str) -> None:
    t = f.t[slices]
    at = {name: (v["mean"][0, s], v["var"][0, s]) for name, v in variants.items()}  # first test function at t*
    if f.coords.shape[-1] == 2:
        _plot_profiles(f.coords[0, :, 1], true[s], at, out / f"solution_{set_name}.png", f"{title}, t = {t[s]:.3g}", shock)
    else:
        _plot_mesh(f, true[s], at, out / f"solution_{set_name}.png", f"{title}, t = {t[s]:.3g}")
    fig = Figure(figsize=(7.0, 4.0), layout="constrained")
    ax = fig.subplots()
    for j, (variant, v) in enumerate(variants.items()):
        ax.plot(t, np.abs(v["drift"]) + 1e-17, marker="o", ms=3, color=f"C{j}", label=variant_label(variant))
    ax.set_yscale("log")
    ax.set_xlabel("t")
    ax.set_ylabel("|G u - b| (conservation error)")
    ax.set_title(f"{title}: mass error over time (mean over test functions)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    _save(fig, out / f"mass_{set_name}.png")
    if shock is not None:
        fig = Figure(figsize=(7.0, 4.0), layout="constrained")
        ax = fig.subplots()
        x = f.coords[0, :, 1]
        edges = np.concatenate([[x[0]], (x[1:] + x[:-1]) / 2, [x[-1]]])  # one bin per grid point
        lo = min(float(v["shock"].min()) for v in variants.values())
        hi = max(float(v["shock"].max()) for v in variants.values())
        edges = edges[max(np.searchsorted(edges, lo) - 2, 0):np.searchsorted(edges, hi) + 2]
        for j, (variant, v) in enumerate(variants.items()):
            ax.hist(v["shock"][:, 0], bins=edges, histtype="step", linewidth=1.8, color=f"C{j}", label=variant_label(variant))
        ax.axvline(shock, color="k", linewidth=2, label="exact front")
        ax.set_xlabel("shock position x")
        ax.set_ylabel(f"count of {N_SHOCK_SAMPLES} posterior samples")
        ax.set_title(f"{title}: shock position")
        ax.legend(fontsize="small")
        _save(fig, out / f"shock_{set_name}.png")


def _plot_profiles(x, true, at, path: Path, title: str, shock: float | None) -> None:
    n = len(at)
    fig = Figure(figsize=(4.2 * n, 3.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, n, sharey=True))
    for ax, (j, (variant, (mean, var))) in zip(axes, enumerate(at.items())):
        std = np.sqrt(var)
        ax.plot(x, true, color="k", linewidth=2, label="exact")
        ax.plot(x, mean, color=f"C{j}", linestyle="--", label="mean")
        ax.fill_between(x, mean - 3 * std, mean + 3 * std, color=f"C{j}", alpha=0.25, label="mean +- 3 sigma")
        if shock is not None:
            ax.axvline(shock, color="grey", linestyle=":")
        ax.set_title(variant_label(variant))
        ax.set_xlabel("x")
    axes[0].set_ylabel("u")
    axes[0].legend(fontsize="small")
    fig.suptitle(title)
    _save(fig, path)


def _plot_mesh(f, true, at, path: Path, title: str) -> None:
    pts, cells = f.meta.mesh_points, f.meta.mesh_cells
    names = list(at)
    fig = Figure(figsize=(4.0 * (len(names) + 1), 3.6), layout="constrained")
    axes = fig.subplots(1, len(names) + 1)
    lo = min(float(true.min()), *(float(m.min()) for m, _ in at.values()))
    hi = max(float(true.max()), *(float(m.max()) for m, _ in at.values()))
    im = axes[0].tripcolor(pts[:, 0], pts[:, 1], cells, true, vmin=lo, vmax=hi, shading="gouraud")
    axes[0].set_title("exact")
    for ax, name in zip(axes[1:], names):
        ax.tripcolor(pts[:, 0], pts[:, 1], cells, at[name][0], vmin=lo, vmax=hi, shading="gouraud")
        ax.set_title(variant_label(name))
    for ax in axes:
        ax.set_aspect("equal")
    fig.colorbar(im, ax=axes, shrink=0.8)
    fig.suptitle(title)
    _save(fig, path)


# -- tables and the study -------------------------------------------------------------------------------
def results_table(reports: Sequence[Mapping[str, Any]]) -> str:
    """The paper's table, one per test set: rows = variants, columns CE, LL, MSE (+ shock)."""
    rows: dict[str, dict[str, dict[str, Any]]] = {}
    for report in reports:
        for case in report["summary"]:
            rows.setdefault(case["test_set"], {})[case["variant"]] = case
    lines = []
    for set_name, by_variant in rows.items():
        any_case = next(iter(by_variant.values()))
        params = ", ".join(f"{k} = {v:g}" for k, v in any_case["param"].items())  # or the number of functions
        shock = any("shock_pos_err" in c for c in by_variant.values())
        head = ["model", "CE", "LL", "MSE"] + (["shock pos.", "|shock error|", "mean |sample - front|"] if shock else [])
        lines += [f"**{set_name}** ({params}, t* = {any_case['t_star']:g}; mean +- standard error)", "",
                  "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for variant in sorted(by_variant, key=_row_order):
            c = by_variant[variant]
            cells = [variant_label(variant), _pm(c, "ce"), _pm(c, "ll", fmt=".3f"), _pm(c, "mse")]
            if shock:
                cells += [f"{c['shock_pos']:.4f}", _pm(c, "shock_pos_err"), _pm(c, "shock_abs_err") if "shock_abs_err" in c else "-"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _row_order(variant: str) -> tuple[int, str]:
    for i, base in enumerate(("anp", "cnp", "softc", "hardc", "probconserv_bounded", "probconserv")):
        if variant == base or variant.startswith(base + "_"):
            return (i if base != "probconserv_bounded" else 6), variant
    return 9, variant


def _pm(case: Mapping[str, Any], key: str, fmt: str = ".2e") -> str:
    return f"{case[key]:{fmt}} +- {case[key + '_se']:.1e}"


def compare(out: Path, quick: bool, models: Mapping[str, ModelSpec], overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Train each model (``OUT/<name>/``, a full run each) and tabulate every variant together in
    ``OUT/results.md`` (the paper's table) and ``metrics.json``."""
    from ..pipeline import run_experiment

    specs = model_specs(models)
    reports = {}
    for name, (config, extra) in specs.items():
        reports[name] = run_experiment(config, out=out / name, quick=quick, overrides=[*extra, *overrides], reuse_finished=True)
        if reports[name].get("model") is None or "summary" not in reports[name]:
            raise ConfigError(f"`models.{name}` ({config}) is not a ProbConserv model experiment (it reported no per-case metrics).")
    return combine(reports, out)


def _reevaluate_compare(out: Path, models: Mapping[str, ModelSpec], overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Evaluate every model's run of a finished comparison again and tabulate them afresh."""
    from ..pipeline import evaluate_run

    names = list(model_specs(models))
    if missing := [name for name in names if not (out / name / "checkpoints" / "last.ckpt").is_file()]:
        raise ConfigError(f"the comparison in {out} has no trained run of {', '.join(repr(n) for n in missing)} "
                          f"(no {out / missing[0] / 'checkpoints' / 'last.ckpt'}); rerun it with `sciml run`.")
    return combine({name: evaluate_run(out / name) for name in names}, out)


compare.reevaluate = _reevaluate_compare


def combine(reports: Mapping[str, Mapping[str, Any]], out: Path) -> dict[str, Any]:
    """One report (and ``out/results.md``) from the reports of several models' runs, by name."""
    metrics: dict[str, float] = {}
    for name, report in reports.items():
        if clash := set(metrics) & set(report["metrics"]):
            raise ConfigError(f"`models.{name}` reports {sorted(clash)[0]!r} again: two models of the comparison are the same variant; give each a different kind or softc_weight.")
        metrics |= report["metrics"]
    runs = list(reports.values())
    atomic_write_text(out / "results.md", results_table(runs))
    per_case = [c for r in runs for c in r["per_case"]]
    summary = [c for r in runs for c in r["summary"]]
    seconds = {"train": sum(r["seconds"]["train"] or 0.0 for r in runs), "eval": sum(r["seconds"]["eval"] for r in runs)}
    return {"model": "+".join(reports), "metrics": metrics, "summary": summary, "per_case": per_case, "seconds": seconds}


__all__ = ["combine", "compare", "evaluate_conservation", "export_weights", "results_table", "variant_label"]
