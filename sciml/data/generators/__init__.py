"""Named dataset generators for ``sciml data generate NAME``.

The 1D periodic family is solved by the spectral reference solvers. With ``n=1`` and no
``random_ic`` a dataset holds the PDE's own initial condition (what a PINN is checked against);
otherwise each sample starts from a random smooth initial condition drawn from
``numpy.random.default_rng([seed, i])``, so sample i is the same whatever else is generated.
Generation writes one sample at a time and resumes where a killed run stopped.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import Progress

from ... import __version__
from ...errors import ConfigError
from ...pdes import PDE, Burgers, Convection, ConvectionDiffusion, Reaction, ReactionDiffusion, pde_from_config
from ..schema import DatasetWriter, PDEDataset, shape_only
from . import spectral


@dataclass(frozen=True)
class GeneratorSpec:
    name: str
    pde_class: type[PDE]
    description: str


GENERATORS: dict[str, GeneratorSpec] = {
    spec.name: spec
    for spec in (
        GeneratorSpec("convection", Convection, "u_t + beta u_x = 0, exact in Fourier space"),
        GeneratorSpec("convection_diffusion", ConvectionDiffusion, "u_t + beta u_x = nu u_xx, exact in Fourier space"),
        GeneratorSpec("reaction", Reaction, "u_t = rho u (1 - u), logistic closed form"),
        GeneratorSpec("reaction_diffusion", ReactionDiffusion, "u_t = nu u_xx + rho u (1 - u), Strang splitting"),
        GeneratorSpec("burgers", Burgers, "u_t + u u_x = nu u_xx, pseudo-spectral ETDRK4 with 2/3 dealiasing"),
    )
}


def describe_generators() -> str:
    rows = []
    for spec in GENERATORS.values():
        params = ", ".join(f"{p.name}={p.default!r}" for p in inspect.signature(spec.pde_class).parameters.values())
        rows.append(f"{spec.name:<22} {spec.description}\n{'':<22} parameters: {params}")
    return "\n".join(rows)


def make_pde(name: str, params: dict[str, Any]) -> PDE:
    if name not in GENERATORS:
        import difflib

        close = difflib.get_close_matches(name, list(GENERATORS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown generator {name!r}.{hint} Available: {', '.join(GENERATORS)} (see `sciml data generate --list`).")
    cls = GENERATORS[name].pde_class
    return pde_from_config({"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": params})


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"`{name}` (={value!r}) must be an integer >= {minimum}.")


def _grid(pde: PDE, nx: int, nt: int) -> tuple[np.ndarray, np.ndarray]:
    _check_int("nx", nx, 4)
    _check_int("nt", nt, 2)
    (lo, hi), = pde.domain.space
    return lo + spectral.periodic_grid(nx, hi - lo), np.linspace(*pde.domain.time, nt)


def _numeric_params(pde: PDE) -> tuple[list[str], np.ndarray]:
    items = [(k, float(v)) for k, v in pde.params().items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return [k for k, _ in items], np.array([v for _, v in items], dtype=np.float64)


def _template(pde: PDE, x, t, u, sha: str = "", u0=None) -> PDEDataset:
    names, values = _numeric_params(pde)
    n = u.shape[0]
    return PDEDataset(
        pde=pde.name, u=u, grid={"x": x, "t": t}, params=np.broadcast_to(values, (n, len(values))),
        param_names=names, common_params=pde.params(), generator=f"sciml {__version__} spectral ({GENERATORS[pde.name].description})",
        config_sha=sha, u0=u0, weights=np.full(len(x), (x[1] - x[0])),  # periodic rectangle rule
    )


def reference_dataset(pde: PDE, nx: int = 256, nt: int = 100) -> PDEDataset:
    """The PDE's reference solution from its own initial condition, as a one-sample dataset."""
    x, t = _grid(pde, nx, nt)
    u0 = pde.initial_condition(x)
    u = pde.reference_solution(u0, x, t)
    return _template(pde, x, t, u[None], u0=u0[None])


def generate(
    name: str,
    out: str | Path,
    n: int = 1,
    seed: int = 0,
    nx: int = 256,
    nt: int = 100,
    params: dict[str, Any] | None = None,
    random_ic: bool | None = None,
    sha: str = "",
    progress: bool = True,
) -> Path:
    """Generate ``n`` samples of generator ``name`` into ``out`` (resumable; atomic rename at the end).

    ``sha`` identifies the generating config; by default it is a digest of this call's arguments,
    so an unfinished ``out.partial`` is only resumed by a run that produces the same samples.
    """
    _check_int("n", n, 1)
    _check_int("seed", seed, 0)
    pde = make_pde(name, params or {})
    x, t = _grid(pde, nx, nt)
    random_ic = n > 1 if random_ic is None else bool(random_ic)
    if not sha:
        spec = {"generator": name, "params": pde.params(), "n": int(n), "seed": int(seed), "nx": int(nx), "nt": int(nt), "random_ic": random_ic}
        sha = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    template = _template(pde, x, t, shape_only((n, nt, nx)), sha=sha, u0=shape_only((n, nx)))
    _, values = _numeric_params(pde)
    with DatasetWriter(out, template) as writer, Progress(disable=not progress) as bar:
        todo = writer.pending()
        task = bar.add_task(f"{name} -> {out}", total=n, completed=n - len(todo))
        for i in todo:
            u0 = spectral.random_initial_conditions(1, x, np.random.default_rng([seed, i]))[0] if random_ic else pde.initial_condition(x)
            if random_ic and isinstance(pde, (Reaction, ReactionDiffusion)):
                u0 = 1.0 / (1.0 + np.exp(-2.0 * u0))  # logistic ICs must lie in (0, 1)
            writer.write(i, pde.reference_solution(u0, x, t), values, u0=u0)
            bar.advance(task)
        return writer.finalize()


__all__ = ["GENERATORS", "GeneratorSpec", "describe_generators", "generate", "make_pde", "reference_dataset"]
