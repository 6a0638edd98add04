"""Two gloo processes on one global batch give what one process gives where the method is exact
(FNGD with ddp_solve="global", K-FAC, TWA with its basis split over ranks); FNGD's default
local solves give the block-diagonal step and send one all-reduce of the parameters."""
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

import torch.nn.functional as F

from edgecompile.finetune import FNGD, FinetuneData, RecoverConfig, ddp, recover

CFG = dict(epochs=2, batch_size=16, device="cpu", lr=0.05, damping=0.05)


def _setup():
    torch.manual_seed(0)
    x = torch.randn(40, 6, dtype=torch.float64)
    y = (x[:, :3] * 2).argmax(1)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.LayerNorm(8), nn.Linear(8, 3))
    return model.double(), FinetuneData.from_arrays(x, y)


#: optimizer label -> RecoverConfig fields
EXACT = {"fngd": dict(optimizer="fngd", fngd_ddp_solve="global"), "kfac": dict(optimizer="kfac"),
         "twa": dict(optimizer="twa", epochs=3, twa_warmup_epochs=1, twa_per_layer=False),
         "twa-layer": dict(optimizer="twa", epochs=3, twa_warmup_epochs=1, twa_per_layer=True)}


def _join(rank: int, world: int, port: int) -> None:
    """This spawned process joins a gloo group of `world` on localhost:`port`, on one thread."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)


def _worker(rank, world, port, label, out):
    _join(rank, world, port)
    try:
        model, data = _setup()
        res = recover(model, data, RecoverConfig(**{**CFG, **EXACT[label]}))
        if rank == 0:
            torch.save({"state": res.state_dict, "losses": [e.loss for e in res.epochs]}, out)
    finally:
        ddp.shutdown()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # ~20 s per case: two spawned interpreters
@pytest.mark.parametrize("label", list(EXACT))
def test_two_process_ddp_equals_single_process(tmp_path, label):
    out = tmp_path / "rank0.pt"
    mp.spawn(_worker, args=(2, _free_port(), label, str(out)), nprocs=2, join=True)
    got = torch.load(out)
    model, data = _setup()
    ref = recover(model, data, RecoverConfig(**{**CFG, **EXACT[label]}))
    # TWA: the basis from Gram matrices summed over ranks, equal up to rounding.
    tol = 1e-9 if not label.startswith("twa") else 1e-7
    for k, v in ref.state_dict.items():
        torch.testing.assert_close(got["state"][k], v, rtol=tol, atol=tol)
    assert got["losses"] == pytest.approx([e.loss for e in ref.epochs], rel=tol)


def _local_worker(rank, world, port, out):
    """One solve step of FNGD with local solves; rank 0 saves the move and the bytes sent."""
    _join(rank, world, port)
    try:
        model, data = _setup()
        x, y = data.inputs[0][:16], data.labels[:16]
        mine = slice(8 * rank, 8 * rank + 8)
        wrapped = nn.parallel.DistributedDataParallel(model)
        opt = FNGD(model, lr=0.1, damping=0.05, momentum=0.0, check_every=None)
        before = [p.detach().clone() for p in model.parameters()]
        ddp.traffic.reset()
        opt.set_batch(torch.arange(16)[mine])
        assert opt.averages_itself
        with wrapped.no_sync():
            loss = opt.reduce(F.cross_entropy(wrapped(x[mine]), y[mine], reduction="none"))
            loss.backward()
        opt.step()
        moves = [b - p.detach() for b, p in zip(before, model.parameters())]
        bytes_, alpha = ddp.traffic.bytes, opt.alpha_for(torch.arange(16))
        # A reused step (the halves dealt the other way round): the mean over ranks of each
        # rank's Σ cᵢ gᵢ, with its stored coefficients clipped and summing to 1 on the rank.
        twin = _setup()[0]  # the same weights, without FNGD's hooks
        twin.load_state_dict(model.state_dict())
        want = [torch.zeros_like(p) for p in twin.parameters()]
        for half in (slice(0, 8), slice(8, 16)):
            c = alpha[half, 0].clamp_min(0)
            c = (c / c.sum()).to(x.dtype)
            losses = F.cross_entropy(twin(x[half]), y[half], reduction="none")
            for w, g in zip(want, torch.autograd.grad((losses * c).sum(), list(twin.parameters()))):
                w += 0.1 * g / 2
        opt.set_epoch(1)
        other = slice(8 * (1 - rank), 8 * (1 - rank) + 8)
        opt.set_batch(torch.arange(16)[other])
        assert opt.reusing
        before = [p.detach().clone() for p in model.parameters()]
        loss = opt.reduce(F.cross_entropy(wrapped(x[other]), y[other], reduction="none"))
        opt.zero_grad()
        loss.backward()
        opt.step()
        reused = [b - p.detach() for b, p in zip(before, model.parameters())]
        if rank == 0:
            torch.save({"moves": moves, "bytes": bytes_, "alpha": alpha, "reused": reused,
                        "want": want}, out)
        del wrapped
    finally:
        ddp.shutdown()


@pytest.mark.slow  # ~10 s: two spawned interpreters
def test_local_solves_average_the_per_rank_steps_and_send_one_all_reduce(tmp_path):
    out = tmp_path / "rank0.pt"
    mp.spawn(_local_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    got = torch.load(out)
    model, data = _setup()
    x, y = data.inputs[0][:16], data.labels[:16]
    moves, alphas = [], []
    for half in (slice(0, 8), slice(8, 16)):  # each rank's block of the Gram matrix alone
        twin, _ = _setup()
        opt = FNGD(twin, lr=0.1, damping=0.05, momentum=0.0)
        before = [p.detach().clone() for p in twin.parameters()]
        opt.set_batch(torch.arange(8))
        opt.reduce(F.cross_entropy(twin(x[half]), y[half], reduction="none")).backward()
        opt.step()
        moves.append([b - p.detach() for b, p in zip(before, twin.parameters())])
        alphas.append(opt.alpha_for(torch.arange(8)))
    for m, a, b in zip(got["moves"], *moves):
        torch.testing.assert_close(m, (a + b) / 2, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got["alpha"], torch.cat(alphas))  # every rank stores all
    for r, w in zip(got["reused"], got["want"]):
        torch.testing.assert_close(r, w, rtol=1e-9, atol=1e-12)
    params = sum(p.numel() for p in model.parameters())
    # One all-reduce of the parameters (ring: 2·S·(W-1)/W = S at W=2) plus the reuse flag (float32) and
    # the 8 ids and coefficients per rank, whatever the layers' inputs are.
    assert got["bytes"] == params * 8 + 4 + (8 + 8 * 8) + (8 + 8 * 8)


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
