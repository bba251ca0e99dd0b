"""The HDF5 dataset schema: files round-trip, appear only complete, and bad files are refused."""

from __future__ import annotations

import dataclasses
import os
import signal

import h5py
import numpy as np
import pytest

from sciml.data import schema
from sciml.data.schema import (
    SCHEMA_VERSION, DatasetWriter, PDEDataset, check_physics, read_dataset, shape_only, summarize,
    validate_dataset, write_dataset,
)
from sciml.errors import ConfigError, DataError


def grid_dataset(n: int = 4, n_t: int = 5, n_x: int = 6, n_y: int = 3) -> PDEDataset:
    rng = np.random.default_rng(0)
    u = rng.standard_normal((n, n_t, n_x, n_y)).astype(np.float32)
    return PDEDataset(
        pde="heat2d", u=u, params=rng.uniform(size=(n, 2)), param_names=["nu", "amplitude"],
        grid={"t": np.linspace(0, 1, n_t), "x": np.linspace(0, 2 * np.pi, n_x, endpoint=False),
              "y": np.linspace(0, 1, n_y)},
        generator="spectral-test 1.0", common_params={"L": 1.0, "bc": "periodic", "modes": [1, 2]},
        config_sha="abc123", u0=u[:, 0].copy(), weights=np.full(n_x * n_y, 1.0 / (n_x * n_y)),
        created="2024-01-02T03:04:05+00:00",
    )


def mesh_dataset(n: int = 3, n_t: int = 4) -> PDEDataset:
    """Two triangles on the unit square, u with 2 channels, no u0."""
    points = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    rng = np.random.default_rng(1)
    return PDEDataset(
        pde="stokes", u=rng.standard_normal((n, n_t, 4, 2)), params=rng.uniform(size=(n, 1)),
        param_names=["viscosity"], grid={"t": np.linspace(0, 1, n_t)}, generator="dolfinx 0.11",
        mesh_points=points, mesh_cells=np.array([[0, 1, 2], [0, 2, 3]]), cell_type="triangle",
        weights=np.full(4, 0.25),
    )


def assert_same(a: PDEDataset, b: PDEDataset) -> None:
    for f in dataclasses.fields(PDEDataset):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, dict) and f.name == "grid":
            assert x.keys() == y.keys()
            for key in x:
                np.testing.assert_array_equal(x[key], y[key])
        elif isinstance(x, np.ndarray):
            assert x.dtype == y.dtype or f.name != "u", f.name
            np.testing.assert_array_equal(x, y, err_msg=f.name)
        else:
            assert x == y, f.name


def template_of(ds: PDEDataset) -> PDEDataset:
    return dataclasses.replace(
        ds, u=shape_only(ds.u.shape, ds.u.dtype), params=shape_only(ds.params.shape),
        u0=None if ds.u0 is None else shape_only(ds.u0.shape, ds.u0.dtype))


@pytest.mark.parametrize("make", [grid_dataset, mesh_dataset])
def test_round_trip(tmp_path, make):
    ds = make()
    path = write_dataset(tmp_path / "sub" / "d.h5", ds)
    assert_same(read_dataset(path), ds)
    meta = validate_dataset(path)
    assert meta.u.shape == ds.u.shape and meta.u.dtype == ds.u.dtype
    assert_same(meta, dataclasses.replace(ds, u=meta.u, u0=meta.u0))
    assert sorted(p.name for p in path.parent.iterdir()) == ["d.h5"]


