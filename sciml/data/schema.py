"""HDF5 dataset files: the one layout every generator writes and every model reads.

Schema version 1 (README, "HDF5 dataset schema"):

    /                    attrs pde, schema_version, generator, created, params (JSON), sha
    /grid/t              [n_t], always; /grid/x [n_x] and /grid/y [n_y] on tensor grids
    /mesh/points         [n_points, dim] float64 } unstructured meshes,
    /mesh/cells          [n_cells, k] int64      } attr cell_type on /mesh
    /samples/u           [n_samples, n_t, *space(, channels)]  space: (n_points,) or (n_x[, n_y])
    /samples/params      [n_samples, n_params], attr names
    /samples/u0          [n_samples, *space(, channels)], optional
    /quadrature/weights  [prod(space)], optional: the conservation functional is G u = weights . u

A file appears under its final name only when complete: `write_dataset` writes a temporary
file and renames it; `DatasetWriter` fills `<path>.partial` one sample at a time (a killed
generation resumes from its `/samples/done` mask) and renames it in `finalize`.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn

import h5py
import numpy as np

from sciml.data import pdebench
from sciml.errors import ConfigError, DataError

SCHEMA_VERSION = 1

_SPACE_AXES = ("x", "y")
_ROOT_ATTRS = ("pde", "schema_version", "generator", "created", "params", "sha")
_REGENERATE = "Regenerate it with `sciml data generate NAME [key=value ...] --out FILE` (its generator and parameters: `sciml data generate --list`)."
_WRITE_FIX = "Fix the arrays given to the dataset writer."
_BLOCK_BYTES = 1 << 26  # samples are scanned for NaN in blocks of about this size


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def shape_only(shape: tuple[int, ...], dtype: Any = np.float64) -> np.ndarray:
    """A read-only array that holds only `shape` and `dtype` (every value NaN, no memory).

    It stands for samples that are not loaded (`read_dataset(load=False)`) or not computed yet
    (the template of a `DatasetWriter`); any arithmetic on it gives NaN, never plausible numbers.
    """
    fill = np.nan if np.issubdtype(np.dtype(dtype), np.inexact) else 0
    return np.broadcast_to(np.array(fill, dtype=dtype), tuple(shape))


@dataclass(kw_only=True)
class PDEDataset:
    """Samples of one PDE's solution on a tensor grid or an unstructured mesh."""

    pde: str
    u: np.ndarray  # [n_samples, n_t, *space(, channels)]
    grid: dict[str, np.ndarray]  # "t" always; "x"[, "y"] on tensor grids
    params: np.ndarray  # [n_samples, n_params]
    param_names: list[str]
    generator: str  # solver and version
    mesh_points: np.ndarray | None = None  # [n_points, dim]
    mesh_cells: np.ndarray | None = None  # [n_cells, k], indices into mesh_points
    cell_type: str | None = None
    common_params: dict[str, Any] = field(default_factory=dict)  # JSON-able
    config_sha: str = ""
    u0: np.ndarray | None = None  # [n_samples, *space(, channels)]
    weights: np.ndarray | None = None  # [prod(space)] quadrature weights
    created: str = field(default_factory=_now)

    @property
    def n_samples(self) -> int:
        return self.u.shape[0]

    @property
    def is_mesh(self) -> bool:
        return self.mesh_points is not None

    @property
    def space_shape(self) -> tuple[int, ...]:
        """(n_points,) on a mesh, (n_x[, n_y]) on a grid, () for an ODE."""
        if self.is_mesh:
            return (len(self.mesh_points),)
        return tuple(len(self.grid[axis]) for axis in _SPACE_AXES if axis in self.grid)


# cell_type -> (vertices per cell, topological dimension)
_CELL_SHAPES = {"interval": (2, 1), "triangle": (3, 2), "quadrilateral": (4, 2), "tetrahedron": (4, 3), "hexahedron": (8, 3)}


