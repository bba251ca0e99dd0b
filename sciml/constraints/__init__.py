"""Differentiable constraint layers: batched least-squares solves with implicit gradients."""

from ._solution import Result, Solution, SolveError
from .adjoint import AbstractAdjoint, ImplicitAdjoint, UnrolledAdjoint
from .conservation import ConservationLayer, ConservedPosterior, bounded_update, conservation_update, hard_projection
from .convex import Bounds, ConvexConstraint, equality_projection
from .executors import Executor, LocalExecutor, RayExecutor
from .fields import GridFields, derivative, grid_fields, stream_function
from .hard import HardConstraint, Partition, Rows
from .least_squares import least_squares
from .solvers import AbstractSolver, GaussNewton, LevenbergMarquardt

__all__ = [
    "AbstractAdjoint", "AbstractSolver", "Bounds", "ConvexConstraint", "Executor", "GaussNewton", "GridFields", "HardConstraint", "ImplicitAdjoint",
    "LevenbergMarquardt", "LocalExecutor", "Partition", "RayExecutor", "Result", "Rows", "Solution", "SolveError",
    "UnrolledAdjoint", "derivative", "equality_projection", "grid_fields", "least_squares",
    "ConservationLayer", "ConservedPosterior", "bounded_update", "conservation_update", "hard_projection",
    "stream_function",
]
