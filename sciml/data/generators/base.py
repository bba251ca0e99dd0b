"""What every dataset generator provides, so ``generate`` can fan samples out over workers.

A generator is built from its parameters (validated in ``__init__``; bad values raise
:class:`~sciml.errors.ConfigError` naming the value and the fix). It describes the file it fills
(:meth:`Generator.layout`: grid or mesh, quadrature weights, shapes) and computes one sample at a
time (:meth:`Generator.sample`), a pure function of ``(parameters, seed, i)``: sample ``i`` draws
its randomness from ``numpy.random.default_rng([seed, i])`` only, so a dataset is bit-identical
whatever the number of workers and the order in which samples finish.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ...errors import ConfigError
from ..schema import PDEDataset


@dataclass
class Sample:
    """One sample: ``u`` [n_t, *space(, channels)], its numeric ``params`` [n_params], optional ``u0``."""

    u: np.ndarray
    params: np.ndarray
    u0: np.ndarray | None = None


class Generator(ABC):
    """Base class of the named generators of ``sciml data generate``."""

    name: ClassVar[str]
    description: ClassVar[str]

    @abstractmethod
    def layout(self, n: int) -> PDEDataset:
        """The dataset of ``n`` samples with every sample array a :func:`~sciml.data.schema.shape_only`
        placeholder: grid/mesh, weights, parameter names, common params and provenance filled in."""

    @abstractmethod
    def sample(self, i: int, seed: int) -> Sample:
        """Sample ``i`` of the dataset generated with ``seed``; deterministic."""

    def config(self) -> dict[str, Any]:
        """The generator's parameters as plain JSON values (they identify the dataset)."""
        return {k: getattr(self, k) for k in inspect.signature(type(self)).parameters}

    def config_for(self, n: int) -> dict[str, Any]:
        """:meth:`config` with every choice that depends on the number of samples made for ``n``
        (what a file of ``n`` samples records, whether or not it was generated yet)."""
        return self.config()

    @classmethod
    def parameters(cls) -> dict[str, Any]:
        """Parameter names and defaults, for ``sciml data generate --list``."""
        return {p.name: p.default for p in inspect.signature(cls).parameters.values()}


def rng_for(seed: int, i: int) -> np.random.Generator:
    """The random stream of sample ``i``: independent of every other sample and of the workers."""
    return np.random.default_rng([int(seed), int(i)])


def check_int(owner: str, name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{owner}: `{name}` (={value!r}) must be an integer >= {minimum}.")
    return int(value)


def check_real(owner: str, name: str, value: Any, *, positive: bool = False, nonnegative: bool = False) -> float:
    ok = isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool) and np.isfinite(value)
    if ok and positive and not value > 0:
        ok = False
    if ok and nonnegative and not value >= 0:
        ok = False
    if not ok:
        need = "a finite number" + (" > 0" if positive else " >= 0" if nonnegative else "")
        raise ConfigError(f"{owner}: `{name}` (={value!r}) must be {need}.")
    return float(value)
