"""Intrinsic dimension: train the model in a random subspace θ = θ₀ + P z and find the smallest
dimension d that reaches 90 % of the full model's accuracy (d_int90).

Li, Farkhoor, Liu, Yosinski 2018, "Measuring the Intrinsic Dimension of Objective Landscapes"
(ICLR): on MNIST, d_int90 ≈ 750 for a fully connected net and ≈ 290 for LeNet; d coefficients plus
the seeds of θ₀ and P describe a solution, an upper bound on its description length.

P (D × d) is never stored densely: it is a Fastfood-style transform (Le, Sarlós, Smola 2013) made of
D/L blocks ``H G Π H B`` over ``L = 2^⌈log2 d⌉`` (H the Walsh–Hadamard transform, run in
O(L log L); B random signs, Π a permutation, G Gaussian), scaled so that ‖P z‖ ≈ ‖z‖; its O(D)
random numbers and θ₀ (the architecture's own initialization) are regenerated from seeds. The
chi-distributed row scaling of Fastfood is left out: a subspace needs a well-spread projection,
not a Gaussian kernel approximation.

The search doubles d from `d_start` until a run reaches the target, then bisects between the last
failure and the first success until they are within 10 %. Each run trains z alone (Adam) for a
fixed number of epochs, on the GPU when one is present.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from ..errors import InputError


class IntrinsicDataError(InputError, ValueError):
    """--intrinsic-dim has no labelled training data."""


@dataclass(frozen=True)
class IntrinsicConfig:
    fraction: float = 0.9        # the share of the full model's accuracy to reach
    d_start: int = 16
    d_max: int = 1 << 14
    epochs: int = 20
    batch_size: int = 64
    lr: float = 0.02
    resolution: float = 0.1      # bisection stops when (hi - lo) <= resolution * lo
    seed: int = 0
    device: str | None = None    # None: CUDA when available


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Unnormalized Walsh–Hadamard transform along the last axis (a power of two), differentiable."""
    n = x.shape[-1]
    lead = x.shape[:-1]
    h = 1
    while h < n:
        y = x.reshape(*lead, n // (2 * h), 2, h)
        x = torch.stack((y[..., 0, :] + y[..., 1, :], y[..., 0, :] - y[..., 1, :]), dim=-2).reshape(*lead, n)
        h *= 2
    return x


class FastfoodProjection(nn.Module):
    """z (d) -> P z (D): D/L stacked blocks ``H G Π H B`` applied to z zero-padded to L; only the
    O(D) diagonals and permutations are held, all drawn from `seed`."""

    def __init__(self, d: int, big_d: int, seed: int):
        super().__init__()
        self.d, self.big_d = d, big_d
        self.L = 1 << max(0, math.ceil(math.log2(d)))
        self.blocks = math.ceil(big_d / self.L)
        g = torch.Generator().manual_seed(seed)
        shape = (self.blocks, self.L)
        self.register_buffer("b", torch.randint(0, 2, shape, generator=g).float() * 2 - 1)
        self.register_buffer("perm", torch.argsort(torch.rand(shape, generator=g), dim=1))
        self.register_buffer("gauss", torch.randn(shape, generator=g))
        # ‖H G Π H B x‖² ≈ L² ‖x‖² per block: scale so that the whole ‖P z‖ ≈ ‖z‖
        self.scale = 1.0 / (self.L * math.sqrt(self.blocks))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.pad(z, (0, self.L - self.d)).expand(self.blocks, self.L)
        x = fwht(x * self.b)
        x = torch.gather(x, 1, self.perm) * self.gauss
        return fwht(x).reshape(-1)[: self.big_d] * self.scale


def initial_params(module: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """θ₀: the architecture's own initialization under `seed` (`reset_parameters` of every
    submodule; a parameter no submodule resets, such as a position table, drawn N(0, 0.02²))."""
    m = copy.deepcopy(module)
    torch.manual_seed(seed)
    reset = set()
    for sub in m.modules():
        if hasattr(sub, "reset_parameters") and sub is not m:
            sub.reset_parameters()
            reset.update(id(p) for p in sub.parameters(recurse=False))
    with torch.no_grad():
        for p in m.parameters():
            if id(p) not in reset and p.is_floating_point():
                p.normal_(0.0, 0.02)
    return {k: v.detach().clone() for k, v in m.named_parameters()}


def _accuracy(model, params, buffers, x, y, batch: int) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), 256):
            out = functional_call(model, {**params, **buffers}, (x[i:i + 256],))
            out = out[0] if isinstance(out, tuple) else out
            correct += int((out.argmax(1) == y[i:i + 256]).sum())
    return correct / len(x)


