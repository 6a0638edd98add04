"""Fine-tuning benchmark: FNGD (and its reuse variants) vs SGD, AdamW, K-FAC and TWA on the same
data and seeds.

Tasks
  digits-cnn   recover a compressed digits CNN (linear layers SVD-truncated to 10% rank,
               70% magnitude pruning with masks kept during recovery)
  digits-tf    recover a compressed small transformer classifier (rows of the 8×8 digit as
               8 tokens), same compression
  mnist1d-res  train a small 1-D ResNet from scratch on mnist1d (generated offline)
  reverse-s2s  train a small encoder-decoder transformer from scratch to reverse a sequence of
               8 tokens (teacher forcing; per-token accuracy), the closest task here to the FNGD
               paper's Transformer experiment

Rows: ``fngd`` is the library default (stored coefficients clipped at 0 and renormalized per
batch, a drift check every 4 reused steps that re-solves below cosine 0.7); ``fngd-paper`` the
paper's reuse (raw stored coefficients; the checks only measure, they never re-solve);
``fngd-clip`` clips only; ``fngd-renorm`` clips and renormalizes but never re-solves;
``fngd-r1`` re-solves every step (plain NGD); ``fngd-d1`` the default at damping 1.0.
``twa`` is TWA with per-tensor coefficients (the default), ``twa-shared`` with one set,
``twa-v`` the journal version's TWA-v: 20 % of the samples held out of the warm-up, the
coefficients trained on them alone.
Columns: training time and epochs to the target accuracy (evaluation time excluded), the
solved (first) epoch's and the later epochs' cost relative to AdamW's, final accuracy, the mean
cosine of the drift checks (stored-coefficient direction vs a fresh solve on the same batch),
the number of re-solves, and for TWA its accuracy at the end of the warm-up phase.

Without ``--grid`` every optimizer runs at the middle of its learning-rate grid; with it the
rate is picked from a 3-value grid by time to the target (then final accuracy).  The
compression is a crude stand-in (numpy SVD + magnitude pruning).

Usage: python bench/bench_finetune.py --out bench_finetune.png [--grid] [--tasks digits-cnn,...]
       [--rows fngd,adamw,...] [--device cpu]
"""
from __future__ import annotations

import argparse
import logging

import numpy as np
import torch
from torch import nn

from edgecompile.finetune import FinetuneData, RecoverConfig, recover

#: Checks that measure but never re-solve (cosine threshold below any cosine).
MEASURE = {"fngd_check_every": 4, "fngd_min_alignment": -2.0}
#: name -> (optimizer, extra RecoverConfig fields)
OPTS = {"fngd": ("fngd", {}),
        "fngd-paper": ("fngd", dict(MEASURE, fngd_reuse_clip=False, fngd_reuse_renormalize=False)),
        "fngd-clip": ("fngd", dict(MEASURE, fngd_reuse_renormalize=False)),
        "fngd-renorm": ("fngd", MEASURE),
        "fngd-r1": ("fngd", {"alpha_refresh_every": 1}),
        "fngd-d1": ("fngd", {"damping": 1.0}),
        "sgd": ("sgd", {}), "adamw": ("adamw", {}), "kfac": ("kfac", {}), "twa": ("twa", {}),
        "twa-shared": ("twa", {"twa_per_layer": False}),
        "twa-v": ("twa", {"twa_holdout": 0.2})}
SHARED = [0.05, 0.1, 0.2]
GRIDS = dict({k: SHARED for k in OPTS if k.startswith("fngd")}, sgd=SHARED, kfac=SHARED,
             adamw=[1e-3, 3e-3, 1e-2], twa=[0.03, 0.1, 0.3], **{"twa-shared": [0.03, 0.1, 0.3], "twa-v": [0.03, 0.1, 0.3]})


# ------------------------------------------------------------------ data and models
def digits(seed=0):
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    y = torch.tensor(d.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    return x[:1400], y[:1400], x[1400:], y[1400:]


def mnist1d(seed=0):
    from mnist1d.data import get_dataset_args, make_dataset
    args = get_dataset_args()
    args.seed = seed
    d = make_dataset(args)
    f = lambda a: torch.tensor(np.asarray(a), dtype=torch.float32).unsqueeze(1)  # noqa: E731
    return f(d["x"]), torch.tensor(d["y"]), f(d["x_test"]), torch.tensor(d["y_test"])


class DigitsCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1, stride=2)
        self.fc1, self.fc2 = nn.Linear(32 * 16, 128), nn.Linear(128, 10)

    def forward(self, x):
        h = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc2(torch.relu(self.fc1(h.flatten(1))))


