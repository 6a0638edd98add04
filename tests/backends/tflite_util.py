"""Shared helpers of the TFLite backend tests: run a model in LiteRT, quantize a graph for a test.

`quantize_for_test` follows the quantize pass's convention (ir_contract): per-channel symmetric int8
weights, int32 biases of scale s_in * s_w, asymmetric per-tensor int8 activations from min/max
calibration, TFLite's fixed output qparams, and shared qparams for data-movement ops. It stands in
for `edgecompile.passes.quantize.QuantizePass` where that is not available.
"""

from __future__ import annotations

import numpy as np
import torch
from ai_edge_litert.interpreter import Interpreter

import sys
from pathlib import Path

from edgecompile.ir import Graph, QuantParams, infer_shapes
from edgecompile.ir.torch_ops import run_op

FIXED = {"sigmoid": (1 / 256, -128), "softmax": (1 / 256, -128), "tanh": (1 / 128, 0)}
SHARED = {"reshape", "transpose", "max_pool", "slice", "pad", "expand", "concat"}


def run_tflite(model_bytes: bytes, *inputs: np.ndarray) -> list[np.ndarray]:
    it = Interpreter(model_content=model_bytes)
    it.allocate_tensors()
    for d, x in zip(it.get_input_details(), inputs):
        it.set_tensor(d["index"], np.ascontiguousarray(x, dtype=d["dtype"]))
    it.invoke()
    return [it.get_tensor(d["index"]) for d in it.get_output_details()]


def activations(graph: Graph, *inputs: np.ndarray) -> dict[int, np.ndarray]:
    """Float value of every activation (by id) on `inputs`."""
    env = {id(v): torch.as_tensor(x) for v, x in zip(graph.inputs, inputs)}
    for v in graph.consts.values():
        env[id(v)] = torch.as_tensor(np.asarray(v.real()))
    for n in graph.nodes:
        env[id(n.output)] = run_op(n.op, [None if v is None else env[id(v)] for v in n.inputs], n.attrs)
    return {k: t.numpy() for k, t in env.items()}


def _act_q(lo: float, hi: float) -> QuantParams:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max(hi - lo, 1e-8) / 255
    zp = int(np.clip(np.rint(-128 - lo / scale), -128, 127))
    return QuantParams([scale], [zp])


def quantize_for_test(graph: Graph, *calib: np.ndarray, weights_only: bool = False) -> Graph:
    """A quantized copy of `graph` (see the module docstring)."""
    g = graph.copy()
    acts = activations(g, *calib)
    if not weights_only:
        for v in g.inputs:
            if v.dtype == "float32":
                v.quant = _act_q(float(acts[id(v)].min()), float(acts[id(v)].max()))
        for n in g.nodes:
            v = n.output
            if v.dtype != "float32":
                continue
            x = n.inputs[0]
            if n.op in FIXED:
                v.quant = QuantParams([FIXED[n.op][0]], [FIXED[n.op][1]])
            elif (n.op in SHARED or (n.op == "gather" and not x.is_const)) and x is not None and x.quant is not None \
                    and not x.is_const:
                v.quant = x.quant
            else:
                a = acts[id(v)]
                v.quant = _act_q(float(a.min()), float(a.max()))
    for n in g.nodes:
        if n.op in ("linear", "conv") or (n.op == "matmul" and n.inputs[1].is_const) or (
                n.op == "gather" and n.inputs[0].is_const and n.inputs[0].data.ndim == 2):
            wi = 0 if n.op == "gather" else 1
            w = n.inputs[wi]
            if not w.is_const or w.quant is not None:
                continue
            axis = 1 if n.op == "matmul" else 0
            amax = np.abs(np.moveaxis(w.data, axis, 0)).reshape(w.data.shape[axis], -1).max(1)
            q = QuantParams(np.maximum(amax, 1e-8) / 127, np.zeros_like(amax, np.int32), axis=axis)
            w.data, w.quant = np.clip(q.quantize(w.data), -127, 127).astype(np.int8), q
            w.dtype = "float32"
            b = n.input(2) if n.op in ("linear", "conv") else None
            x = n.inputs[0]
            if b is not None and x.quant is not None:
                bq = QuantParams(x.quant.scale[0] * q.scale, np.zeros_like(q.zero_point), axis=0, dtype="int32")
                b.data, b.quant = np.rint(b.data / bq.scale).astype(np.int32), bq
    infer_shapes(g)
    return g


def step(graph: Graph, i: int = 0) -> float:
    """The quantization step of output `i` (1.0 for a float output)."""
    q = graph.outputs[i].quant
    return 1.0 if q is None else float(q.scale[0])


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # tests/models.py
import models  # noqa: E402,F401
