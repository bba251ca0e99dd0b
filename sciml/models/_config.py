"""Small helpers shared by the LightningModules."""

from __future__ import annotations

from typing import Any, TypeVar

from ..pdes import pde_from_config

T = TypeVar("T")


def as_config(cls: type[T], value: T | dict[str, Any] | None) -> T:
    """A config dataclass from None (its defaults), a dict (from YAML or a checkpoint) or itself."""
    if value is None:
        return cls()
    return cls(**value) if isinstance(value, dict) else value


class Checkpointed:
    """What every sciml LightningModule shares (list it before LightningModule in the bases):
    its checkpoints name the class (``load_model`` builds only known ones) and carry the loss
    history, and it is rebuilt from its hyperparameters with the PDE given as data."""

    history: dict[str, list[float]]

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["sciml_model"] = f"{type(self).__module__}.{type(self).__qualname__}"
        checkpoint["loss_history"] = self.history

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = {k: list(v) for k, v in checkpoint.get("loss_history", self.history).items()}

    @classmethod
    def from_hparams(cls, hparams: dict):
        hp = dict(hparams)
        return cls(pde=pde_from_config(hp.pop("pde")), **hp)
