"""Named dataset generators: PDEs by name, reproducible samples, resumable atomic files."""

from __future__ import annotations

import sys

import h5py
import numpy as np
import pytest

from sciml.data.generators import GENERATORS, describe_generators, generate, make_pde, reference_dataset, spectral
from sciml.data.schema import read_dataset, validate_dataset
from sciml.errors import ConfigError, DataError
from sciml.pdes import Convection, ConvectionDiffusion, Reaction

SMALL = {"progress": False}
GRID = {"nx": 16, "nt": 5}


def test_generators_are_named_after_their_pdes():
    assert set(GENERATORS) == {"convection", "convection_diffusion", "reaction", "reaction_diffusion", "burgers"}
    for name, spec in GENERATORS.items():
        assert spec.name == name == spec.pde_class.name
    listing = describe_generators()
    for name in GENERATORS:
        assert name in listing
    assert "beta=1.0" in listing


def test_make_pde_builds_the_named_pde_with_its_parameters():
    assert make_pde("convection_diffusion", {"beta": 30, "nu": 0.5}) == ConvectionDiffusion(beta=30.0, nu=0.5)
    assert make_pde("reaction", {}) == Reaction()


@pytest.mark.parametrize(
    "name, params, words",
    [
        ("convektion", {}, ["'convektion'", "Did you mean `convection`?"]),
        ("heat", {}, ["'heat'", "convection, convection_diffusion"]),
        ("convection", {"rho": 1.0}, ["'rho'", "beta, ic"]),
        ("burgers", {"nu": -0.01}, ["`nu`", "-0.01"]),
        ("reaction", {"rho": "fast"}, ["`rho`", "'fast'"]),
    ],
)
def test_make_pde_refuses_bad_names_and_parameters(name, params, words):
    with pytest.raises(ConfigError) as info:
        make_pde(name, params)
    for word in words:
        assert word in str(info.value)


def test_reference_dataset_holds_the_exact_solution_on_the_grid():
    ds = reference_dataset(Convection(beta=2.0), nx=32, nt=6)
    x, t = ds.grid["x"], ds.grid["t"]
    np.testing.assert_allclose(x, spectral.periodic_grid(32))
    np.testing.assert_allclose(t, np.linspace(0, 1, 6))
    assert ds.u.shape == (1, 6, 32) and ds.pde == "convection"
    np.testing.assert_allclose(ds.u[0], np.sin(x[None] - 2.0 * t[:, None]), atol=1e-12)
    np.testing.assert_allclose(ds.u0[0], np.sin(x))
    np.testing.assert_allclose(ds.weights.sum(), 2 * np.pi)
    assert ds.param_names == ["beta"] and ds.params.tolist() == [[2.0]]


def test_one_sample_is_the_pdes_own_initial_condition(tmp_path):
    path = generate("convection", tmp_path / "c.h5", params={"beta": 3.0, **GRID}, **SMALL)
    ds = read_dataset(path)
    x, t = ds.grid["x"], ds.grid["t"]
    np.testing.assert_allclose(ds.u[0], np.sin(x[None] - 3.0 * t[:, None]), atol=1e-12)
    assert ds.common_params == {"beta": 3.0, "ic": "sine"}


def test_written_file_follows_the_schema(tmp_path):
    path = generate("burgers", tmp_path / "b.h5", n=2, params={"nu": 0.1, **GRID}, **SMALL)
    assert path == tmp_path / "b.h5"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.h5"]  # no .partial left
    ds = validate_dataset(path)
    assert ds.pde == "burgers" and ds.u.shape == (2, 5, 16) and ds.u0.shape == (2, 16)
    assert ds.param_names == ["nu", "offset"] and ds.config_sha
    assert ds.common_params == {"nu": 0.1, "ic": "sine", "offset": 0.0}


