"""Named dataset generators for ``sciml data generate NAME``, run in-process or over Ray workers.

Every generator follows :class:`~sciml.data.generators.base.Generator`: it describes the file
(:meth:`layout`) and computes sample ``i`` from ``numpy.random.default_rng([seed, i])`` alone
(:meth:`sample`), so a dataset is bit-identical whatever the number of workers. :func:`generate`
writes one sample at a time into ``FILE.partial`` and renames it when complete; a killed run
resumes where it stopped.

The 1D periodic family is solved by the spectral reference solvers (:mod:`.spectral`). With
``n=1`` (and no ``random_ic``) a dataset holds the PDE's own initial condition, which is what a
PINN is checked against; otherwise each sample starts from a random smooth initial condition.
Other families live in their own modules and are registered when their imports are available
(the FEM ones need the ``fem`` extra).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import inspect
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from rich.progress import Progress

from ... import __version__
from ...errors import ConfigError, SciMLError, did_you_mean
from ...pdes import PDE, Burgers, Convection, ConvectionDiffusion, Reaction, ReactionDiffusion, pde_from_config
from ..schema import DatasetWriter, PDEDataset, shape_only
from . import spectral
from .base import Generator, Sample, check_int, rng_for


class SpectralGenerator(Generator):
    """A PDE of the 1D periodic family on an ``nx`` x ``nt`` grid, by its reference solver.

    Parameters: the PDE's own (e.g. ``beta``), ``nx``, ``nt`` and ``random_ic`` (None: random
    initial conditions when the dataset has more than one sample).
    """

    pde_class: ClassVar[type[PDE]]

    def __init__(self, nx: int = 256, nt: int = 100, random_ic: bool | None = None, **pde_params: Any):
        cls = self.pde_class
        self.pde = pde_from_config({"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": pde_params})
        self.nx = check_int(self.name, "nx", nx, 4)
        self.nt = check_int(self.name, "nt", nt, 2)
        if random_ic not in (None, True, False):
            raise ConfigError(f"{self.name}: `random_ic` (={random_ic!r}) must be true, false or null.")
        self.random_ic = random_ic
        (lo, hi), = self.pde.domain.space
        self.x = lo + spectral.periodic_grid(self.nx, hi - lo)
        self.t = np.linspace(*self.pde.domain.time, self.nt)

    def config(self) -> dict[str, Any]:
        return {**self.pde.params(), "nx": self.nx, "nt": self.nt, "random_ic": self.random_ic}

    def config_for(self, n: int) -> dict[str, Any]:
        return self.config() | {"random_ic": self._random_ic(n)}

    def _random_ic(self, n: int) -> bool:
        """random_ic as given, or (None) random initial conditions when there is more than one sample."""
        return n > 1 if self.random_ic is None else bool(self.random_ic)

    @classmethod
    def parameters(cls) -> dict[str, Any]:
        pde = {p.name: p.default for p in inspect.signature(cls.pde_class).parameters.values()}
        return pde | {"nx": 256, "nt": 100, "random_ic": None}

    def _numeric_params(self) -> tuple[list[str], np.ndarray]:
        items = [(k, float(v)) for k, v in self.pde.params().items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        return [k for k, _ in items], np.array([v for _, v in items], dtype=np.float64)

    def layout(self, n: int) -> PDEDataset:
        self.random_ic = self._random_ic(n)
        return self._dataset(shape_only((n, self.nt, self.nx)), shape_only((n, self.nx)))

    def _dataset(self, u: np.ndarray, u0: np.ndarray) -> PDEDataset:
        names, values = self._numeric_params()
        return PDEDataset(
            pde=self.pde.name, u=u, grid={"x": self.x, "t": self.t}, params=np.broadcast_to(values, (u.shape[0], len(values))),
            param_names=names, common_params=self.pde.params(), generator=f"sciml {__version__} spectral ({self.description})",
            u0=u0, weights=np.full(self.nx, self.x[1] - self.x[0]),  # periodic rectangle rule
        )

    def initial_condition(self, i: int, seed: int) -> np.ndarray:
        if not self.random_ic:
            return self.pde.initial_condition(self.x)
        u0 = spectral.random_initial_conditions(1, self.x, rng_for(seed, i))[0]
        if isinstance(self.pde, (Reaction, ReactionDiffusion)):
            u0 = 1.0 / (1.0 + np.exp(-2.0 * u0))  # logistic ICs must lie in (0, 1)
        return u0

    def sample(self, i: int, seed: int) -> Sample:
        u0 = self.initial_condition(i, seed)
        return Sample(u=self.pde.reference_solution(u0, self.x, self.t), params=self._numeric_params()[1], u0=u0)


def _spectral(pde_class: type[PDE], description: str) -> type[SpectralGenerator]:
    return type(f"{pde_class.__name__}Spectral", (SpectralGenerator,),
                {"pde_class": pde_class, "name": pde_class.name, "description": description, "__module__": __name__})


_SPECTRAL: list[type[SpectralGenerator]] = [
    _spectral(Convection, "u_t + beta u_x = 0, exact in Fourier space"),
    _spectral(ConvectionDiffusion, "u_t + beta u_x = nu u_xx, exact in Fourier space"),
    _spectral(Reaction, "u_t = rho u (1 - u), logistic closed form"),
    _spectral(ReactionDiffusion, "u_t = nu u_xx + rho u (1 - u), Strang splitting"),
    _spectral(Burgers, "u_t + u u_x = nu u_xx, pseudo-spectral ETDRK4 with 2/3 dealiasing"),
]

globals().update({g.__name__: g for g in _SPECTRAL})  # importable by name, so they pickle by reference

# Families in other modules: (module, name of its {name: class} dict, extra it needs).
_FAMILIES = [
    ("sciml.data.generators.analytic", "ANALYTIC_GENERATORS", None),
    ("sciml.data.generators.navier_stokes", "NS_GENERATORS", None),
    ("sciml.data.generators.fv", "FV_GENERATORS", None),
    ("sciml.data.generators.fem.gpme", "FEM_GENERATORS", "fem"),
    ("sciml.data.generators.fem.diffusion_sorption", "DS_GENERATORS", "fem"),
]


def registry() -> tuple[dict[str, type[Generator]], list[str]]:
    """The generators available here, and a note for each family whose imports are missing."""
    found: dict[str, type[Generator]] = {g.name: g for g in _SPECTRAL}
    missing = []
    for module, attr, extra in _FAMILIES:
        try:
            found |= getattr(importlib.import_module(module), attr)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("sciml"):
                raise  # our own import is broken: a bug, not a missing extra
            missing.append(f"{module} needs the `{extra or exc.name}` extra ({exc.name} is not installed)")
        except (ImportError, AttributeError, RuntimeError, OSError) as exc:
            # RuntimeError / OSError: an extension that is installed but does not load (mpi4py
            # without an MPI library raises "cannot load MPI library"); the other families stay usable
            missing.append(f"{module} could not be imported ({type(exc).__name__}: {exc})")
    return found, missing


GENERATORS = {g.name: g for g in _SPECTRAL}  # the always-available ones; `registry()` has all


def describe_generators() -> str:
    found, missing = registry()
    rows = []
    for cls in found.values():
        params = ", ".join(f"{k}={v!r}" for k, v in cls.parameters().items())
        rows.append(f"{cls.name:<22} {cls.description}\n{'':<22} parameters: {params}")
    rows += [f"(unavailable: {m})" for m in missing]
    return "\n".join(rows)


def make_generator(name: str, params: dict[str, Any] | None = None) -> Generator:
    """The generator ``name`` built from ``params``; unknown names and parameters are ConfigErrors."""
    found, missing = registry()
    if name not in found:
        note = f" Unavailable here: {'; '.join(missing)}." if missing else ""
        raise ConfigError(f"unknown generator {name!r}.{did_you_mean(name, found)} Available: {', '.join(found)} "
                          f"(see `sciml data generate --list`).{note}")
    cls, params = found[name], dict(params or {})
    allowed = cls.parameters()
    if unknown := [k for k in params if k not in allowed]:
        raise ConfigError(f"{name}: unknown parameter {unknown[0]!r}.{did_you_mean(unknown[0], allowed)} "
                          f"Its parameters are {', '.join(allowed)}.")
    try:
        return cls(**params)
    except SciMLError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}: {exc}. Its parameters are {', '.join(allowed)}.") from exc


def make_pde(name: str, params: dict[str, Any]) -> PDE:
    """The PDE of a spectral generator, e.g. ``make_pde("convection", {"beta": 30})``."""
    gen = make_generator(name, params)
    if not isinstance(gen, SpectralGenerator):
        raise ConfigError(f"{name!r} is not a PDE of the 1D periodic family.")
    return gen.pde


def reference_dataset(pde: PDE, nx: int = 256, nt: int = 100) -> PDEDataset:
    """The PDE's reference solution from its own initial condition, as a one-sample dataset."""
    cls = next((g for g in _SPECTRAL if g.pde_class is type(pde)), None)
    if cls is None:
        raise ConfigError(f"there is no spectral reference solver for {type(pde).__name__}; the 1D periodic family has "
                          f"{', '.join(g.pde_class.__name__ for g in _SPECTRAL)}.")
    gen = cls(nx=nx, nt=nt, random_ic=False, **pde.params())
    s = gen.sample(0, 0)
    return gen._dataset(s.u[None], s.u0[None])


