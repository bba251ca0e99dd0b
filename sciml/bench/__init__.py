"""Side-by-side benchmarks (``sciml bench NAME``): ours and a peer, in one run, as ratios.

Each benchmark is a module with ``run(quick: bool, out_dir: Path) -> dict`` that measures, prints
a markdown table and writes ``out_dir/NAME.json`` and ``out_dir/NAME.md``. Register it in
``BENCHMARKS`` (name -> module path); modules are imported only when run.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from ..errors import ConfigError, did_you_mean

BENCHMARKS: dict[str, str] = {
    "conservation": "sciml.bench.conservation",
    "constraint": "sciml.bench.constraint",
    "data": "sciml.bench.data",
    "solver": "sciml.bench.solver",
}


def publish(name: str, report: dict[str, Any], text: str, out_dir: str | Path) -> dict[str, Any]:
    """Write ``NAME.json`` and the markdown table ``NAME.md`` atomically, print the table."""
    from .._io import atomic_write_json, atomic_write_text

    atomic_write_json(Path(out_dir) / f"{name}.json", report)
    atomic_write_text(Path(out_dir) / f"{name}.md", text)
    print(text)
    return report


def run_benchmark(name: str, quick: bool = False, out_dir: str | Path = "benchmarks/results") -> dict[str, Any]:
    if name not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark {name!r}.{did_you_mean(name, BENCHMARKS)} Available: {', '.join(BENCHMARKS)}.")
    module = importlib.import_module(BENCHMARKS[name])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return module.run(quick=quick, out_dir=out)
