"""PDEBench's 1D layout (a group per sample) reads, validates and trains like a sciml file."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from sciml import cli
from sciml.data import H5Samples, SampleDataModule, read_dataset, summarize, validate_dataset
from sciml.errors import DataError


def write_pdebench(path, n=5, nt=11, nx=16, channels=1, seed=0):
    rng = np.random.default_rng(seed)
    x = (np.arange(nx) + 0.5) / nx  # cell centres on (0, 1), as PDEBench stores them
    t = np.linspace(0, 500, nt)
    data = rng.random((n, nt, nx, channels)).astype(np.float32)
    with h5py.File(path, "w") as f:
        for i in range(n):
            g = f.create_group(f"{i:04d}")
            g["data"] = data[i]
            g["grid/x"] = x
            g["grid/t"] = t
    return data


def test_a_pdebench_file_reads_as_a_dataset(tmp_path):
    path = tmp_path / "1D_diff-sorp_NA_NA.h5"
    data = write_pdebench(path)
    ds = read_dataset(path)
    assert ds.pde == "diffusion_sorption" and ds.n_samples == 5
    np.testing.assert_array_equal(ds.u, data[..., 0])  # single channel squeezed: [n, t, x]
    np.testing.assert_allclose(ds.grid["x"], (np.arange(16) + 0.5) / 16)
    np.testing.assert_allclose(ds.weights.sum(), 1.0)  # cell widths over (0, 1)
    assert ds.params.shape == (5, 0)
    assert validate_dataset(path).u.shape == (5, 11, 16)


def test_several_channels_are_kept(tmp_path):
    data = write_pdebench(tmp_path / "two.h5", channels=2)
    np.testing.assert_array_equal(read_dataset(tmp_path / "two.h5").u, data)


def test_data_info_summarises_a_pdebench_file(tmp_path, capsys):
    path = tmp_path / "1D_diff-sorp_NA_NA.h5"
    write_pdebench(path)
    assert cli.main(["data", "info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "PDEBench layout" in out and "diffusion_sorption" in out and "[5, 11, 16]" in out
    assert "PDEBench" in summarize(path)


def test_a_pdebench_file_loads_in_the_datamodule(tmp_path):
    path = tmp_path / "pb.h5"
    data = write_pdebench(path, n=10)
    items = H5Samples(path, [3, 7])
    np.testing.assert_array_equal(items[1]["u"].numpy(), data[7, ..., 0])
    first_frame_only = H5Samples(path, [7], fields=("u0",))[0]  # no /samples/u0: the first frame
    assert "u" not in first_frame_only
    np.testing.assert_array_equal(first_frame_only["u0"].numpy(), data[7, 0, :, 0])
    dm = SampleDataModule(str(path), batch_size=4, val_fraction=0.2, test_fraction=0.2)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["u"].shape == (4, 11, 16) and batch["params"].shape == (4, 0)


def test_inconsistent_or_broken_pdebench_files_are_refused(tmp_path):
    path = tmp_path / "bad.h5"
    write_pdebench(path, n=3)
    with h5py.File(path, "a") as f:
        del f["0001/data"]
        f["0001/data"] = np.zeros((4, 16, 1), np.float32)
    with pytest.raises(DataError, match="0001"):
        validate_dataset(path)
    nan = tmp_path / "nan.h5"
    write_pdebench(nan, n=2)
    with h5py.File(nan, "a") as f:
        f["0001/data"][0, 0, 0] = np.nan
    with pytest.raises(DataError, match="non-finite"):
        validate_dataset(nan)


def test_samples_come_in_natural_order_and_other_root_entries_are_not_samples(tmp_path):
    """Group names 0 .. 11 without padding are samples 0 .. 11 (not 0, 1, 10, 11, 2 as strings
    sort), and a dataset at the root (metadata) is neither a sample nor an error."""
    path = tmp_path / "1D_diff-sorp_NA_NA.h5"
    x, t = (np.arange(8) + 0.5) / 8, np.linspace(0, 500, 4)
    with h5py.File(path, "w") as f:
        for i in range(12):
            g = f.create_group(str(i))
            g["data"] = np.full((4, 8, 1), float(i))
            g["grid/x"], g["grid/t"] = x, t
        f["info"] = np.arange(3)
    ds = read_dataset(path)
    assert ds.u[:, 0, 0].tolist() == [float(i) for i in range(12)]
    assert H5Samples(path, [10])[0]["u"][0, 0] == 10.0