def _check(ds: PDEDataset, where: str, fix: str) -> None:
    """Raise `DataError` unless the arrays of `ds` fit together as the schema requires."""

    def fail(problem: str) -> NoReturn:
        raise DataError(f"{where}: {problem}. {fix}")

    if "t" not in ds.grid:
        fail("the time grid `t` is missing")
    if unknown := sorted(set(ds.grid) - {"t", *_SPACE_AXES}):
        fail(f"unknown grid axes {unknown} (allowed: x, y, t)")
    if "y" in ds.grid and "x" not in ds.grid:
        fail("the grid has a `y` axis but no `x` axis")
    if bad := [k for k, a in ds.grid.items() if np.ndim(a) != 1]:
        fail(f"grid axes {bad} are not 1-D arrays")
    for axis, values in ds.grid.items():
        values = np.asarray(values)
        if not np.issubdtype(values.dtype, np.number) or not np.all(np.isfinite(values)):
            fail(f"grid axis {axis!r} holds NaN/Inf or no numbers")
        if np.any(np.diff(values.astype(np.float64)) <= 0):
            fail(f"grid axis {axis!r} is not strictly increasing")
    if ds.is_mesh:
        if set(ds.grid) != {"t"}:
            fail("a dataset has a mesh or x/y grid axes, not both")
        if ds.mesh_cells is None or not ds.cell_type:
            fail("a mesh needs points, cells and a cell_type")
        points, cells = np.asarray(ds.mesh_points), np.asarray(ds.mesh_cells)
        if points.ndim != 2 or cells.ndim != 2 or not np.issubdtype(cells.dtype, np.integer):
            fail(f"mesh points {points.shape} and cells {cells.shape} must be 2-D, cells integer")
        if cells.size and (cells.min() < 0 or cells.max() >= len(points)):
            fail(f"mesh cells refer to points outside [0, {len(points)})")
        vertices, dim = _CELL_SHAPES.get(str(ds.cell_type), (None, None))
        if vertices is None:
            fail(f"cell_type {ds.cell_type!r} is not one of {sorted(_CELL_SHAPES)}")
        if cells.shape[1] != vertices:
            fail(f"{ds.cell_type} cells have {vertices} vertices, but the cells hold {cells.shape[1]}")
        if points.shape[1] < dim:
            fail(f"{ds.cell_type} cells need points in >= {dim} dimensions, but the points have {points.shape[1]}")
        if not np.all(np.isfinite(points)):
            fail("mesh points hold NaN/Inf")
    elif ds.mesh_cells is not None:
        fail("mesh cells are given without mesh points")
    u, space, n_t = ds.u, ds.space_shape, len(ds.grid["t"])
    if not np.issubdtype(u.dtype, np.floating):
        fail(f"u has dtype {u.dtype}; store float32 or float64")
    names = ["n_samples", f"n_t={n_t}"]
    names += [f"n_points={space[0]}"] if ds.is_mesh else [f"n_{a}={n}" for a, n in zip("xy", space)]
    if u.ndim not in (2 + len(space), 3 + len(space)) or u.shape[1:2 + len(space)] != (n_t, *space):
        fail(f"u has shape {list(u.shape)}, expected [{', '.join(names)}(, channels)]")
    if u.shape[0] == 0:
        fail("there are no samples")
    if np.ndim(ds.params) != 2 or ds.params.shape[0] != u.shape[0]:
        fail(f"params has shape {list(np.shape(ds.params))}, expected [n_samples={u.shape[0]}, n_params]")
    if len(ds.param_names) != ds.params.shape[1]:
        fail(f"{len(ds.param_names)} parameter names {list(ds.param_names)} "
             f"for {ds.params.shape[1]} parameter columns")
    if ds.u0 is not None and ds.u0.shape != (u.shape[0], *u.shape[2:]):
        fail(f"u0 has shape {list(ds.u0.shape)}, expected {[u.shape[0], *u.shape[2:]]}")
    if ds.weights is not None and np.shape(ds.weights) != (math.prod(space),):
        fail(f"quadrature weights have shape {list(np.shape(ds.weights))}, "
             f"expected [{math.prod(space)}] (one per spatial point)")
    if ds.weights is not None and not (np.all(np.isfinite(ds.weights)) and np.all(np.asarray(ds.weights) >= 0)):
        fail("quadrature weights must be finite and >= 0 (G u = weights . u is the conserved quantity)")
    if ds.u0 is not None and not np.issubdtype(np.asarray(ds.u0).dtype, np.floating):
        fail(f"u0 has dtype {np.asarray(ds.u0).dtype}; store float32 or float64")
    if not isinstance(ds.common_params, dict):
        fail(f"the root attribute `params` must be a JSON object of the common parameters, got {type(ds.common_params).__name__}")


