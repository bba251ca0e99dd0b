"""Connecting to Ray, in one place for the solver's executor and dataset generation."""

from __future__ import annotations

from typing import Any

from .errors import ConfigError, optional_import

START_HINT = "start one with `.venv/bin/python -m ray.scripts.scripts start --head` (the `ray start --head` of a Ray install)"


def connect(address: str | None, num_cpus: int, who: str, option: str) -> tuple[Any, bool]:
    """(the ray module, whether this call started Ray). Ray already running in this process is
    reused, unless ``address`` names another cluster: then it is an error, not a silent switch to
    the running instance. ``who`` names the feature for the missing-extra message, ``option`` the
    setting that holds the address."""
    ray = optional_import("ray", "ray", who)
    if ray.is_initialized():
        if address not in (None, "auto"):
            current = ray.get_runtime_context().gcs_address
            if current != address:
                raise ConfigError(f"{option} (={address!r}) names a Ray cluster, but this process is already connected to "
                                  f"{current!r}; call ray.shutdown() first, or leave {option} unset to use that one.")
        return ray, False
    try:
        ray.init(address=address, num_cpus=None if address else num_cpus, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    except ConnectionError as exc:
        raise ConfigError(f"cannot reach the Ray cluster at {option} (={address!r}) ({exc}); {START_HINT}, "
                          f"or leave {option} unset for local workers.") from exc
    return ray, True
