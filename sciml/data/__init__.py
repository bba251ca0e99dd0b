"""Datasets: the HDF5 schema, data modules and generators.

The data modules (Lightning) are imported when first used, so that the schema and the generators
load without Lightning: a dataset-generation worker process starts in a second, not four.
"""

from importlib import import_module
from typing import Any

from .schema import PDEDataset, read_dataset, summarize, validate_dataset, write_dataset

_LAZY = {"CollocationDataModule": ".collocation", "ContextTargetDataModule": ".context_target",
         "H5Samples": ".datamodules", "SampleDataModule": ".datamodules"}
_SUBMODULES = ("collocation", "context_target", "datamodules")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:  # `import sciml.data; sciml.data.datamodules` as before the lazy import
        return import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))


__all__ = ["CollocationDataModule", "ContextTargetDataModule", "H5Samples", "SampleDataModule", "PDEDataset", "read_dataset", "summarize", "validate_dataset", "write_dataset"]