def _scan(name: str, values: Any, where: str) -> tuple[float, float, float]:
    """(min, max, mean) of `values` [n_samples, ...] (an array or an h5py dataset), read a
    block of samples at a time; `DataError` naming the count of NaN/Inf and the first sample."""
    n = values.shape[0]
    step = max(1, _BLOCK_BYTES // max(1, math.prod(values.shape[1:]) * values.dtype.itemsize))
    lo, hi, total, bad, first = math.inf, -math.inf, 0.0, 0, -1
    for start in range(0, n, step):
        block = np.asarray(values[start:start + step], dtype=np.float64)
        block = block.reshape(len(block), -1)
        finite = np.isfinite(block)
        if not finite.all():
            per_sample = (~finite).sum(axis=1)
            bad += int(per_sample.sum())
            first = first if first >= 0 else start + int(np.flatnonzero(per_sample)[0])
        elif bad == 0 and block.size:
            lo, hi, total = min(lo, block.min()), max(hi, block.max()), total + block.sum()
    if bad:
        raise DataError(
            f"{where}: {name} has {bad} non-finite values (NaN or Inf), the first in sample "
            f"{first}. The solver diverged for that sample: regenerate the dataset with a smaller "
            "time step or a narrower parameter range."
        )
    size = math.prod(values.shape)
    return float(lo), float(hi), total / size if size else math.nan


def _to_json(common_params: dict[str, Any], where: str) -> str:
    try:
        return json.dumps(common_params, sort_keys=True,
                          default=lambda o: o.tolist() if hasattr(o, "tolist") else repr(o))
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: common_params cannot be stored as JSON ({exc}). "
                        "Use numbers, strings, lists and dicts.") from exc


def _write_layout(f: h5py.File, ds: PDEDataset, compression: str | None, *, samples: bool,
                  where: str) -> None:
    """Write everything of `ds` into the open file; the sample arrays are only created (with
    their final shape, one chunk per sample) unless `samples`."""
    f.attrs.update(pde=ds.pde, schema_version=SCHEMA_VERSION, generator=ds.generator,
                   created=ds.created, params=_to_json(ds.common_params, where),
                   sha=ds.config_sha)
    for axis, values in ds.grid.items():
        f.create_dataset(f"grid/{axis}", data=np.asarray(values, dtype=np.float64))
    if ds.is_mesh:
        f.create_dataset("mesh/points", data=np.asarray(ds.mesh_points, dtype=np.float64))
        f.create_dataset("mesh/cells", data=np.asarray(ds.mesh_cells, dtype=np.int64))
        f["mesh"].attrs["cell_type"] = ds.cell_type
    if ds.weights is not None:
        f.create_dataset("quadrature/weights", data=np.asarray(ds.weights, dtype=np.float64))
    for name, values in (("u", ds.u), ("u0", ds.u0)):
        if values is not None:
            f.create_dataset(f"samples/{name}", shape=values.shape, dtype=values.dtype,
                             data=values if samples else None, chunks=(1, *values.shape[1:]),
                             compression=compression)
    params = f.create_dataset("samples/params", shape=ds.params.shape, dtype=np.float64,
                              data=ds.params if samples else None)
    params.attrs.create("names", list(ds.param_names), dtype=h5py.string_dtype())


