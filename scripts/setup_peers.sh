#!/usr/bin/env bash
# The peers' own environment for bench/bench_zoo.py: litert-torch and torch.onnx.export's dynamo
# exporter (onnxscript) beside the same torch==2.13.0, torchvision, timm and transformers as .venv.
# A separate venv because litert-torch 0.10.0 pins packages our .venv pins differently
# (typing_extensions 4.12.2, jax, ...). The bench runs without it and says so.
# Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv-peers/bin/python ]; then
    "$PY" -m venv .venv-peers
fi
if [ scripts/setup_peers.sh -nt .venv-peers/.installed ] || [ ! -e .venv-peers/.installed ]; then
    .venv-peers/bin/pip install -q --upgrade pip
    .venv-peers/bin/pip install -q torch==2.13.0          # first: the local CPU build
    .venv-peers/bin/pip install -q torchvision==0.28.0 timm==1.0.31 transformers==5.23.0 \
        litert-torch==0.10.0 onnxscript==0.7.2 onnxruntime==1.32.0 onnx==1.23.2 numpy==2.4.6 \
        scikit-learn==1.9.1 scipy==1.17.1 pillow==13.0.0
    touch .venv-peers/.installed
fi
