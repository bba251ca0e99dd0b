"""The stages of an experiment: train, evaluate, predict, and ``run`` = all of them.

A run folder holds ``config.yaml`` (the resolved config; ``sciml run DIR/config.yaml``
reproduces the run), ``checkpoints/`` (``last.ckpt``), ``logs/`` (CSV), ``metrics.json`` and the
plots. Every file is written atomically. An interrupted run with an unchanged config resumes from
``checkpoints/last.ckpt``; ``metrics.json`` is written last, so its presence means complete.
"""

from __future__ import annotations

import csv
import io
import json
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from . import __version__
from ._io import atomic_write_json, atomic_write_text
from .callbacks import RandomState, StepProgress, TrainTime
from .config import dump_config, instantiate, load_config, read_yaml
from .errors import ConfigError, DataError, TrainingError
from .metrics import compute_metrics
from .models import load_model
from .plotting import plot_loss_curve, plot_snapshots, plot_solution_maps

CHECKPOINT_EVERY = 100


def default_out(name: str, quick: bool) -> Path:
    return Path("runs") / (f"{name}-quick" if quick else name)


def run_experiment(
    config: str | Path,
    out: str | Path | None = None,
    quick: bool = False,
    overrides: tuple[str, ...] | list[str] = (),
    evaluate: bool = True,
    reuse_finished: bool = False,
) -> dict[str, Any]:
    """Data -> train -> (evaluate -> report). Returns the metrics.json content (or the train summary).

    A config with a ``study:`` key is a study of many runs (:mod:`sciml.studies`).
    ``reuse_finished`` (a study's runs): a folder that already holds a finished run of the same
    config returns its metrics.json instead of training again, so a rerun study resumes."""
    from .studies import is_study, run_study

    raw = read_yaml(Path(config))
    if is_study(raw):
        return run_study(Path(config), raw, Path(out) if out else None, quick, overrides)
    parser, cfg = load_config(config, overrides, quick)
    out = Path(out) if out else default_out(cfg.name, quick)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"the run folder {out} is an existing file; give --out a folder (new or a previous run's).")
    # Build everything before touching the run folder: a bad value must not wipe a finished run.
    set_threads(cfg.threads)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    objs = instantiate(parser, cfg)
    model, dm = objs.model, objs.data
    text = dump_config(parser, cfg)
    trainer = _trainer(cfg.trainer.as_dict(), out, model)  # also before the folder is touched: its settings can be bad
    _recover(out)
    if reuse_finished and evaluate and (finished := _finished_report(out, text)) is not None:
        print(f"{out} already holds this run, finished: its metrics are reused")
        return finished
    resume = _resume_checkpoint(out, text)
    previous = None
    if resume is None:
        previous = _set_aside(out)
    else:
        print(f"resuming the interrupted run in {out} from {resume}")
        (out / "metrics.json").unlink(missing_ok=True)  # an interim evaluation's: it describes earlier weights
    atomic_write_text(out / "config.yaml", text)
    kept_log = _log_aside(out, resume) if resume else None

    t0 = time.perf_counter()
    try:
        trainer.fit(model, datamodule=dm, ckpt_path=resume)
    except BaseException as exc:
        if previous is not None and not (out / "checkpoints" / "last.ckpt").is_file():
            # failed before the new run had anything to resume from (a value only the data or
            # the first steps show bad, a divergence, Ctrl-C): the previous run comes back whole
            _restore(previous, out)
        if isinstance(exc, SystemExit) and trainer.interrupted:  # Lightning turns Ctrl-C into sys.exit(1)
            raise KeyboardInterrupt from None
        raise
    finally:
        if kept_log is not None:
            _log_back(kept_log, out / "logs" / "metrics.csv")
    # this session's fit, plus what the run trained before an interruption (kept in its checkpoint)
    train_s = time.perf_counter() - t0 + next(c for c in trainer.callbacks if isinstance(c, TrainTime)).before
    # ModelCheckpoint refreshes last.ckpt only every CHECKPOINT_EVERY steps: a run that ends in
    # between (L-BFGS stalled, or a budget that is not a multiple) must still leave its final
    # weights there, the ones metrics.json describes.
    trainer.save_checkpoint(out / "checkpoints" / "last.ckpt")
    (out / "checkpoints" / COMPLETE).touch()
    shutil.rmtree(out / ".previous", ignore_errors=True)  # the new run has finished training: what it replaced can go
    summary = {"experiment": cfg.name, "steps": trainer.global_step, "seconds": {"train": train_s}}
    if not evaluate:
        return summary
    # Lightning hands the model back on the CPU after fit: evaluate where it trained (a GPU).
    model.to(trainer.strategy.root_device)
    return evaluate_model(model, dm, out, cfg.name, train_seconds=train_s)


