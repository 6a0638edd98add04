"""Bytes each rank receives per training step under DDP (gloo, CPU), per optimizer, beside DDP's
own gradient all-reduce; and the recovery loss/accuracy at each world size.

Rows (digits CNN of ``bench_finetune.py``, global batch ``--batches``):
  ddp all-reduce   an SGD step: DDP's gradient all-reduce alone (the yardstick)
  fngd solve       FNGD's default local solve: each rank solves on its own samples (a
                   block-diagonal Gram over ranks), DDP's all-reduce skipped (``no_sync``), one
                   all-reduce of the step, plus the solved coefficients (``N`` scalars)
  fngd reuse       a step on stored coefficients: DDP's all-reduce
  fngd-global      the exact global solve (``ddp_solve="global"``): every layer's inputs and
                   output gradients all-gathered, growing with batch × world
  kfac             K-FAC: factor all-reduces plus DDP's
  twa              a TWA step with the basis split over ranks: ``K`` floats all-reduced, the
                   weights all-gathered in equal slices, plus DDP's
Bytes are counted as ring collectives move them (all-reduce of ``S``: ``2S(W-1)/W``; all-gather
of ``s`` per rank: ``s(W-1)``), DDP's through a communication hook, ours through
``edgecompile.finetune.ddp.traffic``.  Then FNGD (local solves) recovers the compressed digits
CNN for 3 epochs at each world size: the final loss and accuracy say how far the block-diagonal
approximation moves the result from one process (world 1 is exact).

Usage: python bench/bench_finetune_ddp.py [--worlds 1,2,4] [--batches 64,256]
(launches ``torchrun --standalone --nproc_per_node=W`` itself, gloo on CPU).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_finetune as B  # noqa: E402

from edgecompile.finetune import FNGD, KFAC, TWA, FinetuneData, RecoverConfig, ddp, recover  # noqa: E402,E501


class Hooked:
    """DDP with a communication hook that counts the bytes of its gradient all-reduce."""

    def __init__(self, model):
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
        self.bytes, world = 0, ddp.world_size()
        self.model = model
        if world == 1:
            self.wrapped = model
            return
        self.wrapped = nn.parallel.DistributedDataParallel(model)

        def hook(state, bucket):
            self.bytes += 2 * bucket.buffer().numel() * bucket.buffer().element_size() * \
                (world - 1) // world
            return allreduce_hook(None, bucket)

        self.wrapped.register_comm_hook(None, hook)

    def no_sync(self, skip: bool):
        import contextlib
        return self.wrapped.no_sync() if skip and ddp.world_size() > 1 else contextlib.nullcontext()


def measure(method: str, batch: int, x, y, steps: int = 4) -> float:
    """Mean bytes received per step by this rank."""
    torch.manual_seed(0)
    model = B.DigitsCNN()
    net = Hooked(model)
    world, rank = ddp.world_size(), ddp.rank()
    local = batch // world
    opt = {"fngd solve": lambda: FNGD(model, check_every=None),
           "fngd reuse": lambda: FNGD(model, check_every=None),
           "fngd-global": lambda: FNGD(model, ddp_solve="global", check_every=None),
           "kfac": lambda: KFAC(model, inverse_every=1),
           "ddp all-reduce": lambda: torch.optim.SGD(model.parameters(), lr=0.05),
           "twa": lambda: TWA(model.parameters(), lr=0.1)}[method]()
    if isinstance(opt, TWA):
        for _ in range(8):
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.01 * torch.randn_like(p))
            opt.collect()
        opt.build_subspace()
    ids_of = [torch.arange(s * batch + rank * local, s * batch + (rank + 1) * local)
              for s in range(steps)]
    if method == "fngd reuse":  # one epoch of solves first, then measure the reused steps
        _steps(net, opt, x, y, ids_of)
        opt.set_epoch(1)
    ddp.traffic.reset()
    net.bytes = 0
    _steps(net, opt, x, y, ids_of)
    out = net.bytes + ddp.traffic.bytes
    if world > 1:
        del net.wrapped
    getattr(opt, "remove_hooks", lambda: None)()
    return out / steps


def _steps(net, opt, x, y, ids_of):
    fngd = opt if isinstance(opt, FNGD) else None
    for ids in ids_of:
        if fngd is not None:
            fngd.set_batch(ids)
        with net.no_sync(fngd is not None and fngd.averages_itself):
            losses = F.cross_entropy(net.wrapped(x[ids]), y[ids], reduction="none")
            loss = fngd.reduce(losses) if fngd is not None else losses.mean()
            opt.zero_grad()
            loss.backward()
        opt.step()


def worker(batches: list[int]) -> None:
    torch.set_num_threads(1)
    ddp.init_from_env("cpu")
    x, y, xt, yt = B.digits()
    rows = []
    for batch in batches:
        for method in ("ddp all-reduce", "fngd solve", "fngd reuse", "fngd-global", "kfac",
                       "twa"):
            rows.append({"method": method, "batch": batch, "bytes": measure(method, batch, x, y)})
    # Recovery at this world size (FNGD defaults: local solves under DDP).
    torch.manual_seed(0)
    trained = B.pretrain(B.DigitsCNN(), x, y, 30, 0)
    student = B.DigitsCNN()
    student.load_state_dict(trained.state_dict())
    masks = B.compress(student)
    res = recover(student, FinetuneData.from_arrays(x, y, xt, yt),
                  RecoverConfig(optimizer="fngd", epochs=3, batch_size=64, device="cpu",
                                lr=0.1), masks=masks)
    if ddp.rank() == 0:
        print("RESULT " + json.dumps({"world": ddp.world_size(), "rows": rows,
                                      "losses": [e.loss for e in res.epochs],
                                      "acc": res.final_accuracy}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worlds", default="1,2,4")
    ap.add_argument("--batches", default="64,256")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    if args.worker:
        worker(batches)
        return
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    results = []
    for w in [int(v) for v in args.worlds.split(",")]:
        run = subprocess.run([torchrun, "--standalone", f"--nproc_per_node={w}", __file__,
                              "--worker", "--batches", args.batches], capture_output=True,
                             text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=1800)
        if run.returncode:
            raise SystemExit(f"world {w} failed:\n{run.stderr[-3000:]}")
        line = next(v for v in run.stdout.splitlines() if v.startswith("RESULT "))
        results.append(json.loads(line[7:]))
    params = sum(p.numel() for p in B.DigitsCNN().parameters())
    print(f"digits CNN, {params} parameters ({4 * params} bytes), gloo on CPU; KB received per "
          "rank per step (× DDP's gradient all-reduce)")
    methods = [r["method"] for r in results[0]["rows"] if r["batch"] == batches[0]]
    head = "".join(f"  W={r['world']} b={b:<4d}" for b in batches for r in results)
    print(f"{'method':15s}{head}")
    for m in methods:
        cells = []
        for b in batches:
            for r in results:
                got = {(v["method"], v["batch"]): v["bytes"] for v in r["rows"]}
                val, base = got[(m, b)], got[("ddp all-reduce", b)]
                ratio = f"({val / base:.1f}×)" if base else "(—)"
                cells.append(f"{val / 1e3:8.1f} {ratio:>6s}")
        print(f"{m:15s}" + "".join(f"  {c:>13s}" for c in cells))
    print("\nFNGD recovery, 3 epochs, global batch 64 (local solves under DDP)")
    for r in results:
        print(f"  world {r['world']}: losses {', '.join(f'{v:.4f}' for v in r['losses'])}; "
              f"final accuracy {r['acc']:.3f}")


if __name__ == "__main__":
    main()
