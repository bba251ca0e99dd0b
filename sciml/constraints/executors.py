"""Where the experts' least-squares problems run: one interface, several places.

An executor takes the batched problem of :func:`~sciml.constraints.least_squares` (problems
along the first axis: batch x experts) and returns its :class:`Solution`, differentiable in the
arguments. :class:`LocalExecutor` solves every problem in one batched call on the tensors'
device; an executor that spreads problems over devices or Ray actors splits along that axis,
solves the parts where they live and concatenates, with identical results.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import Tensor

from ._solution import Solution
from ._solve import Residual
from .adjoint import AbstractAdjoint
from .least_squares import least_squares
from .solvers import AbstractSolver


class Executor(ABC):
    @abstractmethod
    def solve(self, fn: Residual, y0: Tensor, args: Sequence[Tensor], *, solver: AbstractSolver | None,
              adjoint: AbstractAdjoint | None, max_steps: int, dtype: torch.dtype | None) -> Solution:
        """Solve the batched problem (never raises on non-convergence: the status is returned)."""


class LocalExecutor(Executor):
    """All problems in one batched call in this process, on the tensors' device."""

    def solve(self, fn, y0, args, *, solver, adjoint, max_steps, dtype):
        return least_squares(fn, y0, args, solver=solver, adjoint=adjoint, max_steps=max_steps, throw=False, dtype=dtype)
