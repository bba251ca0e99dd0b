"""PI-SC, PI-HC and PI-HC-MoE (Chalapathi et al., ICLR 2024) for 1D problems on a (t, x) grid.

An FNO maps the initial condition (broadcast over time, plus grid coordinates) to ``basis``
functions B on the grid. PI-SC (``constraint="soft"``) takes one output as u and trains on the
PDE residual; PI-HC (``"hard"``) sets u = B w* with w* from the hard-constraint layer's
least-squares solve (PDE residual at sampled points, IC and BC rows, a ridge on w), and PI-HC-MoE
splits the grid into experts (``splits``). Every variant is trained data-free on the same loss:
the mean squared PDE residual of u over the grid plus its IC and BC mismatch.

The PDE rows are in the PDE's own units by default, as in the reference, so the IC/BC rows
dominate the solve (``solver.pde_scale`` and ``solver.row_weight`` change the balance). The IC rows are relative, (u - u0) / max(u0, 1e-2), as in the reference; the BCs are
u(0, t) = 1 and the outflow u(1, t) + D u_x(1, t) = 0, with u extrapolated from the first and
last grid columns (cell centres) to x = 0 and x = 1 (the
sign PDEBench's simulator uses; the literal u = D u_x of its paper admits a mode growing like
exp(t / (D R)) and cannot be solved: see sciml.pdes.DiffusionSorption).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import lightning as L
import numpy as np
import torch
from torch import Tensor

from ..constraints import (Executor, GridFields, HardConstraint, ImplicitAdjoint, LevenbergMarquardt, LocalExecutor, RayExecutor,
                           Rows)
from ..errors import ConfigError, TrainingError
from ..nn import FNO
from ._config import Checkpointed, as_config
from ..pdes import PDE, DiffusionSorption

_FIELDS = ("u", "u_t", "u_x", "u_xx")


@dataclass
class SolverConfig:
    """The constraint layer's least-squares solve."""

    points: int = 20000
    ridge: float = 1e-8
    tol: float = 1e-4  # the solve's relative tolerance (the reference's LM: rtol = atol = 1e-4); absolute: tol * 1e-3, tighter
    max_steps: int = 50
    pde_scale: float = 1.0  # factor on the PDE rows (t_end makes them O(1); 1 is the reference's raw units)
    row_weight: float = 1.0  # factor on the IC/BC rows
    executor: str = "local"  # where the experts are solved: "local" (one batched call) or "ray"
    ray_address: str | None = None  # executor "ray": a running cluster; None starts a local one
    ray_workers: int = 2  # executor "ray": chunks of the batch x experts problems, one Ray task each
    # The implicit gradient's Hessian: "exact" (the true gradient of the solve: second derivatives
    # of the residual included, in closed form for the layer's pointwise residuals, a few percent
    # of a step) or "gauss-newton" (J^T J only: exact for residuals linear in the coefficients,
    # approximate where a nonlinear residual (R(u), advection) does not vanish at the solution).
    hessian: str = "exact"
    # The Hessian of the solver's own steps: "gauss-newton" (J^T J: converges in a few steps where
    # the residual is nearly linear in the coefficients, as diffusion-sorption's) or "exact"
    # (damped Newton: quadratic convergence where a nonlinear residual stays large at the minimum,
    # as Navier-Stokes' advection: 10 steps where Gauss-Newton took 81, for ~2x the work per step).
    step_hessian: str = "gauss-newton"

    def __post_init__(self) -> None:
        for key in ("hessian", "step_hessian"):
            if getattr(self, key) not in ("gauss-newton", "exact"):
                raise ConfigError(f"model.solver.{key} (={getattr(self, key)!r}) must be 'gauss-newton' or 'exact'.")
        if self.executor not in ("local", "ray"):
            raise ConfigError(f"model.solver.executor (={self.executor!r}) must be 'local' (one batched solve in this "
                              "process) or 'ray' (chunks on Ray workers; set model.solver.ray_address for a cluster).")
        if isinstance(self.ray_workers, bool) or not isinstance(self.ray_workers, int) or self.ray_workers < 1:
            raise ConfigError(f"model.solver.ray_workers (={self.ray_workers!r}) must be an integer >= 1.")

    def make_executor(self) -> Executor:
        if self.executor == "ray":
            return RayExecutor(self.ray_address, num_workers=self.ray_workers)
        return LocalExecutor()

    def make_layer(self, pde: PDE, grid: tuple[int, ...], splits: Sequence[int], executor: Executor | None = None) -> HardConstraint:
        """The hard-constraint layer this config describes on ``grid`` with ``splits`` experts."""
        return HardConstraint(
            pde, grid, splits, points=self.points, ridge=self.ridge, max_steps=self.max_steps,
            solver=LevenbergMarquardt(rtol=self.tol, atol=self.tol * 1e-3, hessian=self.step_hessian), adjoint=ImplicitAdjoint(self.hessian),
            residual_scale=self.pde_scale, executor=executor or self.make_executor(),
        )


