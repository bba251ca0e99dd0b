"""Where the experts' least-squares problems run: one interface, several places.

An executor takes the batched problem of :func:`~sciml.constraints.least_squares` (problems
along the first axis: batch x experts) and returns its :class:`Solution`, differentiable in the
arguments. :class:`LocalExecutor` solves every problem in one batched call on the tensors'
device; :class:`RayExecutor` splits that axis into contiguous chunks, solves each chunk's
forward on a Ray worker and concatenates: the same solutions to round-off (~1e-14; the gradients
to ~1e-12, as the backward forms the rows' Gram matrix again where a worker's forward kept
nothing). Its gradients come from the implicit adjoint, attached in this process: the backward
needs only the converged y* and the arguments (:mod:`sciml.constraints.adjoint`), not the
iterations the workers ran.
"""

from __future__ import annotations

import dataclasses
import functools
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import Tensor

from .._ray import connect
from ._solution import Solution
from ._solve import Residual, solve
from .adjoint import AbstractAdjoint, ImplicitAdjoint
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


class RayExecutor(Executor):
    """The problems split into ``num_workers`` contiguous chunks, each solved by a Ray task.

    The tasks get CPU copies of their chunk (``fn`` is pickled with them) and solve it without
    autograd, on a GPU when the tensors are on CUDA and the cluster has GPUs, else on a CPU;
    the solutions and statuses come back in problem order. Gradients: implicit adjoint only
    (the default), attached here from the gathered y*; an unrolled adjoint needs the solver's
    iterations in this process: use :class:`LocalExecutor` for it.

    Tensor arguments whose first axis has one entry per problem are split with the problems; any
    other tensor (shared by the batch: a scalar, a grid) goes whole to every chunk. A shared tensor
    whose first axis happens to have the batch's length cannot be told apart: give it a leading
    axis of 1 (or expand it over the batch).

    Args:
        address: a running Ray cluster (``ray start --head`` prints it); None starts a local
            one with ``num_workers`` CPUs unless Ray is already initialised in this process.
        num_workers: chunks per solve, one Ray task each.
    """

    def __init__(self, address: str | None = None, num_workers: int = 2):
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
            raise ValueError(f"`num_workers` (={num_workers!r}) must be an integer >= 1.")
        self.address, self.num_workers = address, num_workers
        self._started = False  # whether this executor started the Ray instance (close() stops it)

    def close(self) -> None:
        """Shut down the Ray instance this executor started (one it joined stays up)."""
        if self._started:
            import ray

            ray.shutdown()
            self._started = False

    def solve(self, fn, y0, args, *, solver, adjoint, max_steps, dtype):
        adjoint = adjoint or ImplicitAdjoint()
        if not isinstance(adjoint, ImplicitAdjoint):
            raise ValueError(f"RayExecutor takes `adjoint`=ImplicitAdjoint (the gradient is attached from the workers' "
                             f"solutions), got {adjoint!r}; use LocalExecutor for {type(adjoint).__name__}.")
        adjoint = dataclasses.replace(adjoint, forward=self._forward)
        return least_squares(fn, y0, args, solver=solver, adjoint=adjoint, max_steps=max_steps, throw=False, dtype=dtype)

    def _forward(self, fn: Residual, y0: Tensor, args: Sequence[Tensor], solver: AbstractSolver, max_steps: int) -> Solution:
        """The forward solve on the workers, gathered on ``y0``'s device (no autograd graph)."""
        ray = self._ray()
        gpus = ray.cluster_resources().get("GPU", 0) if y0.is_cuda else 0
        device = "cuda" if gpus > 0 else "cpu"
        task = _remote_chunk(ray).options(num_cpus=1, num_gpus=min(1.0, gpus / self.num_workers))
        batch = len(y0)

        def split(a, part):  # a per-problem tensor's chunk; a shared one whole
            if not torch.is_tensor(a):
                return a
            return a[part].cpu() if a.ndim and a.shape[0] == batch else a.cpu()

        refs = [task.remote(fn, y0[part].cpu(), [split(a, part) for a in args], solver, max_steps, device)
                for part in torch.arange(batch).tensor_split(self.num_workers) if len(part)]
        try:
            parts = ray.get(refs)
        except ray.exceptions.RayTaskError as exc:  # the worker's own error, e.g. a bad residual
            raise (exc.cause if isinstance(exc.cause, Exception) else exc) from None
        return Solution(
            value=torch.cat([p.value for p in parts]).to(y0.device),
            result=torch.cat([p.result for p in parts]).to(y0.device),
            steps=max(p.steps for p in parts),
            cost=torch.cat([p.cost for p in parts]).to(y0.device),
        )

    def _ray(self):
        ray, started = connect(self.address, self.num_workers, "RayExecutor (solver.executor='ray')", "`address`")
        self._started = self._started or started
        return ray

    def __repr__(self) -> str:
        return f"RayExecutor(address={self.address!r}, num_workers={self.num_workers})"


def _solve_chunk(fn: Residual, y0: Tensor, args: list, solver: AbstractSolver, max_steps: int, device: str) -> Solution:
    """On a Ray worker: one chunk's forward solve, returned on the CPU."""
    with torch.no_grad():
        sol = solve(fn, y0.to(device), [a.to(device) if torch.is_tensor(a) else a for a in args], solver, max_steps)
    return Solution(value=sol.value.cpu(), result=sol.result.cpu(), steps=sol.steps, cost=sol.cost.cpu())


@functools.cache
def _remote_chunk(ray):
    """``_solve_chunk`` as a Ray remote function, made once per process."""
    return ray.remote(_solve_chunk)
