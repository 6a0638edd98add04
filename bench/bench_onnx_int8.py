"""Which int8 form runs fastest in onnxruntime: QDQ with int8 or uint8 activations, or integer ops?

For a CNN and a transformer encoder (each at the digits size the build ships and at a larger
size), imports the PyTorch model, folds batch norm, quantizes (calibrated, per-channel int8), and
emits it with `emit_onnx` in six forms: fp32 (the baseline), QDQ S8S8, QDQ U8S8, integer ops
(QLinearConv/MatMulInteger) with int8 and with uint8 activations, and int8 weights only (float
activations; onnxruntime may fold the weights' DequantizeLinear at session creation). Each runs in one onnxruntime
session per form (one intra-op thread, all graph optimizations), all measured in this process,
interleaved round by round so that machine noise hits every form alike. Prints the median latency,
its ratio to fp32, the max error against the executor (in output quantization steps) and the
integer kernels onnxruntime fused.

    .venv/bin/python bench/bench_onnx_int8.py [--rounds 7] [--runs 30] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from edgecompile.backends.onnx import emit_onnx
from edgecompile.frontend import import_model
from edgecompile.ir import run_graph
from edgecompile.bundle.onnx_session import create_session
from edgecompile.passes.fold import CleanupPass, FoldBatchNormPass
from edgecompile.passes.quantize import QuantConfig, QuantizePass

FORMS = {  # name -> emit_onnx options (None: the float graph)
    "fp32": None,
    "qdq s8s8": dict(activations="int8", int8_ops="qdq"),
    "qdq u8s8": dict(activations="uint8", int8_ops="qdq"),
    "int ops s8": dict(activations="int8", int8_ops="integer"),
    "int ops u8": dict(activations="uint8", int8_ops="integer"),
    "w8 only": "weights_only",   # int8 weights, float activations: DequantizeLinear on weights only
}
INT_KERNELS = ("DequantizeLinear", "QLinearConv", "QGemm", "QLinearMatMul", "MatMulInteger", "MatMulIntegerToFloat",
               "DynamicQuantizeMatMul", "QLinearAdd", "QLinearMul", "QLinearSoftmax", "QLinearAveragePool",
               "QLinearGlobalAveragePool", "QAttention")


def conv_bn(cin, cout, k=3, stride=1, groups=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6())


class Block(nn.Module):
    """MobileNetV2 inverted residual."""

    def __init__(self, c, expand=4):
        super().__init__()
        self.body = nn.Sequential(conv_bn(c, c * expand, 1), conv_bn(c * expand, c * expand, 3, groups=c * expand),
                                  nn.Conv2d(c * expand, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return x + self.body(x)


class CNN(nn.Module):
    def __init__(self, width=16, size_in=3):
        super().__init__()
        w = width
        self.features = nn.Sequential(conv_bn(size_in, w, 3, 2), conv_bn(w, 2 * w), Block(2 * w),
                                      conv_bn(2 * w, 4 * w, 3, 2), Block(4 * w), Block(4 * w),
                                      conv_bn(4 * w, 8 * w, 3, 2), Block(8 * w))
        self.head = nn.Linear(8 * w, 10)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


class Encoder(nn.Module):
    def __init__(self, d=64, heads=4, layers=2, ff=128, vocab=100):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        layer = nn.TransformerEncoderLayer(d, heads, ff, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, 10)

    def forward(self, ids):
        return self.head(self.encoder(self.embed(ids)).mean(1))


def _randomize_bn(model):
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def models():
    torch.manual_seed(0)
    yield "CNN 1x1x8x8 (digits)", _randomize_bn(CNN(8, 1)), lambda r: r.standard_normal((1, 1, 8, 8))
    yield "CNN 1x3x96x96", _randomize_bn(CNN(16, 3)), lambda r: r.standard_normal((1, 3, 96, 96))
    yield "transformer 16x64 L2", Encoder(), lambda r: r.integers(0, 100, (1, 16))
    yield "transformer 64x128 L4", Encoder(128, 4, 4, 512), lambda r: r.integers(0, 100, (1, 64))


def _cast(a):
    return a.astype(np.float32) if a.dtype.kind == "f" else a.astype(np.int64)


def prepare(model, make_input):
    rng = np.random.default_rng(0)
    x = _cast(make_input(rng))
    graph = import_model(model, (torch.from_numpy(x),))
    for p in (FoldBatchNormPass(), CleanupPass()):
        graph = p(graph).graph
    fp32 = graph.copy()
    calib = [(_cast(make_input(rng)),) for _ in range(8)]
    w8 = QuantizePass(QuantConfig(activations="weights_only"))(graph.copy()).graph
    q = QuantizePass(QuantConfig(), calib)(graph).graph
    return fp32, q, w8, x


def fused_kernels(model_bytes: bytes, tensors: dict) -> str:
    with tempfile.TemporaryDirectory() as d:
        so = ort.SessionOptions()
        so.log_severity_level = 3       # silence "optimized model is hardware specific"
        so.optimized_model_filepath = str(Path(d) / "opt.onnx")
        so.add_external_initializers(list(tensors), [ort.OrtValue.ortvalue_from_numpy(a) for a in tensors.values()])
        ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
        ops = Counter(n.op_type for n in onnx.load(so.optimized_model_filepath, load_external_data=False).graph.node)
    return " ".join(f"{k}x{v}" for k, v in sorted(ops.items()) if k in INT_KERNELS) or "-"


def bench_model(title, model, make_input, rounds, runs, threads):
    fp32, q, w8, x = prepare(model, make_input)
    ref_q = run_graph(q, x)
    step = float(q.outputs[0].quant.scale[0]) if q.outputs[0].quant is not None else float("nan")
    sessions, rows = {}, {}
    for form, opts in FORMS.items():
        graph = {None: fp32, "weights_only": w8}.get(opts, q) if not isinstance(opts, dict) else q
        m = emit_onnx(graph, embed_weights=False, **(opts if isinstance(opts, dict) else {}))
        sess = create_session(m.model_bytes, m.tensors, threads=threads)
        out = sess.run(None, {sess.get_inputs()[0].name: x})[0]
        err = f"{np.abs(out - ref_q).max() / step:.1f}" if isinstance(opts, dict) else ""
        kernels = fused_kernels(m.model_bytes, m.tensors) if opts is not None else ""
        sessions[form], rows[form] = sess, [err, kernels, []]
    feed = {sessions["fp32"].get_inputs()[0].name: x}
    for s in sessions.values():
        for _ in range(5):
            s.run(None, feed)
    for _ in range(rounds):
        for form, s in sessions.items():
            for _ in range(runs):
                t0 = time.perf_counter()
                s.run(None, feed)
                rows[form][2].append(time.perf_counter() - t0)
    base = statistics.median(rows["fp32"][2])
    print(f"\n{title}  ({sum(v.data.size for v in fp32.consts.values()):,} params)")
    print(f"  {'form':12s} {'median ms':>10s} {'vs fp32':>8s} {'err steps':>10s}  onnxruntime int8 kernels")
    for form, (err, kernels, times) in rows.items():
        med = statistics.median(times)
        print(f"  {form:12s} {med * 1e3:10.3f} {med / base:8.2f} {err:>10s}  {kernels}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    print(f"onnxruntime {ort.__version__}, {args.threads} thread(s), median of {args.rounds}x{args.runs} runs")
    for title, model, make_input in models():
        bench_model(title, model, make_input, args.rounds, args.runs, args.threads)


if __name__ == "__main__":
    main()