@dataclass
class ScheduleConfig:
    """Adam with the learning rate halved every ``halve_every`` steps down to ``floor``."""

    lr: float = 1e-3
    halve_every: int = 800
    floor: float = 1e-4

    def __post_init__(self) -> None:
        for key in ("lr", "floor"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
                raise ConfigError(f"model.schedule.{key} (={value!r}) must be a number > 0, e.g. {ScheduleConfig.__dataclass_fields__[key].default}.")
        if self.floor > self.lr:
            raise ConfigError(f"model.schedule.floor (={self.floor!r}) is above model.schedule.lr (={self.lr!r}): the rate would start "
                              f"at the floor; lower the floor to at most the rate (e.g. floor: {self.lr / 10:g}).")
        if isinstance(self.halve_every, bool) or not isinstance(self.halve_every, int) or self.halve_every < 1:
            raise ConfigError(f"model.schedule.halve_every (={self.halve_every!r}) must be an integer >= 1 (steps between halvings).")

    def optimizers(self, params) -> dict:
        """Lightning's optimiser config: Adam and the step-wise halving schedule."""
        opt = torch.optim.Adam(params, lr=self.lr)
        factor = lambda step: max(0.5 ** (step // self.halve_every), self.floor / self.lr)  # noqa: E731
        return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, factor), "interval": "step"}}