def _commit(tmp: Path, path: Path) -> None:
    """Make the finished `tmp` durable, then atomically give it its final name."""
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_dataset(path: str | os.PathLike, ds: PDEDataset, *, compression: str | None = "gzip") -> Path:
    """Validate `ds` and write it to `path` atomically (a temporary file renamed when complete).

    `compression` is an h5py filter for the sample arrays ("gzip", "lzf" or None).
    """
    path = Path(path)
    _check(ds, f"cannot write {path}", _WRITE_FIX)
    for name in ("u", "u0", "params"):
        if getattr(ds, name) is not None and np.size(getattr(ds, name)):
            _scan(name, getattr(ds, name), f"cannot write {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as f:
            _write_layout(f, ds, compression, samples=True, where=f"cannot write {path}")
        _commit(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


@contextmanager
def _open(path: Path, mode: str = "r") -> Iterator[h5py.File]:
    """Open an HDF5 file; a missing, truncated or corrupt file becomes a `DataError`."""
    if not path.exists():
        raise DataError(f"{path} does not exist; generate it with "
                        f"`sciml data generate NAME [key=value ...] --out {path}` (the generators: `sciml data generate --list`).")
    if path.is_dir():
        raise DataError(f"{path} is a directory, not an HDF5 dataset file. {_REGENERATE}")
    try:
        with h5py.File(path, mode) as f:
            yield f
    except (OSError, RuntimeError) as exc:  # h5py reports damaged files with these
        raise DataError(f"{path} is not a readable HDF5 file (truncated or corrupt?): {exc}. "
                        f"{_REGENERATE} Or copy it again if it was transferred.") from exc


def _read(f: h5py.File, path: Path, *, load: bool, unfinished_ok: bool = False) -> PDEDataset:
    """The dataset in the open file `f`, checked against the schema; sample arrays are
    `shape_only` placeholders unless `load`."""
    fix = f"It does not follow the sciml HDF5 schema (README, 'HDF5 dataset schema'). {_REGENERATE}"

    def fail(problem: str) -> NoReturn:
        raise DataError(f"{path}: {problem}. {fix}")

    if pdebench.is_pdebench(f):
        try:
            found = pdebench.fields(f, path)
        except (KeyError, ValueError, OSError) as exc:
            raise DataError(f"{path} looks like a PDEBench file (a group per sample) but cannot be read: {exc}. "
                            "Each group needs `data` [t, x(, channels)] and `grid/x`, `grid/t`.") from exc
        u = found.pop("u")
        try:
            ds = PDEDataset(u=u[:] if load else shape_only(u.shape, u.dtype), **found)
        except (KeyError, ValueError, TypeError, OSError) as exc:
            raise DataError(f"{path} looks like a PDEBench file but its samples cannot be read: {exc}. "
                            "Each group needs `data` [t, x(, channels)] and `grid/x`, `grid/t`.") from exc
        _check(ds, str(path), "Each group needs `data` [t, x(, channels)] and `grid/x`, `grid/t` of matching sizes.")
        return ds

    if missing := [a for a in _ROOT_ATTRS if a not in f.attrs]:
        fail(f"missing root attributes {missing}")
    try:
        version = int(f.attrs["schema_version"])
    except (TypeError, ValueError):
        fail(f"schema_version {f.attrs['schema_version']!r} is not an integer")
    if version > SCHEMA_VERSION:
        raise DataError(f"{path} has schema_version {version}, newer than this sciml reads "
                        f"({SCHEMA_VERSION}); upgrade sciml.")
    if version < 1:
        fail(f"schema_version {version} is not supported")
    try:
        common = json.loads(f.attrs["params"])
    except (TypeError, ValueError) as exc:
        fail(f"root attribute `params` is not JSON ({exc})")
    required = ["grid/t", "samples/u", "samples/params"]
    required += ["mesh/points", "mesh/cells"] if "mesh" in f else []
    if missing := [n for n in required if not isinstance(f.get(n), h5py.Dataset)]:
        fail(f"missing datasets {['/' + n for n in missing]}")
    if "mesh" in f and "cell_type" not in f["mesh"].attrs:
        fail("missing attribute `cell_type` on /mesh")
    if "names" not in f["samples/params"].attrs:
        fail("missing attribute `names` on /samples/params")
    if "samples/done" in f and not unfinished_ok and not (done := f["samples/done"][()]).all():
        raise DataError(f"{path} is an unfinished generation ({int(done.sum())} of {done.size} "
                        "samples written); rerun `sciml data generate` with the same spec and "
                        "output to finish it.")

    def samples(name: str) -> np.ndarray | None:
        data = f.get(f"samples/{name}")
        return None if data is None else data[()] if load else shape_only(data.shape, data.dtype)

    ds = PDEDataset(
        pde=str(f.attrs["pde"]), u=samples("u"), params=f["samples/params"][()],
        grid={axis: values[()] for axis, values in f["grid"].items()},
        param_names=[str(n) for n in f["samples/params"].attrs["names"]],
        generator=str(f.attrs["generator"]), created=str(f.attrs["created"]),
        config_sha=str(f.attrs["sha"]), common_params=common, u0=samples("u0"),
        mesh_points=f["mesh/points"][()] if "mesh" in f else None,
        mesh_cells=f["mesh/cells"][()] if "mesh" in f else None,
        cell_type=str(f["mesh"].attrs["cell_type"]) if "mesh" in f else None,
        weights=f["quadrature/weights"][()] if "quadrature/weights" in f else None,
    )
    _check(ds, str(path), fix)
    return ds


def read_dataset(path: str | os.PathLike, *, load: bool = True) -> PDEDataset:
    """Read and validate a dataset file.

    With `load=False` only the metadata is read: `u` and `u0` are `shape_only` placeholders and
    their values are not checked (use `validate_dataset` for that without loading them).
    """
    path = Path(path)
    with _open(path) as f:
        ds = _read(f, path, load=load)
    if load:
        for name in ("u", "u0", "params"):
            if getattr(ds, name) is not None and np.size(getattr(ds, name)):
                _scan(f"/samples/{name}", getattr(ds, name), str(path))
    return ds


def sample_arrays(f: h5py.File) -> dict[str, Any]:
    """The per-sample arrays of an open dataset file (``u``, ``params``, ``u0`` if present), as
    h5py datasets or lazy views indexed by sample: for reading one sample at a time."""
    if pdebench.is_pdebench(f):
        u = pdebench.Samples(f)
        return {"u": u, "params": np.zeros((len(u), 0))}
    return {name: f[f"samples/{name}"] for name in ("u", "params", "u0") if f"samples/{name}" in f}


def _inspect(path: Path) -> tuple[PDEDataset, tuple[float, float, float]]:
    """The metadata of a fully validated file and (min, max, mean) of u, read block by block."""
    with _open(path) as f:
        ds = _read(f, path, load=False)
        stats = _scan("/samples/u", sample_arrays(f)["u"], str(path))
        for name in ("u0", "params"):
            if f"samples/{name}" in f and f[f"samples/{name}"].size:
                _scan(f"/samples/{name}", f[f"samples/{name}"], str(path))
    return ds, stats


def validate_dataset(path: str | os.PathLike) -> PDEDataset:
    """Check a file against the schema, values included, without holding the samples in memory.

    Returns the metadata (`u` and `u0` are `shape_only` placeholders); raises `DataError`.
    """
    return _inspect(Path(path))[0]


def summarize(path: str | os.PathLike) -> str:
    """A validated, human-readable summary of a dataset file (`sciml data info`)."""
    path = Path(path)
    ds, (lo, hi, mean) = _inspect(path)

    def span(values: np.ndarray) -> str:
        return f"[{np.min(values):.4g}, {np.max(values):.4g}]" if np.size(values) else "[]"

    rows = [
        ("file", f"{path} ({path.stat().st_size / 1e6:.3g} MB)"),
        ("pde", f"{ds.pde} ({'PDEBench layout' if ds.generator == pdebench.GENERATOR else f'schema version {SCHEMA_VERSION}'})"),
        ("generator", ds.generator), ("created", ds.created),
        ("config sha", ds.config_sha or "-"), ("common params", json.dumps(ds.common_params)),
    ]
    rows += [(f"grid {a}", f"{len(v)} points in {span(v)}") for a, v in ds.grid.items()]
    if ds.is_mesh:
        extent = " x ".join(span(column) for column in ds.mesh_points.T)
        rows.append(("mesh", f"{len(ds.mesh_points)} points in {extent}, "
                             f"{len(ds.mesh_cells)} {ds.cell_type} cells"))
    rows += [("samples", str(ds.n_samples)),
             ("u", f"{ds.u.dtype} {list(ds.u.shape)}, min {lo:.4g}, max {hi:.4g}, mean {mean:.4g}")]
    if ds.u0 is not None:
        rows.append(("u0", f"{ds.u0.dtype} {list(ds.u0.shape)}"))
    rows += [(f"param {name}", span(ds.params[:, j])) for j, name in enumerate(ds.param_names)]
    if ds.weights is not None:
        rows.append(("weights", f"{len(ds.weights)} values, sum {np.sum(ds.weights):.6g}"))
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"{key:<{width}}  {value}" for key, value in rows)


class DatasetWriter:
    """Write a dataset one sample at a time, so that a killed generation can resume.

    Samples go to `<path>.partial` with a `/samples/done` mask; a later writer for the same path
    and template reopens that file and `pending()` lists what is left. `finalize()` checks that
    every sample is written and renames the file to `path`. The `template` is a `PDEDataset`
    whose `u`, `params` (and `u0`) have their final shapes, e.g. `shape_only((n, n_t, n_x))`.

        with DatasetWriter(path, template) as writer:
            for i in writer.pending():
                writer.write(i, u_i, params_i)
            writer.finalize()
    """

    def __init__(self, path: str | os.PathLike, template: PDEDataset, *,
                 compression: str | None = "gzip") -> None:
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        _check(template, f"cannot write {self.path}", _WRITE_FIX)
        self._template = template
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = self._acquire_lock()
        try:
            self._file = self._resume() if self.partial.exists() else None
            if self._file is None:
                self._file = self._create(compression)
        except BaseException:
            self._release_lock()
            raise

    def _acquire_lock(self):
        """An exclusive lock on ``<path>.lock`` for the writer's lifetime: two generations of the
        same file must not share (and truncate) one ``.partial``."""
        import fcntl

        handle = open(self.path.with_name(self.path.name + ".lock"), "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise DataError(f"another process is writing {self.path} (it holds {handle.name}); wait for it to "
                            "finish, or stop it and rerun to resume its .partial file.") from None
        return handle

    def _release_lock(self) -> None:
        if getattr(self, "_lock", None) is not None:
            self._lock.close()  # closing releases the flock
            Path(self._lock.name).unlink(missing_ok=True)
            self._lock = None

    def _create(self, compression: str | None) -> h5py.File:
        f = h5py.File(self.partial, "w")
        try:
            _write_layout(f, self._template, compression, samples=False,
                          where=f"cannot write {self.path}")
            f.create_dataset("samples/done", shape=(self._template.n_samples,), dtype=bool)
            f.flush()
        except BaseException:
            f.close()
            self.partial.unlink(missing_ok=True)
            raise
        return f

    def _resume(self) -> h5py.File | None:
        """The partial file reopened, or None (after a warning) if it was too damaged to use."""
        try:
            f = h5py.File(self.partial, "r+")
        except OSError as exc:
            warnings.warn(f"{self.partial} is damaged ({exc}); starting the generation over.")
            return None
        try:
            found = _read(f, self.partial, load=False, unfinished_ok=True)
            if "samples/done" not in f:
                raise DataError(f"{self.partial}: the `/samples/done` mask is missing")
        except (DataError, OSError, RuntimeError) as exc:
            f.close()
            warnings.warn(f"{self.partial} is damaged ({exc}); starting the generation over.")
            return None
        old, new = _layout(found), _layout(self._template)
        if changed := [key for key in new if not np.array_equal(old[key], new[key])]:
            f.close()
            raise DataError(
                f"{self.partial} is an unfinished generation of a different dataset ({changed} "
                f"differ). Delete it to start over, or rerun with the original spec to finish it."
            )
        return f

    @property
    def done(self) -> np.ndarray:
        """[n_samples] bool: which samples are written (a copy)."""
        return self._open_file()["samples/done"][()]

    def pending(self) -> list[int]:
        """Indices of the samples still to write."""
        return np.flatnonzero(~self.done).tolist()

    def write(self, i: int, u: np.ndarray, params: np.ndarray, u0: np.ndarray | None = None) -> None:
        """Store sample `i`: `u` [n_t, *space(, channels)], `params` [n_params], `u0` [*space(, channels)]."""
        f, t = self._open_file(), self._template
        if not 0 <= i < t.n_samples:
            raise ValueError(f"sample index `i` (={i}) must be in [0, {t.n_samples})")
        expected = {"u": t.u.shape[1:], "params": t.params.shape[1:],
                    "u0": None if t.u0 is None else t.u0.shape[1:]}
        given = {"u": u, "params": params, "u0": u0}
        for name, shape in expected.items():
            got = None if given[name] is None else np.shape(given[name])
            if got != shape:
                raise ValueError(f"`{name}` of sample {i} has shape {got}, expected {shape}")
        for name in ("u", "u0"):
            if given[name] is not None and (bad := np.size(given[name]) - np.isfinite(given[name]).sum()):
                raise DataError(
                    f"cannot write {self.path}: `{name}` of sample {i} (params {list(params)}) has "
                    f"{bad} non-finite values (NaN or Inf). The solver diverged: use a smaller "
                    "time step or a narrower parameter range."
                )
            if given[name] is not None:
                f[f"samples/{name}"][i] = given[name]
        f["samples/params"][i] = params
        f.flush()  # the values are on disk before the mask says so
        f["samples/done"][i] = True
        f.flush()

    def finalize(self) -> Path:
        """Check that all samples are written, close, and rename the file to `path`."""
        f = self._open_file()
        if todo := self.pending():
            raise DataError(f"cannot finalize {self.path}: {len(todo)} of "
                            f"{self._template.n_samples} samples are not written (first: {todo[0]}). "
                            "Write them, then call finalize() again.")
        _read(f, self.partial, load=False)
        self._file.close()
        self._file = None
        try:
            _commit(self.partial, self.path)
        finally:
            self._release_lock()
        return self.path

    def close(self) -> None:
        """Close the partial file without finalizing; a later writer resumes it."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._release_lock()

    def _open_file(self) -> h5py.File:
        if self._file is None:
            raise ValueError(f"the writer for {self.path} is closed; open a new DatasetWriter")
        return self._file

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _layout(ds: PDEDataset) -> dict[str, Any]:
    """What must agree between a partial file and the template that resumes it."""
    fields = {
        "pde": ds.pde, "config sha": ds.config_sha, "param names": list(ds.param_names),
        "u shape": ds.u.shape, "u dtype": ds.u.dtype.str, "params shape": ds.params.shape,
        "u0 shape": None if ds.u0 is None else ds.u0.shape, "mesh points": ds.mesh_points,
    }
    return fields | {f"grid {axis}": ds.grid.get(axis) for axis in ("t", *_SPACE_AXES)}


def check_physics(path: str | Path, meta: PDEDataset, pde) -> None:
    """Refuse a dataset whose PDE or recorded parameters (``common_params``) differ from the
    experiment's ``pde`` (a :class:`sciml.pdes.PDE`: its ``name`` and ``params()``), so that a
    model is never trained on one PDE and scored against another."""
    if meta.pde != pde.name:
        raise ConfigError(f"{path} holds {meta.pde!r} data but the experiment's pde is {type(pde).__name__} ({pde.name!r}); "
                          "point data.path at a dataset of that PDE, or change `pde`.")
    for key, want in pde.params().items():
        have = meta.common_params.get(key)
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (have, want))
        if numbers and not math.isclose(float(have), float(want), rel_tol=1e-9, abs_tol=0.0):
            raise ConfigError(f"pde.init_args.{key} (={want!r}) differs from the {have!r} that {path} was generated with: the model "
                              f"would train on one PDE and be scored on another. Set pde.init_args.{key}: {have!r}, or point data.path at "
                              "a dataset generated with the new value.")
