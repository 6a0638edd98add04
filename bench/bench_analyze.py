"""The survey's three low-rank families and the intrinsic dimension, measured on our trained models
(issue 17): accuracy vs parameters, one table and one plot.

For each model (the digits CNN, the digits transformer, the mnist1d CNN; all trained here, seeded):

  (a) pre-train   factorize the trained model with ranks chosen by erank / energy / ℓ1 (each rule's
                  knob fitted to the budget) or greedy (the per-layer allocation of --budget-bytes,
                  `analyze.compare_ranks`), then recover E epochs (AdamW, labels, training split;
                  factorized structure kept)
  (a0) control    the same as (a), after D *dense* epochs (AdamW, lr 3e-3) without
                  the penalty: the control of (b), same seeds, same epochs
  (b) aware       D dense epochs with ``--regularize erank:λ`` first, then as (a0)
  (a0)/(b) rows come factorized by erank ranks (the survey's pairing), energy ranks and greedy
  (c) pre-set     the factorized graph of (a) at erank ranks, re-initialized and trained from scratch
                  (AdamW lr 5e-3, the original training's epochs) — a factorized architecture from the start

Budgets are shares of the factorizable layers' dense weights; "params" counts the whole model.
Figure per row family: the fewest parameters at <= 0.5 points of test-accuracy loss.

Then d_int90 (`analyze.intrinsic`) for the digits CNN and the mnist1d CNN with wall times; the
intrinsic-dimension paper reports 750 (FC) and 290 (LeNet) on MNIST — other data, context only.

    PYTHONPATH=. .venv/bin/python bench/bench_analyze.py [--models cnn,transformer,mnist1d] [--skip-id]
        [--epochs 5] [--dense-epochs 10] [--lam 5] [--rules erank,energy,l1,greedy] [--after erank,energy,greedy]
        [--scratch-models cnn,mnist1d] [--plot out/bench_analyze.png]

One torch thread (the machine is shared).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from edgecompile.analyze.compare_ranks import RULES, factorize_with, ranks_within  # noqa: E402
from edgecompile.analyze.intrinsic import IntrinsicConfig, intrinsic_dimension  # noqa: E402
from edgecompile.analyze.spectrum import find_layers  # noqa: E402
from edgecompile.finetune import FinetuneData, RecoverConfig, recover  # noqa: E402
from edgecompile.frontend import import_model  # noqa: E402
from edgecompile.ir import TorchExecutor  # noqa: E402
from edgecompile.passes.fold import CleanupPass, FoldBatchNormPass  # noqa: E402

BUDGETS = (0.7, 0.5, 0.35, 0.25, 0.2, 0.15, 0.12, 0.1, 0.08, 0.06, 0.04)
MIN_PARAMS = 1024
AFTER = ("erank", "energy", "greedy")    # the rules that factorize (a0) and (b)


def load(kind: str):
    """(trained net, split dict with x/y train and test, original training epochs)."""
    if kind in ("cnn", "transformer"):
        from common import trained

        net, split = trained(kind)
        return net, split, 30 if kind == "cnn" else 150
    from bench_bytes import mnist1d_model
    from mnist1d.data import get_dataset_args, make_dataset

    loaded = mnist1d_model()
    args = get_dataset_args()
    args.seed = 0
    d = make_dataset(args)
    x = np.asarray(d["x"], np.float32)[:, None]
    y = np.asarray(d["y"], np.int64)
    split = {"x_train": x[:3000], "y_train": y[:3000], "x_test": np.asarray(d["x_test"], np.float32)[:, None],
             "y_test": np.asarray(d["y_test"], np.int64)}
    return loaded.module, split, 15


def folded_graph(net, split, batch: int = 64):
    g = import_model(net, (torch.from_numpy(split["x_test"][:batch]),), name="m")   # the executor chunks by it
    FoldBatchNormPass()(g)
    CleanupPass()(g)
    return g


def accuracy(graph, split) -> float:
    ex = TorchExecutor(graph, fake_quant=False).eval()
    with torch.no_grad():
        out = ex(torch.from_numpy(split["x_test"]))
    return float((out.argmax(1).numpy() == split["y_test"]).mean())


def train(graph, split, epochs: int, lr: float = 1e-3, regularize: str | None = None, seed: int = 0):
    """AdamW on the graph's executor (labels, training split), weights written back into `graph`."""
    student = TorchExecutor(graph, fake_quant=False)
    data = FinetuneData.from_arrays(split["x_train"], split["y_train"])
    recover(student, data, RecoverConfig(optimizer="adamw", epochs=epochs, batch_size=64, lr=lr, device="cpu",
                                         seed=seed, regularize=regularize, resume=False))
    student.write_back()
    return graph


