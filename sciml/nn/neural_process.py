"""Neural processes (pure torch): a distribution over functions conditioned on scattered samples.

Given a context set {(x_i, y_i)} of one function and target inputs x*, a neural process returns
a Gaussian mean mu(x*) and standard deviation sigma(x*) at every target (Garnelo et al. 2018).

- :class:`NeuralProcess` with ``attention=True, latent=True`` is the Attentive Neural Process
  (Kim et al. 2019) as ProbConserv uses it: a deterministic path (MLP of (x, y), self-attention
  layers, then cross-attention with target queries against context keys, so each target gets its
  own summary r*) and a latent path (MLP, self-attention, mean pool -> q(z | context), a Gaussian
  with sigma = 0.1 + 0.9 sigmoid); the decoder MLP maps (x*, r*, z) to mu and
  sigma = min_sigma + softplus.
- ``attention=False, latent=False`` is the conditional neural process: mean pooling instead of
  attention and no latent variable, a heteroscedastic MLP conditioned on the context, which
  trains in minutes on a CPU.

Training maximises the evidence lower bound: with q(z | C u T) from context and targets,
``loss = -mean_T log N(y; mu, sigma^2) + KL(q(z | C u T) || q(z | C)) / |T|``. Prediction
samples z from q(z | C) and returns the moments of the mixture (mean of the means; mean of the
variances plus the variance of the means).

Inputs are batched: x [B, n, dim_x], y [B, n, dim_y]. Coordinates are mapped to [-1, 1] by a
fixed affine ``shift``/``scale`` (the data's domain) inside the network, so the caller may
differentiate the outputs with respect to the raw coordinates (SoftC's PDE residual).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .mlp import MLP


class Gaussian(NamedTuple):
    mean: Tensor
    std: Tensor

    @property
    def var(self) -> Tensor:
        return self.std.pow(2)

    def log_prob(self, y: Tensor) -> Tensor:
        return torch.distributions.Normal(self.mean, self.std, validate_args=False).log_prob(y)


class _Attention(nn.Module):
    """Multi-head attention with a residual connection and layer norm (post-norm)."""

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.norm = nn.LayerNorm(hidden)
        self.ff = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
        self.norm2 = nn.LayerNorm(hidden)

    def forward(self, query: Tensor, key: Tensor, value: Tensor) -> Tensor:
        h = self.norm(query + self.attn(query, key, value, need_weights=False)[0])
        return self.norm2(h + self.ff(h))


class NeuralProcess(nn.Module):
    """An attentive (``attention=True``) and/or latent (``latent=True``) neural process.

    Args:
        dim_x, dim_y: input and output dimensions (e.g. 2 for (t, x), 1 for u).
        hidden: width of every layer and of r and z (ProbConserv: 128).
        heads: attention heads (4).
        self_attention: self-attention layers in each encoder path (2).
        cross_attention: cross-attention layers of the deterministic path (2).
        decoder_layers: hidden layers of the decoder (3).
        min_sigma: floor of the predicted standard deviation (1e-3).
        shift, scale: x -> (x - shift) / scale, per input dimension (default: identity).
    """

    def __init__(self, dim_x: int, dim_y: int = 1, hidden: int = 128, heads: int = 4, attention: bool = True,
                 latent: bool = True, self_attention: int = 2, cross_attention: int = 2, decoder_layers: int = 3,
                 min_sigma: float = 1e-3, shift: Sequence[float] | None = None, scale: Sequence[float] | None = None):
        super().__init__()
        for name, value, low in (("dim_x", dim_x, 1), ("dim_y", dim_y, 1), ("hidden", hidden, 1), ("heads", heads, 1),
                                 ("self_attention", self_attention, 0), ("cross_attention", cross_attention, 0),
                                 ("decoder_layers", decoder_layers, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"`{name}` (={value!r}) must be an integer >= {low}.")
        if attention and cross_attention < 1:
            raise ValueError(f"`cross_attention` (={cross_attention}) must be >= 1 with attention: the targets read the context "
                             "through it (attention=False for a plain neural process with a mean-pooled r).")
        if attention and hidden % heads:
            raise ValueError(f"`hidden` (={hidden}) must be a multiple of `heads` (={heads}) for multi-head attention.")
        if not min_sigma > 0:
            raise ValueError(f"`min_sigma` (={min_sigma!r}) must be > 0: the likelihood needs a positive variance.")
        self.dim_x, self.dim_y, self.attention, self.latent, self.min_sigma = dim_x, dim_y, attention, latent, float(min_sigma)
        self.register_buffer("shift", torch.zeros(dim_x) if shift is None else torch.as_tensor(shift, dtype=torch.float32).reshape(dim_x))
        self.register_buffer("scale", torch.ones(dim_x) if scale is None else torch.as_tensor(scale, dtype=torch.float32).reshape(dim_x))
        act = "relu"
        self.det_encoder = MLP(dim_x + dim_y, hidden, [hidden, hidden], activation=act)
        if attention:
            self.det_self = nn.ModuleList(_Attention(hidden, heads) for _ in range(self_attention))
            self.query = MLP(dim_x, hidden, [hidden], activation=act)
            self.key = MLP(dim_x, hidden, [hidden], activation=act)
            self.cross = nn.ModuleList(_Attention(hidden, heads) for _ in range(cross_attention))
        if latent:
            self.lat_encoder = MLP(dim_x + dim_y, hidden, [hidden, hidden], activation=act)
            self.lat_self = nn.ModuleList(_Attention(hidden, heads) for _ in range(self_attention if attention else 0))
            self.lat_head = MLP(hidden, 2 * hidden, [hidden], activation=act)
        width_in = dim_x + hidden * (2 if latent else 1)
        self.decoder = MLP(width_in, 2 * dim_y, [hidden] * decoder_layers, activation=act)

    def _x(self, x: Tensor) -> Tensor:
        return (x - self.shift.to(x.dtype)) / self.scale.to(x.dtype)

    # -- the two encoder paths ---------------------------------------------------------------------
    def deterministic(self, xc: Tensor, yc: Tensor, xt: Tensor) -> Tensor:
        """r* [B, n_target, hidden]: the context summarised for each target."""
        xc, xt = self._x(xc), self._x(xt)
        r = self.det_encoder(torch.cat([xc, yc], dim=-1))
        if not self.attention:
            return r.mean(dim=1, keepdim=True).expand(-1, xt.shape[1], -1)
        for layer in self.det_self:
            r = layer(r, r, r)
        q, k = self.query(xt), self.key(xc)
        for layer in self.cross:
            q = layer(q, k, r)
        return q

    def latent_dist(self, x: Tensor, y: Tensor) -> Gaussian:
        """q(z | (x, y)): a diagonal Gaussian [B, hidden]."""
        s = self.lat_encoder(torch.cat([self._x(x), y], dim=-1))
        for layer in self.lat_self:
            s = layer(s, s, s)
        mean, raw = self.lat_head(s.mean(dim=1)).chunk(2, dim=-1)
        return Gaussian(mean, 0.1 + 0.9 * torch.sigmoid(raw))

    def decode(self, xt: Tensor, r: Tensor, z: Tensor | None) -> Gaussian:
        parts = [self._x(xt), r] + ([z[:, None, :].expand(-1, xt.shape[1], -1)] if z is not None else [])
        mean, raw = self.decoder(torch.cat(parts, dim=-1)).chunk(2, dim=-1)
        return Gaussian(mean, self.min_sigma + F.softplus(raw))

    # -- training and prediction ---------------------------------------------------------------------
    def forward(self, xc: Tensor, yc: Tensor, xt: Tensor, yt: Tensor | None = None) -> tuple[Gaussian, Tensor]:
        """(p(y* | ...) at the targets, KL term [B]). With ``yt`` (training) z comes from
        q(z | context u targets) and the KL to q(z | context) is returned; else from q(z | context)."""
        self._check(xc, yc, xt)
        r = self.deterministic(xc, yc, xt)
        kl = xc.new_zeros(xc.shape[0])
        z = None
        if self.latent:
            prior = self.latent_dist(xc, yc)
            if yt is not None:
                post = self.latent_dist(torch.cat([xc, xt], 1), torch.cat([yc, yt], 1))
                z = post.mean + post.std * torch.randn_like(post.std)
                q, p = (torch.distributions.Normal(*moments, validate_args=False) for moments in (post, prior))
                kl = torch.distributions.kl_divergence(q, p).sum(-1)
            else:
                z = prior.mean + prior.std * torch.randn_like(prior.std)
        return self.decode(xt, r, z), kl

    def loss(self, xc: Tensor, yc: Tensor, xt: Tensor, yt: Tensor) -> dict[str, Tensor]:
        """The negative ELBO per target point, averaged over the batch, and its two parts."""
        pred, kl = self(xc, yc, xt, yt)
        nll = -pred.log_prob(yt).mean()
        kl = (kl / xt.shape[1]).mean()
        return {"loss": nll + kl, "nll": nll, "kl": kl}

    @torch.no_grad()
    def predict(self, xc: Tensor, yc: Tensor, xt: Tensor, n_latent: int = 50, chunk: int = 4096) -> Gaussian:
        """Predictive mean and standard deviation [B, n_target, dim_y]: the moments of the
        mixture over ``n_latent`` latent samples (one pass when there is no latent variable).
        Targets are processed ``chunk`` at a time (attention memory grows with them), every chunk
        with the same latent samples, so the prediction does not change where chunks meet."""
        self._check(xc, yc, xt)
        if isinstance(n_latent, bool) or not isinstance(n_latent, int) or n_latent < 1:
            raise ValueError(f"`n_latent` (={n_latent!r}) must be an integer >= 1.")
        chunks = xt.split(chunk, dim=1)
        if not self.latent:
            parts = [self.decode(x, self.deterministic(xc, yc, x), None) for x in chunks]
        else:
            prior = self.latent_dist(xc, yc)
            zs = [prior.mean + prior.std * torch.randn_like(prior.std) for _ in range(n_latent)]
            parts = [self._mixture(x, self.deterministic(xc, yc, x), zs) for x in chunks]
        return parts[0] if len(parts) == 1 else Gaussian(torch.cat([p.mean for p in parts], 1), torch.cat([p.std for p in parts], 1))

    def _mixture(self, xt: Tensor, r: Tensor, zs: list[Tensor]) -> Gaussian:
        """The moments of the decoded mixture over the latent samples ``zs``, in float64, its spread
        of means by Welford's update: as E[var + mean^2] - E[mean]^2 in float32 a variance near
        min_sigma^2 under |u| ~ 1 would lose most of its digits to cancellation."""
        mean = spread = within = torch.zeros((), dtype=torch.float64, device=xt.device)
        for i, z in enumerate(zs, start=1):
            p = self.decode(xt, r, z)
            m = p.mean.double()
            d = m - mean
            mean = mean + d / i
            spread = spread + d * (m - mean)
            within = within + p.var.double()
        var = (within + spread) / len(zs)
        return Gaussian(mean.to(p.mean.dtype), var.clamp_min(self.min_sigma**2).sqrt().to(p.mean.dtype))

    def _check(self, xc: Tensor, yc: Tensor, xt: Tensor) -> None:
        ok = (xc.ndim == yc.ndim == xt.ndim == 3 and xc.shape[:2] == yc.shape[:2] and xc.shape[0] == xt.shape[0]
              and xc.shape[-1] == xt.shape[-1] == self.dim_x and yc.shape[-1] == self.dim_y)
        if not ok:
            raise ValueError(f"context x {list(xc.shape)}, y {list(yc.shape)} and target x {list(xt.shape)} must be "
                             f"[batch, n, {self.dim_x}], [batch, n, {self.dim_y}] and [batch, n_target, {self.dim_x}].")
        if xc.shape[1] == 0:
            raise ValueError("the context is empty: a neural process needs at least one context point per function.")


__all__ = ["Gaussian", "NeuralProcess"]