class Block(nn.Module):
    """Pre-norm attention block; ``causal`` masks the future, ``memory`` (an encoder's
    output) makes it cross-attention."""

    def __init__(self, d=32, heads=4, causal=False):
        super().__init__()
        self.heads, self.causal = heads, causal
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ff1, self.ff2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, x, memory=None):
        n, t, d = x.shape
        h = self.ln1(x)
        kv = h if memory is None else memory
        split = lambda z: z.view(n, z.shape[1], self.heads, -1).transpose(1, 2)  # noqa: E731
        att = nn.functional.scaled_dot_product_attention(
            split(self.q(h)), split(self.k(kv)), split(self.v(kv)), is_causal=self.causal)
        x = x + self.o(att.transpose(1, 2).reshape(n, t, d))
        return x + self.ff2(torch.relu(self.ff1(self.ln2(x))))


class Seq2Seq(nn.Module):
    """Encoder-decoder transformer: (source tokens, shifted target tokens) -> target logits."""

    def __init__(self, vocab=16, d=32, t=12):
        super().__init__()
        self.src, self.tgt = nn.Embedding(vocab, d), nn.Embedding(vocab, d)
        self.pos = nn.Parameter(0.1 * torch.randn(t, d))
        self.enc = Block(d)
        self.dec, self.cross = Block(d, causal=True), Block(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, src, tgt_in):
        memory = self.enc(self.src(src) + self.pos)
        return self.head(self.cross(self.dec(self.tgt(tgt_in) + self.pos), memory))


def reverse_task(n=4000, n_test=1000, t=12, vocab=16, seed=0):
    """Reverse a sequence of tokens 2..vocab-1 (0 unused, 1 the decoder's start token)."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(2, vocab, (n + n_test, t), generator=g)
    tgt = src.flip(1)
    tgt_in = torch.cat([torch.ones(n + n_test, 1, dtype=torch.long), tgt[:, :-1]], 1)
    return ((src[:n], tgt_in[:n]), tgt[:n], (src[n:], tgt_in[n:]), tgt[n:])


class DigitsTransformer(nn.Module):
    def __init__(self, d=32):
        super().__init__()
        self.embed = nn.Linear(8, d)
        self.pos = nn.Parameter(torch.zeros(8, d))
        self.blocks = nn.Sequential(Block(d), Block(d))
        self.head = nn.Linear(d, 10)

    def forward(self, x):
        h = self.blocks(self.embed(x.view(-1, 8, 8)) + self.pos)
        return self.head(h.mean(1))


class ResBlock1d(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c1, self.c2 = nn.Conv1d(c, c, 3, padding=1), nn.Conv1d(c, c, 3, padding=1)
        self.n1, self.n2 = nn.BatchNorm1d(c), nn.BatchNorm1d(c)

    def forward(self, x):
        return torch.relu(x + self.n2(self.c2(torch.relu(self.n1(self.c1(x))))))


class ResNet1d(nn.Module):
    def __init__(self, c=32):
        super().__init__()
        self.stem = nn.Conv1d(1, c, 5, padding=2)
        self.b1, self.b2 = ResBlock1d(c), ResBlock1d(c)
        self.down = nn.Conv1d(c, c, 3, stride=2, padding=1)
        self.head = nn.Linear(c, 10)

    def forward(self, x):
        h = self.b2(torch.relu(self.down(self.b1(torch.relu(self.stem(x))))))
        return self.head(h.mean(-1))


# ------------------------------------------------------------------ crude compression
def compress(model: nn.Module, rank_frac=0.1, sparsity=0.7) -> dict[str, torch.Tensor]:
    """SVD-truncate every Linear (not the 10-way heads) and magnitude-prune every weight.

    Returns keep-masks by parameter name.  numpy numerics, applied in place.
    """
    for _name, mod in list(model.named_modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, nn.Linear) and child.out_features != 10:
                w = child.weight.detach().numpy().astype(np.float64)
                u, s, vt = np.linalg.svd(w, full_matrices=False)
                r = max(1, int(rank_frac * len(s)))
                first = nn.Linear(child.in_features, r, bias=False)
                second = nn.Linear(r, child.out_features, bias=child.bias is not None)
                first.weight.data = torch.tensor(np.sqrt(s[:r])[:, None] * vt[:r],
                                                 dtype=torch.float32)
                second.weight.data = torch.tensor(u[:, :r] * np.sqrt(s[:r]), dtype=torch.float32)
                if child.bias is not None:
                    second.bias.data = child.bias.data.clone()
                setattr(mod, child_name, nn.Sequential(first, second))
    masks = {}
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            w = p.detach().abs().numpy()
            keep = w > np.quantile(w, sparsity)
            masks[name] = torch.tensor(keep)
            p.data.mul_(masks[name])
    return masks


def accuracy(model, x, y):
    model.eval()
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    model.train()
    return acc


def pretrain(model, x, y, epochs, seed):
    recover(model, FinetuneData.from_arrays(x, y),
            RecoverConfig(optimizer="adamw", epochs=epochs, batch_size=64, lr=3e-3, seed=seed,
                          device="cpu"))
    return model


# ------------------------------------------------------------------ runs
def time_to(curve, target):
    for c in curve:
        if c.eval_accuracy is not None and c.eval_accuracy >= target:
            return c.wall_s, c.epoch + (c.step / max(1, max(p.step for p in curve)))
    return None, None


def warmup_accuracy(res, cfg):
    """TWA's eval accuracy at the end of its warm-up phase (before the subspace)."""
    before = [c for c in res.curve if c.epoch < cfg.twa_warmup_epochs]
    return before[-1].eval_accuracy if before else None