def reinit(graph, seed: int = 0):
    """Fresh weights for every float constant: uniform with variance 1/fan_in (LeCun; PyTorch's
    default 1/(3 fan_in) vanishes through a factorized chain three times as deep: mnist1d (c) at
    25k weights trained to 0.53 with it, 0.91 with this), biases zero, norm scales one."""
    rng = torch.Generator().manual_seed(seed)
    for v in graph.consts.values():
        if v.data.dtype != np.float32:
            continue
        if v.data.ndim >= 2:
            fan_in = int(np.prod(v.data.shape[1:]))
            bound = np.sqrt(3.0 / max(fan_in, 1))
            v.data = ((torch.rand(v.data.shape, generator=rng) * 2 - 1) * bound).numpy()
        elif v.data.size > 1:
            v.data = np.zeros_like(v.data) if not np.allclose(v.data, 1) else np.ones_like(v.data)
    return graph


def curve(base_graph, split, method: str, epochs: int, from_scratch: int = 0) -> list[tuple[int, float, float]]:
    """(budget, params, accuracy) per budget: factorize at `method` ranks, then recover (or, with
    `from_scratch` epochs, re-initialize and train the factorized graph)."""
    layers = [lay for lay in find_layers(base_graph, MIN_PARAMS) if lay.kind is not None]
    dense = sum(lay.params for lay in layers)
    out = []
    for b in BUDGETS:
        fit = ranks_within(layers, method, int(b * dense))
        if fit is None:
            continue
        g = factorize_with(base_graph, fit[1], MIN_PARAMS)
        if from_scratch:
            train(reinit(g), split, from_scratch, lr=5e-3)
        else:
            train(g, split, epochs)
        out.append((b, int(g.param_count()), accuracy(g, split)))
    return out


def smallest_within(points, base_acc: float, drop: float = 0.005):
    ok = [p for _, p, a in points if a >= base_acc - drop]
    return min(ok) if ok else None


def bench_families(kind: str, epochs: int, dense_epochs: int, lam: float, scratch: bool, rows: list,
                   rules: tuple[str, ...] = RULES, after: tuple[str, ...] = AFTER) -> None:
    t0 = time.perf_counter()
    net, split, train_epochs = load(kind)
    g = folded_graph(net, split)
    base = accuracy(g, split)
    params = int(g.param_count())
    print(f"\n{kind}: {params:,} parameters, test accuracy {base:.4f} ({len(split['y_test'])} test samples; "
          f"loaded/trained in {time.perf_counter() - t0:.0f}s)")
    print(f"   {'family':50s} " + " ".join(f"{b:>14.0%}" for b in BUDGETS) + f" {'min params ≤0.5pt':>18s} {'time':>6s}")

    def show(label: str, pts, dt: float) -> None:
        cells = {b: f"{p / 1e3:6.1f}k {a:.3f}" for b, p, a in pts}
        best = smallest_within(pts, base)
        print(f"   {label:50s} " + " ".join(f"{cells.get(b, ''):>14s}" for b in BUDGETS) +
              f" {'-' if best is None else f'{best:,}':>18s} {dt:5.0f}s", flush=True)
        rows.append({"model": kind, "family": label, "points": pts, "base": base, "params": params, "best": best})

    for m in rules:
        t = time.perf_counter()
        show(f"(a) pre-train {m}", curve(g, split, m, epochs), time.perf_counter() - t)
    # (a0) and (b) are factorized by erank (the survey's pairing) and by the better (a) rules
    for label, reg in ((f"(a0) {dense_epochs} dense ep.", None), (f"(b) aware erank:{lam:g}", f"erank:{lam:g}")):
        t = time.perf_counter()
        dg = train(g.copy(), split, dense_epochs, lr=3e-3, regularize=reg)
        acc = accuracy(dg, split)
        for rule in after:
            show(f"{label}, then {rule} (dense acc {acc:.3f})", curve(dg, split, rule, epochs), time.perf_counter() - t)
            t = time.perf_counter()
    if scratch:
        t = time.perf_counter()
        show(f"(c) pre-set erank, {train_epochs} ep. from scratch",
             curve(g, split, "erank", epochs, from_scratch=train_epochs), time.perf_counter() - t)


