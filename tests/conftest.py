"""Suite-wide settings: one torch thread per test worker.

The suite runs with 2 xdist workers on 2 cores; more threads only contend (measured: a small MLP
trains in 21.5 s with 2 threads against 0.7 s with 1 on the loaded machine).
The torchvision shim runs before any test imports transformers, timm or torchvision
(bench/zoo/torchvision_shim.py says why). Crash logs of the CLI go to a temporary folder.
"""

import os
import tempfile

import torch

from bench.zoo import torchvision_shim

# Tests that drive internal errors through the CLI write their crash logs here, not into the
# user's ~/.cache/edgecompile (subprocesses inherit it).
os.environ.setdefault("EDGECOMPILE_LOG_DIR", tempfile.mkdtemp(prefix="edgecompile-test-logs-"))

torch.set_num_threads(1)
torchvision_shim.install()