def test_file_layout_is_the_documented_schema(tmp_path):
    names: list[str] = []
    with h5py.File(write_dataset(tmp_path / "g.h5", grid_dataset()), "r") as f:
        f.visit(names.append)
        assert set(f.attrs) == {"pde", "schema_version", "generator", "created", "params", "sha"}
        assert f.attrs["schema_version"] == SCHEMA_VERSION
        assert list(f["samples/params"].attrs["names"]) == ["nu", "amplitude"]
    assert set(names) == {"grid", "grid/t", "grid/x", "grid/y", "samples", "samples/u",
                          "samples/u0", "samples/params", "quadrature", "quadrature/weights"}
    with h5py.File(write_dataset(tmp_path / "m.h5", mesh_dataset()), "r") as f:
        assert f["mesh/points"].dtype == np.float64 and f["mesh/cells"].dtype == np.int64
        assert f["mesh"].attrs["cell_type"] == "triangle" and "grid/x" not in f


def test_lazy_read_has_shapes_but_no_values(tmp_path):
    ds = read_dataset(write_dataset(tmp_path / "d.h5", grid_dataset()), load=False)
    assert ds.u.shape == (4, 5, 6, 3) and ds.u.dtype == np.float32 and np.isnan(ds.u).all()
    assert ds.space_shape == (6, 3) and ds.n_samples == 4 and not ds.is_mesh


def test_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    original = mesh_dataset()  # one object: its `created` time stamp is taken when it is made
    path = write_dataset(tmp_path / "d.h5", original)
    create = h5py.Group.create_dataset

    def fail_on_params(self, name, *args, **kwargs):
        if name == "samples/params":  # u is already written by then
            raise OSError("disk full")
        return create(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", fail_on_params)
    with pytest.raises(OSError, match="disk full"):
        write_dataset(path, grid_dataset())
    with pytest.raises(OSError, match="disk full"):
        write_dataset(tmp_path / "new.h5", grid_dataset())
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["d.h5"]
    assert_same(read_dataset(path), original)


@pytest.mark.parametrize("reader", [read_dataset, validate_dataset, summarize])
def test_truncated_file_is_refused(tmp_path, reader):
    path = write_dataset(tmp_path / "d.h5", grid_dataset())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match="truncated") as err:
        reader(path)
    assert str(path) in str(err.value) and "sciml data generate" in str(err.value)


