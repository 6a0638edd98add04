"""TFLite backend bench: int8 bundle size vs ONNX int8, accuracy vs fp32, LiteRT vs onnxruntime latency,
and the static arena plan vs the naive sum of activations. All measured in this run.

    .venv/bin/python bench/bench_tflite.py [--repeats 200] [--eval 360]

Models: the digits CNN and the small digits transformer of bench/common.py, trained here (seeded).
Bundle size = model file (weights stripped) + weights.ecw with the default codecs.
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
from common import trained  # noqa: E402

from edgecompile.backends.memory_plan import plan_graph, plan_tflite  # noqa: E402
from edgecompile.backends.onnx import emit_onnx  # noqa: E402
from edgecompile.backends.tflite import emit_tflite  # noqa: E402
from edgecompile.container import encode_container  # noqa: E402
from edgecompile.frontend.torch_export import import_model  # noqa: E402
from edgecompile.bundle.onnx_session import create_session  # noqa: E402
from edgecompile.passes.fold import CleanupPass, FoldBatchNormPass  # noqa: E402
from edgecompile.passes.quantize import QuantConfig, QuantizePass  # noqa: E402
from edgecompile.bundle.tflite_model import fill_weights
from edgecompile.bundle.tflite_session import create_interpreter  # noqa: E402


class LiteRT:
    def __init__(self, model_bytes, tensors):
        self.it = create_interpreter(fill_weights(model_bytes, tensors), threads=1)
        self.it.allocate_tensors()
        self.i = self.it.get_input_details()[0]["index"]
        self.o = self.it.get_output_details()[0]["index"]

    def __call__(self, x):
        self.it.set_tensor(self.i, x)
        self.it.invoke()
        return self.it.get_tensor(self.o)


class Ort:
    def __init__(self, model_bytes, tensors):
        self.s = create_session(model_bytes, tensors, threads=1)
        self.name = self.s.get_inputs()[0].name

    def __call__(self, x):
        return self.s.run(None, {self.name: x})[0]


def bundle_bytes(emitted) -> int:
    quant = {k: q for k, q in emitted.quant.items() if q is not None}   # the container rejects None entries
    blob, _ = encode_container(emitted.tensors, quant)
    return len(emitted.model_bytes) + len(blob)


def accuracy(run, xs, ys) -> float:
    pred = [int(np.argmax(run(xs[i:i + 1]))) for i in range(len(xs))]
    return float(np.mean(np.array(pred) == ys))


def latency(runs: dict, x, repeats: int) -> dict:
    """Median seconds per call, the runtimes interleaved so that they share the machine's state."""
    times = {k: [] for k in runs}
    for f in runs.values():
        for _ in range(5):
            f(x)
    for _ in range(repeats):
        for k, f in runs.items():
            t0 = time.perf_counter()
            f(x)
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def bench(kind: str, repeats: int, n_eval: int) -> list[str]:
    t0 = time.perf_counter()
    net, split = trained(kind)
    xs, ys = split["x_test"][:n_eval], split["y_test"][:n_eval]
    with torch.no_grad():
        acc_torch = float((net(torch.from_numpy(xs)).argmax(1).numpy() == ys).mean())
    g = import_model(net, (torch.from_numpy(xs[:1]),))
    FoldBatchNormPass()(g)
    CleanupPass()(g)
    q = g.copy()
    calib = [(split["x_calib"][i:i + 1],) for i in range(min(128, len(split["x_calib"])))]
    QuantizePass(QuantConfig(), calib)(q)
    tfl_f, tfl_q = emit_tflite(g, embed_weights=False), emit_tflite(q, embed_weights=False)
    onx_f, onx_q = emit_onnx(g, embed_weights=False), emit_onnx(q, embed_weights=False)
    rt = {"litert fp32": LiteRT(tfl_f.model_bytes, tfl_f.tensors), "litert int8": LiteRT(tfl_q.model_bytes, tfl_q.tensors),
          "ort fp32": Ort(onx_f.model_bytes, onx_f.tensors), "ort int8": Ort(onx_q.model_bytes, onx_q.tensors)}
    acc = {k: accuracy(f, xs, ys) for k, f in rt.items()}
    lat = latency(rt, xs[:1], repeats)
    plan = plan_tflite(fill_weights(tfl_q.model_bytes, tfl_q.tensors))
    ir_plan = plan_graph(q)
    sizes = {"tflite fp32": bundle_bytes(tfl_f), "tflite int8": bundle_bytes(tfl_q),
             "onnx fp32": bundle_bytes(onx_f), "onnx int8": bundle_bytes(onx_q)}
    lines = [f"## {kind} (n_eval={len(xs)}, {time.perf_counter() - t0:.0f} s incl. training)",
             f"torch fp32 accuracy {acc_torch * 100:.2f} %",
             "| artefact | bundle bytes | accuracy % | drop vs fp32 (pts) | host latency us (1 thread) |",
             "|---|---|---|---|---|"]
    for key, rkey in [("tflite fp32", "litert fp32"), ("tflite int8", "litert int8"),
                      ("onnx fp32", "ort fp32"), ("onnx int8", "ort int8")]:
        lines.append(f"| {key} | {sizes[key]} | {acc[rkey] * 100:.2f} | {(acc_torch - acc[rkey]) * 100:+.2f} | "
                     f"{lat[rkey] * 1e6:.1f} |")
    lines += [f"tflite int8 / onnx int8 bundle: {sizes['tflite int8'] / sizes['onnx int8']:.3f}; "
              f"LiteRT int8 / ORT int8 latency: {lat['litert int8'] / lat['ort int8']:.2f}",
              f"arena (TFLite tensors, int8): plan {plan.arena_bytes} B vs naive {plan.naive_bytes} B "
              f"({plan.naive_bytes / max(plan.arena_bytes, 1):.2f}x), peak live {plan.peak_live_bytes} B, "
              f"I/O {plan.io_bytes} B, RAM {plan.ram_bytes} B",
              f"arena (IR graph, int8): plan {ir_plan.arena_bytes} B vs naive {ir_plan.naive_bytes} B", ""]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--eval", type=int, default=360)
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = []
    for kind in ("cnn", "transformer"):
        out += bench(kind, args.repeats, args.eval)
    print("\n".join(out))


if __name__ == "__main__":
    main()
