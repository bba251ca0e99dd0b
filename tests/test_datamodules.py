"""Sample datasets: reproducible disjoint splits, worker-safe HDF5 loading, checked arguments."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from sciml.data.datamodules import H5Samples, SampleDataModule
from sciml.data.schema import PDEDataset, write_dataset
from sciml.errors import ConfigError, DataError

N, N_T, N_X = 20, 3, 4


def expected_u(i: int) -> np.ndarray:
    """Sample i is recognisable from its values alone."""
    return i + np.arange(N_T * N_X, dtype=np.float64).reshape(N_T, N_X) / 100


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    ds = PDEDataset(
        pde="burgers", u=np.stack([expected_u(i) for i in range(N)]),
        params=np.stack([np.arange(N), -np.arange(N)], axis=1).astype(float),
        param_names=["index", "minus_index"], generator="test",
        grid={"t": np.linspace(0, 1, N_T), "x": np.linspace(0, 1, N_X)},
        u0=np.stack([expected_u(i)[0] for i in range(N)]),
    )
    return str(write_dataset(tmp_path_factory.mktemp("data") / "samples.h5", ds))


def splits(dm: SampleDataModule) -> dict[str, list[int]]:
    dm.setup("fit")
    return {name: samples.indices.tolist() for name, samples in dm.splits.items()}


def test_splits_are_disjoint_cover_everything_and_follow_the_seed(path):
    parts = splits(SampleDataModule(path, val_fraction=0.2, test_fraction=0.1, seed=3))
    assert [len(parts[k]) for k in ("train", "val", "test")] == [14, 4, 2]
    assert sorted(sum(parts.values(), [])) == list(range(N))
    assert parts == splits(SampleDataModule(path, val_fraction=0.2, test_fraction=0.1, seed=3))
    assert parts != splits(SampleDataModule(path, val_fraction=0.2, test_fraction=0.1, seed=4))


def test_items_hold_the_sample_values(path):
    item = H5Samples(path, [7])[0]
    assert item["index"] == 7 and item["u"].dtype == torch.float32
    torch.testing.assert_close(item["u"], torch.tensor(expected_u(7), dtype=torch.float32))
    torch.testing.assert_close(item["params"], torch.tensor([7.0, -7.0]))
    torch.testing.assert_close(item["u0"], item["u"][0])


def test_items_hold_only_the_fields_asked_for(path):
    only = H5Samples(path, [7], fields=("u0",))[0]
    assert set(only) == {"u0", "params", "index"}
    torch.testing.assert_close(only["u0"], torch.tensor(expected_u(7)[0], dtype=torch.float32))
    with pytest.raises(ValueError, match=r"`fields` \(=\('v',\)\) must name one or both of 'u' and 'u0'"):
        H5Samples(path, [7], fields=("v",))

    # the data module serves a model's `train_fields` in training only; val and test stay whole
    class DataFree:
        train_fields = ("u0",)

    dm = SampleDataModule(path, val_fraction=0.2, test_fraction=0.1)
    dm.trainer = type("Trainer", (), {"lightning_module": DataFree()})()  # what trainer.fit attaches
    dm.setup("fit")
    assert dm.splits["train"].fields == ("u0",) and set(next(iter(dm.train_dataloader()))) == {"u0", "params", "index"}
    assert dm.splits["val"].fields == dm.splits["test"].fields == ("u", "u0")
    assert "u" in next(iter(dm.test_dataloader()))


def check_batches(loader: DataLoader, indices: list[int]) -> None:
    seen = []
    for batch in loader:
        for i, u, params in zip(batch["index"].tolist(), batch["u"], batch["params"]):
            torch.testing.assert_close(u, torch.tensor(expected_u(i), dtype=torch.float32))
            assert params.tolist() == [i, -i]
            seen.append(i)
    assert sorted(seen) == indices


def test_workers_open_their_own_handles(path):
    dm = SampleDataModule(path, batch_size=3, num_workers=2, seed=1)
    dm.setup("fit")
    train = dm.splits["train"]
    assert train._file is None  # nothing open to leak into forked workers
    assert pickle.loads(pickle.dumps(train)).indices.tolist() == train.indices.tolist()
    loader = dm.train_dataloader()
    assert loader.persistent_workers and loader.num_workers == 2
    check_batches(loader, train.indices.tolist())
    check_batches(dm.val_dataloader(), dm.splits["val"].indices.tolist())
    assert train._file is None
    dm.teardown("fit")


def test_a_pickled_dataset_reopens_the_file(path):
    samples = H5Samples(path, [4, 5])
    samples[0]  # opens a handle, which must not travel
    copy = pickle.loads(pickle.dumps(samples))
    assert copy._file is None and copy[1]["index"] == 5 and samples._file is not None
    samples.close()


@pytest.mark.slow  # each spawned worker imports torch afresh (tens of seconds on a small CPU)
def test_spawned_workers_unpickle_the_dataset(path):
    samples = H5Samples(path, range(0, N, 3))
    loader = DataLoader(samples, batch_size=2, num_workers=2, multiprocessing_context="spawn")
    check_batches(loader, list(range(0, N, 3)))


class OwnerProbe(H5Samples):
    """Reports whether the handle that served an item was opened by the process serving it."""

    def __getitem__(self, k):
        return super().__getitem__(k) | {"own_handle": self._pid == os.getpid()}


def test_a_handle_opened_before_fork_is_not_reused(path):
    samples = OwnerProbe(path)
    samples[0]
    parent_handle = samples._file
    loader = DataLoader(samples, batch_size=5, num_workers=2, multiprocessing_context="fork")
    assert all(batch["own_handle"].all() for batch in loader)
    check_batches(loader, list(range(N)))
    assert samples._file is parent_handle
    samples.close()
    assert samples._file is None


@pytest.mark.parametrize("kwargs, message", [
    (dict(batch_size=0), r"`batch_size` \(=0\)"),
    (dict(batch_size=2.5), r"`batch_size` \(=2.5\)"),
    (dict(num_workers=-1), r"`num_workers` \(=-1\)"),
    (dict(val_fraction=1.0), r"`val_fraction` \(=1.0\) must be a number in \[0, 1\)"),
    (dict(test_fraction=-0.1), r"`test_fraction` \(=-0.1\)"),
    (dict(val_fraction=0.5, test_fraction=0.5), r"\(=0.5 \+ 0.5\) must be below 1"),
])
def test_bad_arguments_are_refused(path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        SampleDataModule(path, **kwargs)


def test_too_few_samples_and_missing_files_are_refused(path, tmp_path):
    with pytest.raises(ConfigError, match="has 20 samples: too few"):
        SampleDataModule(path, val_fraction=0.6, test_fraction=0.39).setup("fit")
    with pytest.raises(DataError, match="does not exist"):
        SampleDataModule(str(tmp_path / "missing.h5")).setup("fit")
    with pytest.raises(ValueError, match=r"must lie in \[0, 20\)"):
        H5Samples(path, [0, 20])


def test_hyperparameters_are_saved(path):
    dm = SampleDataModule(path, batch_size=4, seed=7)
    assert dict(dm.hparams) == dict(path=path, batch_size=4, val_fraction=0.1, test_fraction=0.1,
                                    num_workers=0, seed=7, generator=None, generator_params=None,
                                    n_samples=None, generator_workers=1, train_t_max=None)


def test_a_missing_file_is_generated_from_the_named_generator(tmp_path):
    path = tmp_path / "made.h5"
    dm = SampleDataModule(str(path), batch_size=2, generator="convection", generator_params={"nx": 16, "nt": 5}, n_samples=6, seed=3)
    dm.prepare_data()
    dm.setup()
    assert path.exists() and len(dm.splits["train"]) + len(dm.splits["val"]) + len(dm.splits["test"]) == 6
    assert dm.grid["x"].shape == (16,) and dm.grid["t"].shape == (5,)
    # the next run with the same settings accepts the file it made (random initial conditions,
    # chosen by the number of samples, are part of the file's digest either way)
    SampleDataModule(str(path), batch_size=2, generator="convection", generator_params={"nx": 16, "nt": 5}, n_samples=6, seed=3).prepare_data()
    with pytest.raises(ConfigError, match="`n_samples`"):
        SampleDataModule(str(path), generator="convection")


def test_the_datasets_physics_must_be_the_experiments(tmp_path):
    """The config hands its pde to the data: another PDE, or a parameter the file was not made
    with, is refused at setup (the model would train on one PDE and be scored on another)."""
    from sciml.pdes import Burgers, Convection

    ds = PDEDataset(pde="burgers", u=np.zeros((4, N_T, N_X)), params=np.zeros((4, 0)), param_names=[], generator="test",
                    grid={"t": np.linspace(0, 1, N_T), "x": np.linspace(0, 1, N_X)}, common_params={"nu": 0.01, "ic": "sine"})
    path = str(write_dataset(tmp_path / "burgers.h5", ds))
    SampleDataModule(path, val_fraction=0.25, test_fraction=0.25, pde=Burgers(nu=0.01)).setup("fit")
    with pytest.raises(ConfigError, match=r"pde.init_args.nu \(=0.02\) differs from the 0.01 that .*burgers.h5 was generated with"):
        SampleDataModule(path, val_fraction=0.25, test_fraction=0.25, pde=Burgers(nu=0.02)).setup("fit")
    with pytest.raises(ConfigError, match=r"holds 'burgers' data but the experiment's pde is Convection"):
        SampleDataModule(path, val_fraction=0.25, test_fraction=0.25, pde=Convection()).setup("fit")


def test_a_collocation_reference_for_other_parameters_is_refused(tmp_path):
    """A PINN's explicit data.path made for beta = 5 must not score a beta = 30 run."""
    from sciml.data.collocation import CollocationDataModule
    from sciml.pdes import Convection

    path = tmp_path / "beta5.h5"
    made = CollocationDataModule(Convection(beta=5.0), path=str(path), nx=32, nt=8, n_collocation=100)
    made.prepare_data()
    made.setup()
    with pytest.raises(ConfigError, match=r"pde.init_args.beta \(=30.0\) differs from the 5.0"):
        CollocationDataModule(Convection(beta=30.0), path=str(path), nx=32, nt=8, n_collocation=100).setup()


def test_a_sample_with_nan_is_refused_when_it_is_read(path, tmp_path):
    """The data module reads samples lazily, so a NaN written into a file after its validation
    is caught where the sample is served, naming it, not trained on silently."""
    import shutil

    import h5py

    bad = tmp_path / "nan.h5"
    shutil.copy(path, bad)
    with h5py.File(bad, "r+") as f:
        u = f["samples/u"]
        row = u[3]
        row[1, 2] = np.nan
        u[3] = row
    samples = H5Samples(str(bad))
    samples[2]  # the others are served
    with pytest.raises(DataError, match=r"nan.h5: sample 3 has NaN/Inf in 'u'"):
        samples[3]
