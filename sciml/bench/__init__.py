"""Side-by-side benchmarks (``sciml bench NAME``): ours and a peer, in one run, as ratios.

Each benchmark is a module with ``run(quick: bool, out_dir: Path) -> dict`` that measures, prints
a markdown table and writes ``out_dir/NAME.json`` and ``out_dir/NAME.md``. Register it in
``BENCHMARKS`` (name -> module path); modules are imported only when run.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

from ..errors import ConfigError, did_you_mean

BENCHMARKS: dict[str, str] = {
    "conservation": "sciml.bench.conservation",
    "constraint": "sciml.bench.constraint",
    "data": "sciml.bench.data",
    "fields": "sciml.bench.fields",
    "solver": "sciml.bench.solver",
}


def publish(name: str, report: dict[str, Any], text: str, out_dir: str | Path) -> dict[str, Any]:
    """Write ``NAME.json`` and the markdown table ``NAME.md`` atomically, print the table."""
    from .._io import atomic_write_json, atomic_write_text

    atomic_write_json(Path(out_dir) / f"{name}.json", report)
    atomic_write_text(Path(out_dir) / f"{name}.md", text)
    print(text)
    return report


def run_benchmark(name: str, quick: bool = False, out_dir: str | Path = "benchmarks/results", device: str = "cpu",
                  sections: list[str] | None = None) -> dict[str, Any]:
    """Run benchmark ``name``; ``device`` "cuda" (or "cuda:K") where the benchmark supports it;
    ``sections``: only those parts, where the benchmark has parts (solver)."""
    if name not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark {name!r}.{did_you_mean(name, BENCHMARKS)} Available: {', '.join(BENCHMARKS)}.")
    import torch

    module = importlib.import_module(BENCHMARKS[name])
    kwargs: dict[str, Any] = {}
    try:
        where = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"--device (={device!r}) is not a torch device; use cpu or cuda (cuda:K for the K-th GPU).") from exc
    if where.type != "cpu":
        if "device" not in inspect.signature(module.run).parameters:
            gpu = [n for n, m in BENCHMARKS.items() if "device" in inspect.signature(importlib.import_module(m).run).parameters]
            raise ConfigError(f"`sciml bench {name}` runs on the CPU only (--device {device}); benchmarks with a GPU mode: {', '.join(gpu)}.")
        if where.type != "cuda":
            raise ConfigError(f"--device (={device!r}) must be cpu or cuda (cuda:K for the K-th GPU).")
        if not torch.cuda.is_available() or (where.index or 0) >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: torch sees {torch.cuda.device_count()} CUDA device(s) here; run on the CPU (drop --device) "
                              "or on a machine with the GPU.")
        kwargs["device"] = device
    if sections is not None:
        if "sections" not in inspect.signature(module.run).parameters:
            raise ConfigError(f"`sciml bench {name}` has no sections; drop --sections.")
        kwargs["sections"] = sections
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return module.run(quick=quick, out_dir=out, **kwargs)