def run_task(name, make_student, data, epochs, target, grid, rows, device, eval_every):
    results = {}

    def score(res):  # reach the target soonest, then the best final accuracy
        t, _ = time_to(res.curve, target)
        return (t is None, t or 0.0, -res.final_accuracy)

    for label in rows:
        opt, extra = OPTS[label]
        best = None
        for lr in grid(label):
            cfg = RecoverConfig(**{**dict(optimizer=opt, epochs=epochs, batch_size=64, lr=lr,
                                          device=device, eval_every=eval_every,
                                          twa_warmup_epochs=max(1, epochs // 2), seed=0),
                                   **extra})
            student, masks = make_student()
            try:
                res = recover(student, data, cfg, masks=masks)
            except FloatingPointError as err:
                logging.info("%s %s lr=%g diverged: %s", name, label, lr, err)
                continue
            if best is None or score(res) < score(best[1]):
                best = (lr, res, cfg)
        results[label] = best
    base_row = results.get("adamw")
    # Minimum over the later epochs: the least disturbed measurement on a shared machine.
    base = min(e.wall_s for e in base_row[1].epochs[1:]) if base_row else float("nan")
    base1 = base_row[1].epochs[0].wall_s if base_row else float("nan")
    print(f"\n== {name}: target accuracy {target:.3f}, {epochs} epochs ==")
    print(f"{'optimizer':12s} {'lr':>7s} {'t→target s':>11s} {'ep→target':>10s} "
          f"{'solve/AdamW':>12s} {'later/AdamW':>12s} {'final acc':>10s} {'align/sgd':>9s} "
          f"{'re-solve':>8s} {'warm-up acc':>11s}")
    for opt, best in results.items():
        if best is None:
            print(f"{opt:12s}  diverged at every lr")
            continue
        lr, res, cfg = best
        t, ep = time_to(res.curve, target)
        later = min(e.wall_s for e in res.epochs[1:]) / base
        align = (f"{np.mean([a[1] for a in res.alignment]):.2f}/"
                 f"{np.mean([a[2] for a in res.alignment]):.2f}" if res.alignment else "—")
        warm = warmup_accuracy(res, cfg) if cfg.optimizer == "twa" else None
        print(f"{opt:12s} {lr:7.3g} {(f'{t:.2f}') if t is not None else '—':>11s} "
              f"{(f'{ep:.2f}') if ep is not None else '—':>10s} "
              f"{res.epochs[0].wall_s / base1:12.2f} {later:12.2f} {res.final_accuracy:10.3f} "
              f"{align:>9s} {res.resolves:8d} {(f'{warm:.3f}') if warm is not None else '—':>11s}")
    return {k: v[:2] for k, v in results.items() if v is not None}


def step_costs(name, make_student, data, device, steps=10, rounds=3):
    """Training-step cost (ms) of AdamW, an FNGD solve step (the default exact Gram, and
    ``gram="factor"``), an FNGD reused step and K-FAC
    (its inverse every 10 steps, amortized) on one batch of 64: the mean over ``steps`` steps,
    the best of ``rounds`` rounds, the optimizers interleaved so a busy machine slows all."""
    import time
    from edgecompile.finetune import FNGD, KFAC
    n = 64
    xs = tuple(x[:n].to(device) for x in data.inputs)
    y = data.labels[:n].to(device)
    ids = torch.arange(n)

    def per_sample(model):
        out = model(*xs)
        return nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1),
                                           reduction="none").view(n, -1).mean(1)

    runs = {}
    for label in ("adamw", "fngd solve", "fngd reuse", "fngd factor", "kfac"):
        model = make_student()[0].to(device)
        opt = {"adamw": lambda m: torch.optim.AdamW(m.parameters(), lr=1e-4),
               "fngd solve": lambda m: FNGD(m, lr=1e-4, check_every=None),
               "fngd reuse": lambda m: FNGD(m, lr=1e-4, check_every=None),
               "fngd factor": lambda m: FNGD(m, lr=1e-4, gram="factor"),
               "kfac": lambda m: KFAC(m, lr=1e-4)}[label](model)
        runs[label] = (model, opt)

    def one(label):
        model, opt = runs[label]
        if label == "fngd reuse":
            opt.set_batch(ids)  # solved once below, reused from then on
        losses = per_sample(model)
        loss = opt.reduce(losses) if label == "fngd reuse" else losses.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    for label in runs:  # warm-up (and the one solve the reused steps need)
        one(label)
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(rounds):
        spent = dict.fromkeys(runs, 0.0)
        for _ in range(steps):
            for label in runs:
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                one(label)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                spent[label] += time.perf_counter() - t0
        best = {k: min(best[k], 1e3 * spent[k] / steps) for k in runs}
    base = best["adamw"]
    print(f"\n{name}: ms per training step, batch 64 (× AdamW): " + ", ".join(
        f"{k} {v:.2f} ({v / base:.2f}×)" for k, v in best.items()))