def arrays(path) -> dict[str, np.ndarray]:
    with h5py.File(path) as f:
        return {name: f[f"samples/{name}"][()] for name in ("u", "u0", "params")}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_generation_is_deterministic_for_a_seed(tmp_path):
    first = arrays(generate("convection_diffusion", tmp_path / "a.h5", n=3, seed=7, params=GRID, **SMALL))
    again = arrays(generate("convection_diffusion", tmp_path / "b.h5", n=3, seed=7, params=GRID, **SMALL))
    other = arrays(generate("convection_diffusion", tmp_path / "c.h5", n=3, seed=8, params=GRID, **SMALL))
    fewer = arrays(generate("convection_diffusion", tmp_path / "d.h5", n=2, seed=7, params=GRID, **SMALL))
    assert_same(first, again)
    assert not np.allclose(first["u0"], other["u0"])
    np.testing.assert_array_equal(first["u"][:2], fewer["u"])  # sample i does not depend on n
    assert not np.allclose(first["u0"][0], first["u0"][1])  # random ICs for n > 1
    np.testing.assert_allclose(first["u"][:, 0], first["u0"], atol=1e-12)


def test_random_reaction_initial_conditions_lie_in_the_unit_interval(tmp_path):
    ds = read_dataset(generate("reaction", tmp_path / "r.h5", n=3, params={"rho": 2.0, **GRID}, **SMALL))
    assert np.all((ds.u0 > 0) & (ds.u0 < 1))
    assert np.all(np.isfinite(ds.u))


class Interrupt:
    """Wraps a PDE class's reference solver: counts calls and raises KeyboardInterrupt at call `at`."""

    def __init__(self, monkeypatch, cls, at: int | None):
        self.calls, self.at, solve = 0, at, cls.reference_solution

        def counted(pde, *args):
            self.calls += 1
            if self.calls == self.at:
                raise KeyboardInterrupt
            return solve(pde, *args)

        monkeypatch.setattr(cls, "reference_solution", counted)


def test_interrupted_generation_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    spec = dict(n=5, seed=3, params={"beta": 2.0, "nu": 0.05, **GRID}, **SMALL)
    out = tmp_path / "resumed.h5"
    with monkeypatch.context() as patch:
        Interrupt(patch, ConvectionDiffusion, at=3)
        with pytest.raises(KeyboardInterrupt):
            generate("convection_diffusion", out, **spec)
    partial = tmp_path / "resumed.h5.partial"
    assert partial.exists() and not out.exists()
    with h5py.File(partial) as f:
        assert f["samples/done"][()].tolist() == [True, True, False, False, False]
    with pytest.raises(DataError, match="unfinished"):
        read_dataset(partial)

    counter = Interrupt(monkeypatch, ConvectionDiffusion, at=None)
    assert generate("convection_diffusion", out, **spec) == out
    assert counter.calls == 3  # only the missing samples were solved
    assert out.exists() and not partial.exists()
    validate_dataset(out)
    assert_same(arrays(out), arrays(generate("convection_diffusion", tmp_path / "one_shot.h5", **spec)))


def test_an_unfinished_generation_is_not_resumed_with_another_spec(tmp_path, monkeypatch):
    out = tmp_path / "c.h5"
    with monkeypatch.context() as patch:
        Interrupt(patch, Convection, at=2)
        with pytest.raises(KeyboardInterrupt):
            generate("convection", out, n=3, params={"beta": 1.0, **GRID}, **SMALL)
    for change in ({"params": {"beta": 2.0}}, {"seed": 1}):
        with pytest.raises(DataError, match="different dataset"):
            generate("convection", out, n=3, **({"params": {"beta": 1.0, **GRID}} | change), **SMALL)
    assert not out.exists()
    generate("convection", out, n=3, params={"beta": 1.0, **GRID}, **SMALL)
    assert out.exists()


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"n": 0}, ["`n`", "0", ">= 1"]),
        ({"n": -2}, ["`n`", "-2"]),
        ({"n": 2.5}, ["`n`", "2.5"]),
        ({"params": {"nx": 1}}, ["`nx`", "1"]),
        ({"params": {"nx": 3}}, ["`nx`", "3", ">= 4"]),
        ({"params": {"nt": 1}}, ["`nt`", "1", ">= 2"]),
        ({"workers": 0}, ["`workers`", "0"]),
        ({"seed": -1}, ["`seed`", "-1"]),
        ({"params": {"beta": "x"}}, ["`beta`", "'x'"]),
    ],
)
def test_bad_arguments_are_refused_before_writing(tmp_path, kwargs, words):
    with pytest.raises(ConfigError) as info:
        generate("convection", tmp_path / "x.h5", **({"progress": False} | kwargs))
    for word in words:
        assert word in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_local_processes_give_the_same_file_as_one_process(tmp_path, monkeypatch):
    """Samples fanned out over spawned processes (finishing in any order), resuming a file that an
    interrupted run left, give the file one process makes, bit for bit."""
    from sciml.data.schema import DatasetWriter

    spec = dict(n=5, seed=11, params={"nu": 0.05, **GRID}, **SMALL)
    one = arrays(generate("burgers", tmp_path / "one.h5", **spec))
    real_write, written = DatasetWriter.write, []

    def write_two_then_stop(self, i, *args, **kwargs):  # as Ctrl-C after two samples
        if len(written) == 2:
            raise KeyboardInterrupt
        written.append(i)
        return real_write(self, i, *args, **kwargs)

    monkeypatch.setattr(DatasetWriter, "write", write_two_then_stop)
    with pytest.raises(KeyboardInterrupt):
        generate("burgers", tmp_path / "two.h5", **spec)
    monkeypatch.setattr(DatasetWriter, "write", real_write)
    assert (tmp_path / "two.h5.partial").exists() and not (tmp_path / "two.h5").exists()
    # (one pool: each spawned process imports torch and lightning, seconds on a small machine)
    assert_same(one, arrays(generate("burgers", tmp_path / "two.h5", workers=2, **spec)))


