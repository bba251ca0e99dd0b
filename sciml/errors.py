"""Errors meant for users: one message that names the offending value and the fix.

The CLI prints ``SciMLError`` messages without a traceback (unless ``--debug``) and exits with
``exit_code``; library callers can catch it like any exception.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType


class SciMLError(Exception):
    """A problem with the user's input or environment, with a message that says how to fix it."""

    exit_code = 2


class ConfigError(SciMLError):
    """An experiment config or command-line override is missing, unknown or of the wrong type."""


class DataError(SciMLError):
    """A dataset file is missing, unreadable, truncated or does not follow the HDF5 schema."""


class TrainingError(SciMLError):
    """Training produced non-finite values or otherwise could not go on."""

    exit_code = 3


def did_you_mean(word: str, candidates: Iterable[str], cutoff: float = 0.6) -> str:
    """`` Did you mean `close`?`` for the candidate closest to `word`, or ``""`` if none is close."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=cutoff)
    return f" Did you mean `{close[0]}`?" if close else ""


def did_you_mean_file(path: str | Path, also_under: Iterable[str | Path] = ()) -> str:
    """A did-you-mean hint for a missing file: a similar name next to it (``run.yml`` ->
    ``run.yaml``) or, failing that, in the folders `also_under` (searched recursively)."""
    path = Path(path)
    folder = path.parent if path.parent.is_dir() else None
    nearby = [str(p) for p in folder.iterdir() if p.is_file()] if folder else []
    hint = did_you_mean(str(path), nearby, cutoff=0.5)
    if hint:
        return hint
    further = [str(p) for d in map(Path, also_under) if d.is_dir() for p in d.rglob(f"*{path.suffix}") if p.is_file()]
    return did_you_mean(str(path), further, cutoff=0.5)


def optional_import(module: str, extra: str, feature: str) -> ModuleType:
    """Import an optional dependency, or raise a ``SciMLError`` that names the extra to install.

    ``mpi4py`` is imported before ``dolfinx`` because the DOLFINx wheel otherwise fails to find
    ``libmpi.so.12``.
    """
    try:
        if module.split(".")[0] == "dolfinx":
            importlib.import_module("mpi4py.MPI")
        return importlib.import_module(module)
    except ImportError as exc:
        raise SciMLError(
            f"{feature} needs the optional package `{module}`, which is not installed ({exc}). "
            f"Install it with `pip install 'sciml[{extra}]'` or rerun `scripts/setup.sh`."
        ) from exc
