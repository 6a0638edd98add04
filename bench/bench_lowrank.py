"""Low-rank factorization: spectrum speed, the pass on a ~20M-parameter encoder, and what rank
selection does to trained models.

1. Spectra: singular values of every weight matrix of (a) BERT-base shapes (72 matrices up to
   768x3072 plus the 30522x768 embedding) and (b) a ~20M-parameter BERT-style encoder (hidden
   384, 6 layers, FFN 1536, vocab 30522), with LAPACK's ``svd(compute_uv=False)`` in float32 as
   the baseline and `rank.singular_values` ("auto": Gram eigenvalues for wide matrices), in this
   run; also the largest difference in effective rank between the two.
2. `LowRankPass` on the ~20M encoder imported through the frontend (transformers BertModel built
   from a config, random weights: a timing, not a quality figure) with the default erank spec
   and with a byte budget of half the fp32 weights.
3. The trained digits CNN and digits transformer (bench/common.py): effective rank over full
   rank per layer (median), and for several rank specs the weights kept and the test accuracy
   through the IR executor, against the unfactorized graph.

    .venv/bin/python bench/bench_lowrank.py [--skip-bert] [--threads N]

On a shared, loaded machine pass ``--threads 1``: spinning BLAS threads of several processes on
two cores made every timing here 3-10x slower (measured).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from edgecompile.ir import run_graph  # noqa: E402
from edgecompile.passes.fold import CleanupPass, FoldBatchNormPass  # noqa: E402
from edgecompile.passes.lowrank.factorize import LowRankConfig, LowRankPass  # noqa: E402
from edgecompile.passes.lowrank.rank import effective_rank, singular_values  # noqa: E402


def _bert_shapes(hidden: int, layers: int, ffn: int, vocab: int = 30522, positions: int = 512):
    shapes = [(vocab, hidden), (positions, hidden)]
    for _ in range(layers):
        shapes += [(hidden, hidden)] * 4 + [(ffn, hidden), (hidden, ffn)]
    return shapes


def bench_spectra() -> None:
    rng = np.random.default_rng(0)
    print("\n1. Singular values of every weight matrix (float32; one process, same run)")
    print(f"{'weights':34s} {'mats':>5s} {'params':>8s} {'LAPACK svd':>11s} {'ours':>8s} {'speed-up':>9s}"
          f" {'max Δerank':>11s}")
    for label, shapes in [("BERT-base shapes (768, 12 layers)", _bert_shapes(768, 12, 3072)),
                          ("~20M BERT-style (384, 6 layers)", _bert_shapes(384, 6, 1536))]:
        mats = [rng.standard_normal(s, dtype=np.float32) * 0.02 for s in shapes]
        t0 = time.perf_counter()
        ref = [np.linalg.svd(w, compute_uv=False) for w in mats]
        t_ref = time.perf_counter() - t0
        t0 = time.perf_counter()
        ours = [singular_values(w) for w in mats]
        t_ours = time.perf_counter() - t0
        d_erank = max(abs(effective_rank(a) - effective_rank(b)) for a, b in zip(ref, ours))
        params = sum(w.size for w in mats) / 1e6
        print(f"{label:34s} {len(mats):5d} {params:7.1f}M {t_ref:10.2f}s {t_ours:7.2f}s {t_ref / t_ours:8.1f}x"
              f" {d_erank:11.2e}")


def bench_pass_on_bert() -> None:
    from zoo import torchvision_shim
    torchvision_shim.install()   # before transformers, which imports torchvision
    from transformers import BertConfig, BertModel

    from edgecompile.frontend import import_model

    print("\n2. LowRankPass on a ~20M-parameter BERT-style encoder (random weights: timing only)")
    cfg = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=6,
                     intermediate_size=1536, max_position_embeddings=512, attn_implementation="eager")
    torch.manual_seed(0)
    model = BertModel(cfg, add_pooling_layer=False).eval()
    ids = torch.randint(0, cfg.vocab_size, (1, 64))
    t0 = time.perf_counter()
    graph = import_model(model, (ids,), name="bert")
    t_import = time.perf_counter() - t0
    FoldBatchNormPass()(graph)
    CleanupPass()(graph)
    params = graph.param_count()
    print(f"   import {t_import:.1f}s, {params / 1e6:.1f}M parameters")
    print(f"   {'config':28s} {'time':>7s} {'params after':>13s} {'factorized':>11s} {'methods':s}")
    for label, config in [("erank (default)", LowRankConfig("erank")),
                          ("erank:0.5", LowRankConfig("erank:0.5")),
                          ("budget 50% of fp32 bytes", LowRankConfig(budget_bytes=params * 2))]:
        g = graph.copy()
        t0 = time.perf_counter()
        result = LowRankPass(config)(g)
        dt = time.perf_counter() - t0
        done = [r for r in result.records if r["kind"] == "lowrank"]
        methods = sorted({r["method"] for r in done})
        print(f"   {label:28s} {dt:6.1f}s {g.param_count() / 1e6:12.2f}M {len(done):11d} {','.join(methods)}")


def _accuracy(graph, x, y) -> float:
    return float(np.mean(run_graph(graph, x).argmax(1) == y))  # the graph is built for len(x)


def bench_trained() -> None:
    from common import trained

    from edgecompile.frontend import import_model

    print("\n3. Trained digits models: effective rank and what each rank spec keeps")
    for kind in ("cnn", "transformer"):
        t0 = time.perf_counter()
        net, split = trained(kind)
        x, y = split["x_test"], split["y_test"]
        graph = import_model(net, (torch.from_numpy(x),), name=kind)
        FoldBatchNormPass()(graph)
        CleanupPass()(graph)
        ratios = []
        for node in graph.nodes:
            w = node.input(1) if node.op in ("linear", "conv") else None
            if w is None or not w.is_const or w.data.size < 1024:
                continue
            mat = w.data.reshape(w.data.shape[0], -1)
            ratios.append(effective_rank(singular_values(mat)) / min(mat.shape))
        base_acc = _accuracy(graph, x, y)
        params = graph.param_count()
        print(f"   {kind}: trained in {time.perf_counter() - t0:.0f}s, {params} parameters, test accuracy "
              f"{base_acc:.4f}; erank/full per layer (unfolded, >=1024 weights): median "
              f"{statistics.median(ratios):.2f}, range {min(ratios):.2f}-{max(ratios):.2f} over {len(ratios)}")
        print(f"   {'spec':22s} {'params kept':>11s} {'factorized':>11s} {'accuracy':>9s} {'Δ points':>9s}")
        for spec in ("erank", "erank:0.5", "energy:0.95", "energy:0.8", "budget:0.5"):
            g = graph.copy()
            cfg = (LowRankConfig(budget_bytes=int(params * 4 * 0.5), min_params=1024) if spec.startswith("budget")
                   else LowRankConfig(spec, min_params=1024))
            result = LowRankPass(cfg)(g)
            n_done = sum(r["kind"] == "lowrank" for r in result.records)
            acc = _accuracy(g, x, y)
            print(f"   {spec:22s} {g.param_count() / params:10.1%} {n_done:11d} {acc:9.4f} "
                  f"{100 * (acc - base_acc):+9.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-bert", action="store_true", help="skip part 2 (the encoder import)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch and BLAS threads (default: the libraries' own choice)")
    args = parser.parse_args()
    from threadpoolctl import threadpool_limits

    if args.threads:
        torch.set_num_threads(args.threads)
    with threadpool_limits(args.threads):
        bench_spectra()
        if not args.skip_bert:
            bench_pass_on_bert()
        bench_trained()


if __name__ == "__main__":
    main()
