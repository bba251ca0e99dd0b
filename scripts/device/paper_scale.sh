#!/usr/bin/env bash
# Paper-scale GPU runs for a session that is lent the device machine (one H200, 16 cores, no
# network; its image has Python 3.12, torch, lightning, h5py, matplotlib, scipy, JAX and
# optimistix, but not jsonargparse and its two helpers, nor DOLFINx or Ray). Prepare here, run there:
#
#   here:   bash scripts/device/paper_scale.sh prepare          # wheels of jsonargparse & co. into shared/wheels
#   here:   bash scripts/device/paper_scale.sh check            # every mode below, --quick on this CPU, into /tmp
#   device: bash scripts/device/paper_scale.sh run pihc|bench|probconserv
#           (writes $OUT/<mode>.log and $OUT/<mode>.tar.gz: the run folders without Lightning's
#           checkpoints and logs, the ANPs' small model.ckpt kept; the device sends back 8 files of
#           16 MiB at most, so the paper-scale FNO's checkpoint, ~60 MB with its optimiser, stays there)
#
# pihc: diffusion-sorption PI-HC-MoE at the paper's settings (K = 4, 20k points per expert, FNO
#   64 x 5, batch 6, 4000 steps) on 1000 samples generated there (finite volumes, ~1 min; the
#   paper's 9000 do not fit the time budget), trained for at most 4 min 30 s (goal: the 4000 steps
#   in under 4 minutes), then evaluated on its 111 test samples. About 7 minutes in all.
# bench: `sciml bench solver --device cuda`: our solve against optimistix (JAX on the GPU) at the
#   paper setting, and MoE scaling to 1e5 points with the GPU's peak memory; then `sciml bench
#   fields --device cuda` (the NS basis fields, seconds). A few minutes.
# probconserv: the ANP at the paper's size (hidden 128, batch 250, Adam 1e-4, up to 20k steps or
#   1 min 40 s each) on diffusion, Stefan and PME, with HardC/ProbConserv evaluated from it. ~6 min.
# Each mode fits one 10-minute command; the session's 15 minutes of device time hold two of them
# (pihc first: it is the issue's acceptance). Untested on the device so far: no session has had one; checked
# without it: `check` under torch 2.11 (the image's), and the CUDA branches under torch's fake tensors.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
mode=${1:-}

commands() {  # $1: pihc|bench|probconserv, $2: output folder, $3: "gpu" or "check" (--quick on the CPU)
  local what=$1 out=$2 where=$3 dev run pihc_time=00:00:04:30 anp_time=00:00:01:40
  if [ "$where" = gpu ]; then
    dev=(trainer.accelerator=gpu threads=0); run=(python3 -m sciml.cli run)
  else
    dev=(trainer.accelerator=cpu threads=0); run=(python3 -m sciml.cli run --quick); pihc_time=00:00:00:20; anp_time=00:00:00:10
  fi
  case "$what" in
    pihc)
      local data=(data.path=data/diffusion_sorption_1024x101_n1000.h5 data.n_samples=1000)
      [ "$where" = gpu ] || data=()
      "${run[@]}" experiments/hc/diffusion_sorption_moe.yaml --out "$out/pihc_moe" "${dev[@]}" "${data[@]}" \
        trainer.max_time=$pihc_time ;;
    bench)
      if [ "$where" = gpu ]; then
        python3 -m sciml.cli bench solver --device cuda --out "$out/bench"
        python3 -m sciml.cli bench fields --device cuda --out "$out/bench"
      else
        python3 -m sciml.cli bench solver --quick --out "$out/bench"
        python3 -m sciml.cli bench fields --quick --out "$out/bench"
      fi ;;
    probconserv)  # every case runs; the status says whether any failed
      local failed=0
      for case in diffusion stefan pme; do
        "${run[@]}" "experiments/probconserv/anp_$case.yaml" --out "$out/probconserv_$case" "${dev[@]}" \
          trainer.max_steps=20000 trainer.max_time=$anp_time || failed=1
      done
      return $failed ;;
    *) echo "unknown run $what (pihc, bench or probconserv)" >&2; exit 2 ;;
  esac
}

pack() {  # $1: mode, $2: its runs' folder, $3: where the archive goes
  tar czf "$3/$1.tar.gz" --exclude=checkpoints --exclude=logs -C "$2" .
  ls -l "$3/$1.tar.gz"
}

case "$mode" in
  prepare)
    mkdir -p shared/wheels
    # jsonargparse[signatures] and its two helpers at the versions of requirements.lock (pure Python;
    # everything else sciml needs is in the device's image)
    for pkg in jsonargparse typeshed-client docstring-parser; do
      pin=$(grep -i "^${pkg}==" requirements.lock | cut -d' ' -f1)
      python3 -m pip download --no-deps --only-binary=:all: -d shared/wheels "${pin:-$pkg}"
    done
    du -sh shared/wheels ;;
  check)  # the same command lines, --quick on this machine's CPU
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
    PATH=$PWD/.venv/bin:$PATH
    out=$(mktemp -d)
    modes=("${@:2}")
    [ ${#modes[@]} -gt 0 ] || modes=(pihc probconserv bench)
    for what in "${modes[@]}"; do
      mkdir -p "$out/runs_$what"
      commands "$what" "$out/runs_$what" check
      pack "$what" "$out/runs_$what" "$out"
    done
    echo "check passed: $out" ;;
  run)
    what=${2:?"say what to run: pihc, bench or probconserv"}
    : "${OUT:?OUT is the folder that comes back (set by the device tool)}"
    python3 - <<'PY' || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site shared/wheels/*.whl
import jsonargparse, typeshed_client, docstring_parser  # noqa: F401  (the CLI's dependencies missing there)
PY
    export PYTHONPATH=$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
    runs=/tmp/sciml_runs/$what
    mkdir -p "$runs"
    set +e
    commands "$what" "$runs" gpu 2>&1 | tee "$OUT/$what.log"
    status=${PIPESTATUS[0]}
    pack "$what" "$runs" "$OUT"  # what finished, also after a failure
    [ "$status" = 0 ] || echo "run $what failed (status $status); see $what.log" >&2
    exit "$status" ;;
  *) echo "usage: $0 prepare | check [pihc bench probconserv] | run pihc|bench|probconserv" >&2; exit 2 ;;
esac
