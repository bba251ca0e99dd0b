"""PDEBench's 1D HDF5 layout, read as a sciml dataset so a user's PDEBench file trains like ours.

PDEBench (Takamoto et al., 2022) stores one group per sample, named ``0000``, ``0001``, ...,
each holding ``data`` [n_t, n_x, channels] and ``grid/x`` (cell centres), ``grid/t``. There are no
root attributes. Read here as: ``u`` [n_samples, n_t, n_x] (a single channel is squeezed,
several are kept as the last axis), grid from the first sample, no per-sample parameters, and
cell-width quadrature weights. The samples are read lazily, one group at a time.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from sciml.errors import DataError

GENERATOR = "PDEBench file (external)"
_NAMES = {"diff-sorp": "diffusion_sorption", "burgers": "burgers", "advection": "advection", "reacdiff": "reaction_diffusion"}


def is_pdebench(f: h5py.File) -> bool:
    """A file with no sciml root attributes whose groups hold ``data`` and ``grid``."""
    if "schema_version" in f.attrs or "samples" in f:
        return False
    return bool(sample_groups(f))


def sample_groups(f: h5py.File) -> list[str]:
    """The sample groups (those with ``data`` and ``grid``) in natural order: 0, 1, 2, ..., 10 (not
    0, 1, 10, 11, 2 as strings sort); other root entries (metadata) are not samples."""
    keys = [k for k in f.keys() if isinstance(f[k], h5py.Group) and "data" in f[k] and "grid" in f[k]]
    return sorted(keys, key=lambda k: [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", k)])


class Samples:
    """An array-like [n_samples, n_t, n_x(, channels)] view over the sample groups of an open file."""

    def __init__(self, f: h5py.File):
        self.keys = sample_groups(f)
        if not self.keys:
            raise DataError(f"{f.filename}: no PDEBench sample group (a group with `data` and `grid`) in the file.")
        self._f = f
        first = f[self.keys[0]]["data"]
        self._squeeze = first.ndim == 3 and first.shape[-1] == 1
        inner = first.shape[:-1] if self._squeeze else first.shape
        self.shape = (len(self.keys), *inner)
        self.dtype = first.dtype

    def _one(self, i: int) -> np.ndarray:
        data = self._f[self.keys[i]]["data"][()]
        if data.shape != self.shape[1:] + ((1,) if self._squeeze else ()):
            raise DataError(f"{self._f.filename}: PDEBench sample group {self.keys[i]!r} has data of shape {data.shape}, "
                            f"unlike the first sample's {self.shape[1:]}; every sample must be on the same grid.")
        return data[..., 0] if self._squeeze else data

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, (int, np.integer)):
            return self._one(int(index))
        rows = range(self.shape[0])[index]
        return np.stack([self._one(i) for i in rows]) if len(rows) else np.empty((0, *self.shape[1:]), self.dtype)

    def __len__(self) -> int:
        return self.shape[0]


def pde_name(path: Path) -> str:
    stem = path.stem.lower()
    return next((name for key, name in _NAMES.items() if key in stem), stem)


def fields(f: h5py.File, path: Path) -> dict[str, Any]:
    """The PDEDataset fields of a PDEBench file (``u`` is the lazy :class:`Samples` view)."""
    u = Samples(f)
    grid = f[u.keys[0]]["grid"]
    x, t = np.asarray(grid["x"][()], float), np.asarray(grid["t"][()], float)
    dx = np.diff(x)
    weights = np.full(len(x), dx.mean()) if len(x) > 1 else np.ones(1)  # cell centres: cell widths
    return {
        "pde": pde_name(path), "u": u, "grid": {"t": t, "x": x}, "params": np.zeros((len(u), 0)),
        "param_names": [], "generator": GENERATOR, "created": "", "config_sha": "",
        "common_params": {"source": "PDEBench", "file": path.name}, "u0": None, "weights": weights,
    }
