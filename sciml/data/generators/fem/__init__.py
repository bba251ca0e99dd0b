"""DOLFINx finite-element dataset generators (imported lazily: `mpi4py` before `dolfinx`).

``gpme``: heat, porous medium and Stefan problems (``FEM_GENERATORS``);
``diffusion_sorption``: PDEBench's 1D diffusion-sorption. Import the modules themselves; this
package imports nothing, so ``import sciml`` works without DOLFINx.
"""
