"""Two gloo processes on one global batch give what one process gives (FNGD incl. reuse)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from edgecompile.finetune import FinetuneData, RecoverConfig, ddp, recover

CFG = dict(epochs=2, batch_size=16, device="cpu", lr=0.05, damping=0.05)


def _setup():
    torch.manual_seed(0)
    x = torch.randn(40, 6, dtype=torch.float64)
    y = (x[:, :3] * 2).argmax(1)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.LayerNorm(8), nn.Linear(8, 3))
    return model.double(), FinetuneData.from_arrays(x, y)


def _worker(rank, world, port, optimizer, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model, data = _setup()
        res = recover(model, data, RecoverConfig(optimizer=optimizer, **CFG))
        if rank == 0:
            torch.save({"state": res.state_dict, "losses": [e.loss for e in res.epochs]}, out)
    finally:
        ddp.shutdown()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # ~20 s per case: two spawned interpreters
@pytest.mark.parametrize("optimizer", ["fngd", "kfac"])
def test_two_process_ddp_equals_single_process(tmp_path, optimizer):
    out = tmp_path / "rank0.pt"
    mp.spawn(_worker, args=(2, _free_port(), optimizer, str(out)), nprocs=2, join=True)
    got = torch.load(out)
    model, data = _setup()
    ref = recover(model, data, RecoverConfig(optimizer=optimizer, **CFG))
    for k, v in ref.state_dict.items():
        torch.testing.assert_close(got["state"][k], v, rtol=1e-9, atol=1e-10)
    assert got["losses"] == pytest.approx([e.loss for e in ref.epochs], rel=1e-9)


def _cli_build(prefix: list[str], out) -> dict:
    args = ["build", "--target", "host", "--prune", "magnitude:global:0.7", "--finetune", "calib",
            "--epochs", "2", "--out", str(out), "--json", "--allow-degraded"]
    run = subprocess.run(prefix + args, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, run.stdout  # rank 1 prints nothing
    return json.loads(lines[0])["report"]


@pytest.mark.slow  # ~20 s: two builds of the embedded CNN, one under torchrun
def test_build_under_torchrun_equals_single_process(tmp_path):
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    two = _cli_build([torchrun, "--standalone", "--nproc_per_node=2", "-m", "edgecompile"],
                     tmp_path / "two")
    one = _cli_build([sys.executable, "-m", "edgecompile"], tmp_path / "one")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]  # nothing left by rank 1
    losses = [e["loss"] for e in two["finetune"]["history"]]
    assert losses == pytest.approx([e["loss"] for e in one["finetune"]["history"]], rel=1e-5)
    assert two["fidelity"]["cosine"] == pytest.approx(one["fidelity"]["cosine"], rel=1e-5)
