"""Training callbacks shared by every model."""

from __future__ import annotations

import random
import sys
import time
from typing import Any

import lightning as L
import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class StepProgress(L.Callback):
    """Progress over optimizer steps (not epochs), with the latest loss.

    PINNs train full-batch, so one epoch is one step and Lightning's per-epoch bar says nothing.
    On a terminal: a rich progress bar. Elsewhere (a log file, a batch job, a pipe), where a live
    bar shows nothing until it ends, a plain line every ``every`` of the run (and at the end).
    The loss is read from the device at most every ``refresh`` seconds: reading it is a wait
    for the GPU.
    """

    def __init__(self, description: str = "training", every: float = 0.05, refresh: float = 0.25):
        self.description = description
        self.every = every
        self.refresh = refresh
        self._progress: Progress | None = None
        self._task = None
        self._plain = False
        self._loss = "-"
        self._read_at = -float("inf")
        self._next_line = 0
        self._start = 0.0
        self._first = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        self._start, self._first = time.perf_counter(), trainer.global_step
        console = Console(stderr=True)
        self._plain = not console.is_terminal
        if self._plain:
            self._stride = max(1, round(self.every * self._total)) if self._total else 100
            self._next_line = trainer.global_step + self._stride
            return
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=console, transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(self.description, total=self._total, completed=trainer.global_step, loss="-")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        line_due = self._plain and step >= self._next_line
        now = time.perf_counter()
        if line_due or (not self._plain and now - self._read_at >= self.refresh):
            loss = trainer.callback_metrics.get("train/loss")
            self._loss, self._read_at = (f"{float(loss):.3e}" if loss is not None else "-"), now
        if self._progress is not None:
            self._progress.update(self._task, completed=step, loss=self._loss)
        elif line_due:
            self._line(step)
            self._next_line = step + self._stride

    def _line(self, step: int) -> None:
        elapsed = time.perf_counter() - self._start
        done = step - self._first
        of = f"/{self._total}" if self._total else ""
        left = ""
        if self._total and done > 0:
            left = f", ~{elapsed / done * (self._total - step):.0f} s left"
        print(f"{self.description}: step {step}{of}, loss {self._loss}, {elapsed:.0f} s{left}", file=sys.stderr, flush=True)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._plain and trainer.global_step != self._next_line - self._stride:
            loss = trainer.callback_metrics.get("train/loss")
            self._loss = f"{float(loss):.3e}" if loss is not None else self._loss
            self._line(trainer.global_step)
        self._stop()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._stop()

    def _stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


class TrainTime(L.Callback):
    """Training wall time that survives resumption: the seconds trained so far travel in every
    checkpoint, so a run resumed after an interruption reports its whole training time."""

    def __init__(self) -> None:
        self.before = 0.0  # trained in earlier sessions of this run (from the checkpoint resumed)
        self._start: float | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def elapsed(self) -> float:
        """Seconds trained, this session's included."""
        return self.before + (time.perf_counter() - self._start if self._start is not None else 0.0)

    def state_dict(self) -> dict[str, float]:
        return {"seconds": self.elapsed()}

    def load_state_dict(self, state_dict: dict[str, float]) -> None:
        self.before = float(state_dict.get("seconds", 0.0))


class RandomState(L.Callback):
    """The global random streams (torch on the CPU and every GPU, numpy's, Python's) travel in
    every checkpoint and come back on resumption, so a resumed run draws the points, latent
    samples and shuffles that the uninterrupted run drew (with
    :class:`~sciml.data.resumable.ResumableLoader` for the batches). Validation draws from a copy:
    how often it runs does not change training.

    The states are stored as tensors and plain numbers, which ``torch.load(weights_only=True)``
    reads."""

    def __init__(self) -> None:
        self._outside_validation: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        version, internal, gauss_next = random.getstate()
        state = {"torch": torch.get_rng_state(), "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                                                         "has_gauss": int(has_gauss), "gauss": float(gauss)},
                 "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next}}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        n = state["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
        p = state["python"]
        random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
        if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._outside_validation = self.state_dict()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._outside_validation is not None:
            self.load_state_dict(self._outside_validation)
            self._outside_validation = None