def bench_intrinsic(kind: str, rows: list) -> None:
    net, split, _ = load(kind)
    cfg = IntrinsicConfig(d_start=16, epochs=20, seed=0)
    t0 = time.perf_counter()
    res = intrinsic_dimension(net, (split["x_train"], split["y_train"]), (split["x_test"], split["y_test"]), cfg)
    dt = time.perf_counter() - t0
    runs = ", ".join(f"{r['d']}:{r['accuracy']:.3f}" for r in res["runs"])
    print(f"   {kind:12s} D={res['params']:>8,} full acc {res['full_accuracy']:.4f} target {res['target_accuracy']:.4f} "
          f"d_int90={res['d_int']} ({len(res['runs'])} runs, {dt:.0f}s, {res['runs'][0]['device']}); "
          f"{res.get('description_bytes', '-')} B vs {4 * res['params']:,} B fp32, "
          f"{res['params']:,} B int8 ({res.get('compression_vs_fp32', '-')}x fp32)")
    print(f"      runs d:accuracy  {runs}")
    rows.append(res)


def plot(rows: list, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
    for ax, m in zip(axes[0], models):
        for r in (r for r in rows if r["model"] == m):
            pts = sorted((p, a) for _, p, a in r["points"])
            if pts:
                ax.plot(*zip(*pts), "o-", label=r["family"], ms=3)
            base = r["base"]
        ax.axhline(base, color="gray", ls="--", lw=0.8)
        ax.axhline(base - 0.005, color="#c62828", ls=":", lw=0.8)
        ax.set_xscale("log")
        ax.set_title(m)
        ax.set_xlabel("parameters")
        ax.set_ylabel("test accuracy")
        ax.set_ylim(max(0.5, base - 0.15), min(1.0, base + 0.02))
        ax.legend(fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="cnn,transformer,mnist1d")
    ap.add_argument("--epochs", type=int, default=5, help="recovery (and dense pre-training) epochs")
    ap.add_argument("--dense-epochs", type=int, default=10, help="dense epochs of (a0) and (b)")
    ap.add_argument("--lam", type=float, default=5.0, help="λ of the erank penalty")
    ap.add_argument("--scratch-models", default="cnn,mnist1d",
                    help="models that get (c), training from scratch (the transformer's 150 epochs x 11 budgets "
                         "take ~1 h on one core)")
    ap.add_argument("--rules", default=",".join(RULES), help="(a)'s rank rules; greedy: the per-layer "
                    "allocation of --budget-bytes (rank.budget_ranks)")
    ap.add_argument("--after", default=",".join(AFTER), help="rank rules factorizing (a0) and (b)")
    ap.add_argument("--skip-id", action="store_true", help="skip the intrinsic dimension")
    ap.add_argument("--skip-families", action="store_true")
    ap.add_argument("--plot", type=Path, default=Path("out/bench_analyze.png"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        rows: list = []
        if not args.skip_families:
            print(f"Accuracy vs parameters (cells: params, test accuracy; recovery {args.epochs} epochs AdamW)")
            for kind in args.models.split(","):
                bench_families(kind, args.epochs, args.dense_epochs, args.lam, kind in args.scratch_models.split(","),
                               rows, tuple(args.rules.split(",")), tuple(args.after.split(",")))
            plot(rows, args.plot)
            print(f"\nplot: {args.plot}")
        if not args.skip_id:
            print("\nIntrinsic dimension d_int90 (Fastfood subspace, 20 epochs Adam per run; MNIST in Li et al. "
                  "2018: FC 750, LeNet 290 — another data set, context only)")
            for kind in ("cnn", "mnist1d"):
                bench_intrinsic(kind, [])


if __name__ == "__main__":
    main()