COMPLETE = "complete"  # checkpoints/complete: the run's training ended (not interrupted)


# What a run writes into its folder (and a new run there replaces); anything else in the folder
# (a user's notes, other runs when --out is a parent folder) is never moved or deleted.
_RUN_NAMES = ("checkpoints", "logs", "metrics.json", "config.yaml", "results.md", "model.ckpt", ".log-before-resume.csv")


def _run_entries(out: Path) -> list[Path]:
    """The run's own files in ``out``: its fixed names and its plots."""
    return [out / name for name in _RUN_NAMES if (out / name).exists()] + sorted(p for p in out.glob("*.png") if p.is_file())


def _remove(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def _set_aside(out: Path) -> Path:
    """Move a previous run's files out of the way (into ``out/.previous``), so that a new run
    that fails before its first checkpoint can put them back. Where ``.previous`` already holds
    a run (a rerun that was interrupted after its first checkpoint set it aside), that run stays
    there and the interrupted rerun's files are the ones replaced: a finished run is never
    discarded for an unfinished one."""
    aside = out / ".previous"
    if aside.is_dir():
        for entry in _run_entries(out):
            _remove(entry)
        return aside
    aside.mkdir(parents=True)
    for entry in _run_entries(out):
        entry.rename(aside / entry.name)
    return aside


def _restore(aside: Path, out: Path) -> None:
    """Undo :func:`_set_aside`: what the failed run wrote goes, the previous run's files return."""
    for entry in _run_entries(out):
        _remove(entry)
    for entry in aside.iterdir():
        _remove(out / entry.name)
        entry.rename(out / entry.name)
    aside.rmdir()


def _recover(out: Path) -> None:
    """A rerun killed before it could put the previous run back (SIGKILL, power) left it in
    ``.previous`` and nothing resumable of its own: put it back before anything else."""
    if (out / ".previous").is_dir() and not (out / "checkpoints" / "last.ckpt").is_file():
        print(f"restoring the run in {out} that an interrupted rerun had set aside")
        _restore(out / ".previous", out)


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    fields = list(dict.fromkeys(k for row in rows for k in row))  # columns united: a session can log new keys
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def _log_aside(out: Path, resume: str) -> Path | None:
    """Lightning's CSV logger deletes its file when a resumed session starts logging: keep the
    rows so far (with any an earlier killed session kept) in ``.log-before-resume.csv``, up to
    the checkpoint resumed from (the rows after it are logged again by the resumed session)."""
    kept, log = out / ".log-before-resume.csv", out / "logs" / "metrics.csv"
    rows = _read_csv(kept) + _read_csv(log)
    if not rows:
        return None
    try:
        step = int(torch.load(resume, map_location="cpu", weights_only=True)["global_step"])
        rows = [row for row in rows if not row.get("step") or int(float(row["step"])) < step]
    except Exception:  # the checkpoint's step unknown: keep every row
        pass
    _write_csv(kept, rows)
    log.unlink(missing_ok=True)
    return kept


def _log_back(kept: Path, log: Path) -> None:
    """The rows before the resume, then the resumed session's, in ``logs/metrics.csv``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    _write_csv(log, _read_csv(kept) + _read_csv(log))
    kept.unlink()


def set_threads(threads: int) -> None:
    """Torch's CPU threads: PINN-sized models are latency-bound, and one thread is many times
    faster than two on a busy 2-core machine; 0 keeps torch's default (all cores)."""
    if threads > 0:
        torch.set_num_threads(threads)


def _finished_report(out: Path, config_text: str) -> dict[str, Any] | None:
    """The metrics.json of a finished run of this config in ``out``, if there is one."""
    saved = out / "config.yaml"
    if not ((out / "checkpoints" / COMPLETE).exists() and saved.is_file() and saved.read_text() == config_text):
        return None
    try:
        return json.loads((out / "metrics.json").read_text())
    except (OSError, ValueError):
        return None


def _resume_checkpoint(out: Path, config_text: str) -> str | None:
    """The checkpoint a run of this config resumes from, unless it finished (its training ended,
    ``checkpoints/complete``, and it was evaluated, ``metrics.json``): `sciml evaluate` of an
    interrupted run, `sciml train` alone or Ctrl-C in the evaluation leave it resumable. A
    finished run from before that marker existed resumes too: Lightning finds its training done
    and the run is evaluated again."""
    last = out / "checkpoints" / "last.ckpt"
    saved = out / "config.yaml"
    finished = (out / "checkpoints" / COMPLETE).exists() and (out / "metrics.json").exists()
    if last.is_file() and saved.is_file() and not finished and saved.read_text() == config_text:
        return str(last)  # interrupted in training, or after it (then Lightning finds it done: evaluated only)
    return None


def _trainer(kwargs: dict[str, Any], out: Path, model: L.LightningModule) -> L.Trainer:
    if kwargs.get("max_steps", -1) in (-1, None) and kwargs.get("max_epochs") is None and hasattr(model, "total_steps"):
        kwargs["max_steps"] = model.total_steps
    checkpoint = ModelCheckpoint(dirpath=out / "checkpoints", filename="{step}", save_last=True, save_top_k=1, every_n_train_steps=CHECKPOINT_EVERY)
    try:
        return L.Trainer(
            **kwargs,
            default_root_dir=out,
            callbacks=[checkpoint, StepProgress(), TrainTime(), RandomState()],
            logger=CSVLogger(out, name="logs", version=""),
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=True,
        )
    except Exception as exc:  # Lightning's MisconfigurationException, a missing accelerator's package, ...
        settings = ", ".join(f"trainer.{k}={v!r}" for k, v in kwargs.items() if k in ("accelerator", "devices", "strategy", "precision"))
        raise ConfigError(f"the trainer cannot be built here ({type(exc).__name__}: {exc}){'; check ' + settings if settings else ''}, "
                          "e.g. trainer.accelerator=cpu on a machine without a GPU.") from exc


def evaluate_model(model: L.LightningModule, dm: L.LightningDataModule, out: str | Path, name: str, train_seconds: float | None = None) -> dict[str, Any]:
    """Metrics and plots of a trained model against the reference solutions of its data module.

    Grid models (PINNs: ``predict_grid``) are judged on the data module's one reference solution;
    operator models (``predict_samples``) on every sample of the test split, metrics averaged over
    them, with each sample's ``rel_l2`` in ``per_case``. A data module that trains on an early
    time window (``train_t_max``) adds the metrics inside it (``interp/rel_l2``, ...: t <=
    train_t_max) and beyond it (``extrap/rel_l2``, ...: t > train_t_max), both cut from the
    prediction on the whole span, and ``window/rel_l2``, ...: the window predicted on its own grid,
    the one the model trained on (an FNO's bases depend on the grid's extent, so the two differ).
    """
    if getattr(model, "evaluation", None) == "conservation":  # probabilistic models: ProbConserv's protocol
        from .studies.probconserv import evaluate_conservation

        return evaluate_conservation(model, dm, out, name, train_seconds=train_seconds)
    out = Path(out)
    model.eval()  # after fit it is still in training mode (e.g. fresh constraint points per call)
    dm.prepare_data()
    dm.setup("test")
    t0 = time.perf_counter()
    for layer in _constraint_layers(model):
        layer.reset_stats()
    if hasattr(model, "predict_samples"):
        x, t, true, pred, cases, u0 = _predict_test_split(model, dm)
    else:
        x, t, true = dm.x, dm.t, dm.u[None]
        pred = model.predict_grid(x, t)[None]
        cases = [{"case": model.pde.params()}]
    if not np.all(np.isfinite(pred)):
        raise TrainingError(f"the trained model predicts NaN/Inf at {int(np.sum(~np.isfinite(pred)))} grid points: training diverged; lower the learning rate or check the loss curve in {out}.")
    metrics = compute_metrics(pred, true)
    if hasattr(model, "predict_samples") and getattr(dm, "train_t_max", None) is not None:
        n_train_t = len(dm.train_grid["t"])
        metrics |= window_metrics(pred, true, n_train_t)
        window = _predict(model, u0, dm.train_grid["t"], dm.grid)
        metrics |= {f"window/{k}": v for k, v in compute_metrics(window, true[:, :n_train_t]).items()}
    metrics |= _solver_metrics(model)
    per_case = []
    for case, p, u in zip(cases, pred, true):
        one = compute_metrics(p[None], u[None])
        per_case.append({**case, **(one if len(cases) == 1 else {"rel_l2": one["rel_l2"]})})
    if len(per_case) > 1:
        metrics["rel_l2_std"] = float(np.std([c["rel_l2"] for c in per_case]))
    eval_s = time.perf_counter() - t0
    title = f"{name}: {model.pde.name}"
    y = getattr(dm, "grid", {}).get("y") if hasattr(model, "predict_samples") else None
    plot_solution_maps(x, t, pred[0], true[0], out / "solution.png", title=title, y=y)
    plot_snapshots(x, t, pred[0], true[0], out / "snapshots.png", y=y)
    history = {k: v for k, v in getattr(model, "history", {}).items() if v}
    if history:
        adam_steps = getattr(getattr(model, "opt_cfg", None), "adam_steps", 0)
        switch = adam_steps if 0 < adam_steps < len(history["loss"]) else None
        plot_loss_curve(history, out / "loss.png", switch_step=switch)
    report = {
        "experiment": name,
        "model": getattr(model, "model_name", type(model).__name__.lower()),
        "metrics": metrics,
        "per_case": per_case,
        "seconds": {"train": train_seconds, "eval": eval_s},
        "steps": len(history.get("loss", [])),
        "device": _device_name(model),
        "versions": versions(),
    }
    atomic_write_json(out / "metrics.json", report)
    return report


def _constraint_layers(model: L.LightningModule) -> list:
    """The model's hard-constraint layers (one per grid it has solved on), if it has any."""
    return list(model.constraint_layers()) if hasattr(model, "constraint_layers") else []


def _solver_metrics(model: L.LightningModule) -> dict[str, float]:
    """``solver/successful`` (the fraction of the evaluation's constraint solves, per problem,
    that converged) and ``solver/steps`` (iterations per solve) of a hard-constrained model."""
    stats = [layer.stats() for layer in _constraint_layers(model)]
    solves = sum(s["solves"] for s in stats)
    if not solves:
        return {}
    problems = sum(s["problems"] for s in stats)
    return {"solver/successful": sum(s["successful"] * s["problems"] for s in stats) / problems,
            "solver/steps": sum(s["steps"] * s["solves"] for s in stats) / solves}


def window_metrics(pred: np.ndarray, true: np.ndarray, n_train_t: int) -> dict[str, float]:
    """compute_metrics on the first ``n_train_t`` time slices (``interp/...``, the training
    window) and on the rest (``extrap/...``) of [n, n_t, *space] arrays."""
    windows = {"interp": slice(None, n_train_t), "extrap": slice(n_train_t, None)}
    return {f"{name}/{k}": v for name, window in windows.items() for k, v in compute_metrics(pred[:, window], true[:, window]).items()}


def _predict(model: L.LightningModule, u0: np.ndarray, t: np.ndarray, grid: dict[str, np.ndarray]) -> np.ndarray:
    """The model's prediction from u0 at times t on the data module's spatial grid."""
    # 2D grids pass y too (models of one space dimension take (u0, t, x)).
    return model.predict_samples(u0, t, grid["x"], y=grid["y"]) if "y" in grid else model.predict_samples(u0, t, grid["x"])


def _predict_test_split(model: L.LightningModule, dm: L.LightningDataModule):
    """(x, t, true [n, nt, nx], pred [n, nt, nx], cases, u0 [n, nx]) over the data module's test split."""
    split = dm.splits["test"]
    if len(split) == 0:
        raise ConfigError("the test split is empty; raise data.test_fraction or generate more samples.")
    items = [split[k] for k in range(len(split))]
    true = np.stack([it["u"].double().numpy() for it in items])
    u0 = np.stack([it["u0"].double().numpy() for it in items])
    x, t = dm.grid["x"], dm.grid["t"]
    pred = _predict(model, u0, t, dm.grid)
    return x, t, true, pred, [{"case": {"sample": int(it["index"])}} for it in items], u0


def evaluate_run(run_dir: str | Path, checkpoint: str | Path | None = None) -> dict[str, Any]:
    """Re-evaluate a run folder from its config.yaml and a checkpoint (default: last.ckpt); a
    study's folder where the study can be (every run, then its tables)."""
    run_dir = Path(run_dir)
    if run_dir.is_dir():
        _recover(run_dir)
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise ConfigError(f"{run_dir} is not a run folder (no config.yaml); give the --out folder of `sciml run` or `sciml train`.")
    raw = read_yaml(config)
    if "study" in raw:
        from .studies import evaluate_study

        if checkpoint is not None:
            raise ConfigError(f"{run_dir} is the folder of a study (several runs, each with its checkpoint); drop --checkpoint, "
                              "or evaluate one of its runs with it.")
        return evaluate_study(run_dir, raw)
    parser, cfg = load_config(config)
    set_threads(cfg.threads)
    objs = instantiate(parser, cfg)
    checkpoint = Path(checkpoint or run_dir / "checkpoints" / "last.ckpt")
    model = load_model(checkpoint)
    _check_same_model(model, objs.model, checkpoint, run_dir)
    return evaluate_model(model, objs.data, run_dir, cfg.name, train_seconds=_train_seconds(run_dir, checkpoint))


def _check_same_model(model: L.LightningModule, configured: L.LightningModule, checkpoint: Path, run_dir: Path) -> None:
    """Refuse a checkpoint of another experiment: its metrics would be written into this run's
    metrics.json next to a config.yaml that does not describe them."""
    def plain(hparams) -> dict[str, str]:
        return {k: json.dumps(v, sort_keys=True, default=str) for k, v in dict(hparams).items()}

    theirs, mine = plain(model.hparams), plain(configured.hparams)
    if type(model) is type(configured) and theirs == mine:
        return
    differ = sorted(k for k in theirs.keys() | mine.keys() if theirs.get(k) != mine.get(k))
    what = f"differs in {', '.join(differ)}" if type(model) is type(configured) else \
        f"is a {type(model).__name__}, the run's model a {type(configured).__name__}"
    raise ConfigError(f"{checkpoint} is not a checkpoint of the run in {run_dir}: its model {what} from {run_dir / 'config.yaml'}. "
                      f"Evaluate it in its own run folder, or give one of {run_dir / 'checkpoints'}.")


def _train_seconds(run_dir: Path, checkpoint: Path) -> float | None:
    """The training time of the weights evaluated: the run's own (what its metrics.json recorded,
    kept when the run is evaluated again) for its last checkpoint, else what the checkpoint
    carries (every session until it was saved: an interrupted run's, an intermediate one's)."""
    def recorded() -> float | None:
        try:
            return json.loads((run_dir / "metrics.json").read_text())["seconds"]["train"]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def carried() -> float | None:
        try:
            return float(torch.load(checkpoint, map_location="cpu", weights_only=True)["callbacks"]["TrainTime"]["seconds"])
        except Exception:  # no such state (an older or foreign checkpoint) or unreadable
            return None

    if checkpoint.resolve() == (run_dir / "checkpoints" / "last.ckpt").resolve():
        return recorded() if recorded() is not None else carried()
    return carried()


def predict_to_file(checkpoint: str | Path, data: str | Path, out: str | Path) -> Path:
    """Predict on the grid of an HDF5 dataset and write the prediction as a dataset file."""
    from .data.schema import PDEDataset, read_dataset, write_dataset

    model = load_model(checkpoint)
    if not hasattr(model, "predict_grid"):
        call = next((f"{m}()" for m in ("predict_samples", "predict") if callable(getattr(model, m, None))), None)
        python = f" or, in Python, call its {call} (sciml.models.load_model)" if call else ""
        raise ConfigError(f"`sciml predict` predicts grid models (PINNs) on a dataset's grid; {checkpoint} holds a "
                          f"{type(model).__name__}: evaluate it with `sciml evaluate RUN_DIR`{python}.")
    if Path(out).resolve() == Path(data).resolve():
        raise ConfigError(f"--out (={out}) is the dataset predicted on; give the prediction a file of its own.")
    ds = read_dataset(data)
    if ds.is_mesh or "x" not in ds.grid or set(ds.grid) - {"x", "t"}:
        raise DataError(f"{data} has no 1D tensor grid (/grid/x, /grid/t alone; it has {', '.join(ds.grid) or 'a mesh'}); "
                        f"{type(model).__name__} predicts on (t, x) grids.")
    x, t = np.asarray(ds.grid["x"], float), np.asarray(ds.grid["t"], float)
    pred = model.predict_grid(x, t)
    params = _numeric(model.pde.params())
    result = PDEDataset(
        pde=model.pde.name, u=pred[None], grid={"x": x, "t": t}, params=np.asarray([list(params.values())], dtype=float),
        param_names=list(params), common_params=model.pde.params(), generator=f"sciml {__version__} predict ({type(model).__name__})",
    )
    write_dataset(out, result)
    return Path(out)


def _numeric(params: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in params.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _device_name(model: L.LightningModule) -> str:
    device = next(model.parameters()).device
    return f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else _cpu_name()


def host_device() -> str:
    """This process's compute device in metrics.json's words: the GPU where torch sees one."""
    return f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else _cpu_name()


def _cpu_name() -> str:
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def versions() -> dict[str, str]:
    return {"sciml": __version__, "python": platform.python_version(), "torch": torch.__version__, "lightning": L.__version__, "numpy": np.__version__}
