#!/usr/bin/env bash
# Paper-scale GPU runs for a session that is lent the device machine (one GPU, no network, torch,
# lightning, h5py and matplotlib preinstalled; no DOLFINx, no Ray). Prepare here, then run there:
#
#   here:   bash scripts/device/paper_scale.sh prepare      # wheels of the pure-Python deps + the ProbConserv data
#   device: bash scripts/device/paper_scale.sh run probconserv|pihc   (writes $OUT/<run>/metrics.json)
#
# probconserv: the ANP at the paper's size (hidden 128, batch 250, Adam 1e-4, 20k steps) on
#   diffusion, PME and Stefan, with HardC/ProbConserv evaluated from it (SoftC and the CNP are
#   CPU-sized already: scripts/probconserv_cpu.sh). ~4 s per step on 2 CPU cores.
# pihc: diffusion-sorption PI-HC-MoE at the paper's settings (4000 steps, batch 6) on 1000 samples
#   generated on the device (the finite-volume generator needs scipy; the paper's 9000 do not fit
#   the time budget). Goal: under 4 minutes of training on an H200.
# Untested on the device so far: no session has been lent one.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
mode=${1:-}
case "$mode" in
  prepare)
    mkdir -p shared/wheels
    # pure-Python wheels (lightning already brings PyYAML); the versions of requirements.lock
    for pkg in jsonargparse typeshed-client docstring-parser rich markdown-it-py mdurl pygments; do
      pin=$(grep -i "^${pkg}==" requirements.lock | cut -d' ' -f1)
      python3 -m pip download --no-deps --only-binary=:all: -d shared/wheels "${pin:-$pkg}"
    done
    for case in diffusion pme stefan; do  # training and test sets (exact solutions; small)
      .venv/bin/sciml run "experiments/probconserv/anp_$case.yaml" --quick --out "/tmp/sciml_prepare_$case" >/dev/null
    done
    du -sh shared/wheels data/probconserv ;;
  run)
    what=${2:?"say what to run: probconserv or pihc"}
    python - <<'PY' || pip install --no-index --no-deps shared/wheels/*.whl
import jsonargparse, rich, yaml  # noqa: F401  (the CLI's pure-Python dependencies)
PY
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
    gpu="trainer.accelerator=gpu threads=0"
    if [ "$what" = probconserv ]; then
      for case in diffusion stefan pme; do
        # 20k steps or 2 min 40 s of training, whichever comes first (Lightning's max_time), then the evaluation
        python -m sciml.cli run "experiments/probconserv/anp_$case.yaml" --out "$OUT/probconserv_$case" $gpu \
          trainer.max_steps=20000 trainer.max_time=00:00:02:40
      done
    else
      python -m sciml.cli run experiments/hc/diffusion_sorption_moe.yaml --out "$OUT/pihc_moe" $gpu \
        data.path=data/diffusion_sorption_1024x101_n1000.h5 data.n_samples=1000
    fi ;;
  *) echo "usage: $0 prepare | run probconserv|pihc" >&2; exit 2 ;;
esac
