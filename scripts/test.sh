#!/usr/bin/env bash
# Set up whatever is missing, then run the test suite (slow tests are excluded; add `-m slow`).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/setup.sh"
cd "$root"
exec "$root/.venv/bin/python" -m pytest "$@"
