"""Test-wide settings."""

import pytest
import torch

# The tests train tiny networks: latency-bound work where one thread is many times faster than
# two on a busy 2-core machine (thread hand-offs dominate). Same as `sciml run`'s default.
torch.set_num_threads(1)


@pytest.fixture
def interrupt_at(monkeypatch):
    """``interrupt_at(step)``: runs of ``sciml.pipeline`` started afterwards raise
    KeyboardInterrupt (as Ctrl-C) once training has finished step ``step``; ``interrupt_at(None)``
    lets them run through again."""
    import lightning as L

    import sciml.pipeline as pipeline

    make_trainer = pipeline._trainer

    def interrupt(step: int | None) -> None:
        if step is None:
            monkeypatch.setattr(pipeline, "_trainer", make_trainer)
            return

        class Kill(L.Callback):
            def on_train_batch_end(self, trainer, *args):
                if trainer.global_step == step:
                    raise KeyboardInterrupt

        def killing_trainer(kwargs, out, model):
            trainer = make_trainer(kwargs, out, model)
            trainer.callbacks.append(Kill())
            return trainer

        monkeypatch.setattr(pipeline, "_trainer", killing_trainer)

    return interrupt
