"""Fields of a network's output by automatic differentiation, for PDE residuals."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

_KNOWN = ("u", "u_t", "u_x", "u_xx")


def autograd_fields(u_fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, t: Tensor, names: Iterable[str]) -> dict[str, Tensor]:
    """Evaluate ``u = u_fn(x, t)`` and the derivatives in ``names`` at points x, t (both [n]).

    The graph is kept (``create_graph=True``) so a loss on the fields can be minimised.
    """
    names = tuple(names)
    unknown = set(names) - set(_KNOWN)
    if unknown:
        raise ValueError(f"unknown field(s) {sorted(unknown)}; autograd_fields computes {list(_KNOWN)}")
    x = x.detach().requires_grad_(True)
    t = t.detach().requires_grad_(True)
    u = u_fn(x, t)
    out = {"u": u}

    def grad(y: Tensor, wrt: Tensor) -> Tensor:
        # A field that does not depend on `wrt` (u constant in x, or u_x of a u linear in x)
        # has no graph to it; its derivative is zero, not an autograd error.
        if not y.requires_grad:
            return torch.zeros_like(wrt)
        (dy,) = torch.autograd.grad(y, wrt, torch.ones_like(y), create_graph=True, allow_unused=True)
        return torch.zeros_like(wrt) if dy is None else dy

    if "u_t" in names:
        out["u_t"] = grad(u, t)
    if "u_x" in names or "u_xx" in names:
        u_x = grad(u, x)
        out["u_x"] = u_x
        if "u_xx" in names:
            out["u_xx"] = grad(u_x, x)
    return out
