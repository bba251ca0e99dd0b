"""Lagrangian PINN (Mojgani, Balajewicz & Hassanzadeh, CMAME 2023) as a LightningModule.

A periodic 1D transport problem ``u_t + f(u) u_x = R(u, u_xx)`` is solved along its
characteristics instead of on the fixed (Eulerian) grid. With labels x0 (the starting points):

    X_t = f(w),       X(x0, 0) = x0        characteristic branch: where the label is at time t
    w_t = R(w, w_XX), w(x0, 0) = u0(x0)    state branch: the solution carried along it

so that u(X(x0, t), t) = w(x0, t). For pure convection w is constant in t and X = x0 + c t:
both are trivial for a network, whatever c, while the Eulerian field sin(x - c t) is not.

Both the speed and the state equation come from the PDE's own residual r(u, u_t, u_x, u_xx),
which for this class is ``u_t + f(u) u_x - R(u, u_xx)``: f = r(w, 0, 1, 0) - r(w, 0, 0, 0) and
the state residual is r(w, w_t, 0, w_XX). The diffusion term is taken through the chain rule,
w_XX = (w_x0 / X_x0)_x0 / X_x0, not as w_x0x0 (the reference code's shortcut, exact only while
X_x0 = 1). Inputs are embedded as (cos x0, sin x0, t), so both branches are periodic in x0.
With ``ic_exact`` (default) the ansatz X = x0 + t N_x, w = u0(x0) + t N_w satisfies the initial
conditions exactly; otherwise X = x0 + N_x, w = N_w and the loss has IC terms.

Predictions are mapped back onto the Eulerian grid (:func:`to_eulerian`), so the standard
pipeline evaluates and plots an LPINN like any grid model (``predict_grid``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..nn import MLP
from ..pdes import PDE
from .pinn import AdamLBFGSModule, OptimizerConfig


class LPINN(AdamLBFGSModule):
    """Characteristic branch X(x0, t) and state branch w(x0, t), trained Adam then L-BFGS.

    Args:
        pde: a periodic 1D PDE u_t + f(u) u_x = R(u, u_xx) (Convection, ConvectionDiffusion,
            Burgers; Reaction and ReactionDiffusion have f = 0 and X = x0).
        hidden: hidden widths of the state branch N_w.
        characteristic_hidden: hidden widths of the characteristic branch N_x.
        activation: tanh, gelu, silu, relu or sin.
        ic_exact: build the initial conditions into the ansatz (no IC loss term).
        optimizer: Adam then L-BFGS budgets and rates.
    """

    model_name = "lpinn"

    def __init__(
        self,
        pde: PDE,
        hidden: Sequence[int] = (50, 50, 50),
        characteristic_hidden: Sequence[int] = (50, 50),
        activation: str = "tanh",
        ic_exact: bool = True,
        optimizer: OptimizerConfig | None = None,
    ):
        super().__init__(optimizer, terms=("characteristic", "state") if ic_exact else ("ic", "characteristic", "state"))
        _check_transport_form(pde)
        self.pde = pde
        self.ic_exact = ic_exact
        (self.x_lo, self.x_hi), = pde.domain.space
        self.t_lo, self.t_hi = pde.domain.time
        self.state_net = MLP(3, 1, hidden, activation)
        self.characteristic_net = MLP(3, 1, characteristic_hidden, activation)
        self.u0 = TrigInterpolant.from_function(pde.initial_condition, self.x_lo, self.x_hi)
        self.save_hyperparameters(
            {
                "pde": pde.to_config(),
                "hidden": [int(h) for h in hidden],
                "characteristic_hidden": [int(h) for h in characteristic_hidden],
                "activation": activation,
                "ic_exact": ic_exact,
                "optimizer": asdict(self.opt_cfg),
            }
        )

    # -- the two branches ----------------------------------------------------------------------
    def forward(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Position X and state w of the labels x0 at times t (all [n]) -> ([n], [n])."""
        phase = 2 * math.pi * (x0 - self.x_lo) / (self.x_hi - self.x_lo)
        tau = (t - self.t_lo) / (self.t_hi - self.t_lo)
        feats = torch.stack([torch.cos(phase), torch.sin(phase), tau], dim=-1)
        n_x = self.characteristic_net(feats).squeeze(-1)
        n_w = self.state_net(feats).squeeze(-1)
        if self.ic_exact:
            elapsed = t - self.t_lo
            return x0 + elapsed * n_x, self.u0(x0) + elapsed * n_w
        return x0 + n_x, n_w

    def speed(self, w: Tensor) -> Tensor:
        """The characteristic speed f(w), the coefficient of u_x in the PDE's residual."""
        zero = torch.zeros_like(w)
        at = lambda u_x: self.pde.residual({"u": w, "u_t": zero, "u_x": u_x, "u_xx": zero})  # noqa: E731
        return at(torch.ones_like(w)) - at(zero)

    # -- the loss --------------------------------------------------------------------------------
    def loss_terms(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        x0 = batch["x_f"].detach().requires_grad_(True)
        t = batch["t_f"].detach().requires_grad_(True)
        X, w = self(x0, t)
        X_t, w_t = _grad(X, t), _grad(w, t)
        w_XX = lagrangian_wxx(w, X, x0) if "u_xx" in self.pde.fields else torch.zeros_like(w)
        state = self.pde.residual({"u": w, "u_t": w_t, "u_x": torch.zeros_like(w), "u_xx": w_XX})
        terms = {"characteristic": (X_t - self.speed(w)).pow(2).mean(), "state": state.pow(2).mean()}
        if not self.ic_exact:
            x_ic = batch["x_ic"]
            X0, w0 = self(x_ic, torch.full_like(x_ic, self.t_lo))
            terms["ic"] = (X0 - x_ic).pow(2).mean() + (w0 - batch["u_ic"]).pow(2).mean()
        return {"loss": sum(terms.values()), **terms}

    # -- evaluation on the Eulerian grid ---------------------------------------------------------
    @torch.no_grad()
    def predict_lagrangian(self, x0: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """X and w of the labels x0 [n_0] at times t [n_t] -> two [n_t, n_0] float64 arrays."""
        dtype, device = next(self.parameters()).dtype, next(self.parameters()).device
        tt, xx = np.meshgrid(t, x0, indexing="ij")
        X, w = self(torch.as_tensor(xx.ravel(), dtype=dtype, device=device), torch.as_tensor(tt.ravel(), dtype=dtype, device=device))
        return X.double().cpu().numpy().reshape(tt.shape), w.double().cpu().numpy().reshape(tt.shape)

    def predict_grid(self, x: np.ndarray, t: np.ndarray, labels_per_point: int = 4) -> np.ndarray:
        """u on the tensor grid (t, x) -> [n_t, n_x]: the labels' states interpolated at x.

        ``labels_per_point`` labels per grid point, evenly spaced over one period, keep the
        interpolation error (~ (spacing X_x0)^2 |u_xx| / 8) well below the training error.
        """
        labels = self.x_lo + (self.x_hi - self.x_lo) * np.arange(labels_per_point * len(x)) / (labels_per_point * len(x))
        X, w = self.predict_lagrangian(labels, np.asarray(t, dtype=np.float64))
        return to_eulerian(X, w, np.asarray(x, dtype=np.float64), (self.x_lo, self.x_hi))


def lagrangian_wxx(w: Tensor, X: Tensor, x0: Tensor) -> Tensor:
    """w_XX at the labels by the chain rule: w_X = w_x0 / X_x0, w_XX = (w_X)_x0 / X_x0.

    ``w`` and ``X`` [n] must be computed from ``x0`` [n] (which requires grad), pointwise in
    x0; the graph is kept so a loss on the result can be minimised.
    """
    X_x0 = _grad(X, x0)
    w_X = _grad(w, x0) / X_x0
    return _grad(w_X, x0) / X_x0


def to_eulerian(X: np.ndarray, w: np.ndarray, x: np.ndarray, domain: tuple[float, float]) -> np.ndarray:
    """Map label states back onto a fixed grid: u(x, t_j) from the pairs (X[j], w[j]).

    ``X`` and ``w`` are [n_t, n_labels], ``x`` [n_x]. Positions are wrapped into the period
    ``domain`` = (lo, hi) and, per time, w is interpolated linearly at x (periodically, so the
    labels that crossed ``hi`` wrap round to ``lo``). Returns [n_t, n_x].
    """
    X, w = np.asarray(X, dtype=np.float64), np.asarray(w, dtype=np.float64)
    if X.shape != w.shape or X.ndim != 2:
        raise ValueError(f"`X` (shape {X.shape}) and `w` (shape {w.shape}) must both be [n_t, n_labels].")
    lo, hi = domain
    if not hi > lo:
        raise ValueError(f"`domain` (={domain}) must be (lo, hi) with hi > lo.")
    return np.stack([np.interp(x - lo, Xj - lo, wj, period=hi - lo) for Xj, wj in zip(X, w)])


class TrigInterpolant(nn.Module):
    """A periodic function as a differentiable trigonometric sum a0 + sum a_k cos kp + b_k sin kp,
    p = 2 pi (x - lo) / (hi - lo): the initial condition in the IC-exact ansatz, with exact
    derivatives by autograd (the diffusion term needs u0')."""

    def __init__(self, coefficients: np.ndarray, lo: float, hi: float):
        super().__init__()
        c = np.asarray(coefficients)  # rfft of the samples, divided by their number
        keep = np.flatnonzero(np.abs(c) > 1e-13 * np.abs(c).max(initial=1e-300))
        keep = keep[keep > 0]
        self.lo, self.hi = lo, hi
        self.mean = float(c[0].real)
        # float64 whatever the module's dtype (an IC-exact ansatz should be exact), and not saved
        # in checkpoints: rebuilt from the PDE's initial condition.
        as_buffer = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
        self.register_buffer("k", as_buffer(keep), persistent=False)
        self.register_buffer("a", as_buffer(2 * c[keep].real), persistent=False)
        self.register_buffer("b", as_buffer(-2 * c[keep].imag), persistent=False)

    @classmethod
    def from_function(cls, fn, lo: float, hi: float, n: int = 512) -> TrigInterpolant:
        """Interpolate ``fn`` (numpy in, numpy out) at ``n`` equispaced points of [lo, hi)."""
        x = lo + (hi - lo) * np.arange(n) / n
        c = np.fft.rfft(np.asarray(fn(x), dtype=np.float64)) / n
        return cls(c[: (n - 1) // 2 + 1], lo, hi)  # the Nyquist mode has no odd part: drop it

    def forward(self, x: Tensor) -> Tensor:
        """u0 at x [n] -> [n], in x's dtype."""
        phase = (2 * math.pi * (x.to(self.k.dtype) - self.lo) / (self.hi - self.lo))[..., None] * self.k
        return (self.mean + (torch.cos(phase) * self.a + torch.sin(phase) * self.b).sum(-1)).to(x.dtype)


def _grad(y: Tensor, x: Tensor) -> Tensor:
    if not y.requires_grad:  # y does not depend on x at all (e.g. w = u0 for a constant u0)
        return torch.zeros_like(x)
    (dy,) = torch.autograd.grad(y, x, torch.ones_like(y), create_graph=True, allow_unused=True)
    return torch.zeros_like(x) if dy is None else dy


def _check_transport_form(pde: PDE) -> None:
    """LPINN needs a periodic 1D PDE whose residual is u_t + f(u) u_x - R(u, u_xx)."""
    domain = pde.domain
    if not (domain.periodic and len(domain.space) == 1):
        raise ConfigError(f"LPINN follows characteristics round a period: it needs a periodic 1D PDE, and {type(pde).__name__} is not one. "
                          "Use sciml.pdes.Convection, ConvectionDiffusion or Burgers.")
    u = torch.tensor([-1.3, 0.4, 2.0], dtype=torch.float64)
    r = lambda u_t, u_x: pde.residual({"u": u, "u_t": torch.full_like(u, u_t), "u_x": torch.full_like(u, u_x), "u_xx": torch.full_like(u, 0.7)})  # noqa: E731
    unit_time = torch.allclose(r(1.0, 0.5) - r(0.0, 0.5), torch.ones_like(u))
    affine_x = torch.allclose(r(0.0, 2.0) - r(0.0, 1.0), r(0.0, 1.0) - r(0.0, 0.0))
    if not (unit_time and affine_x):
        raise ConfigError(f"LPINN needs a residual of the form u_t + f(u) u_x - R(u, u_xx); {type(pde).__name__}'s is not.")
