"""LightningModules: the trainable models, and safe loading of their checkpoints."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from ..errors import DataError
from .pinn import PINN, LossWeights, OptimizerConfig

# Checkpoints name their class; only these are ever built from a file.
MODEL_CLASSES: dict[str, type[L.LightningModule]] = {"sciml.models.pinn.PINN": PINN}


def load_model(path: str | Path, map_location: str = "cpu") -> L.LightningModule:
    """Rebuild a trained model from a sciml checkpoint, loaded with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint {str(path)!r} does not exist; train one with `sciml train EXPERIMENT.yaml` (it writes RUN/checkpoints/last.ckpt).")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise DataError(f"{path} is not a loadable sciml checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0]}); use a file written by `sciml train`.") from exc
    name = ckpt.get("sciml_model") if isinstance(ckpt, dict) else None
    if name not in MODEL_CLASSES:
        raise DataError(f"{path} does not name a known sciml model (found {name!r}; known: {sorted(MODEL_CLASSES)}).")
    model = MODEL_CLASSES[name].from_hparams(dict(ckpt["hyper_parameters"]))
    model.load_state_dict(ckpt["state_dict"])
    model.on_load_checkpoint(ckpt)
    return model.eval()


__all__ = ["PINN", "OptimizerConfig", "LossWeights", "load_model", "MODEL_CLASSES"]
