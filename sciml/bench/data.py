"""Dataset generation throughput, side by side (``sciml bench data``).

1. Samples per second of ``sciml data generate`` with 1 and 2 Ray workers, for diffusion-sorption
   (finite volumes and DOLFINx) and 2D PME on an unstructured mesh (DOLFINx), in steady state
   (Ray's start and worker warm-up reported apart). The files of both runs are compared bit for bit.
2. DOLFINx against the scipy finite-volume solver on diffusion-sorption at the paper grid
   (1024 x 101): seconds per sample and error against a fine finite-volume reference.
3. Navier-Stokes: solver steps per second at 64^2 and 256^2, float32 and float64.
"""

from __future__ import annotations

import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from .. import __version__
from . import publish


def _generate_rate(name: str, params: dict[str, Any], n: int, workers: int, folder: Path) -> tuple[float, Path]:
    from ..data.generators import generate

    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{name}-{workers}.h5"
    out.unlink(missing_ok=True)
    t0 = time.perf_counter()
    generate(name, out, n=n, seed=0, params=params, workers=workers, progress=False)
    return n / (time.perf_counter() - t0), out


def _same(a: Path, b: Path) -> bool:
    with h5py.File(a) as fa, h5py.File(b) as fb:
        return all(np.array_equal(fa[f"samples/{k}"][()], fb[f"samples/{k}"][()]) for k in ("u", "params"))


def throughput(quick: bool) -> list[dict[str, Any]]:
    """Samples/s in steady state: for 2 workers Ray is started and its workers warmed up (imports,
    compiled forms) on a throw-away file first; that start-up is reported on its own."""
    from ..errors import optional_import

    ray = optional_import("ray", "ray", "the two-worker generation benchmark")
    cases = [
        ("diffusion_sorption_fv", {"nx": 1024, "nt": 101}, 16 if quick else 64),
        ("diffusion_sorption", {"nx": 1024, "nt": 101}, 8 if quick else 32),
        ("pme_fem", {"dim": 2, "m": 2.0}, 16 if quick else 64),
    ]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, params, n in cases:
            _generate_rate(name, params, 1, 1, Path(tmp) / "warm")  # this process's imports and form compilation
            one, f1 = _generate_rate(name, params, n, 1, Path(tmp))
            t0 = time.perf_counter()
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
            try:
                _generate_rate(name, params, 4, 2, Path(tmp) / "warm")
                startup = time.perf_counter() - t0
                two, f2 = _generate_rate(name, params, n, 2, Path(tmp))
            finally:
                ray.shutdown()
            rows.append({"generator": name, "params": params, "samples": n, "samples_per_s_1_worker": one,
                         "samples_per_s_2_workers": two, "speedup": two / one, "ray_startup_s": startup,
                         "identical_files": _same(f1, f2)})
    return rows


def fem_vs_fv(quick: bool) -> dict[str, Any]:
    from ..data.generators.base import rng_for
    from ..data.generators.fem.diffusion_sorption import solve_fem
    from ..data.generators.fv import random_initial_condition, solve_fv

    t = np.linspace(0.0, 500.0, 101)
    samples = 2 if quick else 6
    fine = 4096 if quick else 8192
    result: dict[str, Any] = {"samples": samples, "reference": f"finite volumes, {fine} cells, rtol 1e-9"}
    timings: dict[str, list[float]] = {"fv": [], "fv_loose": [], "fem": []}
    errors: dict[str, list[float]] = {"fv": [], "fv_loose": [], "fem": []}
    solve_fem(random_initial_condition(rng_for(99, 0)), t[:3], nx=64)  # compile the forms outside the timing
    for i in range(samples):
        u0 = random_initial_condition(rng_for(0, i))
        ref = solve_fv(u0, t, nx=fine, rtol=1e-9, atol=1e-12)
        ref = ref.reshape(len(t), 1024, fine // 1024).mean(-1)  # cell averages on the 1024 cells
        for key, solve in (("fv", lambda: solve_fv(u0, t, nx=1024)), ("fv_loose", lambda: solve_fv(u0, t, nx=1024, rtol=1e-4)),
                           ("fem", lambda: solve_fem(u0, t, nx=1024))):
            t0 = time.perf_counter()
            u = solve()
            timings[key].append(time.perf_counter() - t0)
            errors[key].append(float(np.linalg.norm(u - ref) / np.linalg.norm(ref)))
    for key in timings:
        result[key] = {"seconds_per_sample": float(np.mean(timings[key])), "rel_l2_vs_reference": float(np.mean(errors[key]))}
    result["fem_over_fv_time"] = result["fem"]["seconds_per_sample"] / result["fv"]["seconds_per_sample"]
    return result


def navier_stokes_speed(quick: bool) -> list[dict[str, Any]]:
    from ..data.generators.base import rng_for
    from ..data.generators.navier_stokes import gaussian_random_field, solve_navier_stokes

    rows = []
    for n in (64, 256):
        for dtype in (torch.float32, torch.float64):
            steps = 20 if quick or n == 256 else 100
            dt = 1e-3
            w0 = torch.as_tensor(gaussian_random_field(n, rng_for(0, 0)))
            solve_navier_stokes(w0, np.array([0.0, 2 * dt]), dt=dt, dtype=dtype)  # warm up
            t0 = time.perf_counter()
            solve_navier_stokes(w0, np.array([0.0, steps * dt]), dt=dt, dtype=dtype)
            rows.append({"grid": n, "dtype": str(dtype).removeprefix("torch."), "steps_per_s": steps / (time.perf_counter() - t0)})
    return rows


def run(quick: bool, out_dir: Path) -> dict[str, Any]:
    report = {
        "benchmark": "data", "quick": quick, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, torch threads {torch.get_num_threads()}",
        "versions": {"sciml": __version__, "torch": torch.__version__, "numpy": np.__version__},
        "throughput": throughput(quick), "fem_vs_fv": fem_vs_fv(quick), "navier_stokes": navier_stokes_speed(quick),
    }
    return publish("data", report, markdown(report), out_dir)


def markdown(r: dict[str, Any]) -> str:
    lines = [f"Dataset generation ({'quick' if r['quick'] else 'full'}), {r['date']}, {r['machine']}", "",
             "| generator | samples | samples/s, 1 worker | samples/s, 2 workers | speed-up | Ray start + warm-up (s) | identical files |", "|---|---|---|---|---|---|---|"]
    for row in r["throughput"]:
        lines.append(f"| {row['generator']} {row['params']} | {row['samples']} | {row['samples_per_s_1_worker']:.3g} | "
                     f"{row['samples_per_s_2_workers']:.3g} | {row['speedup']:.2f} | {row['ray_startup_s']:.1f} | {row['identical_files']} |")
    f = r["fem_vs_fv"]
    lines += ["", f"Diffusion-sorption, 1024 x 101, {f['samples']} samples; reference: {f['reference']}", "",
              "| solver | s / sample | rel. L2 vs reference |", "|---|---|---|"]
    for key, label in (("fv", "finite volumes, scipy BDF rtol 1e-6"), ("fv_loose", "finite volumes, rtol 1e-4"), ("fem", "DOLFINx P1, BDF2")):
        lines.append(f"| {label} | {f[key]['seconds_per_sample']:.3g} | {f[key]['rel_l2_vs_reference']:.2e} |")
    lines += ["", "| Navier-Stokes grid | dtype | steps/s |", "|---|---|---|"]
    lines += [f"| {row['grid']}^2 | {row['dtype']} | {row['steps_per_s']:.3g} |" for row in r["navier_stokes"]]
    return "\n".join(lines) + "\n"
