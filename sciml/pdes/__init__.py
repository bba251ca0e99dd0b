"""PDE definitions: parameters, residual functions, initial conditions and reference solvers."""

from .base import PDE, Domain, pde_from_config
from .derivatives import autograd_fields
from .diffusion_sorption import DiffusionSorption
from .periodic1d import Burgers, Convection, ConvectionDiffusion, Reaction, ReactionDiffusion

__all__ = [
    "PDE",
    "Domain",
    "pde_from_config",
    "autograd_fields",
    "Burgers",
    "DiffusionSorption",
    "Convection",
    "ConvectionDiffusion",
    "Reaction",
    "ReactionDiffusion",
]
