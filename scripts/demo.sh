#!/usr/bin/env bash
# The main job on the embedded default: the trained digits CNN built for a Raspberry Pi 4.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/edgecompile build --target rpi4 --prune magnitude:global:0.7 --cluster-bits 4 --out out/digits-rpi4 "$@"
