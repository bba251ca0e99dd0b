#!/usr/bin/env bash
# PI-SC / PI-HC / PI-HC-MoE on diffusion-sorption at the largest scale a 2-core CPU allows in
# about an hour on 2 cores (the "CPU scale" numbers in the README): a 128 x 51 grid (the paper: 1024 x 101),
# FNO width 32 x 4 layers (paper 64 x 5), 2000 points per expert (paper 20k), 1200 steps (paper 4000).
# Paper scale needs a GPU: scripts/device/paper_scale.sh.
# Usage: [SEED=N] [STEPS=N] bash scripts/hc_cpu.sh [MODEL ...]   (default: sc hc moe moe_time moe_space;
#        runs/hc_cpu_<model>, with _s<N> for a seed other than 0 and _<N>steps for other than 1200 steps;
#        the rate halves every STEPS / 4 steps; extrap_sc, extrap_hc, extrap_moe_time: trained on t <= 400 only,
#        metrics.json with interp/* (t <= 400) and extrap/* (t > 400))
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scale=(data.path=data/diffusion_sorption_128x51_n240.h5 data.generator_params.nx=128 data.generator_params.nt=51
       data.n_samples=240 data.test_fraction=0.1 data.batch_size=6 model.width=32 model.layers=4 "model.modes=[8,8]"
       model.solver.points=2000 trainer.accelerator=cpu)
seed=${SEED:-0}
steps=${STEPS:-1200}
suffix=$([ "$seed" = 0 ] || echo "_s$seed")$([ "$steps" = 1200 ] || echo "_${steps}steps")
scale+=("trainer.max_steps=$steps" "model.schedule.halve_every=$((steps / 4))")
scale+=("seed=$seed")
models=("$@")
[ ${#models[@]} -gt 0 ] || models=(sc hc moe moe_time moe_space)
for m in "${models[@]}"; do
  case "$m" in
    sc|hc|moe) .venv/bin/sciml run "experiments/hc/diffusion_sorption_$m.yaml" --out "runs/hc_cpu_$m$suffix" "${scale[@]}" ;;  # moe: 4 x 1
    moe_time)  # two time experts
      .venv/bin/sciml run experiments/hc/diffusion_sorption_moe.yaml --out "runs/hc_cpu_$m$suffix" "${scale[@]}" "model.splits=[2,1]" ;;
    moe_space)  # four spatial experts
      .venv/bin/sciml run experiments/hc/diffusion_sorption_moe.yaml --out "runs/hc_cpu_$m$suffix" "${scale[@]}" "model.splits=[1,4]" ;;
    extrap_sc|extrap_hc|extrap_moe_time)  # temporal extrapolation: trained on t <= 400, tested on t > 400 too
      case "$m" in
        extrap_sc) over=(model.constraint=soft "model.splits=[1,1]") ;;
        extrap_hc) over=("model.splits=[1,1]") ;;
        *) over=("model.splits=[2,1]") ;;
      esac
      .venv/bin/sciml run experiments/hc/diffusion_sorption_moe_extrapolation.yaml --out "runs/hc_cpu_$m$suffix" "${scale[@]}" "${over[@]}" ;;
    *) echo "unknown model $m (sc hc moe moe_time moe_space extrap_sc extrap_hc extrap_moe_time)" >&2; exit 2 ;;
  esac
done
