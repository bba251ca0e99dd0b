"""The package imports without its optional extras and names the extra a feature needs."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sciml.errors import SciMLError, optional_import


def test_import_sciml_pulls_in_no_optional_extra():
    """`import sciml` (and the CLI module) must not import dolfinx, ray or cvxpylayers."""
    code = (
        "import sys, sciml, sciml.cli, sciml.pdes, sciml.metrics, sciml.data.schema\n"
        "heavy = [m for m in ('dolfinx', 'ray', 'cvxpylayers') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_import_sciml_works_when_the_extras_are_missing():
    """Simulate a machine without the extras: make their imports fail, then use the package."""
    code = (
        "import sys\n"
        "for m in ('dolfinx', 'ray', 'cvxpylayers', 'mpi4py'): sys.modules[m] = None\n"
        "import sciml, sciml.pipeline, sciml.models, sciml.data\n"
        "from sciml.errors import optional_import, SciMLError\n"
        "try:\n    optional_import('dolfinx', 'fem', 'FEM data generation')\n"
        "except SciMLError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "FEM data generation needs the optional package `dolfinx`" in out
    assert "sciml[fem]" in out


def test_optional_import_returns_the_module_when_present():
    assert optional_import("json", "dev", "x").dumps([1]) == "[1]"


def test_optional_import_names_the_extra():
    with pytest.raises(SciMLError, match=r"sciml\[convex\]"):
        optional_import("surely_not_a_module_xyz", "convex", "Convex constraints")


def test_the_dockerfile_copies_files_that_exist():
    """docker/Dockerfile (built elsewhere: no Docker engine here) copies the lock, the set-up
    script and the package before the rest: every source it names must be in the checkout."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    lines = (root / "docker" / "Dockerfile").read_text().splitlines()
    copies = [line.split()[1:] for line in lines if line.startswith("COPY ")]
    assert copies, "no COPY in docker/Dockerfile"
    for words in copies:
        sources = [w for w in words if not w.startswith("--")][:-1]  # the last word is the destination
        for source in sources:
            assert source == "." or (root / source).exists(), source
    assert any("scripts/setup.sh" in line for line in lines if line.startswith("RUN "))
