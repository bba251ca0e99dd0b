"""Collocation training data for PINNs, drawn from a reference-solution dataset on a grid.

One training batch holds everything a PINN loss needs (full-batch training, as in the PINN
literature): ``x_f, t_f`` collocation points, ``x_ic, u_ic`` the initial condition on the grid,
``t_b`` the boundary times. The reference solution is read from an HDF5 file in the sciml schema
and generated (and cached) by the PDE's reference solver when the file does not exist.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import ConfigError, DataError
from ..pdes import PDE
from .generators import reference_dataset
from .schema import check_physics, read_dataset, write_dataset


def data_dir() -> Path:
    """Where generated datasets are cached: ``$SCIML_DATA_DIR`` or ``./data``."""
    return Path(os.environ.get("SCIML_DATA_DIR", "data"))


def config_sha(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


class _FullBatch(Dataset):
    def __init__(self, batch: dict[str, torch.Tensor]):
        self.batch = batch

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.batch


class CollocationDataModule(L.LightningDataModule):
    """Full-batch PINN data on the (t, x) grid of a reference dataset.

    Args:
        pde: the PDE whose reference solution is used (and generated if missing).
        path: HDF5 file; default ``<data dir>/<pde>-<hash of the PDE and grid>.h5``.
        nx, nt: grid of the generated reference solution (x periodic, t from 0 to T inclusive).
        n_collocation: residual points drawn without replacement from the grid.
        n_boundary: boundary times drawn from the grid (None: all of them).
        sample: which sample of the dataset is the reference solution.
        seed: seed of the point draws.
    """

    def __init__(
        self,
        pde: PDE,
        path: str | None = None,
        nx: int = 256,
        nt: int = 100,
        n_collocation: int = 1000,
        n_boundary: int | None = None,
        sample: int = 0,
        seed: int = 0,
    ):
        super().__init__()
        for name, value in (("nx", nx), ("nt", nt), ("n_collocation", n_collocation)):
            if value < (4 if name == "nx" else 2):
                raise ConfigError(f"data.{name} (={value}) must be >= {4 if name == 'nx' else 2}.")
        if n_collocation > nx * nt:
            raise ConfigError(f"data.n_collocation (={n_collocation}) exceeds the nx*nt={nx * nt} grid points; lower it or refine the grid.")
        if n_boundary is not None and not 1 <= n_boundary <= nt:
            raise ConfigError(f"data.n_boundary (={n_boundary}) must be between 1 and data.nt (={nt}).")
        self.pde = pde
        self.nx, self.nt = nx, nt
        self.n_collocation, self.n_boundary = n_collocation, n_boundary
        self.sample, self.seed = sample, seed
        self.generator_config = {"pde": pde.to_config(), "nx": nx, "nt": nt}
        self.path = Path(path) if path else data_dir() / f"{pde.name}-{config_sha(self.generator_config)[:10]}.h5"
        self._explicit_path = bool(path)
        self.x = self.t = self.u = None

    def prepare_data(self) -> None:
        if not self.path.exists():
            if self._explicit_path:  # say so: a mistyped path to the user's own file lands here
                print(f"data.path {self.path} does not exist: generating the {self.pde.name} reference solution into it")
            ds = reference_dataset(self.pde, nx=self.nx, nt=self.nt)
            ds.config_sha = config_sha(self.generator_config)
            write_dataset(self.path, ds)

    def setup(self, stage: str | None = None) -> None:
        if self.u is not None:
            return
        ds = read_dataset(self.path)
        if ds.pde != self.pde.name:
            raise DataError(f"{self.path} holds a {ds.pde!r} dataset but the experiment's PDE is {self.pde.name!r}; point data.path at a {self.pde.name} file or remove it.")
        check_physics(self.path, ds, self.pde)  # the same PDE with other parameters (beta = 5 data for beta = 30) too
        if ds.is_mesh or "x" not in ds.grid:
            raise DataError(f"{self.path} is not on a 1D tensor grid (/grid/x, /grid/t); PINN collocation needs one.")
        if not 0 <= self.sample < ds.n_samples:
            raise ConfigError(f"data.sample (={self.sample}) is out of range: {self.path} has {ds.n_samples} samples.")
        self.x, self.t = np.asarray(ds.grid["x"], float), np.asarray(ds.grid["t"], float)
        self.u = np.asarray(ds.u[self.sample], float)
        if self.n_collocation > self.u.size:
            raise ConfigError(f"data.n_collocation (={self.n_collocation}) exceeds the {self.u.size} points of {self.path}.")

    def batch(self) -> dict[str, torch.Tensor]:
        """The full training batch (float32; the module casts it to its own precision)."""
        rng = np.random.default_rng(self.seed)
        nt, nx = self.u.shape
        flat = rng.choice(nt * nx, size=self.n_collocation, replace=False)
        it, ix = np.unravel_index(flat, (nt, nx))
        tb = self.t if self.n_boundary is None else np.sort(rng.choice(self.t, self.n_boundary, replace=False))
        as_t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
        return {"x_f": as_t(self.x[ix]), "t_f": as_t(self.t[it]), "x_ic": as_t(self.x), "u_ic": as_t(self.u[0]), "t_b": as_t(tb)}

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_FullBatch(self.batch()), batch_size=None, shuffle=False)