def generate(
    name: str,
    out: str | Path,
    n: int = 1,
    seed: int = 0,
    params: dict[str, Any] | None = None,
    workers: int = 1,
    ray_address: str | None = None,
    progress: bool = True,
) -> Path:
    """Generate ``n`` samples of generator ``name`` into ``out`` (resumable; atomic rename at the end).

    ``workers > 1`` fans the samples out over that many local processes (spawned, one torch
    thread each), a ``ray_address`` over the Ray cluster there (``workers`` tasks at a time); the
    file is the same bit for bit either way. An unfinished ``out.partial`` is resumed only by a
    run with the same generator, parameters, ``n`` and seed.
    """
    n = check_int("generate", "n", n, 1)
    seed = check_int("generate", "seed", seed, 0)
    workers = check_int("generate", "workers", workers, 1)
    if Path(out).is_dir():  # before the work, not when the finished file cannot be renamed onto it
        raise ConfigError(f"the output {out} is a folder; give a file path, e.g. {Path(out) / (name + '.h5')}.")
    gen = make_generator(name, params)
    layout = gen.layout(n)
    layout.config_sha = spec_sha(name, gen, n, seed)
    with DatasetWriter(out, layout) as writer, Progress(disable=not progress) as bar:
        todo = writer.pending()
        where = f" on Ray at {ray_address}" if ray_address else f" on {workers} processes" if workers > 1 else ""
        task = bar.add_task(f"{name} -> {out}{where}", total=n, completed=n - len(todo))
        if ray_address:
            samples = _ray_samples(gen, seed, todo, workers, ray_address)
        elif workers > 1 and len(todo) > 1:
            samples = _pool_samples(gen, seed, todo, workers)
        else:
            samples = ((i, gen.sample(i, seed)) for i in todo)
        with contextlib.closing(samples) if hasattr(samples, "close") else contextlib.nullcontext():
            # closing: a failure here (the writer's) stops the worker processes or tasks at once,
            # not when the exception's traceback is freed
            for i, s in samples:
                writer.write(i, s.u, s.params, u0=s.u0)
                bar.advance(task)
        return writer.finalize()


