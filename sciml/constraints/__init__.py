"""Differentiable constraint layers: batched least-squares solves with implicit gradients."""

from ._solution import Result, Solution, SolveError
from .adjoint import AbstractAdjoint, ImplicitAdjoint, UnrolledAdjoint
from .least_squares import least_squares
from .solvers import AbstractSolver, GaussNewton, LevenbergMarquardt

__all__ = [
    "AbstractAdjoint", "AbstractSolver", "GaussNewton", "ImplicitAdjoint", "LevenbergMarquardt",
    "Result", "Solution", "SolveError", "UnrolledAdjoint", "least_squares",
]
