"""PDE definitions: parameters, residual functions, initial conditions and reference solvers."""

from .base import PDE, Domain, pde_from_config
from .conservation_laws import ConservationLaw1D, MeshConservationLaw
from .derivatives import autograd_fields
from .diffusion_sorption import DiffusionSorption
from .navier_stokes import NavierStokes2D
from .periodic1d import Burgers, Convection, ConvectionDiffusion, Reaction, ReactionDiffusion

__all__ = [
    "PDE",
    "Domain",
    "pde_from_config",
    "autograd_fields",
    "Burgers",
    "ConservationLaw1D",
    "MeshConservationLaw",
    "DiffusionSorption",
    "Convection",
    "ConvectionDiffusion",
    "Reaction",
    "ReactionDiffusion",
    "NavierStokes2D",
]