class PhysicsFNO(Checkpointed, L.LightningModule):
    """An FNO basis network with a soft or hard physics constraint, on (t, x) grids.

    Args:
        pde: the PDE (diffusion-sorption: its residual, domain and BC coefficient D).
        constraint: "soft" (PI-SC) or "hard" (PI-HC; with ``splits`` PI-HC-MoE).
        splits: experts per (t, x) axis, e.g. [1, 4]; [1, 1] is a single expert.
        basis: number of basis functions N (the FNO's outputs; 1 is used for "soft").
        width, layers, modes: the FNO.
        solver: the hard layer's sampled points, ridge, tolerance and steps.
        schedule: the optimiser.
        loss_fields: what the physics loss differentiates under MoE: "stitched" (finite
            differences of the stitched u, so a jump between experts' blocks is penalised: the
            only coupling between experts) or "experts" (each point's derivatives from its own
            expert's coefficients, as the solve sees them). The same with one expert. Measured
            (README): "stitched" for time experts, "experts" helps spatial ones.
        pde_weight: factor on the PDE residual in the loss (squared in it): None (default) is
            t_end, which makes u_t = O(1) like the IC/BC terms; 1 is the reference's raw units,
            where the residual (~1/t_end) hardly counts next to them.
    """

    model_name = "pi_hc"
    train_fields = ("u0",)  # data-free: a training batch needs the initial conditions only (SampleDataModule)

    def __init__(self, pde: PDE, constraint: str = "hard", splits: Sequence[int] = (1, 1), basis: int = 16,
                 width: int = 64, layers: int = 5, modes: Sequence[int] = (8, 8),
                 solver: SolverConfig | dict | None = None, schedule: ScheduleConfig | dict | None = None,
                 loss_fields: str = "stitched", pde_weight: float | None = None):
        super().__init__()
        if pde_weight is not None and (isinstance(pde_weight, bool) or not isinstance(pde_weight, (int, float)) or not pde_weight > 0):
            raise ConfigError(f"model.pde_weight (={pde_weight!r}) must be a number > 0 (1: the reference's raw units), or null for t_end.")
        if loss_fields not in ("experts", "stitched"):
            raise ConfigError(f"model.loss_fields (={loss_fields!r}) must be 'experts' (each point's derivatives from its own "
                              "expert's coefficients) or 'stitched' (finite differences of the stitched u).")
        self.loss_fields = loss_fields
        if constraint not in ("soft", "hard"):
            raise ConfigError(f"model.constraint (={constraint!r}) must be 'soft' (PI-SC) or 'hard' (PI-HC).")
        if not isinstance(pde, DiffusionSorption):
            raise ConfigError(f"PhysicsFNO handles sciml.pdes.DiffusionSorption so far, not {type(pde).__name__}.")
        for key, value in (("splits", splits), ("modes", modes)):
            if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2 \
                    or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value):
                raise ConfigError(f"model.{key} (={value!r}) must be two integers >= 1, one per axis (t, x), "
                                  f"e.g. {[4, 1] if key == 'splits' else [8, 8]}.")
        self.pde, self.constraint, self.splits = pde, constraint, tuple(int(s) for s in splits)
        self.pde_weight = float(pde.t_end if pde_weight is None else pde_weight)
        self.solver_cfg = as_config(SolverConfig, solver)
        self.schedule = as_config(ScheduleConfig, schedule)
        # Inputs: u0 and the (t, x) coordinates (see _inputs); the same weights as FNO(1, ..., with_grid=True).
        self.net = FNO(3, basis if constraint == "hard" else 1, tuple(modes), width=width, layers=layers)
        self.model_name = "pi_sc" if constraint == "soft" else ("pi_hc_moe" if any(s > 1 for s in self.splits) else "pi_hc")
        self.save_hyperparameters({
            "pde": pde.to_config(), "constraint": constraint, "splits": list(self.splits), "basis": int(basis),
            "width": int(width), "layers": int(layers), "modes": [int(m) for m in modes],
            "solver": asdict(self.solver_cfg), "schedule": asdict(self.schedule), "loss_fields": loss_fields,
            "pde_weight": pde_weight,
        })
        self.history: dict[str, list[float]] = {"loss": [], "pde": [], "ic": [], "bc": []}
        self._layers: dict[tuple[int, int], HardConstraint] = {}
        self._row_points: dict[tuple[int, int, str], Tensor] = {}  # IC/BC row points per grid and device
        self._coords: dict[tuple, tuple[Tensor, Tensor]] = {}  # the (t, x) inputs of the latest grid, on its device
        self._executor = self.solver_cfg.make_executor()

    # -- prediction ------------------------------------------------------------------------------
    def constraint_layers(self) -> list[HardConstraint]:
        """The hard-constraint layers built so far (one per grid), e.g. for their solve counts."""
        return list(self._layers.values())

    def _layer(self, grid: tuple[int, int]) -> HardConstraint:
        if grid not in self._layers:
            self._layers[grid] = self.solver_cfg.make_layer(self.pde, grid, self.splits, self._executor)
        return self._layers[grid]

    def _fields(self, b: Tensor, t: np.ndarray, x: np.ndarray) -> GridFields:
        spacing = {"t": float(t[1] - t[0]), "x": float(x[1] - x[0])}
        return GridFields(b, _FIELDS, spacing, {}, {"t": 1, "x": 2})

    def _rows(self, u0: Tensor, nt: int, nx: int, half_cell: float) -> Rows:
        key = (nt, nx, str(u0.device))
        points = self._row_points.get(key)
        if points is None:  # the same tensor every step: the layer groups its rows by expert once
            ic = torch.arange(nx, device=u0.device)
            left = torch.arange(1, nt, device=u0.device) * nx  # BCs for t > 0: the IC need not meet them
            points = self._row_points[key] = torch.cat([ic, left, left + nx - 1])
        nt = nt - 1
        ones, zeros = torch.ones(nt, dtype=u0.dtype, device=u0.device), torch.zeros(nt, dtype=u0.dtype, device=u0.device)
        coef_u = torch.ones(len(points), dtype=u0.dtype, device=u0.device)
        # The grid holds cell centres: the boundary values are extrapolated half a cell outwards.
        coef_ux = torch.cat([torch.zeros(nx, dtype=u0.dtype, device=u0.device), -half_cell * ones, (half_cell + self.pde.D) * ones])
        target = torch.cat([u0, ones.expand(len(u0), nt), zeros.expand(len(u0), nt)], dim=1)
        scale = torch.cat([u0.clamp_min(1e-2), ones.expand(len(u0), nt), ones.expand(len(u0), nt)], dim=1) / self.solver_cfg.row_weight
        return Rows(points=points, coefficients={"u": coef_u, "u_x": coef_ux}, target=target, scale=scale)

    def forward(self, u0: Tensor, t: np.ndarray, x: np.ndarray) -> Tensor:
        """u [batch, n_t, n_x] from u0 [batch, n_x] on the grid (t, x)."""
        return self._solve(u0, t, x, fields=False)

    def solution_fields(self, u0: Tensor, t: np.ndarray, x: np.ndarray) -> dict[str, Tensor]:
        """u and its derivatives u_t, u_x, u_xx [batch, n_t, n_x]. PI-SC: finite differences of
        the network's u. PI-HC: the basis' derivatives (finite differences on the whole grid) times
        the coefficients of each point's own expert, so under MoE a derivative never straddles
        two experts' blocks (with one expert, the same as differencing u)."""
        return self._solve(u0, t, x, fields=True)

    def _solve(self, u0: Tensor, t: np.ndarray, x: np.ndarray, fields: bool) -> Tensor | dict[str, Tensor]:
        nt, nx = len(t), len(x)
        try:
            b = self.net(self._inputs(u0, t, x)).permute(0, 2, 3, 1)  # [batch, nt, nx, N]
        except ValueError as exc:  # modes the (t, x) grid cannot hold: the config's, not a bug
            raise ConfigError(f"model.modes on the data's {nt} x {nx} (t, x) grid: {exc}") from exc
        if self.constraint == "soft":
            return {k: v[..., 0] for k, v in self._fields(b[..., :1], t, x).full().items()} if fields else b[..., 0]
        layer = self._layer((nt, nx))
        # Fresh points every training step; fixed ones in evaluation, so predictions are repeatable.
        points = None if self.training else layer.sample_points(torch.Generator().manual_seed(0))
        return layer(self._fields(b, t, x), rows=self._rows(u0, nt, nx, self._half_cell(x)), points=points, return_fields=fields)

    def _inputs(self, u0: Tensor, t: np.ndarray, x: np.ndarray) -> Tensor:
        """[batch, 3, n_t, n_x]: u0 broadcast over time, then t and x scaled to [0, 1] by the PDE's
        domain, not by the grid: a training grid that stops at t_max < t_end keeps its times, so
        evaluating on the whole span extrapolates in time instead of stretching it."""
        key = (np.asarray(t).tobytes(), np.asarray(x).tobytes(), u0.dtype, str(u0.device))
        if key not in self._coords:  # copied to the device once per grid, not every step
            (t0, t1), ((x0, x1),) = self.pde.domain.time, self.pde.domain.space
            coords = [torch.as_tensor((c - lo) / (hi - lo), dtype=u0.dtype, device=u0.device) for c, lo, hi in ((t, t0, t1), (x, x0, x1))]
            self._coords = {key: torch.meshgrid(*coords, indexing="ij")}  # the latest grid only
        tt, xx = self._coords[key]
        batch = len(u0)
        return torch.stack([u0[:, None, :].expand(-1, len(t), -1), tt.expand(batch, -1, -1), xx.expand(batch, -1, -1)], dim=1)

    def _half_cell(self, x: np.ndarray) -> float:
        """Distance from the first grid point to the wall: half a cell on cell-centred grids."""
        (lo, _), = self.pde.domain.space
        return float(x[0] - lo)

    # -- training ---------------------------------------------------------------------------------
    def loss_terms(self, u: Tensor | dict[str, Tensor], u0: Tensor, t: np.ndarray, x: np.ndarray) -> dict[str, Tensor]:
        """The physics loss of u [batch, n_t, n_x] (derivatives by finite differences of u) or of
        the fields {u, u_t, u_x, u_xx} of :meth:`solution_fields`."""
        if isinstance(u, dict):
            f = u
        else:
            f = {k: v[..., 0] for k, v in self._fields(u[..., None], t, x).full().items()}
        u = f["u"]
        pde = (self.pde_weight * self.pde.residual(f))[:, 1:, 1:-1].pow(2).mean()
        ic = (u[:, 0] - u0).pow(2).mean()
        h = self._half_cell(x)
        left = u[:, :, 0] - h * f["u_x"][:, :, 0]
        right = u[:, :, -1] + h * f["u_x"][:, :, -1]
        # BCs hold for t > 0 only: at t = 0 the IC need not meet u(0) = 1.
        bc = (left[:, 1:] - 1).pow(2).mean() + (right + self.pde.D * f["u_x"][:, :, -1])[:, 1:].pow(2).mean()
        return {"loss": pde + ic + bc, "pde": pde, "ic": ic, "bc": bc}

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        grid = self.trainer.datamodule.train_grid  # the training window: t <= data.train_t_max when set
        t, x = grid["t"], grid["x"]
        u0 = batch["u0"]
        terms = self.loss_terms(self.solution_fields(u0, t, x) if self.loss_fields == "experts" else self(u0, t, x), u0, t, x)
        values = dict(zip(terms, torch.stack([v.detach() for v in terms.values()]).tolist()))  # one wait for the device, not five
        if not math.isfinite(values["loss"]):
            raise TrainingError(f"the {self.model_name} loss became {values['loss']} at step {self.global_step}; lower "
                                f"model.schedule.lr (={self.schedule.lr}) or keep trainer.gradient_clip_val set.")
        for k, v in values.items():
            self.history[k].append(v)
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()}, prog_bar=True, on_step=True, on_epoch=False, batch_size=len(u0))
        layer = self._layers.get((len(t), len(x)))
        if layer is not None and layer.last_solution is not None:
            self.log("train/solver_ok", layer.last_solution.successful.double().mean(), on_step=True, on_epoch=False, batch_size=len(u0))
            self.log("train/solver_steps", float(layer.last_solution.steps), on_step=True, on_epoch=False, batch_size=len(u0))
        return terms["loss"]

    def configure_optimizers(self):
        return self.schedule.optimizers(self.parameters())

    @torch.no_grad()
    def predict_samples(self, u0: np.ndarray, t: np.ndarray, x: np.ndarray, batch_size: int = 4) -> np.ndarray:
        """u [n, n_t, n_x] for initial conditions u0 [n, n_x], as float64 numpy."""
        p = next(self.parameters())
        out = [self(torch.as_tensor(u0[i:i + batch_size], dtype=p.dtype, device=p.device), t, x).double().cpu().numpy()
               for i in range(0, len(u0), batch_size)]
        return np.concatenate(out)
