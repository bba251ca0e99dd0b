"""Training callbacks shared by every model."""

from __future__ import annotations

import time

import lightning as L
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class StepProgress(L.Callback):
    """A rich progress bar over optimizer steps (not epochs), with the latest loss.

    PINNs train full-batch, so one epoch is one step and Lightning's per-epoch bar says nothing.
    """

    def __init__(self, description: str = "training"):
        self.description = description
        self._progress: Progress | None = None
        self._task = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(self.description, total=total, completed=trainer.global_step, loss="-")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = trainer.callback_metrics.get("train/loss")
        self._progress.update(self._task, completed=trainer.global_step, loss=f"{float(loss):.3e}" if loss is not None else "-")

    def on_train_end(self, trainer, pl_module) -> None:
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