def spec_sha(name: str, gen: Generator, n: int, seed: int) -> str:
    """The digest a generated file carries (root attribute ``sha``): generator, parameters, n, seed."""
    # config_for(n): a generator that decides something by n (random initial conditions) gives the
    # same digest before its layout(n) as after, so a data module can check a file it made
    spec = {"generator": name, "params": gen.config_for(n), "n": int(n), "seed": int(seed)}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()


_POOL_GENERATOR: list[Generator] = []  # in a pool's worker process: its generator


def _pool_init(gen: Generator) -> None:
    import torch

    torch.set_num_threads(1)  # the pool is the parallelism; W processes x all cores would thrash
    _POOL_GENERATOR[:] = [gen]


def _pool_sample(i: int, seed: int) -> Sample:
    return _POOL_GENERATOR[0].sample(i, seed)


def _pool_samples(gen: Generator, seed: int, todo: list[int], workers: int) -> Iterator[tuple[int, Sample]]:
    """(i, sample) as ``workers`` local processes finish them, at most ``2 * workers`` in flight.
    Spawned, not forked: a generator may hold CUDA or MPI state that does not survive a fork."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    pool = ProcessPoolExecutor(min(workers, len(todo)), mp_context=multiprocessing.get_context("spawn"),
                               initializer=_pool_init, initargs=(gen,))
    queue, in_flight = iter(todo), {}
    try:
        while True:
            while len(in_flight) < 2 * workers and (i := next(queue, None)) is not None:
                in_flight[pool.submit(_pool_sample, i, seed)] = i
            if not in_flight:
                return
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                yield in_flight.pop(future), future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


_WORKER_GENERATORS: dict[str, Generator] = {}  # per Ray worker process: generators already built


def _sample_task(key: str, boxed: list, i: int, seed: int) -> Sample:
    """One sample on a Ray worker. The generator is fetched (and its meshes, compiled forms and
    solvers built) once per worker process, not once per sample: ``boxed`` holds its object
    reference unresolved, and it is only fetched when this worker has not seen ``key`` yet."""
    gen = _WORKER_GENERATORS.get(key)
    if gen is None:
        import ray

        if len(_WORKER_GENERATORS) >= 4:
            _WORKER_GENERATORS.clear()
        gen = _WORKER_GENERATORS[key] = ray.get(boxed[0])
    return gen.sample(i, seed)


def _ray_samples(gen: Generator, seed: int, todo: list[int], workers: int, address: str | None) -> Iterator[tuple[int, Sample]]:
    """(i, sample) as Ray workers finish them, at most ``2 * workers`` in flight."""
    from ..._ray import connect

    ray, own = connect(address, workers, "`sciml data generate --workers`", "--ray-address")
    task = ray.remote(num_cpus=1)(_sample_task)
    key = f"{type(gen).__module__}.{type(gen).__qualname__}:{json.dumps(gen.config(), sort_keys=True, default=str)}"
    boxed = [ray.put(gen)]
    queue, in_flight = iter(todo), {}
    try:
        while True:
            while len(in_flight) < 2 * workers and (i := next(queue, None)) is not None:
                in_flight[task.remote(key, boxed, i, seed)] = i
            if not in_flight:
                return
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in ready:
                i = in_flight.pop(ref)
                try:
                    s = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:  # the worker's own error, e.g. a DataError
                    raise (exc.cause if isinstance(exc.cause, Exception) else exc) from None
                yield i, s
    finally:
        for ref in in_flight:
            ray.cancel(ref, force=True)
        if own:
            ray.shutdown()


__all__ = ["GENERATORS", "Generator", "Sample", "SpectralGenerator", "describe_generators", "generate", "make_generator", "make_pde", "reference_dataset", "registry"]
