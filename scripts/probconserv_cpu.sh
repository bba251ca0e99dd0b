#!/usr/bin/env bash
# ProbConserv at the largest scale a 2-core CPU allows in about an hour per pair of cases (the
# numbers in the README). Paper scale (hidden 128, batch 250, lr 1e-4, 20k steps) needs a GPU.
# Usage: bash scripts/probconserv_cpu.sh [CASE ...]   (default: every case; runs/probconserv_<case>_cpu)
# diffusion_long, stefan_long: the ANP alone for 8000 steps with the rate decaying 1e-3 -> 1e-5 along a
# cosine (~53 min each on one core; runs/probconserv_<case>_cosine), the README's second tables;
# SEED=N trains them with another seed (runs/probconserv_<case>_cosine_s<N>).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cpu="model.hidden=64,data.batch_size=64,model.lr=1.0e-3,trainer.max_steps=2000,model.softc_functions=8"
cases=("$@")
[ ${#cases[@]} -gt 0 ] || cases=(diffusion stefan pme advection burgers heat_mesh pme_mesh)
for case in "${cases[@]}"; do
  case "$case" in
    diffusion|stefan)  # the paper's table: ANP, SoftC-ANP, HardC-ANP, ProbConserv-ANP (+ the CNP)
      .venv/bin/sciml run "experiments/probconserv/$case.yaml" --out "runs/probconserv_${case}_cpu" "overrides=[$cpu]" ;;
    pme|advection|burgers)  # ANP and CNP with their updates (SoftC costs ~2x an ANP on a CPU)
      .venv/bin/sciml run "experiments/probconserv/$case.yaml" --out "runs/probconserv_${case}_cpu" "overrides=[$cpu]" \
        "models={anp: experiments/probconserv/anp_$case.yaml, cnp: {config: experiments/probconserv/anp_$case.yaml, overrides: [model.kind=cnp]}}" ;;
    diffusion_long|stefan_long)
      base=${case%_long}
      seed=${SEED:-0}; suffix=""; [ "$seed" = 0 ] || suffix="_s$seed"
      .venv/bin/sciml run "experiments/probconserv/anp_$base.yaml" --out "runs/probconserv_${base}_cosine$suffix" model.hidden=64 \
        data.batch_size=64 model.lr=1.0e-3 model.lr_floor=1.0e-5 trainer.max_steps=8000 "seed=$seed" ;;
    heat_mesh|pme_mesh)  # 2D unstructured meshes (DOLFINx data): ANP, HardC-ANP, ProbConserv-ANP
      .venv/bin/sciml run "experiments/probconserv/$case.yaml" --out "runs/probconserv_${case}_cpu" ;;
    *) echo "unknown case $case (diffusion stefan pme advection burgers heat_mesh pme_mesh diffusion_long stefan_long)" >&2; exit 2 ;;
  esac
done
