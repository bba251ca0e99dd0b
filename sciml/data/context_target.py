"""Context/target sets of scattered samples for neural processes (ProbConserv's protocol).

A training item is one function of an HDF5 dataset (u [n_t, *space] on a 1D grid or a mesh):
``n_context`` context points on a tensor grid of ``context_times`` distinct times and
``n_context / context_times`` distinct spatial points (10 t x 10 x for ProbConserv's 100), and
``n_target`` target points drawn from the whole space-time set. Inputs are coordinates
(t, x) on a 1D grid and (t, x, y) on a 2D mesh; outputs are u. Points are redrawn every time an
item is read, so each epoch sees fresh samples of the same functions; the training loader keys
each draw by its position in the run (:mod:`sciml.data.resumable`), so the draws do not depend on
the number of loader workers and continue unchanged after a resumption.

Test sets are separate files (``test``: one HDF5 file per test parameter value, e.g. k = 1 and
k = 5, made by ``generator`` with ``test_params``), each giving the full space-time field, its
quadrature weights (the conservation functional G u = weights . u) and the conserved mass b(t):
the exact mass for ProbConserv's analytic cases, weights . u(t) otherwise (FEM mass is conserved
to round-off).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import ConfigError, DataError
from .resumable import training_loader
from .schema import PDEDataset, read_dataset


@dataclass
class Field:
    """All of one dataset's functions with their coordinates, as float32 tensors."""

    u: np.ndarray  # [n, n_t, n_points]
    coords: np.ndarray  # [n_t, n_points, dim_x]: (t, x) or (t, x, y)
    t: np.ndarray  # [n_t]
    weights: np.ndarray  # [n_points]
    params: np.ndarray  # [n, n_params]
    meta: PDEDataset

    @property
    def n_points(self) -> int:
        return self.u.shape[2]


def load_field(path: str | Path) -> Field:
    """A dataset flattened to [n, n_t, n_points] with (t, space) coordinates per point."""
    ds = read_dataset(path)
    u = np.asarray(ds.u, dtype=np.float64)
    if u.ndim != 3 and not (u.ndim == 4 and not ds.is_mesh):
        raise DataError(f"{path}: u has shape {list(u.shape)}; neural processes take scalar fields on a 1D grid or a mesh.")
    t = np.asarray(ds.grid["t"], dtype=np.float64)
    if ds.is_mesh:
        space = np.asarray(ds.mesh_points, dtype=np.float64)
    elif "y" in ds.grid:
        gx, gy = np.meshgrid(ds.grid["x"], ds.grid["y"], indexing="ij")
        space, u = np.stack([gx.ravel(), gy.ravel()], -1), u.reshape(*u.shape[:2], -1)
    else:
        space = np.asarray(ds.grid["x"], dtype=np.float64)[:, None]
    if ds.weights is None:
        raise DataError(f"{path} has no /quadrature/weights; the conservation constraint G u = weights . u needs them. Regenerate it with `sciml data generate`.")
    coords = np.concatenate([np.broadcast_to(t[:, None, None], (len(t), len(space), 1)),
                             np.broadcast_to(space[None], (len(t), *space.shape))], axis=-1)
    return Field(u=u, coords=coords, t=t, weights=np.asarray(ds.weights, dtype=np.float64), params=np.asarray(ds.params, dtype=np.float64), meta=ds)


