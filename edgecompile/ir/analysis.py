"""Static figures of an IR graph: MACs per node, layer grouping, activation bytes.

A "layer" is a node with a constant weight (linear, conv, conv_transpose, embedding gather,
matmul by a constant). Passes that rewrite a layer into several nodes tag them with ``meta["layer"]`` (the
original node's name), so before/after figures line up by that name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .graph import Graph, Node
from .ops import weight_input

DTYPE_BYTES = {"float32": 4, "float16": 2, "float64": 8, "int64": 8, "int32": 4, "int16": 2, "int8": 1,
               "uint8": 1, "bool": 1}


def _prod(xs) -> int:
    return int(math.prod(xs)) if xs else 1


def node_macs(node: Node) -> int:
    """Multiply-accumulates of one node (0 for data movement and cheap elementwise ops)."""
    out = node.output.shape or ()
    if node.op == "linear":
        return _prod(out) * node.input(1).shape[1]
    if node.op == "conv":
        w = node.input(1).shape
        return _prod(out) * _prod(w[1:])
    if node.op == "conv_transpose":     # every input element meets out/groups x kernel weights
        w = node.input(1).shape
        return _prod(node.input(0).shape) * _prod(w[1:])
    if node.op == "matmul":
        a = node.input(0).shape
        return _prod(out) * (a[-1] if a else 1)
    return 0


@dataclass
class LayerFigures:
    """Figures of one original layer (possibly several nodes after a rewrite)."""

    name: str
    op: str
    weight_shape: tuple
    params: int = 0
    macs: int = 0
    nodes: list[str] = field(default_factory=list)
    consts: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)


def layer_figures(graph: Graph) -> dict[str, LayerFigures]:
    """Groups layer nodes by original layer name; counts parameters and MACs of each group."""
    layers: dict[str, LayerFigures] = {}
    for node in graph.nodes:
        w = weight_input(node)
        if w is None:
            continue
        lowrank = node.meta.get("lowrank", {})
        key = node.meta.get("layer") or lowrank.get("original") or node.name
        lf = layers.get(key)
        if lf is None:
            lf = layers[key] = LayerFigures(key, node.meta.get("layer_op", node.op), tuple(w.shape))
        lf.nodes.append(node.name)
        lf.macs += node_macs(node)
        for v in node.inputs:
            if v is not None and v.is_const and v.name not in lf.consts:
                lf.consts.append(v.name)
                lf.params += v.data.size
        for k in ("rank", "method", "sparsity", "bits", "pruned_channels"):
            if k in node.meta:
                lf.meta[k] = node.meta[k]
            elif k in lowrank:
                lf.meta[k] = lowrank[k]
    return layers


def total_macs(graph: Graph) -> int:
    return sum(node_macs(n) for n in graph.nodes)


def static_batch(graph: Graph) -> int:
    """The graph's static batch: its first input's leading dimension (1 without inputs or a shape)."""
    return int(graph.inputs[0].shape[0]) if graph.inputs and graph.inputs[0].shape else 1


def macs_per_sample(graph: Graph) -> float:
    """`total_macs` over the graph's static batch."""
    return total_macs(graph) / max(static_batch(graph), 1)


def activation_bytes(graph: Graph) -> int:
    """Bytes of all activations (node outputs), int8 where the value is quantized."""
    total = 0
    for n in graph.nodes:
        for v in n.outputs:
            size = 1 if v.quant is not None else DTYPE_BYTES.get(v.dtype, 4)
            total += _prod(v.shape or ()) * size
    return total


def node_arith(node: Node) -> str | None:
    """The arithmetic a MAC node runs: "int8", "int8-dynamic" or "fp32" (None for other nodes).

    The quantize pass records it in ``node.meta["arith"]``; an unquantized graph runs fp32.
    """
    if node_macs(node) == 0 and node.op not in ("linear", "conv", "matmul", "conv_transpose"):
        return None
    return node.meta.get("arith", "fp32")


def macs_by_arith(graph: Graph) -> dict[str, int]:
    """MACs per arithmetic ("int8", "int8-dynamic", "fp32"): what a latency estimate should price.

    Weights-only int8 and layers kept float count as fp32; dynamic-range layers run integer
    matmuls plus a run-time quantization of their input (priced by the caller as it sees fit).
    """
    out = {"int8": 0, "int8-dynamic": 0, "fp32": 0}
    for n in graph.nodes:
        a = node_arith(n)
        if a is not None:
            out[a] = out.get(a, 0) + node_macs(n)
    return out
