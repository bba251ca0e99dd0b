"""Why PI-HC trained on t <= t_max is worse inside its own window when evaluated on the whole grid.

For each run folder of a diffusion-sorption extrapolation experiment (`data.train_t_max` set, e.g.
runs/hc_cpu_extrap_hc from `bash scripts/hc_cpu.sh`), the test rel. L2 inside t <= t_max of:

- whole grid: the FNO and the solve on the whole grid (what metrics.json's interp/rel_l2 reports);
- window only: the FNO and the solve on the training window alone (the grid it was trained on);
- whole-grid bases, window solve: the FNO on the whole grid, the solve's points and IC/BC rows
  restricted to t <= t_max (hard constraint only).

Usage: .venv/bin/python scripts/hc_extrap_window.py RUN [RUN ...]
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from sciml.config import load_config
from sciml.constraints import Rows
from sciml.metrics import compute_metrics
from sciml.models import load_model
from sciml.pipeline import instantiate


def rel_l2(pred: np.ndarray, true: np.ndarray) -> float:
    return compute_metrics(pred, true)["rel_l2"]


def window_solve(model, u0: torch.Tensor, t: np.ndarray, x: np.ndarray, n_keep: int) -> np.ndarray:
    """u on the whole grid from whole-grid bases, with the solve's points and rows in the first n_keep times."""
    nt, nx = len(t), len(x)
    layer = model._layer((nt, nx))
    points = torch.randint(0, n_keep * nx, (layer.partition.experts, layer.points), generator=torch.Generator().manual_seed(0))
    b = model.net(model._inputs(u0, t, x)).permute(0, 2, 3, 1)
    rows = model._rows(u0, nt, nx, model._half_cell(x))
    inside = rows.points < n_keep * nx
    rows = Rows(points=rows.points[inside], coefficients={k: v[inside] for k, v in rows.coefficients.items()},
                target=rows.target[:, inside], scale=rows.scale[:, inside])
    return layer(model._fields(b, t, x), rows=rows, points=points).double().numpy()


def main(runs: list[str]) -> None:
    torch.set_num_threads(1)
    for run in runs:
        parser, cfg = load_config(f"{run}/config.yaml")
        dm = instantiate(parser, cfg).data
        t_max = getattr(dm, "train_t_max", None)
        if t_max is None:
            raise SystemExit(f"{run} was not trained on a time window (data.train_t_max is not set).")
        dm.prepare_data()
        dm.setup("test")
        model = load_model(f"{run}/checkpoints/last.ckpt").eval()
        batches = list(dm.test_dataloader())
        u0 = torch.cat([b["u0"] for b in batches])
        u = torch.cat([b["u"] for b in batches]).numpy()
        t, x = dm.grid["t"], dm.grid["x"]
        keep = t <= t_max + 1e-9
        with torch.no_grad():
            whole = model.predict_samples(u0.numpy(), t, x)
            window = model.predict_samples(u0.numpy(), t[keep], x)
            line = f"{run}: t <= {t_max:g}: whole grid {rel_l2(whole[:, keep], u[:, keep]):.4f}, window only {rel_l2(window, u[:, keep]):.4f}"
            if model.constraint == "hard" and model._layer((len(t), len(x))).partition.experts == 1:
                solved = window_solve(model, u0, t, x, int(keep.sum()))
                line += f", whole-grid bases with the window's solve {rel_l2(solved[:, keep], u[:, keep]):.4f}"
        print(line, flush=True)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    main(sys.argv[1:])
