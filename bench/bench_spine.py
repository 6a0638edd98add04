"""Spine figures (issue 2), all measured in one run against baselines built in the same run:

1. bundle bytes vs the fp32 ONNX export and vs onnxruntime's `quantize_static` (per-channel QDQ)
   followed by zstd -19, with accuracy, on a trained digits CNN and a trained transformer classifier;
2. host latency of the compiled bundle vs the fp32 ONNX export (ratio, same process);
3. wall time of building a ~20M-parameter BERT-style encoder (no fine-tuning).

    .venv/bin/python bench/bench_spine.py [--skip-bert] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import loaded, trained  # noqa: E402

from edgecompile.build import BuildConfig, build, fp32_onnx  # noqa: E402
from edgecompile.frontend import import_model  # noqa: E402
from edgecompile.inputs.model import LoadedModel  # noqa: E402

CONFIGS = {
    "cnn": dict(prune="magnitude:global:0.7", rank="erank", quant="int8", cluster_bits=4),
    # the transformer loses too much to 60% pruning without recovery: fine-tune on the training split
    "transformer": dict(prune="magnitude:global:0.8", rank="erank", quant="int8", cluster_bits=3,
                        finetune="train", optimizer="adamw", epochs=10),
}


def ort_accuracy(model_bytes: bytes, x: np.ndarray, y: np.ndarray) -> float:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    s = ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    pred = [s.run(None, {name: x[i:i + 1]})[0].argmax(1)[0] for i in range(len(x))]
    return float((np.array(pred) == y).mean())


def ort_quantize_static(fp32: bytes, calib: np.ndarray) -> bytes:
    """onnxruntime's own static int8 quantization (per-channel weights, QDQ), the usual baseline."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self, name):
            self.it = iter([{name: calib[i:i + 1]} for i in range(min(len(calib), 128))])

        def get_next(self):
            return next(self.it, None)

    with tempfile.TemporaryDirectory() as d:
        src, dst = Path(d) / "fp32.onnx", Path(d) / "int8.onnx"
        src.write_bytes(fp32)
        name = ort.InferenceSession(fp32, providers=["CPUExecutionProvider"]).get_inputs()[0].name
        quantize_static(str(src), str(dst), Reader(name), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
        return dst.read_bytes()


def bench_classifier(kind: str, out_root: Path) -> dict:
    t0 = time.perf_counter()
    net, split = trained(kind)
    train_s = time.perf_counter() - t0
    lm: LoadedModel = loaded(kind, net, split)
    x, y = split["x_test"], split["y_test"]
    graph = import_model(net, lm.example_inputs, name=kind)
    fp32 = fp32_onnx(graph)
    acc_fp32 = ort_accuracy(fp32, x, y)
    q = ort_quantize_static(fp32, split["x_calib"])
    q_zstd = zstandard.ZstdCompressor(level=19).compress(q)
    acc_q = ort_accuracy(q, x, y)
    cfg = dict(CONFIGS[kind])
    if cfg.get("finetune") == "train":
        cfg["finetune"] = str(out_root / f"{kind}-train.npz")
        np.savez(cfg["finetune"], x=split["x_train"], y=split["y_train"])
    t0 = time.perf_counter()
    res = build(lm, BuildConfig(target="rpi4", out=out_root / kind, latency_repeats=200, allow_degraded=True, **cfg))
    build_s = time.perf_counter() - t0
    rep = res.report
    # the same compression built for this host (int8 weights computed in fp32, see targets/host.toml)
    host = build(lm, BuildConfig(target="host", out=out_root / f"{kind}-host", latency_repeats=200,
                                 allow_degraded=True, **{**cfg, "quant": "auto"})).report
    return {
        "model": f"digits {kind}", "params": graph.param_count(), "train_s": train_s, "build_s": build_s,
        "fp32_onnx_bytes": len(fp32), "fp32_acc": acc_fp32,
        "ort_qdq_bytes": len(q), "ort_qdq_zstd_bytes": len(q_zstd), "ort_qdq_acc": acc_q,
        "ours_bytes": rep["totals"]["bundle_bytes"], "ours_acc": rep["fidelity"]["accuracy_bundle"],
        "torch_acc": rep["fidelity"]["accuracy_reference"],
        "ratio_vs_fp32": len(fp32) / rep["totals"]["bundle_bytes"],
        "ratio_vs_ort_zstd": len(q_zstd) / rep["totals"]["bundle_bytes"],
        "latency_fp32_ms": rep["latency"]["host_fp32_onnx_ms"], "latency_ours_ms": rep["latency"]["host_bundle_ms"],
        "latency_ratio": rep["latency"]["host_bundle_ms"] / rep["latency"]["host_fp32_onnx_ms"],
        "host_target_bytes": host["totals"]["bundle_bytes"], "host_target_acc": host["fidelity"]["accuracy_bundle"],
        "host_target_latency_ratio": host["latency"]["host_bundle_ms"] / host["latency"]["host_fp32_onnx_ms"],
        "config": CONFIGS[kind],
    }


def bert_factory(hidden=384, layers=6, heads=6, inter=1536, vocab=30522, seq=128):
    from zoo import torchvision_shim
    torchvision_shim.install()   # before transformers, which imports torchvision
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=inter, vocab_size=vocab, max_position_embeddings=512)
    model = BertModel(cfg, add_pooling_layer=False).eval()
    ids = torch.randint(0, vocab, (1, seq))
    mask = torch.ones(1, seq, dtype=torch.long)
    return model, (ids, mask)


