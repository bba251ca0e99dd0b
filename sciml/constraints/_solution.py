"""The result of a batched solve: the solution and a per-problem status the caller can log."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import torch
from torch import Tensor


class Result(enum.IntEnum):
    """Why a problem's solve ended. Each member carries the message a user sees."""

    successful = 0
    max_steps_reached = 1
    nonfinite = 2

    @property
    def message(self) -> str:
        return {
            Result.successful: "converged",
            Result.max_steps_reached: "did not converge within max_steps; raise max_steps or loosen rtol/atol",
            Result.nonfinite: "the residual or its Jacobian became NaN/Inf; check the residual function and its inputs",
        }[self]


class SolveError(RuntimeError):
    """Raised by ``least_squares(..., throw=True)`` when some problem of the batch failed."""


@dataclass
class Solution:
    """``value`` [batch, n]: the coefficients; ``result`` [batch]: a :class:`Result` per problem;
    ``steps``: solver iterations taken; ``cost`` [batch]: 0.5 |r|^2 at ``value``; ``kept``: what
    the residual kept of its once-per-solve preparation for the implicit backward
    (``fn.keep_for_backward``), None when it keeps nothing or the forward ran elsewhere."""

    value: Tensor
    result: Tensor
    steps: int
    cost: Tensor
    kept: tuple | None = field(default=None, repr=False, compare=False)

    @property
    def successful(self) -> Tensor:
        return self.result == Result.successful

    def summary(self) -> str:
        counts = torch.bincount(self.result.flatten().long(), minlength=len(Result)).tolist()
        parts = [f"{c} {Result(k).name}" for k, c in enumerate(counts) if c]
        return f"{', '.join(parts)} after {self.steps} steps (max cost {float(self.cost.max()):.3g})"

    def raise_if_failed(self) -> None:
        if bool((self.result != Result.successful).any()):
            worst = Result(int(self.result.max()))
            raise SolveError(f"least-squares solve: {self.summary()}: {worst.message}.")
