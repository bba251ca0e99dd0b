"""Sample-based (operator learning) data: one HDF5 sample per item, split into train/val/test.

The HDF5 file is opened lazily, once per process: h5py handles must not cross a fork, and
DataLoader workers may be forked or spawned. The main process only opens the file briefly to
validate it, so nothing holds a handle when the workers start.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from sciml.data.resumable import training_loader
from sciml.data.schema import check_physics, read_dataset, sample_arrays
from sciml.errors import ConfigError, DataError
from sciml.pdes import PDE


class H5Samples(Dataset):
    """Samples `indices` of a dataset file as dicts of tensors.

    Item: {"u": float32 [n_t, *space(, channels)], "params": float32 [n_params],
    "index": int (row in the file), "u0": float32 [*space(, channels)]} (u0 is the first frame
    when the file has no /samples/u0). With ``time_slices``, u holds only the first that many
    frames (a training window that stops early). ``fields``: which of "u" and "u0" to read (a
    data-free model trains on u0 alone, and reading u is most of an item's cost: a 101 x 1024
    trajectory to decompress and check against u0's 1024 values).
    """

    def __init__(self, path: str | os.PathLike, indices: Sequence[int] | None = None, time_slices: int | None = None,
                 fields: Sequence[str] = ("u", "u0")) -> None:
        self.path = Path(path)
        self.time_slices = time_slices
        self.fields = tuple(fields)
        if not self.fields or not set(self.fields) <= {"u", "u0"}:
            raise ValueError(f"`fields` (={fields!r}) must name one or both of 'u' and 'u0'.")
        meta = read_dataset(self.path, load=False)  # validates; the handle is closed again
        n = meta.n_samples
        self.indices = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64)
        if self.indices.size and (self.indices.min() < 0 or self.indices.max() >= n):
            raise ValueError(f"`indices` must lie in [0, {n}) for {self.path}, "
                             f"got [{self.indices.min()}, {self.indices.max()}]")
        self.has_u0 = meta.u0 is not None
        self._file: h5py.File | None = None
        self._pid: int | None = None
        self._views: tuple[h5py.File, dict[str, Any]] | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def _handle(self) -> h5py.File:
        # A handle inherited through fork belongs to the parent's HDF5 state: open our own.
        if self._file is None or self._pid != os.getpid():
            try:
                self._file = h5py.File(self.path, "r")
            except OSError as exc:
                raise DataError(f"{self.path} could not be opened ({exc}); it may have been "
                                "moved or overwritten while loading. Rerun with the file in place.") from exc
            self._pid = os.getpid()
        return self._file

    def __getitem__(self, k: int) -> dict[str, Any]:
        i = int(self.indices[k])
        arrays = self._arrays()
        item: dict[str, Any] = {"params": torch.from_numpy(np.asarray(arrays["params"][i], dtype=np.float32)), "index": i}
        if "u" in self.fields:
            item["u"] = torch.from_numpy(np.asarray(arrays["u"][i][: self.time_slices], dtype=np.float32))
        if "u0" in self.fields:
            # Files without /samples/u0 (e.g. PDEBench's) start from their first frame.
            u0 = arrays["u0"][i] if self.has_u0 else item["u"][0] if "u" in item else arrays["u"][i][0]
            item["u0"] = torch.from_numpy(np.array(u0, dtype=np.float32))
        for key in ("u", "u0", "params"):  # a NaN would train silently (or fail later, blamed on the training)
            if key not in item:
                continue
            if not bool(torch.isfinite(item[key]).all()):
                raise DataError(f"{self.path}: sample {i} has NaN/Inf in {key!r} (`sciml data info {self.path}` checks the "
                                "whole file); regenerate the file, or drop the sample.")
        return item

    def _arrays(self) -> dict[str, Any]:
        f = self._handle()
        if self._views is None or self._views[0] is not f:
            self._views = (f, sample_arrays(f))
        return self._views[1]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_file"], state["_pid"], state["_views"] = None, None, None
        return state

    def close(self) -> None:
        """Close this process's handle (it reopens on the next item)."""
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file, self._pid, self._views = None, None, None


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Disjoint sorted index sets {"train", "val", "test"} covering range(n), fixed by `seed`.

    A nonzero fraction gets at least one sample; train must keep at least one.
    """
    sizes = {name: max(1, round(f * n)) if f > 0 else 0
             for name, f in (("val", val_fraction), ("test", test_fraction))}
    n_train = n - sizes["val"] - sizes["test"]
    if n_train < 1:
        raise ConfigError(f"the dataset has {n} samples: too few for val_fraction={val_fraction} "
                          f"and test_fraction={test_fraction} to leave any for training. Lower the "
                          "fractions or generate more samples.")
    order = np.random.default_rng(seed).permutation(n)
    cuts = np.cumsum([n_train, sizes["val"]])
    return {name: np.sort(part) for name, part in zip(("train", "val", "test"), np.split(order, cuts))}


class SampleDataModule(L.LightningDataModule):
    """Train/val/test loaders over the samples of one HDF5 dataset, split by `seed`.

    ``grid`` is the dataset's grid, on which models are evaluated; ``train_grid`` the one the
    training batches live on: the same, or with ``train_t_max`` only the times t <= train_t_max
    (temporal extrapolation: train on the early window, test on the whole time span). The val
    and test splits always hold the whole time span.
    """

    def __init__(self, path: str, batch_size: int = 8, val_fraction: float = 0.1,
                 test_fraction: float = 0.1, num_workers: int = 0, seed: int = 0,
                 generator: str | None = None, generator_params: dict[str, Any] | None = None,
                 n_samples: int | None = None, generator_workers: int = 1, train_t_max: float | None = None,
                 pde: PDE | None = None) -> None:
        """``generator`` (a `sciml data generate` name with ``generator_params``, ``n_samples``,
        seeded by ``seed``) makes ``path`` when it does not exist yet; otherwise the file must exist.
        ``train_t_max`` cuts the training samples to the time slices t <= train_t_max. ``pde``
        (the experiment's, linked by the config): the file's physics must be its (same PDE, same
        parameters the file records), or a model would train on one PDE and be scored on another."""
        super().__init__()
        if train_t_max is not None and (isinstance(train_t_max, bool) or not isinstance(train_t_max, (int, float)) or not np.isfinite(train_t_max)):
            raise ConfigError(f"`train_t_max` (={train_t_max!r}) must be a number (the last training time) or null for the whole time span.")
        if generator is not None and (isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1):
            raise ConfigError(f"`n_samples` (={n_samples!r}) must be an integer >= 1 when `generator` (={generator!r}) is given.")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"`batch_size` (={batch_size!r}) must be an integer >= 1.")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ConfigError(f"`num_workers` (={num_workers!r}) must be an integer >= 0.")
        for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ConfigError(f"`{name}` (={value!r}) must be a number in [0, 1).")
        if val_fraction + test_fraction >= 1:
            raise ConfigError(f"`val_fraction` + `test_fraction` (={val_fraction} + {test_fraction})"
                              " must be below 1 to leave samples for training.")
        self.save_hyperparameters(ignore=["pde"])
        self.pde = pde
        self.path = path
        self.train_t_max = None if train_t_max is None else float(train_t_max)
        self.splits: dict[str, H5Samples] = {}
        self.grid: dict[str, np.ndarray] = {}
        self.train_grid: dict[str, np.ndarray] = {}

    def prepare_data(self) -> None:
        hp = self.hparams
        if hp.generator is None:
            return
        from .generators import generate, make_generator, spec_sha

        if not Path(self.path).exists():
            generate(hp.generator, self.path, n=hp.n_samples, seed=hp.seed, params=hp.generator_params or {}, workers=hp.generator_workers)
            return
        expected = spec_sha(hp.generator, make_generator(hp.generator, hp.generator_params or {}), hp.n_samples, hp.seed)
        if read_dataset(self.path, load=False).config_sha != expected:
            raise DataError(f"{self.path} exists but was not generated by data.generator={hp.generator!r} with these "
                            f"generator_params, n_samples (={hp.n_samples}) and seed (={hp.seed}); delete it to regenerate, "
                            "or point data.path at a new file.")

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        hp = self.hparams
        meta = read_dataset(self.path, load=False)
        if self.pde is not None:
            check_physics(self.path, meta, self.pde)
        self.grid = {k: np.asarray(v, dtype=float) for k, v in meta.grid.items()}  # models read the grid from here
        n_train_t = self._train_time_slices(self.grid["t"])
        self.train_grid = {**self.grid, "t": self.grid["t"][:n_train_t]}
        n = meta.n_samples
        # A model that trains on part of an item says which (``train_fields``, e.g. a data-free
        # physics-informed model: ("u0",)); validation and test items always hold everything.
        module = getattr(getattr(self, "trainer", None), "lightning_module", None)
        train_fields = getattr(module, "train_fields", ("u", "u0"))
        for name, idx in split_indices(n, hp.val_fraction, hp.test_fraction, hp.seed).items():
            train = name == "train"
            self.splits[name] = H5Samples(self.path, idx, time_slices=n_train_t if train else None,
                                          fields=train_fields if train else ("u", "u0"))

    def _train_time_slices(self, t: np.ndarray) -> int:
        """How many leading time slices the training samples keep (all without ``train_t_max``)."""
        if self.train_t_max is None:
            return len(t)
        if np.any(np.diff(t) <= 0):
            raise DataError(f"{self.path}: the time grid is not increasing, so `train_t_max` cannot cut it into a training window.")
        n = int(np.sum(t <= self.train_t_max + 1e-9 * (t[-1] - t[0])))  # 1e-9: 400 matches a grid time of 400.00000000001
        if n == len(t):
            raise ConfigError(f"`train_t_max` (={self.train_t_max}) covers the whole time grid [{t[0]:g}, {t[-1]:g}] of {self.path}: "
                              f"nothing is left to extrapolate to. Lower it below {t[-1]:g}, or drop it to train on the whole span.")
        if n < 3:
            raise ConfigError(f"`train_t_max` (={self.train_t_max}) keeps {n} of the {len(t)} time slices of {self.path} "
                              f"(t from {t[0]:g} by {t[1] - t[0]:g}); training needs >= 3 for the time derivatives. Raise it to >= {t[min(2, len(t) - 1)]:g}.")
        return n

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if not self.splits:
            self.setup()
        workers = self.hparams.num_workers
        if shuffle:  # training: resumable mid-epoch (sciml.data.resumable)
            return training_loader(self.splits[split], self.hparams.batch_size, lambda: self.trainer, num_workers=workers)
        # validation's iterator seeds itself from its own generator, not from training's stream
        generator = torch.Generator().manual_seed(self.hparams.seed) if split == "val" else None
        return DataLoader(self.splits[split], batch_size=self.hparams.batch_size, shuffle=False,
                          num_workers=workers, persistent_workers=workers > 0, generator=generator)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def teardown(self, stage: str | None = None) -> None:
        for samples in self.splits.values():
            samples.close()
