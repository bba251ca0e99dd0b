"""PI-SC, PI-HC and PI-HC-MoE (Chalapathi et al., ICLR 2024) for 2D Navier-Stokes on (t, x, y) grids.

An FNO3d maps the initial vorticity w0 (broadcast over time, plus grid coordinates) to ``basis``
functions B on the grid, and the output ansatz

    w = w0 + s(t) (B c - mean_xy(B c)),    s(t) = (t - t_0) / (t_end - t_0),

meets the initial condition exactly and keeps the spatial mean of w0 (zero for a vorticity).
PI-SC (``constraint="soft"``) has one basis function and c = 1; PI-HC (``"hard"``) takes c from
the hard-constraint layer's least-squares solve of the vorticity residual at sampled points
(plus a ridge on c), and PI-HC-MoE splits the grid into experts (``splits`` per (t, x, y) axis,
the paper's [1, 2, 2]). The ansatz is affine in c, so every field of the residual (derivatives
by finite differences in t and FFT in x and y, velocity through the stream function) is a basis
field plus an offset from w0, computed once per step. Each expert solves for its own c_k with the
ansatz above on the whole grid and keeps its block; the stitched field's spatial mean is then
reset to w0's (a change uniform in space, a function of t; the projection onto fields with that
mean, so it cannot increase the L2 error). All variants train data-free on the mean squared PDE
residual over the grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

import lightning as L
import numpy as np
import torch
from torch import Tensor

from ..constraints import HardConstraint, grid_fields
from ..errors import ConfigError, TrainingError
from ..nn import FNO
from ..pdes import PDE, NavierStokes2D
from ._config import Checkpointed, as_config
from .hard_constrained import ScheduleConfig, SolverConfig

_AXES = {"t": 1, "x": 2, "y": 3}
_PERIODIC = {"x": True, "y": True}


class PhysicsFNO3d(Checkpointed, L.LightningModule):
    """An FNO3d basis network with a soft or hard physics constraint, for 2D Navier-Stokes.

    Args:
        pde: :class:`~sciml.pdes.NavierStokes2D`.
        constraint: "soft" (PI-SC) or "hard" (PI-HC; with ``splits`` PI-HC-MoE).
        splits: experts per (t, x, y) axis, e.g. [1, 2, 2]; [1, 1, 1] is a single expert.
        basis: number of basis functions N (the FNO's outputs; 1 is used for "soft").
        width, layers, modes: the FNO (modes per (t, x, y) axis).
        solver: the hard layer's sampled points, ridge, tolerance, steps and executor
            (``row_weight`` is unused: there are no IC/BC rows, the ansatz holds them).
        schedule: the optimiser.
        loss_fields: what the physics loss differentiates under MoE: "stitched" (the stitched
            w's derivatives, spectral in x and y: a jump between experts' blocks rings over the
            whole period and is penalised) or "experts" (each grid point's fields from its own
            expert's coefficients, as the solve sees them: no coupling between experts). The
            same with one expert.
    """

    model_name = "pi_hc"
    train_fields = ("u0",)  # data-free: a training batch needs the initial conditions only (SampleDataModule)

    def __init__(self, pde: PDE, constraint: str = "hard", splits: Sequence[int] = (1, 1, 1), basis: int = 64,
                 width: int = 64, layers: int = 8, modes: Sequence[int] = (8, 8, 8),
                 solver: SolverConfig | dict | None = None, schedule: ScheduleConfig | dict | None = None,
                 loss_fields: str = "stitched"):
        super().__init__()
        if loss_fields not in ("experts", "stitched"):
            raise ConfigError(f"model.loss_fields (={loss_fields!r}) must be 'experts' (each point's fields from its own "
                              "expert's coefficients) or 'stitched' (derivatives of the stitched w).")
        self.loss_fields = loss_fields
        if constraint not in ("soft", "hard"):
            raise ConfigError(f"model.constraint (={constraint!r}) must be 'soft' (PI-SC) or 'hard' (PI-HC).")
        if not isinstance(pde, NavierStokes2D):
            raise ConfigError(f"PhysicsFNO3d handles sciml.pdes.NavierStokes2D, not {type(pde).__name__}; use PhysicsFNO for 1D problems.")
        if len(splits) != 3 or len(modes) != 3:
            raise ConfigError(f"model.splits (={list(splits)}) and model.modes (={list(modes)}) need one entry per (t, x, y) axis.")
        self.pde, self.constraint, self.splits = pde, constraint, tuple(int(s) for s in splits)
        self.solver_cfg = as_config(SolverConfig, solver)
        self.schedule = as_config(ScheduleConfig, schedule)
        # Inputs: w0 and the (t, x, y) coordinates (see _inputs); the same weights as FNO(1, ..., with_grid=True).
        self.net = FNO(4, basis if constraint == "hard" else 1, tuple(modes), width=width, layers=layers)
        self.model_name = "pi_sc" if constraint == "soft" else ("pi_hc_moe" if any(s > 1 for s in self.splits) else "pi_hc")
        self.save_hyperparameters({
            "pde": pde.to_config(), "constraint": constraint, "splits": list(self.splits), "basis": int(basis),
            "width": int(width), "layers": int(layers), "modes": [int(m) for m in modes],
            "solver": asdict(self.solver_cfg), "schedule": asdict(self.schedule), "loss_fields": loss_fields,
        })
        self.history: dict[str, list[float]] = {"loss": []}
        self._layers: dict[tuple[int, int, int], HardConstraint] = {}

    # -- the ansatz and its fields ------------------------------------------------------------------
    def constraint_layers(self) -> list[HardConstraint]:
        """The hard-constraint layers built so far (one per grid), e.g. for their solve counts."""
        return list(self._layers.values())

    def _layer(self, grid: tuple[int, int, int]) -> HardConstraint:
        if grid not in self._layers:
            self._layers[grid] = self.solver_cfg.make_layer(self.pde, grid, self.splits)
        return self._layers[grid]

    @staticmethod
    def _spacing(t: np.ndarray, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        return {"t": float(t[1] - t[0]), "x": float(x[1] - x[0]), "y": float(y[1] - y[0])}

    def _names(self) -> tuple[str, ...]:
        """The fields computed from the grid: "u" and the residual's derivatives (not "f")."""
        return ("u", *(n for n in self.pde.fields if n != "f"))

    def ansatz_fields(self, b: Tensor, w0: Tensor, t: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """(bases {name: [batch, nt, nx, ny, n]}, offsets {name: [batch, nt, nx, ny]}) of the
        ansatz w = w0 + s(t) (B c - mean_xy(B c)) = bases["u"] c + offsets["u"], for B = b."""
        batch, nt, nx, ny, n = b.shape
        s = self._time(t, b).reshape(1, nt, 1, 1, 1)
        names, spacing = self._names(), self._spacing(t, x, y)
        bases = grid_fields(s * (b - b.mean(dim=(2, 3), keepdim=True)), names, spacing, _PERIODIC, _AXES)
        # w0 is constant in time: its fields are spatial, computed on one frame and broadcast.
        frame = grid_fields(w0[:, None, :, :, None], tuple(k for k in names if k != "u_t"), spacing, _PERIODIC, _AXES)
        offsets = {k: v[..., 0].expand(batch, nt, nx, ny) for k, v in frame.items()}
        offsets["u_t"] = w0.new_zeros(batch, nt, nx, ny)
        if "f" in self.pde.fields:
            f = torch.as_tensor(self.pde.forcing_field(x, y), dtype=b.dtype, device=b.device)
            bases["f"] = b.new_zeros(()).expand(batch, nt, nx, ny, n)  # the forcing does not depend on c
            offsets["f"] = f.expand(batch, nt, nx, ny)
        return bases, offsets

    # -- prediction -----------------------------------------------------------------------------------
    def constrain(self, b: Tensor, w0: Tensor, t: np.ndarray, x: np.ndarray, y: np.ndarray, points: Tensor | None = None,
                  fields: bool = False) -> Tensor | dict[str, Tensor]:
        """w [batch, nt, nx, ny] from the network's bases b [batch, nt, nx, ny, N] and w0 [batch, nx, ny].
        With ``fields`` (hard constraint only), the residual's fields instead, {name: [batch, nt, nx, ny]},
        each grid point's from its own expert's coefficients."""
        if fields:
            if self.constraint == "soft":
                raise ValueError("`fields` needs the hard constraint: the soft one's fields are those of its w.")
            bases, offsets = self.ansatz_fields(b, w0, t, x, y)
            return self._layer(tuple(b.shape[1:4]))(bases, offsets, points=points, return_fields=True)
        if self.constraint == "soft":
            s = self._time(t, b).reshape(1, -1, 1, 1)
            c = b[..., 0]
            return w0[:, None] + s * (c - c.mean(dim=(2, 3), keepdim=True))
        layer = self._layer(tuple(b.shape[1:4]))
        bases, offsets = self.ansatz_fields(b, w0, t, x, y)
        w = layer(bases, offsets, points=points)
        # Each expert's ansatz keeps the mean, their stitching need not: remove its mean (a function
        # of t only, zero at t = 0), the projection onto the fields with w0's mean (no-op for K = 1).
        return w - (w - w0[:, None]).mean(dim=(2, 3), keepdim=True) if layer.partition.experts > 1 else w

    def _time(self, t: np.ndarray, like: Tensor) -> Tensor:
        """s(t) = (t - t0) / (t_end - t0) by the PDE's time domain, not by the grid: a training grid
        that stops before t_end keeps its times, so predicting the whole span extrapolates in time
        instead of stretching it (on a grid over the whole span, the same as linspace(0, 1, nt))."""
        t0, t1 = self.pde.domain.time
        return torch.as_tensor((np.asarray(t, dtype=float) - t0) / (t1 - t0), dtype=like.dtype, device=like.device)

    def _bases(self, w0: Tensor, t: np.ndarray) -> Tensor:
        """The network's bases [batch, nt, nx, ny, N] for w0 [batch, nx, ny] at the times t: its
        input is w0 and the coordinates s(t), x and y in [0, 1]."""
        batch, nx, ny = w0.shape
        coords = torch.meshgrid(self._time(t, w0), torch.linspace(0.0, 1.0, nx, dtype=w0.dtype, device=w0.device),
                                torch.linspace(0.0, 1.0, ny, dtype=w0.dtype, device=w0.device), indexing="ij")
        inputs = torch.stack([w0[:, None].expand(-1, len(t), -1, -1), *(c.expand(batch, -1, -1, -1) for c in coords)], dim=1)
        return self.net(inputs).permute(0, 2, 3, 4, 1)

    def forward(self, w0: Tensor, t: np.ndarray, x: np.ndarray, y: np.ndarray) -> Tensor:
        """w [batch, n_t, n_x, n_y] from w0 [batch, n_x, n_y] on the grid (t, x, y)."""
        nt = len(t)
        if len(t) < 3 or w0.shape[1:] != (len(x), len(y)):
            raise ValueError(f"`w0` of shape {tuple(w0.shape)} must be [batch, {len(x)}, {len(y)}] for the grid x, y, and `t` needs >= 3 times (got {nt}).")
        b = self._bases(w0, t)
        points = None
        if self.constraint == "hard" and not self.training:  # fixed points in evaluation: repeatable predictions
            points = self._layer((nt, len(x), len(y))).sample_points(torch.Generator().manual_seed(0))
        return self.constrain(b, w0, t, x, y, points)

    # -- training ---------------------------------------------------------------------------------------
    def residual(self, w: Tensor | dict[str, Tensor], t: np.ndarray, x: np.ndarray, y: np.ndarray) -> Tensor:
        """The PDE residual on the whole grid of w [batch, nt, nx, ny] (its derivatives), or of the
        fields {name: [batch, nt, nx, ny]} given (``constrain(..., fields=True)``)."""
        if isinstance(w, dict):
            f = dict(w)
        else:
            f = {k: v[..., 0] for k, v in grid_fields(w[..., None], self._names(), self._spacing(t, x, y), _PERIODIC, _AXES).items()}
        if "f" in self.pde.fields:
            f["f"] = torch.as_tensor(self.pde.forcing_field(x, y), dtype=f["u"].dtype, device=f["u"].device)
        return self.pde.residual(f)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        dm = self.trainer.datamodule
        grid = getattr(dm, "train_grid", None) or dm.grid  # the training window, if the data module cuts one
        t, x, y = grid["t"], grid["x"], grid["y"]
        w0 = batch["u0"]
        if self.loss_fields == "experts" and self.constraint == "hard":
            loss = self.residual(self.constrain(self._bases(w0, t), w0, t, x, y, fields=True), t, x, y).pow(2).mean()
        else:
            loss = self.residual(self(w0, t, x, y), t, x, y).pow(2).mean()
        if not torch.isfinite(loss):
            raise TrainingError(f"the {self.model_name} loss became {float(loss)} at step {self.global_step}; lower "
                                f"model.schedule.lr (={self.schedule.lr}) or keep trainer.gradient_clip_val set.")
        self.history["loss"].append(float(loss.detach()))
        self.log("train/loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=False, batch_size=len(w0))
        layer = self._layers.get((len(t), len(x), len(y)))
        if layer is not None and layer.last_solution is not None:
            self.log("train/solver_ok", layer.last_solution.successful.double().mean(), on_step=True, on_epoch=False, batch_size=len(w0))
        return loss

    def configure_optimizers(self):
        return self.schedule.optimizers(self.parameters())

    @torch.no_grad()
    def predict_samples(self, u0: np.ndarray, t: np.ndarray, x: np.ndarray, y: np.ndarray | None = None, batch_size: int = 2) -> np.ndarray:
        """w [n, n_t, n_x, n_y] for initial vorticities u0 [n, n_x, n_y], as float64 numpy.
        ``y`` defaults to ``x`` on a square grid (the pipeline passes x only)."""
        if y is None:
            if u0.shape[-1] != len(x):
                raise ValueError(f"`u0` (shape {u0.shape}) is not on the square grid x (n={len(x)}): pass `y`.")
            y = x
        p = next(self.parameters())
        out = [self(torch.as_tensor(u0[i:i + batch_size], dtype=p.dtype, device=p.device), t, x, y).double().cpu().numpy()
               for i in range(0, len(u0), batch_size)]
        return np.concatenate(out)