def test_missing_and_non_hdf5_files_are_refused(tmp_path):
    with pytest.raises(DataError, match="does not exist.*sciml data generate"):
        read_dataset(tmp_path / "nope.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(DataError, match="not a readable HDF5 file"):
        read_dataset(tmp_path / "text.h5")


@pytest.mark.parametrize("change, message", [
    (dict(grid={"t": np.linspace(0, 1, 7)}), r"u has shape \[4, 5, 6, 3\], expected \[n_samples, n_t=7"),
    (dict(params=np.zeros((3, 2))), "params has shape"),
    (dict(param_names=["nu"]), "1 parameter names"),
    (dict(weights=np.ones(5)), "quadrature weights have shape"),
    (dict(u0=np.zeros((4, 6, 3))[:2]), "u0 has shape"),
    (dict(u=np.zeros((4, 5, 6, 3), dtype=np.int32)), "dtype int32"),
    (dict(weights=np.full(18, np.nan)), "quadrature weights must be finite and >= 0"),
    (dict(weights=np.full(18, -1.0)), "quadrature weights must be finite and >= 0"),
    (dict(grid={"x": np.array([0, 1, 2, 2, 3, 4.0])}), "grid axis 'x' is not strictly increasing"),
    (dict(grid={"t": np.array([0, 0.25, np.nan, 0.75, 1])}), "grid axis 't' holds NaN/Inf"),
    (dict(params=np.full((4, 2), np.nan)), "params.*non-finite"),
    (dict(u0=np.zeros((4, 6, 3), dtype=np.int64)), "u0 has dtype int64"),
    (dict(common_params=[1, 2]), "`params` must be a JSON object"),
])
def test_inconsistent_arrays_are_refused_on_write(tmp_path, change, message):
    ds = grid_dataset()
    grid = ds.grid if "grid" not in change else {**ds.grid, **change.pop("grid")}
    with pytest.raises(DataError, match=message):
        write_dataset(tmp_path / "d.h5", dataclasses.replace(ds, grid=grid, **change))
    assert not list(tmp_path.iterdir())


def test_mesh_with_bad_cells_is_refused(tmp_path):
    bad = dataclasses.replace(mesh_dataset(), mesh_cells=np.array([[0, 1, 4]]))
    with pytest.raises(DataError, match=r"outside \[0, 4\)"):
        write_dataset(tmp_path / "d.h5", bad)
    # cells that do not fit their cell_type (XDMF export then crashed or wrote polylines)
    for change, message in ((dict(mesh_cells=np.array([[0, 1], [2, 3]])), "triangle cells have 3 vertices, but the cells hold 2"),
                            (dict(cell_type="interval"), "interval cells have 2 vertices, but the cells hold 3"),
                            (dict(cell_type="prism"), "cell_type 'prism' is not one of"),
                            (dict(mesh_points=np.zeros((4, 1))), "need points in >= 2 dimensions")):
        with pytest.raises(DataError, match=message):
            write_dataset(tmp_path / "d.h5", dataclasses.replace(mesh_dataset(), **change))
    assert not list(tmp_path.iterdir())


def without(mapping: dict, key: str) -> dict:
    return {k: v for k, v in mapping.items() if k != key}


@pytest.mark.parametrize("make, problem", [
    (lambda: dataclasses.replace(grid_dataset(), grid=without(grid_dataset().grid, "t")),
     "the time grid `t` is missing"),
    (lambda: dataclasses.replace(grid_dataset(), u=grid_dataset().u[:, :, 0], u0=grid_dataset().u0[:, 0],
                                 grid=without(grid_dataset().grid, "x"), weights=np.full(3, 1 / 3)),
     "the grid has a `y` axis but no `x` axis"),
    (lambda: dataclasses.replace(mesh_dataset(), grid={**mesh_dataset().grid, "x": np.linspace(0, 1, 4)}),
     "a dataset has a mesh or x/y grid axes, not both"),
    (lambda: dataclasses.replace(mesh_dataset(), mesh_points=np.array([[0.0, 0.0], [1.0, np.nan], [1.0, 1.0], [0.0, 1.0]])),
     "mesh points hold NaN/Inf"),
    (lambda: dataclasses.replace(grid_dataset(), mesh_cells=np.array([[0, 1, 2]])),
     "mesh cells are given without mesh points"),
    (lambda: dataclasses.replace(grid_dataset(), u=grid_dataset().u[:0], params=grid_dataset().params[:0],
                                 u0=grid_dataset().u0[:0]),
     "there are no samples"),
])
def test_layouts_the_schema_forbids_are_refused_with_the_problem_and_the_fix(tmp_path, make, problem):
    """Each of these would otherwise be written silently (a grid without times, a `y` read as `x`,
    mesh cells dropped, NaN coordinates, an empty file) or crash later with a KeyError; the
    message names the file, the problem and the fix."""
    path = tmp_path / "d.h5"
    with pytest.raises(DataError) as err:
        write_dataset(path, make())
    assert str(err.value) == f"cannot write {path}: {problem}. Fix the arrays given to the dataset writer."
    with pytest.raises(DataError, match="Fix the arrays given to the dataset writer"):
        DatasetWriter(path, template_of(make()))
    assert not list(tmp_path.iterdir())


def edit(path, fn):
    with h5py.File(path, "r+") as f:
        fn(f)


def replace_t(f):
    del f["grid/t"]
    f["grid/t"] = np.arange(9.0)


@pytest.mark.parametrize("damage, message", [
    (replace_t, "n_t=9"),
    (lambda f: f.attrs.__delitem__("sha"), r"missing root attributes \['sha'\]"),
    (lambda f: f.__delitem__("samples/params"), "missing datasets"),
    (lambda f: f.attrs.__setitem__("params", "{oops"), "not JSON"),
    (lambda f: f.attrs.__setitem__("schema_version", SCHEMA_VERSION + 1), "upgrade sciml"),
])
def test_files_that_break_the_schema_are_refused(tmp_path, damage, message):
    path = write_dataset(tmp_path / "d.h5", grid_dataset())
    edit(path, damage)
    with pytest.raises(DataError, match=message):
        read_dataset(path, load=False)


@pytest.mark.parametrize("reader", [read_dataset, validate_dataset])
def test_nan_in_u_is_refused_with_count_and_sample(tmp_path, reader):
    path = write_dataset(tmp_path / "d.h5", grid_dataset())
    edit(path, lambda f: f["samples/u"].__setitem__((2, 1, slice(0, 3), 0), np.nan))
    with pytest.raises(DataError, match="has 3 non-finite values.*first in sample 2"):
        reader(path)
    nan_u = grid_dataset().u.copy()
    nan_u[1, 0, 0, 0] = np.inf
    with pytest.raises(DataError, match="1 non-finite values.*first in sample 1"):
        write_dataset(tmp_path / "e.h5", dataclasses.replace(grid_dataset(), u=nan_u))


def test_killed_generation_resumes_to_the_one_shot_file(tmp_path):
    ds = grid_dataset()
    out = tmp_path / "out" / "d.h5"
    pid = os.fork()
    if pid == 0:  # the generation process, killed after two samples
        try:
            writer = DatasetWriter(out, template_of(ds))
            for i in (2, 0):
                writer.write(i, ds.u[i], ds.params[i], u0=ds.u0[i])
        finally:
            os.kill(os.getpid(), signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    partial = out.with_name("d.h5.partial")
    assert partial.exists() and not out.exists()
    with pytest.raises(DataError, match="unfinished generation"):
        read_dataset(partial)

    with DatasetWriter(out, template_of(ds)) as writer:
        assert writer.done.tolist() == [True, False, True, False]
        with pytest.raises(DataError, match="2 of 4 samples are not written"):
            writer.finalize()
        for i in writer.pending():
            writer.write(i, ds.u[i], ds.params[i], u0=ds.u0[i])
        assert writer.finalize() == out
    assert sorted(p.name for p in out.parent.iterdir()) == ["d.h5"]
    assert_same(read_dataset(out), read_dataset(write_dataset(tmp_path / "one_shot.h5", ds)))


def test_resume_with_another_template_is_refused(tmp_path):
    ds = grid_dataset()
    DatasetWriter(tmp_path / "d.h5", template_of(ds)).close()
    other = dataclasses.replace(template_of(ds), config_sha="other")
    with pytest.raises(DataError, match="different dataset.*config sha.*Delete it"):
        DatasetWriter(tmp_path / "d.h5", other)


def test_writer_refuses_bad_samples(tmp_path):
    ds = grid_dataset()
    with DatasetWriter(tmp_path / "d.h5", template_of(ds)) as writer:
        with pytest.raises(ValueError, match=r"`u` of sample 0 has shape \(6, 3\)"):
            writer.write(0, ds.u[0, 0], ds.params[0], u0=ds.u0[0])
        with pytest.raises(ValueError, match="`u0` of sample 1 has shape None"):
            writer.write(1, ds.u[1], ds.params[1])
        with pytest.raises(DataError, match="sample 3 .* 90 non-finite"):
            writer.write(3, np.full_like(ds.u[3], np.nan), ds.params[3], u0=ds.u0[3])
        assert not writer.done.any()


def test_writer_refuses_a_sample_index_outside_the_template(tmp_path):
    """i = n_samples is one past the last sample (h5py would only raise a bare IndexError) and
    i = -1 would overwrite the last one; the writer names `i` and the range instead."""
    ds = grid_dataset()
    with DatasetWriter(tmp_path / "d.h5", template_of(ds)) as writer:
        for i in (4, -1):
            with pytest.raises(ValueError, match=rf"sample index `i` \(={i}\) must be in \[0, 4\)"):
                writer.write(i, ds.u[0], ds.params[0], u0=ds.u0[0])
        assert not writer.done.any()


def test_summary_mean_is_over_every_value(tmp_path):
    """u is 0 except sample 1, which is 1: the mean over all 4 * 5 * 6 * 3 values is 0.25
    (dividing the sum, 90, by the 4 samples would print 22.5)."""
    u = np.zeros((4, 5, 6, 3), dtype=np.float32)
    u[1] = 1.0
    ds = dataclasses.replace(grid_dataset(), u=u, u0=u[:, 0].copy())
    text = summarize(write_dataset(tmp_path / "d.h5", ds))
    assert "float32 [4, 5, 6, 3], min 0, max 1, mean 0.25" in text, text


def test_summary_names_the_key_facts(tmp_path):
    path = write_dataset(tmp_path / "d.h5", grid_dataset())
    text = summarize(path)
    u = grid_dataset().u
    for fact in ["heat2d", "spectral-test 1.0", "2024-01-02T03:04:05", f"schema version {SCHEMA_VERSION}",
                 "abc123", "grid x", "6 points", "float32 [4, 5, 6, 3]", f"min {u.min():.4g}",
                 f"max {u.max():.4g}", "param nu", "param amplitude", "sum 1", "MB", '"bc": "periodic"']:
        assert fact in text, fact
    mesh_text = summarize(write_dataset(tmp_path / "m.h5", mesh_dataset()))
    assert "4 points in [0, 1] x [0, 1], 2 triangle cells" in mesh_text


def test_temp_name_is_beside_the_target(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(schema, "_commit", lambda tmp, path: seen.append((tmp, path)))
    write_dataset(tmp_path / "d.h5", mesh_dataset())
    (tmp, path), = seen
    assert tmp.parent == path.parent and tmp.name.startswith("d.h5.tmp-")


def test_a_second_writer_of_the_same_file_is_refused(tmp_path):
    ds = grid_dataset()
    template = template_of(ds)
    with DatasetWriter(tmp_path / "d.h5", template) as first:
        first.write(0, ds.u[0], ds.params[0], ds.u0[0] if ds.u0 is not None else None)
        with pytest.raises(DataError, match="another process is writing"):
            DatasetWriter(tmp_path / "d.h5", template)
    with DatasetWriter(tmp_path / "d.h5", template) as again:  # released on close: resumes
        assert 0 not in again.pending()
    assert not (tmp_path / "d.h5.lock").exists()


class _StubPDE:
    """What `check_physics` reads of a `sciml.pdes.PDE`: its name and params()."""

    name = "heat2d"

    def __init__(self, **params):
        self._params = params

    def params(self):
        return self._params


def test_check_physics_refuses_a_parameter_off_by_one_part_in_a_million():
    """L = 1 + 1e-6 is another PDE (rel_tol 1e-9): a looser tolerance (1e-1) would train on one
    and score on the other; round-off (1 + 1e-12) and ints against floats still pass."""
    meta = grid_dataset()  # common_params {"L": 1.0, "bc": "periodic", "modes": [1, 2]}
    check_physics("d.h5", meta, _StubPDE(L=1.0 + 1e-12, bc="periodic"))
    check_physics("d.h5", meta, _StubPDE(L=1, modes=[1, 2]))
    with pytest.raises(ConfigError, match=r"pde.init_args.L \(=1.000001\) differs from the 1.0 that d.h5 was "
                                          r"generated with.*Set pde.init_args.L: 1.0"):
        check_physics("d.h5", meta, _StubPDE(L=1.0 + 1e-6))
    with pytest.raises(ConfigError, match=r"holds 'heat2d' data but the experiment's pde is _StubPDE \('burgers'\)"):
        check_physics("d.h5", meta, type("_StubPDE", (_StubPDE,), {"name": "burgers"})())
