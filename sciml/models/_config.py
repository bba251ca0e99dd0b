"""Small helpers shared by the LightningModules."""

from __future__ import annotations

from typing import Any, TypeVar

T = TypeVar("T")


def as_config(cls: type[T], value: T | dict[str, Any] | None) -> T:
    """A config dataclass from None (its defaults), a dict (from YAML or a checkpoint) or itself."""
    if value is None:
        return cls()
    return cls(**value) if isinstance(value, dict) else value
