"""Fine-tuning that fits the output: distillation loss by output kind, epoch time on 2 cores.

Each model goes through the build's fine-tuning path (``torch.export`` → IR → BN folding →
``--prune magnitude:global:0.5`` → :class:`~edgecompile.ir.TorchExecutor` with int8 weight
fake-quantization, batch 64, pruning masks held) and is recovered by distillation from the
original with :func:`edgecompile.finetune.recover`, once per optimizer, from the same start.

Models
  vad     silero-vad (pretrained, ``bench/zoo/silero_vad.py``): a ``(B, 1)`` speech
          probability and the ``(B, 2, 128)`` LSTM state; espeak-ng speech streams
  minilm  all-MiniLM-L6-v2 (pretrained, ``bench/zoo/minilm.py``): a 384-d sentence embedding
  cnn     a 5.4M-parameter MobileNetV2-style CNN (width 1.4, 1000 classes) built here, random
          weights with the head scaled so logits are peaked (a timing model: its fidelity
          figures are about distillation, not about ImageNet), on smooth synthetic images

The table gives, per model and optimizer: seconds of each epoch (training only), the loss per
epoch, the fidelity of every output by its kind before and after recovery (on held-out data),
the teacher cache's size, and the loss used.  ``old loss`` is what the previous objective
trained: a softmax KL on output 0 alone (exactly 0 on a ``(B, 1)`` output).

Usage: .venv/bin/python bench/bench_finetune_kinds.py [--models vad,minilm,cnn] [--epochs 2]
       [--threads 2] [--images 300] [--res 160] [--optimizers adamw,fngd]
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench.zoo, run by path

from edgecompile.finetune import FinetuneData, RecoverConfig, recover  # noqa: E402
from edgecompile.finetune.outputs import flatten_outputs  # noqa: E402


# ------------------------------------------------------------------ the CNN
def _block(cin: int, cout: int, stride: int, expand: int) -> nn.Sequential:
    mid = cin * expand
    layers: list[nn.Module] = []
    if expand != 1:
        layers += [nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6()]
    layers += [nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid),
               nn.ReLU6(), nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers)


class _Residual(nn.Module):
    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x):
        return x + self.body(x)


class MobileNetLike(nn.Module):
    """MobileNetV2's layout (inverted residuals, depthwise 3x3, ReLU6) at width 1.4."""

    def __init__(self, width: float = 1.4, classes: int = 1000):
        super().__init__()

        def ch(v):
            return int(round(v * width / 8)) * 8

        stages = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                  (6, 160, 3, 2), (6, 320, 1, 1)]
        layers: list[nn.Module] = [nn.Conv2d(3, ch(32), 3, 2, 1, bias=False),
                                   nn.BatchNorm2d(ch(32)), nn.ReLU6()]
        cin = ch(32)
        for t, c, n, s in stages:
            for i in range(n):
                stride, cout = s if i == 0 else 1, ch(c)
                block = _block(cin, cout, stride, t)
                layers.append(_Residual(block) if cin == cout and stride == 1 else block)
                cin = cout
        layers += [nn.Conv2d(cin, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(1280, classes)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


def smooth_images(n: int, res: int, seed: int) -> torch.Tensor:
    """Images with structure: a few coloured Gaussian blobs over a low-frequency gradient."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, res), torch.linspace(-1, 1, res),
                            indexing="ij")
    base = (torch.rand(n, 3, 1, 1, generator=g) * xx + torch.rand(n, 3, 1, 1, generator=g) * yy)
    centers = torch.rand(n, 4, 2, generator=g) * 2 - 1
    widths = 0.05 + 0.3 * torch.rand(n, 4, 1, 1, generator=g)
    colours = torch.randn(n, 4, 3, generator=g)
    d2 = (xx - centers[..., 0, None, None]) ** 2 + (yy - centers[..., 1, None, None]) ** 2
    blobs = torch.exp(-d2 / widths)  # [n, 4, H, W]
    return base + torch.einsum("nkhw,nkc->nchw", blobs, colours)


def cnn_model(images: int, res: int):
    torch.manual_seed(0)
    net = MobileNetLike().eval()
    x = smooth_images(images + 100, res, 0)
    with torch.no_grad():
        for m in net.modules():  # BN statistics of the data (the net is not trained)
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = None
        net.train()
        for i in range(0, 128, 32):
            net(x[i:i + 32])
        net.eval()
        logits = net(x[:64])
        net.head.weight.mul_(3.0 / logits.std())  # peaked logits: top-1 agreement means something
        net.head.bias.zero_()
    return net, (x[:1],), {"calib": (x[:images],), "eval": (x[images:],), "outputs": ["logits"]}


def zoo_model(name: str):
    if name == "vad":
        from bench.zoo import silero_vad
        net, example, data = silero_vad.model()
        data["eval"] = tuple(a[:512] for a in data["eval"])
    else:
        from bench.zoo import minilm
        net, example, data = minilm.model()
    as_t = lambda xs: tuple(torch.as_tensor(np.asarray(a)) for a in xs)  # noqa: E731
    return net.eval(), tuple(example), {**data, "calib": as_t(data["calib"]),
                                        "eval": as_t(data["eval"])}


# ------------------------------------------------------------------ compression (the build's path)
def compress(net: nn.Module, example, calib, prune: str):
    """IR graph after BN folding and pruning, rebatched to the fine-tuning batch, and masks."""
    from edgecompile.frontend import import_model
    from edgecompile.ir.rebatch import RebatchError, rebatch
    from edgecompile.passes.fold import CleanupPass, FoldBatchNormPass
    from edgecompile.passes.prune import make_prune_pass, parse_prune_spec

    graph = import_model(net, example)
    for p in (FoldBatchNormPass(), CleanupPass(), make_prune_pass(parse_prune_spec(prune))):
        if p is not None:
            p(graph)
    local = min(64, len(calib[0]))
    try:
        train_graph = rebatch(graph, local, check_inputs=[a[:local].numpy() for a in calib])
    except RebatchError:
        train_graph, local = graph, graph.inputs[0].shape[0]
    return train_graph, graph.meta.get("sparsity_masks") or {}, local


def student_of(graph, masks, frozen: tuple[str, ...] = ()):
    """The trainable executor of ``graph`` and its masks by parameter name; the layers of the
    graph nodes ``frozen`` are not trained."""
    from edgecompile.ir import TorchExecutor
    student = TorchExecutor(graph, fake_quant=False, weight_fake_quant_bits=8)
    for node in frozen:
        student.layer_for_node(node).requires_grad_(False)
    named = {}
    for const, mask in masks.items():
        name = student.parameter_name(const)
        if name is not None:
            named[name] = torch.as_tensor(np.asarray(mask, bool))
    return student, named


# ------------------------------------------------------------------ fidelity by kind
@torch.no_grad()
def outputs(model: nn.Module, inputs, batch: int) -> list[torch.Tensor]:
    model.eval()
    parts = [flatten_outputs(model(*(x[i:i + batch] for x in inputs)))
             for i in range(0, len(inputs[0]), batch)]
    return [torch.cat(p).float() for p in zip(*parts)]


def fidelity(kind: str, s: torch.Tensor, t: torch.Tensor) -> str:
    """One short figure per output kind (the gate's metrics, over the eval set)."""
    if kind == "probability":
        agree = ((s > 0.5) == (t > 0.5)).float().mean()
        return f"agree {agree:.3f} mae {(s - t).abs().mean():.3f}"
    if kind == "logits":
        agree = (s.argmax(-1) == t.argmax(-1)).float().mean()
        return f"top1 {agree:.3f}"
    if kind == "embedding":
        cos = F.cosine_similarity(s.flatten(1), t.flatten(1), dim=1)
        ratio = (s.flatten(1).norm(dim=1) / t.flatten(1).norm(dim=1)).mean()
        return f"cos {cos.mean():.4f}/{cos.min():.4f} |s|/|t| {ratio:.3f}"
    rel = (s - t).flatten(1).norm(dim=1) / t.flatten(1).norm(dim=1).clamp_min(1e-12)
    return f"rel.err {rel.mean():.3f}"


def old_loss(s: torch.Tensor, t: torch.Tensor, temperature: float = 2.0) -> float:
    """The previous objective: softmax KL over the last dim of output 0 alone."""
    T = temperature
    p = F.log_softmax(t.reshape(-1, t.shape[-1]) / T, -1)
    q = F.log_softmax(s.reshape(-1, s.shape[-1]) / T, -1)
    return float(F.kl_div(q, p, reduction="batchmean", log_target=True)) * T * T


# ------------------------------------------------------------------ one model
def run_model(name: str, args) -> list[dict]:
    t0 = time.perf_counter()
    net, example, data = (cnn_model(args.images, args.res) if name == "cnn"
                          else zoo_model(name))
    kinds = list(data["outputs"])
    graph, masks, batch = compress(net, example, data["calib"], args.prune)
    keep = len(data["calib"][0]) // batch * batch  # whole batches, as the build trains
    data["calib"] = tuple(a[:keep] for a in data["calib"])
    # The VAD's first conv is its fixed STFT basis, followed by sqrt(re² + im²): pruned basis
    # rows give sqrt(0), whose gradient (inf · 0) turned the basis to NaN within one epoch (the
    # executor's sqrt has no guard at 0), so the basis is kept as pruned, not trained.
    frozen = (next(n.name for n in graph.nodes if n.op == "conv"),) if name == "vad" else ()
    ref = outputs(net, data["eval"], 64)
    start, _ = student_of(graph, masks, frozen)
    before = outputs(start, data["eval"], batch)
    print(f"[{name}] {sum(p.numel() for p in net.parameters()) / 1e6:.2f}M parameters, "
          f"{len(data['calib'][0])} calibration / {len(data['eval'][0])} eval samples, "
          f"batch {batch}, setup {time.perf_counter() - t0:.1f} s", flush=True)
    rows = []
    variants = [(opt, {}) for opt in args.optimizers]
    if name == "minilm":  # does a small MSE term next to 1-cos help an embedding?
        variants.append(("adamw", {"embedding_mse": 0.1}))
    for opt, extra in variants:
        student, named = student_of(graph, masks, frozen)
        cfg = RecoverConfig(optimizer=opt, epochs=args.epochs, batch_size=batch, seed=0, **extra)
        t1 = time.perf_counter()
        res = recover(student, FinetuneData.from_arrays(data["calib"]), cfg, teacher=net,
                      masks=named, output_kinds=kinds)
        total = time.perf_counter() - t1
        after = outputs(student, data["eval"], batch)
        label = opt + "".join(f"+{k}={v}" for k, v in extra.items())
        rows.append({
            "model": name, "optimizer": label,
            "epoch_s": [e.wall_s for e in res.epochs], "total_s": total,
            "loss": [e.loss for e in res.epochs],
            "old_loss": old_loss(before[0], ref[0]),
            "before": "; ".join(f"{k}[{i}] {fidelity(k, b, r)}"
                                for i, (k, b, r) in enumerate(zip(kinds, before, ref))),
            "after": "; ".join(f"{k}[{i}] {fidelity(k, a, r)}"
                               for i, (k, a, r) in enumerate(zip(kinds, after, ref))),
            "loss_description": res.loss_description, "cached": res.teacher_cached})
        print(_format([rows[-1]]), flush=True)
    return rows


def _format(rows: list[dict]) -> str:
    lines = []
    for r in rows:
        epochs = " ".join(f"{s:.1f}" for s in r["epoch_s"])
        losses = " ".join(f"{v:.4g}" for v in r["loss"])
        lines.append(f"{r['model']:7s} {r['optimizer']:22s} epoch s [{epochs}] (run "
                     f"{r['total_s']:.0f} s)  loss [{losses}]  old loss {r['old_loss']:.3g}"
                     f"  cache {'yes' if r['cached'] else 'no'}\n"
                     f"        loss: {r['loss_description']}\n"
                     f"        before: {r['before']}\n        after:  {r['after']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="vad,minilm,cnn")
    ap.add_argument("--optimizers", default="adamw,fngd")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the 2-core figure)")
    ap.add_argument("--images", type=int, default=300, help="CNN calibration images")
    ap.add_argument("--res", type=int, default=160, help="CNN input resolution")
    ap.add_argument("--prune", default="magnitude:global:0.5")
    args = ap.parse_args(argv)
    args.optimizers = args.optimizers.split(",")
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    rows = []
    for name in args.models.split(","):
        rows += run_model(name, args)
    print("\n" + "=" * 100 + "\n" + _format(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
