"""The PDE contract: a PDE is data (parameters + a residual function), shared by every model.

A residual takes a mapping of named fields evaluated at the same points, e.g.
``{"u": ..., "u_t": ..., "u_x": ..., "u_xx": ...}``, and returns the residual at those points.
How the fields were computed (autograd for PINNs, finite differences or FFT for hard-constraint
layers) is the caller's business, so one residual serves every model.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
import numbers
import sys
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError


@dataclass(frozen=True)
class Domain:
    """An axis-aligned space-time box. ``space`` holds one (low, high) pair per spatial axis."""

    space: tuple[tuple[float, float], ...]
    time: tuple[float, float]
    periodic: bool

    @property
    def lengths(self) -> tuple[float, ...]:
        return tuple(hi - lo for lo, hi in self.space)


class PDE(ABC):
    """Base class of every PDE definition.

    Subclasses are small frozen dataclasses of physical parameters. They declare which fields
    their residual needs (``fields``), their domain, initial condition and, where one exists, a
    reference solver on a grid.
    """

    name: ClassVar[str]
    fields: ClassVar[tuple[str, ...]]

    @property
    @abstractmethod
    def domain(self) -> Domain: ...

    @abstractmethod
    def residual(self, f: Mapping[str, Tensor]) -> Tensor:
        """The PDE residual at the points where the fields ``f`` were evaluated."""

    def residual_slopes(self, f: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """The residual and its derivative with respect to each field of ``fields`` at every
        point, {name: dR/df_name} (each broadcastable to the residual), as the hard-constraint
        layer's Jacobian needs them. The residual at a point depends on the fields at that point
        only, so one vector-Jacobian product with ones gives every slope; a PDE may override this
        with a closed form that agrees with it (and stays differentiable)."""
        names = tuple(self.fields)
        r, pullback = torch.func.vjp(lambda *fs: self.residual(dict(zip(names, fs))), *(f[n] for n in names))
        return r, dict(zip(names, pullback(torch.ones_like(r))))

    @abstractmethod
    def initial_condition(self, x: np.ndarray) -> np.ndarray:
        """u(x, t=0) on points x, shape [n_x]."""

    def reference_solution(self, u0: np.ndarray, x: np.ndarray, t: np.ndarray) -> np.ndarray:
        """A numerical reference solution [..., n_t, n_x] from u0 [..., n_x] on the grid (x, t)."""
        raise NotImplementedError(f"{type(self).__name__} has no reference solver")

    def params(self) -> dict[str, Any]:
        """The PDE's parameters as plain JSON-able values."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def to_config(self) -> dict[str, Any]:
        """A plain-data description that :func:`pde_from_config` turns back into this PDE."""
        cls = type(self)
        return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": self.params()}


def pde_from_config(config: Mapping[str, Any]) -> PDE:
    """Rebuild a PDE from ``{"class_path": "module.Class", "init_args": {...}}``.

    Only subclasses of :class:`PDE` are built, so a checkpoint cannot name arbitrary callables.
    """
    if not isinstance(config, Mapping):
        raise ConfigError(f"a PDE config must be a mapping {{class_path: ..., init_args: {{...}}}}, got {config!r}")
    path = str(config.get("class_path", ""))
    module_name, _, cls_name = path.rpartition(".")
    # A file names the class: import sciml's own modules only. Another one must be imported
    # already (the user's own PDE, by the user), or reading a checkpoint could run any module.
    if not (module_name == "sciml" or module_name.startswith("sciml.")) and module_name not in sys.modules:
        raise ConfigError(f"PDE class_path {path!r} is outside sciml and its module is not imported; a checkpoint "
                          f"or config may only name sciml.pdes.* or a module you imported yourself (import {module_name} first "
                          "if you trust it).")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"unknown PDE class_path {path!r}: {exc}. Use one of sciml.pdes.*") from exc
    if not (isinstance(cls, type) and issubclass(cls, PDE)) or inspect.isabstract(cls):
        raise ConfigError(f"class_path {path!r} is not a concrete sciml PDE (a subclass of sciml.pdes.PDE, e.g. sciml.pdes.Convection)")
    init_args = config.get("init_args") or {}
    if not isinstance(init_args, Mapping):
        raise ConfigError(f"init_args of {path!r} must be a mapping of parameters, got {init_args!r}")
    valid = list(inspect.signature(cls).parameters)
    if unknown := sorted(set(init_args) - set(valid)):
        raise ConfigError(f"{cls.__name__} has no parameter {unknown[0]!r}; its parameters are {', '.join(valid)}.")
    return cls(**init_args)


def check_real(owner: object, name: str, *, nonnegative: bool = False) -> None:
    """Check a parameter that may come from YAML, the command line or numpy, and store it as a
    plain float so that configs and checkpoints (loaded with weights_only=True) hold no numpy."""
    cls, value = type(owner).__name__, getattr(owner, name)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{cls}: `{name}` (={value!r}) must be a real number, e.g. {name}=1.0.")
    if not math.isfinite(value):
        raise ConfigError(f"{cls}: `{name}` (={value}) must be finite.")
    if nonnegative and value < 0:
        raise ConfigError(f"{cls}: `{name}` (={value}) must be >= 0.")
    object.__setattr__(owner, name, float(value))  # the dataclass is frozen
