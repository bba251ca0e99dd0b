"""Export of a mesh dataset to XDMF for ParaView, with DOLFINx's own writer.

``export_xdmf(dataset.h5, out.xdmf)`` writes one sample, every time frame, as P1 functions on the
dataset's mesh: ``out.xdmf`` (the XML ParaView opens) and ``out.h5`` (the arrays) next to it.
DOLFINx is imported only when an export runs (the ``fem`` extra).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import ConfigError, DataError, optional_import
from .schema import read_dataset

# Cell types whose dolfinx vertex order is any order of the cell's vertices (simplices): the
# dataset's connectivity can be handed over as it is.
_SIMPLICES = {"interval": 1, "triangle": 2, "tetrahedron": 3}


def dolfinx_mesh(points: np.ndarray, cells: np.ndarray, cell_type: str) -> Any:
    """A serial dolfinx mesh of P1 simplices; `points` [n, gdim], `cells` [n_cells, k] indices.

    Dolfinx renumbers both; `mesh.geometry.input_global_indices` maps its nodes back to rows of
    `points`.
    """
    MPI = optional_import("mpi4py.MPI", "fem", "Building a DOLFINx mesh")
    mesh_module = optional_import("dolfinx.mesh", "fem", "Building a DOLFINx mesh")
    basix_ufl = optional_import("basix.ufl", "fem", "Building a DOLFINx mesh")
    ufl = optional_import("ufl", "fem", "Building a DOLFINx mesh")
    points = np.ascontiguousarray(points, dtype=np.float64)
    element = basix_ufl.element("Lagrange", cell_type, 1, shape=(points.shape[1],))
    return mesh_module.create_mesh(MPI.COMM_SELF, np.asarray(cells, dtype=np.int64), ufl.Mesh(element), points)


def export_xdmf(h5_path: str | os.PathLike, xdmf_path: str | os.PathLike, *, sample: int = 0) -> Path:
    """Write sample `sample` of the mesh dataset `h5_path`, all its time frames, to `xdmf_path`.

    DOLFINx's ``XDMFFile`` writes the XML and an HDF5 file of the same stem beside it; both
    appear only when complete. A dataset with channels gets one function per channel
    (``u_0``, ``u_1``, ...). Raises `DataError` for a dataset on a tensor grid.
    """
    h5_path, xdmf_path = Path(h5_path), Path(xdmf_path)
    ds = read_dataset(h5_path, load=False)
    if not ds.is_mesh:
        raise DataError(f"{h5_path} holds samples on a tensor grid (/grid/x), not on a mesh; XDMF export "
                        "needs /mesh/points and /mesh/cells. Plot grid datasets with `sciml.plotting` instead.")
    if xdmf_path.with_suffix(".h5").resolve() == h5_path.resolve():
        raise DataError(f"exporting {h5_path} to {xdmf_path} would overwrite the dataset with DOLFINx's {xdmf_path.with_suffix('.h5')}; "
                        "choose an output name with another stem, e.g. " + str(h5_path.with_name(h5_path.stem + "-sample0.xdmf")) + ".")
    if ds.cell_type not in _SIMPLICES:
        raise DataError(f"{h5_path}: cell_type {ds.cell_type!r} cannot be exported; XDMF export supports "
                        f"{', '.join(_SIMPLICES)} meshes.")
    if isinstance(sample, bool) or not isinstance(sample, (int, np.integer)) or not 0 <= sample < ds.n_samples:
        raise ConfigError(f"`sample` (={sample!r}) must be an integer in [0, {ds.n_samples}) for {h5_path}.")
    if xdmf_path.suffix != ".xdmf":
        raise ConfigError(f"`xdmf_path` (={str(xdmf_path)!r}) must end in .xdmf; its arrays go to "
                          f"{xdmf_path.with_suffix('.h5').name} beside it.")
    with h5py.File(h5_path, "r") as f:
        u = np.asarray(f["samples/u"][sample], dtype=np.float64)  # [n_t, n_points(, channels)]
    u = u[..., None] if u.ndim == 2 else u
    names = ["u"] if u.shape[-1] == 1 else [f"u_{c}" for c in range(u.shape[-1])]

    fem = optional_import("dolfinx.fem", "fem", "XDMF export")
    io = optional_import("dolfinx.io", "fem", "XDMF export")
    MPI = optional_import("mpi4py.MPI", "fem", "XDMF export")
    mesh = dolfinx_mesh(ds.mesh_points, ds.mesh_cells, ds.cell_type)
    V = fem.functionspace(mesh, ("Lagrange", 1))
    # P1 dofs and P1 geometry nodes share each cell's local vertex order.
    point_of_dof = np.empty(V.dofmap.index_map.size_local, dtype=np.int64)
    point_of_dof[V.dofmap.list] = np.asarray(mesh.geometry.input_global_indices)[mesh.geometry.dofmaps[0]]
    functions = [fem.Function(V, name=name) for name in names]

    xdmf_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=xdmf_path.parent, prefix=f".{xdmf_path.stem}.") as tmp:
        staged = Path(tmp) / xdmf_path.name  # same names, so the XML's reference to the .h5 holds
        with io.XDMFFile(MPI.COMM_SELF, str(staged), "w") as out:
            out.write_mesh(mesh)
            for frame, t in zip(u, ds.grid["t"]):
                for c, function in enumerate(functions):
                    function.x.array[:] = frame[point_of_dof, c]
                    out.write_function(function, float(t))
        os.replace(staged.with_suffix(".h5"), xdmf_path.with_suffix(".h5"))
        os.replace(staged, xdmf_path)
    return xdmf_path


__all__ = ["dolfinx_mesh", "export_xdmf"]
