#!/usr/bin/env bash
# Set up whatever is missing, then run the default experiment (a PINN on 1D convection).
# Extra arguments go to `sciml run`, e.g. `--out runs/mine` or `model.hidden=[32,32]`.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/setup.sh"
cd "$root"
exec "$root/.venv/bin/sciml" run experiments/quickstart.yaml "$@"
