"""TFLite backend: our IR -> a `.tflite` flatbuffer, written with LiteRT's object API (no TensorFlow).

`emit_tflite(graph, embed_weights=...)` lowers every node with the emitters in `ops.py` and
`nn.py` (layouts and int8 rules are described there and in `lower.py`) and packs the
model with `builder.ModelBuilder`. The model's inputs and outputs keep the IR's layout and
dtype (NCHW float32 for an image model), so a session runs it exactly like the ONNX model: int8
graphs QUANTIZE their inputs and DEQUANTIZE their outputs inside the model.

With ``embed_weights=False`` the weight buffers are left empty and `EmittedModel.tensors` holds
them (in TFLite layout, keyed by tensor name) for the `.ecw` container; `edgecompile.bundle.tflite_model`
puts them back in memory before creating the interpreter. Such a model is marked (file identifier
``ECST`` and a marker operator, see `bundle.tflite_model`) so that neither LiteRT nor TFLite Micro loads
it on its own: both would otherwise run empty weights as zeros without a word.
"""

from __future__ import annotations

import logging

import numpy as np

from ai_edge_litert import schema_py_generated as fb

from ...ir import Graph, Node
from ...bundle.tflite_model import bias_scale, biases
from ..base import EmittedModel
from . import nn
from . import ops
from . import upsample as up
from .builder import TFL_TYPES, ModelBuilder, tflite_op_table, unpack_model
from .lower import IR, Lowering, TFLiteUnsupportedError, act_qparams


log = logging.getLogger(__name__)

__all__ = ["EmittedModel", "TFLiteUnsupportedError", "emit_tflite", "tflite_op_table", "SUPPORTED_OPS"]

_EMITTERS = {
    **{op: ops.lower_unary for op in ops.UNARY},
    **{op: ops.lower_binary for op in ops.BINARY},
    "gelu": ops.lower_gelu, "clip": ops.lower_clip, "silu": ops.lower_silu,
    "hardsigmoid": ops.lower_hardsigmoid, "erf": ops.lower_erf, "log1p": ops.lower_log1p,
    "softplus": ops.lower_softplus,
    "softmax": ops.lower_softmax, "log_softmax": lambda L, n: ops.lower_softmax(L, n, log=True),
    **{op: ops.lower_reduce for op in ops.REDUCE},
    "reshape": ops.lower_reshape, "transpose": ops.lower_transpose, "slice": ops.lower_slice,
    "concat": ops.lower_concat, "pad": ops.lower_pad, "expand": ops.lower_expand,
    "where": ops.lower_where, "cast": ops.lower_cast, "cumsum": ops.lower_cumsum,
    "linear": nn.lower_linear, "matmul": nn.lower_matmul, "conv": nn.lower_conv,
    "max_pool": nn.lower_pool, "avg_pool": nn.lower_pool, "batch_norm": nn.lower_batch_norm,
    "layer_norm": nn.lower_layer_norm, "group_norm": nn.lower_group_norm, "gather": nn.lower_gather,
    "resize": up.lower_resize, "conv_transpose": up.lower_conv_transpose,
}
SUPPORTED_OPS = frozenset(_EMITTERS)


def _precheck(graph: Graph) -> None:
    """Every node TFLite cannot express, in one error: ops without a lowering and values of a dtype
    TFLite has no tensor type for (float64), each with the user's source line when known."""
    problems = []
    for node in graph.nodes:
        where = f" at {node.meta['source']}" if node.meta.get("source") else ""
        if node.op not in _EMITTERS:
            problems.append(f"{node.name} ({node.op}){where}")
            continue
        bad = sorted({v.dtype for v in (*node.inputs, *node.outputs) if v is not None and v.dtype not in TFL_TYPES})
        if bad:
            problems.append(f"{node.name} ({node.op} on {'/'.join(bad)}){where}")
    for v in graph.inputs:
        if v.shape is None:
            problems.append(f"input {v.name} (dynamic shape)")
    if problems:
        raise TFLiteUnsupportedError("TFLite cannot express: " + ", ".join(problems)
                                     + "; use --backend onnx")


def _lower(L: Lowering, node: Node) -> None:
    try:
        _EMITTERS[node.op](L, node)
    except TFLiteUnsupportedError as e:
        raise TFLiteUnsupportedError(f"{e}; use --backend onnx") from None


