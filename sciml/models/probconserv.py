"""ProbConserv's probabilistic models (Hansen et al., ICML 2023) as a LightningModule.

:class:`NeuralProcessModel` trains a :class:`sciml.nn.NeuralProcess` on context/target sets of
many functions (:class:`sciml.data.ContextTargetDataModule`): ``kind="anp"`` is the attentive
neural process of the paper, ``kind="cnp"`` the cheap heteroscedastic model (mean-pooled context,
no latent variable) that trains in minutes on a CPU. ``softc_weight`` > 0 adds SoftC-ANP's
penalty: that weight times the mean squared PDE residual of the predicted mean at the target
points (derivatives by autograd with respect to the raw coordinates; each function's parameter
from the dataset).

The conservation update (:mod:`sciml.constraints.conservation`) is not part of the network: it
is applied to any model's mean and variance at evaluation (:mod:`sciml.studies.probconserv`),
so ProbConserv runs on top of the ANP or of the cheap model alike.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..errors import ConfigError, TrainingError
from ..nn.neural_process import Gaussian, NeuralProcess
from ..pdes import PDE, ConservationLaw1D
from ._config import Checkpointed

KINDS = {"anp": {"attention": True, "latent": True}, "cnp": {"attention": False, "latent": False}}


class NeuralProcessModel(Checkpointed, L.LightningModule):
    """A neural process over functions of (t, x[, y]) for the conservation-law datasets.

    Args:
        pde: the conservation law (its domain scales the inputs; its residual serves SoftC).
        kind: "anp" (attentive, latent; ProbConserv's) or "cnp" (cheap heteroscedastic model).
        dim_x: input dimension, 2 for (t, x) and 3 for (t, x, y) on 2D meshes.
        hidden, heads, self_attention, cross_attention, decoder_layers: the network (paper:
            128, 4, 2, 2, 3).
        lr: Adam's learning rate (paper: 1e-4, constant).
        lr_floor: with a value, the rate decays from ``lr`` to it along a cosine over
            ``trainer.max_steps`` (more accuracy from a short training budget); None: constant.
        softc_weight: SoftC-ANP's lambda on the mean squared PDE residual (0: plain model).
        softc_functions: functions per batch the residual is evaluated on (0: all; fewer makes
            SoftC affordable on a CPU, see ``softc_penalty``).
        n_latent: latent samples in prediction (moments of the mixture).
        sigma_g: the constraint noise of ProbConserv's update (0: enforced exactly).
        bounds: [lower, upper] physical bounds of u (None for either side: unbounded), used by the
            bounded ProbConserv variant at evaluation (u >= 0 for densities).
    """

    evaluation = "conservation"  # sciml.pipeline evaluates it with sciml.studies.probconserv

    def __init__(self, pde: PDE, kind: str = "anp", dim_x: int = 2, hidden: int = 128, heads: int = 4,
                 self_attention: int = 2, cross_attention: int = 2, decoder_layers: int = 3, lr: float = 1e-4,
                 softc_weight: float = 0.0, softc_functions: int = 0, n_latent: int = 50, sigma_g: float = 0.0,
                 bounds: list[float | None] | None = None, lr_floor: float | None = None):
        super().__init__()
        if kind not in KINDS:
            raise ConfigError(f"model.kind (={kind!r}) must be one of {sorted(KINDS)}: 'anp' (attentive neural process) or 'cnp' (cheap).")
        if not (isinstance(lr, (int, float)) and lr > 0):
            raise ConfigError(f"model.lr (={lr!r}) must be a number > 0, e.g. 1e-4.")
        if lr_floor is not None and not (isinstance(lr_floor, (int, float)) and not isinstance(lr_floor, bool) and 0 < lr_floor <= lr):
            raise ConfigError(f"model.lr_floor (={lr_floor!r}) must be a number in (0, model.lr = {lr}], e.g. {lr / 100:g}, or null for a constant rate.")
        if isinstance(softc_weight, bool) or not isinstance(softc_weight, (int, float)) or softc_weight < 0:
            raise ConfigError(f"model.softc_weight (={softc_weight!r}) must be a number >= 0 (1 for SoftC-ANP, 0 for none).")
        if isinstance(softc_functions, bool) or not isinstance(softc_functions, int) or softc_functions < 0:
            raise ConfigError(f"model.softc_functions (={softc_functions!r}) must be an integer >= 0 (0: every function of the batch).")
        if softc_weight > 0 and not isinstance(pde, ConservationLaw1D):
            raise ConfigError(f"model.softc_weight > 0 needs a pointwise PDE residual (sciml.pdes.ConservationLaw1D), not {type(pde).__name__}.")
        if isinstance(sigma_g, bool) or not isinstance(sigma_g, (int, float)) or not 0 <= sigma_g < float("inf"):
            raise ConfigError(f"model.sigma_g (={sigma_g!r}) must be a finite number >= 0 (0: the conservation law holds exactly).")
        if bounds is not None and (len(bounds) != 2 or (None not in bounds and bounds[0] >= bounds[1])):
            raise ConfigError(f"model.bounds (={bounds!r}) must be [lower, upper] with lower < upper (null for an open side), e.g. [0.0, null].")
        if bounds is not None and sigma_g > 0:
            raise ConfigError(f"model.bounds (={bounds!r}) with model.sigma_g (={sigma_g!r}) > 0: the bounded update enforces the "
                              "conservation law exactly; set model.sigma_g: 0 or model.bounds: null.")
        if isinstance(n_latent, bool) or not isinstance(n_latent, int) or n_latent < 1:
            raise ConfigError(f"model.n_latent (={n_latent!r}) must be an integer >= 1 (latent samples per prediction; paper: 50).")
        self.pde, self.kind, self.lr, self.softc_weight, self.n_latent = pde, kind, float(lr), float(softc_weight), int(n_latent)
        self.lr_floor = None if lr_floor is None else float(lr_floor)
        self.sigma_g, self.softc_functions = float(sigma_g), int(softc_functions)
        self.bounds = None if bounds is None else [None if b is None else float(b) for b in bounds]
        dom = pde.domain
        lows = [dom.time[0], *(lo for lo, _ in dom.space)]
        highs = [dom.time[1], *(hi for _, hi in dom.space)]
        if len(lows) != dim_x:
            raise ConfigError(f"model.dim_x (={dim_x}) must be {len(lows)} for {type(pde).__name__}: (t, {', '.join('xyz'[:len(lows) - 1])}).")
        shift = [(lo + hi) / 2 for lo, hi in zip(lows, highs)]
        scale = [(hi - lo) / 2 for lo, hi in zip(lows, highs)]
        try:
            self.net = NeuralProcess(dim_x, 1, hidden=hidden, heads=heads, self_attention=self_attention, cross_attention=cross_attention,
                                     decoder_layers=decoder_layers, shift=shift, scale=scale, **KINDS[kind])
        except ValueError as exc:
            raise ConfigError(f"model: {exc}") from exc
        self.model_name = ("softc_" if softc_weight > 0 else "") + kind
        self.save_hyperparameters({
            "pde": pde.to_config(), "kind": kind, "dim_x": dim_x, "hidden": hidden, "heads": heads, "self_attention": self_attention,
            "cross_attention": cross_attention, "decoder_layers": decoder_layers, "lr": self.lr, "lr_floor": self.lr_floor, "softc_weight": self.softc_weight,
            "softc_functions": self.softc_functions,
            "n_latent": self.n_latent, "sigma_g": self.sigma_g, "bounds": self.bounds,
        })
        self.history: dict[str, list[float]] = {"loss": [], "nll": [], "kl": [], "pde": []}

    def predict(self, xc: Tensor, yc: Tensor, xt: Tensor) -> Gaussian:
        """Predictive mean and std [B, n_target, 1] at targets xt given the context (xc, yc)."""
        self.eval()
        p = next(self.parameters())
        return self.net.predict(xc.to(p), yc.to(p), xt.to(p), n_latent=self.n_latent)

    def loss_terms(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        terms = self.net.loss(batch["xc"], batch["yc"], batch["xt"], batch["yt"])
        pde = self.softc_penalty(batch) if self.softc_weight > 0 else terms["loss"].new_zeros(())
        return {**terms, "loss": terms["loss"] + self.softc_weight * pde, "pde": pde.detach()}

    def softc_penalty(self, batch: dict[str, Tensor]) -> Tensor:
        """Mean squared PDE residual of the predicted mean at the targets of the first
        ``softc_functions`` functions of the batch (all with 0): an unbiased estimate of the
        batch mean, since the batch is shuffled. Its second derivatives need a double backward
        through attention, which torch's fused CPU attention kernels lack, so the plain (math)
        kernel runs here: ~10x the cost of the likelihood term per function."""
        k = self.softc_functions or len(batch["xc"])
        xt = batch["xt"][:k].detach().requires_grad_(True)
        with sdpa_kernel(SDPBackend.MATH):
            pred, _ = self.net(batch["xc"][:k], batch["yc"][:k], xt, batch["yt"][:k])
            return self._residual(pred.mean[..., 0], xt, batch["param"][:k]).pow(2).mean()

    def _residual(self, u: Tensor, xt: Tensor, param: Tensor) -> Tensor:
        (g,) = torch.autograd.grad(u.sum(), xt, create_graph=True)
        u_t, u_x = g[..., 0], g[..., 1]
        (g2,) = torch.autograd.grad(u_x.sum(), xt, create_graph=True)
        fields = {"u": u, "u_t": u_t, "u_x": u_x, "u_xx": g2[..., 1], "param": param[:, :1].expand_as(u)}
        return self.pde.residual(fields)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        terms = self.loss_terms(batch)
        if not torch.isfinite(terms["loss"]):
            raise TrainingError(f"the {self.model_name} loss became {float(terms['loss'])} at step {self.global_step}; lower model.lr (={self.lr}).")
        for k in self.history:
            self.history[k].append(float(terms[k].detach()))
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()}, prog_bar=True, on_step=True, on_epoch=False, batch_size=len(batch["xc"]))
        return terms["loss"]

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=self.lr)
        if self.lr_floor is None:
            return optimizer
        steps = self.trainer.max_steps
        if steps is None or steps < 1:
            raise ConfigError(f"model.lr_floor (={self.lr_floor}) decays the rate over trainer.max_steps, which is not set (={steps}); "
                              "set trainer.max_steps or drop model.lr_floor.")
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=self.lr_floor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": cosine, "interval": "step"}}



__all__ = ["KINDS", "NeuralProcessModel"]