def bench_bert(out_root: Path) -> dict:
    model, inputs = bert_factory()
    params = sum(p.numel() for p in model.parameters())
    t0 = time.perf_counter()
    res = build(LoadedModel("bert-20m", model, inputs), BuildConfig(target="rpi4", out=out_root / "bert",
                                                                    latency_repeats=5, allow_degraded=True))
    return {"params": params, "build_s": time.perf_counter() - t0, "timings": res.report["timings_s"],
            "bundle_bytes": res.report["totals"]["bundle_bytes"], "cosine": res.fidelity.cosine}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-bert", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        torch.set_num_threads(1)   # small models: one thread is faster (see build.py)
        for kind in ("cnn", "transformer"):
            rows.append(bench_classifier(kind, Path(d)))
        torch.set_num_threads(2)
        bert = None if args.skip_bert else bench_bert(Path(d))
    print("\n| model | params | fp32 ONNX | ORT QDQ + zstd-19 (acc) | edgecompile rpi4 (acc) | × vs fp32 | × vs ORT+zstd "
          "| acc fp32 → ours | latency ours/fp32 on this host: rpi4 build (full int8) | host build |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['params']:,} | {r['fp32_onnx_bytes'] / 1024:.1f} KB | "
              f"{r['ort_qdq_zstd_bytes'] / 1024:.1f} KB ({r['ort_qdq_acc']:.2%}) | {r['ours_bytes'] / 1024:.1f} KB "
              f"({r['ours_acc']:.2%}) | {r['ratio_vs_fp32']:.2f}× | {r['ratio_vs_ort_zstd']:.2f}× | "
              f"{r['fp32_acc']:.2%} → {r['ours_acc']:.2%} ({100 * (r['ours_acc'] - r['fp32_acc']):+.2f} pt) | "
              f"{r['latency_ours_ms']:.3f} / {r['latency_fp32_ms']:.3f} ms = {r['latency_ratio']:.2f} | "
              f"{r['host_target_latency_ratio']:.2f} ({r['host_target_bytes'] / 1024:.1f} KB, "
              f"{r['host_target_acc']:.2%}) |")
    for r in rows:
        print(f"  {r['model']}: config {r['config']}, build {r['build_s']:.1f} s, training {r['train_s']:.1f} s")
    if bert:
        print(f"\nBERT-style encoder, {bert['params'] / 1e6:.1f} M parameters: build {bert['build_s']:.1f} s "
              f"(goal ≤ 60 s), bundle {bert['bundle_bytes'] / 2**20:.1f} MiB, output cosine {bert['cosine']:.4f}")
        print("  stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in bert["timings"].items()))
    if args.json:
        args.json.write_text(json.dumps({"classifiers": rows, "bert": bert}, indent=2))


if __name__ == "__main__":
    main()