def test_a_failing_writer_stops_the_worker_processes_at_once(tmp_path, monkeypatch):
    """When writing fails in the main process, the pool's processes are gone when generate()
    raises (not only once the exception is garbage)."""
    import multiprocessing

    from sciml.data.schema import DatasetWriter

    def broken(self, i, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(DatasetWriter, "write", broken)
    with pytest.raises(OSError, match="No space left") as raised:
        generate("burgers", tmp_path / "x.h5", n=6, seed=0, params={"nu": 0.05, **GRID}, workers=2, **SMALL)
    assert multiprocessing.active_children() == [], raised.value  # checked while the exception is still held


def test_ray_workers_give_the_same_file_as_one_process(tmp_path):
    """Samples fanned out over Ray tasks (a local instance, as on a cluster's address) are bit-identical."""
    pytest.importorskip("ray")
    spec = dict(n=4, seed=11, params={"nu": 0.05, **GRID}, **SMALL)
    one = arrays(generate("burgers", tmp_path / "one.h5", **spec))
    two = arrays(generate("burgers", tmp_path / "two.h5", workers=2, ray_address="local", **spec))
    assert_same(one, two)
    assert not list(tmp_path.glob("*.partial"))


def test_registry_lists_every_family_it_can_import():
    from sciml.data.generators import describe_generators, registry

    found, missing = registry()
    assert {"convection", "burgers"} <= set(found)
    for name, cls in found.items():
        assert cls.name == name and cls.description
        assert name in describe_generators()
    assert all("extra" in m or "could not be imported" in m for m in missing)


def test_a_family_whose_extension_does_not_load_leaves_the_others_usable(monkeypatch):
    # mpi4py installed without an MPI library raises RuntimeError at import (the GPU image has
    # mpi4py but no DOLFINx): the FEM families are then unavailable, the rest still work
    import builtins

    from sciml.data.generators import make_generator, registry

    real_import = builtins.__import__

    def broken_mpi(name, *args, **kwargs):
        if name.startswith("mpi4py"):
            raise RuntimeError("cannot load MPI library")
        return real_import(name, *args, **kwargs)

    for module in [m for m in sys.modules if m.startswith("sciml.data.generators.fem")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setattr(builtins, "__import__", broken_mpi)
    found, missing = registry()
    assert "diffusion_sorption_fv" in found and not {"heat_fem", "pme_fem", "stefan_fem", "diffusion_sorption"} & set(found)
    assert any("RuntimeError: cannot load MPI library" in m for m in missing)
    assert make_generator("diffusion_sorption_fv", {}).name == "diffusion_sorption_fv"


def test_an_output_that_is_a_folder_is_refused_before_any_work(tmp_path):
    from sciml.data.generators import generate
    from sciml.errors import ConfigError

    with pytest.raises(ConfigError, match=r"is a folder; give a file path, e\.g\. .*convection\.h5"):
        generate("convection", tmp_path, n=2, params={"nx": 16, "nt": 4}, progress=False)
    assert list(tmp_path.iterdir()) == []  # no .partial left behind