TASKS = ("digits-cnn", "digits-tf", "mnist1d-res", "reverse-s2s")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench_finetune.png")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--grid", action="store_true", help="pick each lr from a 3-value grid")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--rows", default=",".join(OPTS), help="optimizers/variants to run")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    grid = (lambda o: GRIDS[o]) if args.grid else (lambda o: GRIDS[o][1:2])
    tasks, rows = args.tasks.split(","), args.rows.split(",")
    for what, names, known in (("task", tasks, TASKS), ("row", rows, OPTS)):
        bad = [n for n in names if n not in known]
        if bad:
            raise SystemExit(f"unknown {what} {bad[0]!r}; choose from {', '.join(known)}")
    print(f"device {args.device}, torch {torch.__version__}, threads {args.threads}, "
          f"cuda available: {torch.cuda.is_available()}")

    results = {}
    x, y, xt, yt = digits()
    data = FinetuneData.from_arrays(x, y, xt, yt)
    for name, cls in (("digits-cnn", DigitsCNN), ("digits-tf", DigitsTransformer)):
        if name not in tasks:
            continue
        torch.manual_seed(0)
        trained = pretrain(cls(), x, y, 30, 0)
        ref = accuracy(trained, xt, yt)
        probe_model = cls()
        probe_model.load_state_dict(trained.state_dict())
        compress(probe_model)
        print(f"\n{name}: accuracy {ref:.3f} trained, {accuracy(probe_model, xt, yt):.3f} "
              "after SVD-10% + 70% pruning")

        def make_student(cls=cls, trained=trained):
            m = cls()
            m.load_state_dict(trained.state_dict())
            return m, compress(m)

        # The transformer loses everything to this compression (0.10) and no optimizer gets
        # back within 1% of it in 6 epochs: its target is 0.5, the same for every optimizer.
        target = 0.99 * ref if name == "digits-cnn" else 0.5
        step_costs(name, make_student, data, args.device)
        results[name] = run_task(name, make_student, data, 6, target, grid, rows, args.device, 5)

    def scratch(cls):
        def make():
            torch.manual_seed(0)
            return cls(), None
        return make

    for name, cls, make_data, epochs, target in (
            ("mnist1d-res", ResNet1d, mnist1d, 8, 0.85),
            ("reverse-s2s", Seq2Seq, reverse_task, 6, 0.9)):
        if name not in tasks:
            continue
        x, y, xt, yt = make_data()
        data = FinetuneData.from_arrays(x, y, xt, yt)
        step_costs(name, scratch(cls), data, args.device)
        results[name] = run_task(name, scratch(cls), data, epochs, target, grid, rows,
                                 args.device, 10)
    plot(results, args.out)
    print(f"\nplot: {args.out}")


def plot(results, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4))
    for ax, (task, rows) in zip(np.atleast_1d(axes), results.items()):
        for opt, best in rows.items():
            if best is None:
                continue
            lr, res = best
            pts = [(c.wall_s, c.eval_accuracy) for c in res.curve]
            ax.plot(*zip(*pts), marker=".", label=f"{opt} (lr {lr:g})")
        ax.set(title=task, xlabel="training wall time (s)", ylabel="eval accuracy")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)


if __name__ == "__main__":
    main()
