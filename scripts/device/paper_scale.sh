#!/usr/bin/env bash
# Paper-scale GPU runs for a session that is lent the device machine (one H200, 16 cores, no
# network; its image has Python 3.12, torch, lightning, h5py, matplotlib, scipy, JAX and
# optimistix, but not jsonargparse and its two helpers, nor DOLFINx or Ray). Prepare here, run there:
#
#   here:   bash scripts/device/paper_scale.sh prepare          # wheels of jsonargparse & co. into shared/wheels
#   here:   bash scripts/device/paper_scale.sh check            # every mode below, --quick on this CPU, into /tmp
#   device: bash scripts/device/paper_scale.sh run all          # the command to run there first (9.5 min)
#           BUDGET_S=200 bash scripts/device/paper_scale.sh run probconserv_core   # then, if the machine is warm
#           bash scripts/device/paper_scale.sh run pihc|bench|probconserv   # one part, with the whole budget
#           (writes $OUT/<mode>.log and $OUT/<part>.tar.gz per part: the run folders without Lightning's
#           checkpoints, the ANPs' small model.ckpt kept, the bench's JSON and tables; the device sends
#           back 8 files of 16 MiB at most, so the paper-scale FNO's checkpoint, ~60 MB with its
#           optimiser, stays there). Each part runs under `timeout` inside the budget BUDGET_S (default
#           570 s, under the tool's 600) and is packed as soon as it ends, so a part that overruns
#           costs only itself; the log shows progress lines as it goes. WHERE=check runs the same
#           parts --quick on this CPU (OUT=any folder).
#
# pihc: diffusion-sorption PI-HC-MoE at the paper's settings (K = 4, 20k points per expert, FNO
#   64 x 5, batch 6, 4000 steps) on 1000 samples generated there (finite volumes on 14 processes,
#   seconds; the paper's 9000 do not fit the time budget), trained for at most 4 min (goal: the
#   4000 steps in under 4 minutes), then evaluated on its 111 test samples.
# bench: `sciml bench solver --device cuda`: our solve against optimistix (JAX on the GPU) at the
#   paper setting, MoE scaling to 1e5 points with the GPU's peak memory (`bench_core`: these two
#   sections only), the layer, the training step; then `sciml bench fields --device cuda`.
# probconserv: the ANP at the paper's size (hidden 128, batch 250, Adam 1e-4, up to 20k steps or
#   1 min 40 s each) on diffusion, Stefan and PME, with HardC/ProbConserv evaluated from it.
# `all` runs pihc, then our solve against optimistix (the paper's setting first) and MoE scaling
# (`bench_core`), in one command; `probconserv_core` trains the ANP on diffusion and Stefan for 1 min
# each. The session's 15 minutes of device time hold one machine start (1-2 min), `all` and, warm,
# `probconserv_core`. Untested on the device so far: no session has had one; checked without it:
# `VENV=<an environment with torch 2.11, the image's> WHERE=check OUT=<folder> ... run all` runs
# every part --quick on a CPU and packs it (2026-11-29), `check` the other parts; the layer's CUDA
# branches only under torch's fake tensors and the GPU solve fallbacks on the CPU.
set -euo pipefail
self=$(realpath "${BASH_SOURCE[0]}")
cd "$(dirname "$self")/../.."
mode=${1:-}