def train_subspace(module: nn.Module, d: int, train, evals, cfg: IntrinsicConfig) -> dict:
    """Trains z (θ = θ₀ + P z) for `cfg.epochs`; returns d, eval accuracy, seconds."""
    dev = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = copy.deepcopy(module).to(dev)
    theta0 = {k: v.to(dev) for k, v in initial_params(module, cfg.seed).items()}
    names = list(theta0)
    sizes = [theta0[k].numel() for k in names]
    big_d = sum(sizes)
    proj = FastfoodProjection(d, big_d, cfg.seed + 7919 * d).to(dev)
    z = torch.zeros(d, device=dev, requires_grad=True)
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    opt = torch.optim.Adam([z], lr=cfg.lr)
    (x, y), (xe, ye) = [(torch.as_tensor(a).to(dev), torch.as_tensor(b).to(dev)) for a, b in (train, evals)]
    gen = torch.Generator().manual_seed(cfg.seed)
    steps = cfg.epochs * math.ceil(len(x) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=steps)

    def params() -> dict[str, torch.Tensor]:
        flat = proj(z)
        out, i = {}, 0
        for k, n in zip(names, sizes):
            out[k] = theta0[k] + flat[i:i + n].view_as(theta0[k])
            i += n
        return out

    t0 = time.perf_counter()
    for _ in range(cfg.epochs):
        model.train()
        perm = torch.randperm(len(x), generator=gen).to(dev)
        for i in range(0, len(x), cfg.batch_size):
            b = perm[i:i + cfg.batch_size]
            out = functional_call(model, {**params(), **buffers}, (x[b],))
            out = out[0] if isinstance(out, tuple) else out
            loss = nn.functional.cross_entropy(out, y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        acc = _accuracy(model, params(), buffers, xe, ye, cfg.batch_size)
    return {"d": d, "accuracy": round(acc, 4), "seconds": round(time.perf_counter() - t0, 2), "device": str(dev)}


def intrinsic_dimension(module: nn.Module, train, evals, cfg: IntrinsicConfig) -> dict:
    """d_int90 by doubling then bisection (see the module docstring).

    Parameters
    ----------
    module : the trained model (its architecture; its accuracy on `evals` is the full model's)
    train : (inputs, labels) for training z (a single-input classifier)
    evals : (inputs, labels) to measure accuracy; None holds back the last 20 % of `train`
    """
    xs, ys = train
    xs, ys = np.asarray(xs[0] if isinstance(xs, (tuple, list)) else xs), np.asarray(ys, np.int64)
    if evals is None:
        cut = int(0.8 * len(xs))
        xs, ys, evals = xs[:cut], ys[:cut], (xs[cut:], ys[cut:])
    xe, ye = evals
    xe, ye = np.asarray(xe[0] if isinstance(xe, (tuple, list)) else xe), np.asarray(ye, np.int64)
    module = module.eval()
    with torch.no_grad():
        out = module(torch.as_tensor(xe))
        out = out[0] if isinstance(out, tuple) else out
        full = float((out.argmax(1).numpy() == ye).mean())
    target = cfg.fraction * full
    big_d = sum(p.numel() for p in module.parameters())
    runs: list[dict] = []

    def run(d: int) -> bool:
        r = train_subspace(module, d, (xs, ys), (xe, ye), cfg)
        runs.append(r)
        return r["accuracy"] >= target

    t0 = time.perf_counter()
    lo, d = 0, cfg.d_start
    while not run(d):
        lo = d
        if d >= cfg.d_max or d >= big_d:
            return _result(cfg, full, target, big_d, None, runs, t0)
        d = min(2 * d, cfg.d_max, big_d)
    hi = d
    while hi - lo > max(1, cfg.resolution * lo):
        mid = (lo + hi) // 2
        if run(mid):
            hi = mid
        else:
            lo = mid
    return _result(cfg, full, target, big_d, hi, runs, t0)


def _result(cfg, full, target, big_d, d_int, runs, t0) -> dict:
    """The report: d_int90 and its description length (float32 coefficients + two 64-bit seeds)."""
    res = {"full_accuracy": round(full, 4), "target_accuracy": round(target, 4), "params": big_d,
           "d_int": d_int, "runs": runs, "seconds": round(time.perf_counter() - t0, 2), "config": asdict(cfg),
           "projection": "Fastfood (H G Π H B blocks), regenerated from the seed"}
    if d_int is None:
        res["note"] = f"no d up to {runs[-1]['d']} reached {cfg.fraction:.0%} of the full accuracy"
        return res
    res["description_bytes"] = 4 * d_int + 16
    res["compression_vs_fp32"] = round(4 * big_d / res["description_bytes"], 1)
    return res


def training_data(loaded, path: Path | None, graph):
    """(inputs, labels) for subspace training: an .npz (`--train`, with `labels` or `y`) or the
    factory's ``data["train"]`` and ``data["train_labels"]``."""
    from ..inputs.samples import load_samples

    if path is not None:
        samples, labels = load_samples(Path(path), graph)
        if labels is None:
            raise IntrinsicDataError(f"--train {path} has no 'labels' (or 'y') array; --intrinsic-dim trains a "
                                     "classifier and needs one label per sample")
        return samples, labels
    data = loaded.data or {}
    if "train" in data and "train_labels" in data:
        from ..inputs.samples import as_samples

        return as_samples(graph, data["train"], "the factory's data['train']"), np.asarray(data["train_labels"])
    raise IntrinsicDataError("--intrinsic-dim needs labelled training data: --train FILE.npz (inputs and "
                             "'labels'), or data['train'] and data['train_labels'] from the factory")
