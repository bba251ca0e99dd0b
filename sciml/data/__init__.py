"""Datasets: the HDF5 schema, data modules and generators."""

from .collocation import CollocationDataModule
from .context_target import ContextTargetDataModule
from .datamodules import H5Samples, SampleDataModule
from .schema import PDEDataset, read_dataset, summarize, validate_dataset, write_dataset

__all__ = ["CollocationDataModule", "ContextTargetDataModule", "H5Samples", "SampleDataModule", "PDEDataset", "read_dataset", "summarize", "validate_dataset", "write_dataset"]
