"""The peers' conversions of one zoo architecture (bench/zoo/archs.py), for bench/bench_zoo.py.

Runs in the peers' own environment (``scripts/setup_peers.sh`` makes .venv-peers: litert-torch and
onnxscript beside the same torch, torchvision, timm and transformers pins as .venv):

  .venv-peers/bin/python bench/zoo_peers.py NAME      -> one JSON line on stdout

Each peer converts the same seeded module with its own API, its model runs in its own runtime
(onnxruntime for ONNX, LiteRT's interpreter for .tflite) on the same evaluation inputs as our
builds, and the figure is the mean per-sample cosine to PyTorch's output (1 sample at a time:
every converter gets the batch-1 graph it was exported with). A failure is its first line.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

N_EVAL = 8


def _cosine(ref: list[np.ndarray], got: list[np.ndarray]) -> float:
    r = np.stack([a.ravel() for a in ref]).astype(np.float64)
    g = np.stack([a.ravel() for a in got]).astype(np.float64)
    num = (r * g).sum(1)
    den = np.maximum(np.linalg.norm(r, axis=1) * np.linalg.norm(g, axis=1), 1e-30)
    return float(np.mean(num / den))


def _first(y):
    if isinstance(y, (tuple, list)):
        return _first(y[0])
    return y


def onnx_export(module, example, inputs, dynamo: bool) -> dict:
    import onnxruntime as ort

    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.onnx"
        kw = {"dynamo": True, "external_data": False} if dynamo else {"dynamo": False}
        torch.onnx.export(module, example, str(path), opset_version=18, **kw)
        raw = path.read_bytes()
    secs = time.perf_counter() - t
    sess = ort.InferenceSession(raw, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    got = [sess.run(None, {name: x[None]})[0] for x in inputs]
    return {"got": got, "bytes": len(raw), "seconds": secs}


def litert(module, example, inputs) -> dict:
    import litert_torch
    from ai_edge_litert.interpreter import Interpreter

    t = time.perf_counter()
    edge = litert_torch.convert(module, example)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.tflite"
        edge.export(str(path))
        raw = path.read_bytes()
    secs = time.perf_counter() - t
    interp = Interpreter(model_content=raw)
    interp.allocate_tensors()
    inp, o = interp.get_input_details()[0], interp.get_output_details()[0]["index"]
    got = []
    for x in inputs:      # litert-torch turns int64 token ids into an int32 input
        interp.set_tensor(inp["index"], x[None].astype(inp["dtype"]))
        interp.invoke()
        got.append(interp.get_tensor(o).copy())
    return {"got": got, "bytes": len(raw), "seconds": secs}


def main(name: str) -> dict:
    from bench.zoo.archs import ARCHS

    torch.set_num_threads(1)
    arch = ARCHS[name]
    module, example = arch.module(), arch.example()
    inputs = list(arch.inputs(N_EVAL, seed=1)[0])
    with torch.no_grad():
        ref = [_first(module(torch.from_numpy(x[None]))).numpy() for x in inputs]
    out = {"name": name}
    peers = {"torch.onnx dynamo": lambda: onnx_export(module, example, inputs, True),
             "torch.onnx legacy": lambda: onnx_export(module, example, inputs, False),
             "litert-torch": lambda: litert(module, example, inputs)}
    for peer, run in peers.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = run()
            out[peer] = {"cosine": _cosine(ref, r["got"]), "bytes": r["bytes"], "seconds": round(r["seconds"], 2)}
        except Exception as e:  # the peer's failure is a result of the bench, reported as its first line
            msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
            out[peer] = {"error": f"{type(e).__name__}: {msg[:160]}"}
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