def draw_points(rng: np.random.Generator, n_t: int, n_points: int, n_context: int, context_times: int,
                n_target: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(context t-index, context point-index, target t-index, target point-index), flat arrays."""
    per_time = n_context // context_times
    it = np.sort(rng.choice(n_t, context_times, replace=False))
    ip = np.sort(rng.choice(n_points, per_time, replace=False))
    ct, cp = (a.ravel() for a in np.meshgrid(it, ip, indexing="ij"))
    tt, tp = np.divmod(rng.choice(n_t * n_points, n_target, replace=False), n_points)
    return ct, cp, tt, tp


class ContextTargets(Dataset):
    """Item i: fresh context/target points of function ``indices[i]`` (see the module doc)."""

    def __init__(self, field: Field, indices: np.ndarray, n_context: int, context_times: int, n_target: int, seed: int):
        self.field, self.indices = field, np.asarray(indices)
        self.n_context, self.context_times, self.n_target, self.seed = n_context, context_times, n_target, seed
        self._draws = 0

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        """Item ``i`` or, from :class:`~sciml.data.resumable.ResumableLoader`'s keyed sampler,
        ``(i, position)``: the draw is then the one at that position of the run (the ``position +
        1``-th item drawn), whichever process or loader worker draws it, before or after a
        resumption."""
        if isinstance(key, tuple):
            i, position = key
            stream = [self.seed, int(self.indices[i]), position + 1]
        else:
            i = key
            self._draws += 1
            # A loader worker counts its own draws from a copy of this dataset: its seed (distinct per
            # worker and per loader iterator, from the seeded main process) keeps the streams apart.
            worker = torch.utils.data.get_worker_info()
            stream = [self.seed, int(self.indices[i]), self._draws] + ([] if worker is None else [worker.seed % 2**63])
        rng = np.random.default_rng(stream)
        return context_target_item(self.field, int(self.indices[i]), rng, self.n_context, self.context_times, self.n_target)


def context_target_item(field: Field, k: int, rng: np.random.Generator, n_context: int, context_times: int, n_target: int) -> dict[str, torch.Tensor]:
    ct, cp, tt, tp = draw_points(rng, field.u.shape[1], field.n_points, n_context, context_times, n_target)
    u, c = field.u[k], field.coords
    as_t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)  # noqa: E731
    return {"xc": as_t(c[ct, cp]), "yc": as_t(u[ct, cp, None]), "xt": as_t(c[tt, tp]), "yt": as_t(u[tt, tp, None]),
            "param": as_t(field.params[k]), "index": torch.tensor(k)}


class ContextTargetDataModule(L.LightningDataModule):
    """Training functions from one HDF5 dataset, test functions from one file per test value.

    Args:
        path: the training dataset (made by ``generator`` with ``generator_params``, ``n_samples``
            and ``seed`` when missing, like :class:`SampleDataModule`).
        n_context, context_times, n_target: points per function (ProbConserv: 100, 10, 100).
        batch_size: functions per step (ProbConserv: 250).
        test: {name: path} of test datasets; with ``generator``, missing ones are made with
            ``generator_params`` updated by ``test_params[name]`` (e.g. {k: 1.0}), ``test_samples``
            and seed + 1 (other functions than the training ones).
        t_star: the evaluation time (ProbConserv: 0.5 for diffusion and PME, 0.05 for Stefan).
        n_test_functions: context draws per test file (functions of the test set).
        num_workers: loader processes drawing the training batches (0: in the training process;
            a GPU run of the paper's batch of 250 functions wants a few, or the step waits on numpy).
    """

    def __init__(self, path: str, generator: str | None = None, generator_params: dict[str, Any] | None = None,
                 n_samples: int = 1000, n_context: int = 100, context_times: int = 10, n_target: int = 100,
                 batch_size: int = 250, seed: int = 0, test: dict[str, str] | None = None,
                 test_params: dict[str, dict[str, Any]] | None = None, test_samples: int = 1,
                 t_star: float | None = None, n_test_functions: int = 50, num_workers: int = 0):
        super().__init__()
        for name, value, low in (("n_samples", n_samples, 1), ("n_context", n_context, 1), ("context_times", context_times, 1),
                                 ("n_target", n_target, 1), ("batch_size", batch_size, 1), ("test_samples", test_samples, 1),
                                 ("n_test_functions", n_test_functions, 1), ("num_workers", num_workers, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"`data.{name}` (={value!r}) must be an integer >= {low}.")
        if n_context % context_times:
            raise ConfigError(f"`data.n_context` (={n_context}) must be a multiple of `data.context_times` (={context_times}): "
                              "the context is a tensor grid of times x points (ProbConserv: 100 = 10 x 10).")
        test = dict(test or {})
        test_params = dict(test_params or {})
        if unknown := sorted(set(test_params) - set(test)):
            raise ConfigError(f"`data.test_params` names {unknown[0]!r}, which is not a key of `data.test` ({sorted(test)}).")
        self.save_hyperparameters()
        self.path, self.test_paths = path, test
        self.field: Field | None = None
        self.tests: dict[str, Field] = {}

    # -- data files --------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        hp = self.hparams
        # Test files use seed + 1: drawn from the same family, they are not the training functions.
        files = [(self.path, {}, hp.n_samples, hp.seed)] + [(p, (hp.test_params or {}).get(k, {}), hp.test_samples, hp.seed + 1)
                                                           for k, p in self.test_paths.items()]
        for path, extra, n, seed in files:
            if hp.generator is None:
                if not Path(path).exists():
                    raise DataError(f"{path} does not exist; give `data.generator` to make it or point the config at an existing file.")
                continue
            from .generators import generate, make_generator, spec_sha

            params = {**(hp.generator_params or {}), **extra}
            if not Path(path).exists():
                generate(hp.generator, path, n=n, seed=seed, params=params)
            elif read_dataset(path, load=False).config_sha != spec_sha(hp.generator, make_generator(hp.generator, params), n, seed):
                raise DataError(f"{path} exists but was not generated by data.generator={hp.generator!r} with these parameters "
                                f"({params}), {n} samples and seed {seed}; delete it to regenerate, or point the config at a new file.")

    def setup(self, stage: str | None = None) -> None:
        if self.field is not None:
            return
        self.field = load_field(self.path)
        self.tests = {name: load_field(p) for name, p in self.test_paths.items()}
        n_t, n_p = self.field.u.shape[1:]
        hp = self.hparams
        if hp.context_times > n_t or hp.n_context // hp.context_times > n_p or hp.n_target > n_t * n_p:
            raise ConfigError(f"{self.path} has {n_t} times x {n_p} points: too few for n_context={hp.n_context} "
                              f"({hp.context_times} times) and n_target={hp.n_target}.")

    def train_dataloader(self) -> DataLoader:
        self.setup()
        hp = self.hparams
        items = ContextTargets(self.field, np.arange(len(self.field.u)), hp.n_context, hp.context_times, hp.n_target, hp.seed)
        return training_loader(items, min(hp.batch_size, len(items)), lambda: self.trainer, keyed=True, num_workers=hp.num_workers)

    # -- evaluation --------------------------------------------------------------------------------
    def mass(self, name: str, k: int) -> np.ndarray:
        """b(t) [n_t] of test function k of test set ``name``: exact where the case is analytic."""
        f = self.tests[name]
        case = f.meta.common_params.get("case")
        if case is not None and f.meta.param_names:
            from .generators.analytic import CASES, exact_mass

            if case in CASES:
                return exact_mass(case, float(f.params[k, 0]), f.t)
        return f.u[k] @ f.weights

    def test_contexts(self, name: str, k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``n_test_functions`` context sets (xc [n_context, dim_x], yc [n_context, 1]) of test
        function k, drawn with fixed seeds so that every model sees the same ones."""
        f, hp = self.tests[name], self.hparams
        out = []
        for j in range(hp.n_test_functions):
            item = context_target_item(f, k, np.random.default_rng([hp.seed, 7919, k, j]), hp.n_context, hp.context_times, 1)
            out.append((item["xc"], item["yc"]))
        return out

    def t_index(self, name: str) -> int:
        """Index of the time slice nearest t* in test set ``name`` (the last one without t*)."""
        t = self.tests[name].t
        t_star = self.hparams.t_star
        if t_star is None:
            return len(t) - 1
        i = int(np.argmin(np.abs(t - t_star)))
        if abs(t[i] - t_star) > 1e-9 * max(1.0, abs(t_star)):
            raise ConfigError(f"`data.t_star` (={t_star}) is not a time of the test grid {self.test_paths[name]} "
                              f"(nearest {t[i]:.6g}); choose nt so that t* lies on the grid.")
        return i


__all__ = ["ContextTargetDataModule", "ContextTargets", "Field", "context_target_item", "draw_points", "load_field"]

