#!/usr/bin/env bash
# PI-SC / PI-HC / PI-HC-MoE on 2D Navier-Stokes at a scale a 2-core CPU allows (the "CPU scale" NS numbers
# in the README): an N^2 x NT grid (default 64^2 x 33; the paper: 64^2 x 64 training, 256^2 test), 220
# trajectories (200 train, 20 test; paper 4000 / 100), FNO3d width 16 x 4 layers with 32 basis functions
# (paper 64 x 8, 64), 2000 points per expert (paper 20k), STEPS steps at batch 2 (default 400, the rate halved
# every STEPS / 4; ~6 min for PI-SC and ~25 min for PI-HC on one core). Paper scale needs a GPU.
# On 32^2 x 17 the exact solution's own discrete residual (mean square 0.022) is as large as a trained loss;
# at 64^2 x 33 it is 0.0013.
# Usage: [SEED=N] [STEPS=N] [N=64] [NT=33] bash scripts/ns_cpu.sh [MODEL ...]   (default: sc hc moe; moe_experts:
#        MoE with model.loss_fields=experts;
#        runs/ns_cpu_<model>_<N>x<NT>, with _s<SEED> for a seed other than 0 and _<STEPS>steps for other than 400)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
seed=${SEED:-0}
steps=${STEPS:-400}
n=${N:-64}
nt=${NT:-33}
suffix=_${n}x${nt}$([ "$seed" = 0 ] || echo "_s$seed")$([ "$steps" = 400 ] || echo "_${steps}steps")
scale=(data.path=data/navier_stokes_${n}x${nt}_n220.h5 "data.generator_params={n: $n, nt: $nt, t_end: 5.0, nu: 1.0e-4, length_scale: 0.8}"
       data.n_samples=220 data.test_fraction=0.0909 model.basis=32 model.width=16 model.layers=4 "model.modes=[4,8,8]"
       model.solver.points=2000 trainer.accelerator=cpu "trainer.max_steps=$steps" "model.schedule.halve_every=$((steps / 4))"
       "seed=$seed")
models=("$@")
[ ${#models[@]} -gt 0 ] || models=(sc hc moe)
for m in "${models[@]}"; do
  case "$m" in
    sc|hc|moe) .venv/bin/sciml run "experiments/hc/navier_stokes_$m.yaml" --out "runs/ns_cpu_$m$suffix" "${scale[@]}" ;;
    moe_experts) .venv/bin/sciml run experiments/hc/navier_stokes_moe.yaml --out "runs/ns_cpu_$m$suffix" "${scale[@]}" model.loss_fields=experts ;;
    *) echo "unknown model $m (sc hc moe moe_experts)" >&2; exit 2 ;;
  esac
done
