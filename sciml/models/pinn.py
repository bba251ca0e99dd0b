"""Physics-informed neural network (Raissi et al.) as a LightningModule.

Loss = w_ic * mean (u(x, 0) - u0)^2 + w_bc * mean (u(lo, t) - u(hi, t))^2  [periodic]
     + w_pde * mean r(x, t)^2,  r the PDE's residual with derivatives by autograd.

Optimisation follows the failure-mode study of Krishnapriyan et al.: optionally Adam for
``adam_steps`` steps, then L-BFGS (strong-Wolfe line search) through Lightning's closure for
``lbfgs_steps`` steps, stopping early once L-BFGS stalls. That machinery is
:class:`AdamLBFGSModule`, shared with the Lagrangian PINN (:mod:`sciml.models.lpinn`).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import lightning as L
import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError, TrainingError
from ..nn import MLP
from ._config import as_config
from ..pdes import PDE, autograd_fields, pde_from_config


@dataclass
class OptimizerConfig:
    """Adam for ``adam_steps`` steps, then L-BFGS for ``lbfgs_steps`` (one iteration per step)."""

    adam_steps: int = 0
    adam_lr: float = 1e-3
    lbfgs_steps: int = 1000
    lbfgs_lr: float = 1.0
    lbfgs_history: int = 50
    stall_patience: int = 10

    def __post_init__(self) -> None:
        for name in ("adam_steps", "lbfgs_steps", "lbfgs_history", "stall_patience"):
            if getattr(self, name) < 0:
                raise ValueError(f"optimizer.{name} (={getattr(self, name)}) must be >= 0")
        if self.adam_steps + self.lbfgs_steps == 0:
            raise ValueError("optimizer.adam_steps + optimizer.lbfgs_steps is 0: give at least one training step")
        for name in ("adam_lr", "lbfgs_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"optimizer.{name} (={getattr(self, name)}) must be > 0")

    @property
    def total_steps(self) -> int:
        return self.adam_steps + self.lbfgs_steps


@dataclass
class LossWeights:
    ic: float = 1.0
    bc: float = 1.0
    pde: float = 1.0


class AdamLBFGSModule(L.LightningModule):
    """Full-batch training of a physics-informed loss: Adam, then L-BFGS, with a loss history.

    A subclass implements :meth:`loss_terms` (a dict of the total ``"loss"`` and its named terms)
    and passes those names to ``__init__``. This class records each step's terms in ``history``
    (kept in checkpoints), switches Adam -> L-BFGS after ``optimizer.adam_steps`` steps (also
    across a resume), stops once L-BFGS stalls and turns a non-finite loss into a TrainingError.
    """

    model_name = "model"

    def __init__(self, optimizer: OptimizerConfig | None, terms: Sequence[str]):
        super().__init__()
        self.opt_cfg = as_config(OptimizerConfig, optimizer)
        self.history: dict[str, list[float]] = {name: [] for name in ("loss", *terms)}
        self._step_terms: dict[str, float] | None = None
        self._resumed_step = 0
        self._stalled = 0

    @property
    def total_steps(self) -> int:
        """The optimisation budget: Adam steps plus L-BFGS steps."""
        return self.opt_cfg.total_steps

    @abstractmethod
    def loss_terms(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """``{"loss": total, name: term, ...}`` on the full training batch."""

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        terms = self.loss_terms(batch)
        if self._step_terms is None:  # L-BFGS evaluates the closure several times per step
            # Recorded here, not in on_train_batch_end, so that a checkpoint saved at the end of
            # this step (callbacks run before the module's hook) already holds this entry.
            self._step_terms = {k: float(v.detach()) for k, v in terms.items()}
            self._record(self._step_terms)
        return terms["loss"]

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        self._step_terms = None
        if self.global_step == self.opt_cfg.adam_steps and isinstance(self.optimizers().optimizer, torch.optim.Adam):
            self.trainer.strategy.setup_optimizers(self.trainer)

    def _record(self, terms: dict[str, float]) -> None:
        loss = terms["loss"]
        if not math.isfinite(loss):
            raise TrainingError(
                f"the {self.model_name} loss became {loss} at step {self.global_step}; lower optimizer.adam_lr "
                f"(={self.opt_cfg.adam_lr}) or optimizer.lbfgs_lr (={self.opt_cfg.lbfgs_lr}), or use trainer.precision=64-true."
            )
        previous = self.history["loss"][-1] if self.history["loss"] else None
        for k, v in terms.items():
            self.history[k].append(v)
        self.log_dict({f"train/{k}": v for k, v in terms.items()}, prog_bar=True, on_step=True, on_epoch=False)
        if self._in_lbfgs_phase() and previous is not None:
            self._stalled = self._stalled + 1 if abs(previous - loss) <= 1e-12 * max(abs(loss), 1e-30) else 0
            if self.opt_cfg.stall_patience and self._stalled >= self.opt_cfg.stall_patience:
                self.trainer.should_stop = True

    # -- optimisation --------------------------------------------------------------------------
    def _in_lbfgs_phase(self) -> bool:
        return max(self.global_step, self._resumed_step) >= self.opt_cfg.adam_steps

    def configure_optimizers(self):
        return self._lbfgs() if self._in_lbfgs_phase() else torch.optim.Adam(self.parameters(), lr=self.opt_cfg.adam_lr)

    def _lbfgs(self) -> torch.optim.LBFGS:
        cfg = self.opt_cfg
        return torch.optim.LBFGS(
            # One iteration per Lightning step. max_eval must leave room for the line search:
            # torch's default (max_iter * 5 // 4 = 1) gives it no evaluations, so every step
            # would return t = 0 and training would freeze.
            self.parameters(), lr=cfg.lbfgs_lr, max_iter=1, max_eval=1 + _MAX_LINE_SEARCH, history_size=cfg.lbfgs_history,
            tolerance_grad=1e-12, tolerance_change=1e-14, line_search_fn="strong_wolfe",
        )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["sciml_model"] = f"{type(self).__module__}.{type(self).__qualname__}"
        checkpoint["loss_history"] = self.history

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._resumed_step = int(checkpoint.get("global_step", 0))
        self.history = {k: list(v) for k, v in checkpoint.get("loss_history", self.history).items()}
        states = checkpoint.get("optimizer_states") or []
        if self._in_lbfgs_phase() and states and "history_size" not in states[0]["param_groups"][0]:
            # Saved right after the last Adam step: the resumed run builds L-BFGS, which cannot
            # take Adam's state; it starts afresh, as it would have without the interruption.
            checkpoint["optimizer_states"] = [self._lbfgs().state_dict()]

    @classmethod
    def from_hparams(cls, hparams: dict) -> AdamLBFGSModule:
        hp = dict(hparams)
        return cls(pde=pde_from_config(hp.pop("pde")), **hp)


class PINN(AdamLBFGSModule):
    """u(x, t) = MLP(features(x, t)).

    Args:
        pde: the PDE (its residual, domain and initial condition).
        hidden: widths of the hidden layers.
        activation: tanh, gelu, silu, relu or sin.
        normalize_inputs: scale x and t to [-1, 1] before the network. Krishnapriyan et al. feed
            the raw coordinates (x in [0, 2pi]); set False to reproduce their protocol.
        periodic_embedding: feed (cos x, sin x, t) instead of x, t: periodicity exact by design.
        optimizer: Adam then L-BFGS budgets and rates.
        weights: weights of the IC, BC and PDE loss terms.
    """

    model_name = "pinn"

    def __init__(
        self,
        pde: PDE,
        hidden: Sequence[int] = (50, 50, 50, 50),
        activation: str = "tanh",
        normalize_inputs: bool = True,
        periodic_embedding: bool = False,
        optimizer: OptimizerConfig | None = None,
        weights: LossWeights | None = None,
    ):
        super().__init__(optimizer, terms=("ic", "bc", "pde"))
        self.pde = pde
        self.loss_weights = as_config(LossWeights, weights)
        if not pde.domain.periodic:
            raise ConfigError(f"the PINN's boundary terms are periodic; {type(pde).__name__} is not a periodic PDE. "
                              "Use one of the 1D periodic family (sciml.pdes.Convection, Reaction, Burgers, ...).")
        self.periodic_embedding = periodic_embedding
        self.normalize_inputs = normalize_inputs
        self.net = MLP(3 if periodic_embedding else 2, 1, hidden, activation)
        (self.x_lo, self.x_hi), = pde.domain.space
        self.t_lo, self.t_hi = pde.domain.time
        self.save_hyperparameters(
            {
                "pde": pde.to_config(),
                "hidden": [int(h) for h in hidden],
                "activation": activation,
                "normalize_inputs": normalize_inputs,
                "periodic_embedding": periodic_embedding,
                "optimizer": asdict(self.opt_cfg),
                "weights": asdict(self.loss_weights),
            }
        )

    # -- the network -------------------------------------------------------------------------
    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """u at points x, t (both [n]) -> [n]."""
        ts = 2 * (t - self.t_lo) / (self.t_hi - self.t_lo) - 1 if self.normalize_inputs else t
        if self.periodic_embedding:
            phase = 2 * math.pi * (x - self.x_lo) / (self.x_hi - self.x_lo)
            feats = torch.stack([torch.cos(phase), torch.sin(phase), ts], dim=-1)
        else:
            xs = 2 * (x - self.x_lo) / (self.x_hi - self.x_lo) - 1 if self.normalize_inputs else x
            feats = torch.stack([xs, ts], dim=-1)
        return self.net(feats).squeeze(-1)

    @torch.no_grad()
    def predict_grid(self, x: np.ndarray, t: np.ndarray, chunk: int = 65536) -> np.ndarray:
        """u on the tensor grid (t, x) -> [n_t, n_x] as float64 numpy."""
        dtype, device = next(self.parameters()).dtype, next(self.parameters()).device
        tt, xx = np.meshgrid(t, x, indexing="ij")
        xs = torch.as_tensor(xx.ravel(), dtype=dtype, device=device)
        ts = torch.as_tensor(tt.ravel(), dtype=dtype, device=device)
        out = torch.cat([self(xs[i : i + chunk], ts[i : i + chunk]) for i in range(0, xs.numel(), chunk)])
        return out.double().cpu().numpy().reshape(tt.shape)

    # -- the loss ----------------------------------------------------------------------------
    def loss_terms(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        fields = autograd_fields(self, batch["x_f"], batch["t_f"], self.pde.fields)
        pde_loss = self.pde.residual(fields).pow(2).mean()
        ic_loss = (self(batch["x_ic"], torch.full_like(batch["x_ic"], self.t_lo)) - batch["u_ic"]).pow(2).mean()
        t_b = batch["t_b"]
        need_dx = "u_xx" in self.pde.fields  # second-order PDEs also need u_x periodic
        names = ("u", "u_x") if need_dx else ("u",)
        lo = autograd_fields(self, torch.full_like(t_b, self.x_lo), t_b, names)
        hi = autograd_fields(self, torch.full_like(t_b, self.x_hi), t_b, names)
        bc_loss = sum((lo[n] - hi[n]).pow(2).mean() for n in names)
        w = self.loss_weights
        total = w.ic * ic_loss + w.bc * bc_loss + w.pde * pde_loss
        return {"loss": total, "ic": ic_loss, "bc": bc_loss, "pde": pde_loss}


_MAX_LINE_SEARCH = 25  # function evaluations a strong-Wolfe line search may take
