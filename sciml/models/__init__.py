"""LightningModules: the trainable models, and safe loading of their checkpoints."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from ..errors import DataError, SciMLError
from .hard_constrained import PhysicsFNO
from .hard_constrained_ns import PhysicsFNO3d
from .lpinn import LPINN
from .pinn import PINN, LossWeights, OptimizerConfig
from .probconserv import NeuralProcessModel

# Checkpoints name their class; only these are ever built from a file.
MODEL_CLASSES: dict[str, type[L.LightningModule]] = {
    "sciml.models.pinn.PINN": PINN,
    "sciml.models.hard_constrained.PhysicsFNO": PhysicsFNO,
    "sciml.models.lpinn.LPINN": LPINN,
    "sciml.models.probconserv.NeuralProcessModel": NeuralProcessModel,
    "sciml.models.hard_constrained_ns.PhysicsFNO3d": PhysicsFNO3d,
}


def load_model(path: str | Path, map_location: str = "cpu") -> L.LightningModule:
    """Rebuild a trained model from a sciml checkpoint, loaded with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        problem = "is a directory, not a checkpoint file" if path.is_dir() else "does not exist"
        raise DataError(f"checkpoint {str(path)!r} {problem}; train one with `sciml train EXPERIMENT.yaml` (it writes RUN/checkpoints/last.ckpt).")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise DataError(f"{path} is not a loadable sciml checkpoint ({_describe(exc)}); use a file written by `sciml train`.") from exc
    name = ckpt.get("sciml_model") if isinstance(ckpt, dict) else None
    if not (isinstance(name, str) and name in MODEL_CLASSES):
        raise DataError(f"{path} does not name a known sciml model (found {name!r}; known: {sorted(MODEL_CLASSES)}); use a file written by `sciml train`.")
    try:
        model = MODEL_CLASSES[name].from_hparams(dict(ckpt["hyper_parameters"]))
        # in the precision it trained in (trainer.precision=64-true saves float64 weights), not
        # load_state_dict's cast down to the freshly built model's float32
        dtypes = {t.dtype for t in ckpt["state_dict"].values() if torch.is_tensor(t) and t.is_floating_point()}
        if len(dtypes) == 1:
            model = model.to(dtypes.pop())
        model.load_state_dict(ckpt["state_dict"])
        model.on_load_checkpoint(ckpt)
    except (SciMLError, KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as exc:
        raise DataError(
            f"{path} names {name} but does not rebuild one ({_describe(exc)}); it is damaged or from an "
            "incompatible sciml version: retrain with `sciml train EXPERIMENT.yaml`."
        ) from exc
    return model.eval()


def _describe(exc: BaseException, limit: int = 300) -> str:
    """The exception's type and its message on one line, cut to ``limit`` characters (torch's
    messages can be empty, or say only "Error(s) in loading state_dict" on their first line)."""
    text = " ".join(str(exc).split())
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


__all__ = ["LPINN", "NeuralProcessModel", "PhysicsFNO", "PINN", "OptimizerConfig", "LossWeights", "load_model", "MODEL_CLASSES", "PhysicsFNO3d"]