commands() {  # $1: pihc|bench|probconserv|bench_core|probconserv_core, $2: output folder, $3: "gpu" or "check" (--quick on the CPU)
  local what=$1 out=$2 where=$3 dev run quick=() pihc_time=00:00:04:00 anp_time=00:00:01:40 failed=0
  if [ "$where" = gpu ]; then
    dev=(trainer.accelerator=gpu threads=0); run=(python3 -m sciml.cli run)
  else
    dev=(trainer.accelerator=cpu threads=0); run=(python3 -m sciml.cli run --quick); quick=(--quick)
    pihc_time=00:00:00:20; anp_time=00:00:00:10
  fi
  case "$what" in
    pihc)
      local data=(data.path=data/diffusion_sorption_1024x101_n1000.h5 data.n_samples=1000 data.generator_workers=14)
      [ "$where" = gpu ] || data=(data.generator_workers=2)
      "${run[@]}" experiments/hc/diffusion_sorption_moe.yaml --out "$out/pihc_moe" "${dev[@]}" "${data[@]}" \
        trainer.max_time=$pihc_time ;;
    bench|bench_core)  # bench_core: our solve against optimistix and MoE scaling only
      local device=(--device cuda) sections=()
      [ "$where" = gpu ] || device=()
      [ "$what" = bench ] || sections=(--sections versus_optimistix,moe_scaling)  # the paper's row first
      python3 -m sciml.cli bench solver "${quick[@]}" "${device[@]}" "${sections[@]}" --out "$out/bench" || failed=1
      [ "$what" = bench_core ] || python3 -m sciml.cli bench fields "${quick[@]}" "${device[@]}" --out "$out/bench" || failed=1
      return $failed ;;
    probconserv|probconserv_core)  # every case runs; the status says whether any failed
      local cases=(diffusion stefan pme) loaders=6  # loader processes: 250 functions a step drawn in numpy
      [ "$where" = gpu ] || loaders=0
      if [ "$what" = probconserv_core ]; then cases=(diffusion stefan); [ "$where" = gpu ] && anp_time=00:00:01:00; fi
      for case in "${cases[@]}"; do
        "${run[@]}" "experiments/probconserv/anp_$case.yaml" --out "$out/probconserv_$case" "${dev[@]}" \
          trainer.max_steps=20000 trainer.max_time=$anp_time "data.num_workers=$loaders" || failed=1
      done
      return $failed ;;
    *) echo "unknown run $what (pihc, bench or probconserv)" >&2; exit 2 ;;
  esac
}

pack() {  # $1: mode, $2: its runs' folder, $3: where the archive goes
  tar czf "$3/$1.tar.gz" --exclude=checkpoints -C "$2" .
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
    PATH=${VENV:-$PWD/.venv}/bin:$PATH  # VENV: another environment to check with (e.g. the device's torch version)
    out=$(mktemp -d)
    modes=("${@:2}")
    [ ${#modes[@]} -gt 0 ] || modes=(pihc probconserv bench)
    for what in "${modes[@]}"; do
      mkdir -p "$out/runs_$what"
      commands "$what" "$out/runs_$what" check
      pack "$what" "$out/runs_$what" "$out"
    done
    echo "check passed: $out" ;;
  _part)  # $2 part, $3 runs folder, $4 where: one part in its own process, so `timeout` can stop it
    commands "$2" "$3" "$4" ;;
  run)
    what=${2:?"say what to run: all, pihc, bench or probconserv"}
    : "${OUT:?OUT is the folder that comes back (set by the device tool)}"
    [ "${WHERE:-gpu}" = gpu ] || PATH=${VENV:-$PWD/.venv}/bin:$PATH  # WHERE=check: the same parts, --quick on this CPU (VENV: whose python)
    python3 - <<'PY' || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site shared/wheels/*.whl
import jsonargparse, typeshed_client, docstring_parser  # noqa: F401  (the CLI's dependencies missing there)
PY
    export PYTHONPATH=$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
    [ "${WHERE:-gpu}" = check ] || nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
    case "$what" in
      all) parts=("pihc 330" "bench_core 0") ;;  # seconds each may take (0: what is left)
      pihc|bench|probconserv|bench_core|probconserv_core) parts=("$what 0") ;;
      *) echo "unknown run $what (all, pihc, bench or probconserv)" >&2; exit 2 ;;
    esac
    deadline=$((SECONDS + ${BUDGET_S:-570}))
    status=0
    set +e
    for entry in "${parts[@]}"; do
      read -r part cap <<<"$entry"
      left=$((deadline - SECONDS - 10))  # 10 s to pack
      [ "$cap" -gt 0 ] && [ "$cap" -lt "$left" ] && left=$cap
      if [ "$left" -lt 30 ]; then echo "== $part skipped: ${left}s left of the budget" | tee -a "$OUT/$what.log"; status=1; continue; fi
      runs=/tmp/sciml_runs/$part
      mkdir -p "$runs"
      echo "== $part (at most ${left}s)" | tee -a "$OUT/$what.log"
      timeout -k 5 "$left" bash "$self" _part "$part" "$runs" "${WHERE:-gpu}" 2>&1 | tee -a "$OUT/$what.log"
      code=${PIPESTATUS[0]}
      pack "$part" "$runs" "$OUT"  # what finished, also after a failure or a timeout
      [ "$code" = 0 ] || { echo "== $part failed (status $code; 124: stopped at its time limit)" | tee -a "$OUT/$what.log"; status=1; }
    done
    exit "$status" ;;
  *) echo "usage: $0 prepare | check [pihc bench probconserv bench_core probconserv_core] | run all|pihc|bench|probconserv" >&2; exit 2 ;;
esac
