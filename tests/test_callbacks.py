"""The step progress outside a terminal: plain lines with the step, the loss and the time left."""

from __future__ import annotations

import re

import lightning as L
import torch

from sciml.callbacks import StepProgress


class _Line(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([3.0]))

    def training_step(self, batch, batch_idx):
        loss = (self.w**2).sum()
        self.log("train/loss", loss)
        return loss

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.zeros(1000, 1), batch_size=1)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit(steps, **progress):
    trainer = L.Trainer(max_steps=steps, callbacks=[StepProgress("fit", **progress)], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(_Line())


def test_outside_a_terminal_progress_is_plain_lines_with_the_loss(capsys):
    _fit(40, every=0.25)
    lines = capsys.readouterr().err.strip().splitlines()
    assert [int(re.search(r"step (\d+)/40", line).group(1)) for line in lines] == [10, 20, 30, 40]
    # w after s steps of SGD on w^2 from 3 with rate 0.01: 3 * 0.98^s; the logged loss is the step's, before its update
    for line in lines:
        step, loss = int(re.search(r"step (\d+)", line).group(1)), float(re.search(r"loss (\S+),", line).group(1))
        assert abs(loss - (3 * 0.98 ** (step - 1)) ** 2) < 1e-3 * loss
    assert all(re.search(r", \d+ s(, ~\d+ s left)?$", line) for line in lines) and "s left" in lines[0]


def test_the_last_step_gets_a_line_when_it_is_not_on_the_stride(capsys):
    _fit(25, every=0.4)  # stride 10: lines at 10, 20, and the end at 25
    steps = [int(re.search(r"step (\d+)/25", line).group(1)) for line in capsys.readouterr().err.strip().splitlines()]
    assert steps == [10, 20, 25]