def emit_tflite(graph: Graph, *, embed_weights: bool = True) -> EmittedModel:
    """Writes `graph` as a TFLite model.

    Parameters
    ----------
    graph : Graph
        A verified IR graph with static shapes; int8 where its values carry `quant` (the quantize
        pass's convention).
    embed_weights : bool
        Keep the weights in the flatbuffer (a standalone `.tflite`), or leave their buffers empty
        and return them in `tensors` for the container.

    Returns
    -------
    EmittedModel

    Raises
    ------
    TFLiteUnsupportedError
        Naming every node TFLite cannot express (and suggesting `--backend onnx`).
    """
    _precheck(graph)
    b = ModelBuilder(graph.name)
    L = Lowering(graph, b)
    node_map: list[tuple[int, str, str]] = []
    for v in graph.inputs:
        node_map.append((len(b.operators), v.name, "input"))
        t = b.tensor(v.name, v.shape, "float32" if act_qparams(v) is not None else v.dtype)
        b.inputs.append(t.index)
        if act_qparams(v) is not None:
            q = L.new(v, IR, suffix="_q")
            L.requantize(t, q)
            t = q
        L.define(v, t, IR)
    for node in graph.nodes:
        node_map.append((len(b.operators), node.name, node.op))
        _lower(L, node)
    node_map.append((len(b.operators), ", ".join(v.name for v in graph.outputs), "output"))
    for v in graph.outputs:
        if v.is_const:
            raise TFLiteUnsupportedError(f"graph output {v.name} is a constant; use --backend onnx")
        t = L.get(v, IR, float_view=True)
        if t.index in b.inputs or t.index in b.outputs:   # an output that is an input: copy it
            t = L.reshape(t, t.shape, v.name + "_out")
        b.outputs.append(t.index)
    source = _minify(b) if not embed_weights else {name: name for name in b.weights}
    tensors = dict(b.weights)
    if not embed_weights:
        b.strip_weights()
        _slim_quantization(b)
    model_bytes = b.finish()
    table = tflite_op_table(model_bytes)
    log.info("tflite: %d operators (%d int8 layers), %d bytes", len(b.operators), L.int8_ops, len(model_bytes))
    spans = tuple(e for i, e in enumerate(node_map) if i + 1 == len(node_map) or node_map[i + 1][0] > e[0])
    return EmittedModel(model_bytes, tensors, {}, [(name, ver) for name, ver, _ in table], source_names=source,
                        node_map=spans)


def _slim_quantization(b: ModelBuilder) -> None:
    """Leaves out of a stripped model what `bundle.tflite_model.restore_quantization` puts back: zero
    points that are all 0, and an int32 bias's quantization when its scale is exactly input scale x
    filter scale for every operator reading it (the quantize pass's convention)."""
    model = fb.ModelT()
    model.operatorCodes = [_opcode(code) for code, _ in sorted(b.opcodes, key=lambda k: b.opcodes[k])]
    model.subgraphs = [fb.SubGraphT()]
    model.subgraphs[0].tensors, model.subgraphs[0].operators = b.tensors, b.operators
    for bias, users in biases(model).items():
        q = b.tensors[bias].quantization
        if b.tensors[bias].type != fb.TensorType.INT32 or q is None or any(q.zeroPoint or []):
            continue
        have = np.asarray(q.scale, np.float32).view(np.uint32)
        derived = [bias_scale(b.tensors[x], b.tensors[w]) for x, w in users]
        if all(d is not None and np.array_equal(d.view(np.uint32), have) for d in derived):
            b.tensors[bias].quantization = None
    for t in b.tensors:
        if t.quantization is not None and t.quantization.zeroPoint is not None and not any(t.quantization.zeroPoint):
            t.quantization.zeroPoint = None


def _opcode(code: int) -> fb.OperatorCodeT:
    c = fb.OperatorCodeT()
    c.builtinCode = c.deprecatedBuiltinCode = code
    return c


def _minify(b) -> dict[str, str]:
    """Short names for every tensor but the model's inputs and outputs (the deployable form: names
    were a third of a small int8 transformer's flatbuffer). Returns short -> original for weights."""
    keep = set(b.inputs) | set(b.outputs)
    weights = {}
    for i, t in enumerate(b.tensors):
        if i in keep:
            continue
        old = t.name.decode() if isinstance(t.name, bytes) else t.name
        t.name = f"t{i:x}"
        if old in b.weights:
            weights[t.name] = old
    b.weights = {short: b.weights[old] for short, old in weights.items()}
    b.weight_quant = {short: b.weight_quant[old] for short, old in weights.items() if old in b.weight_quant}
    return weights


def op_counts(model_bytes: bytes) -> dict[str, int]:
    """TFLite builtin op name -> number of operators (for structure tests)."""
    counts: dict[str, int] = {}
    for name, _, n in tflite_op_table(model_bytes):
        counts[name] = counts.get(name, 0) + n
    return counts


def tensor_types(model_bytes: bytes) -> dict[str, str]:
    """Tensor name -> TFLite element type name."""
    from .builder import TFL_TYPE_NAMES
    sg = unpack_model(model_bytes).subgraphs[0]
    return {t.name.decode() if isinstance(t.name, bytes) else t.name: TFL_TYPE_NAMES.get(t.type, str(t.type))
            for t in sg.tensors}
