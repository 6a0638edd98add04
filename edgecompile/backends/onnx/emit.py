"""ONNX backend: writes an IR graph as a standard-op ONNX model (no torch.onnx round trip).

`emit_onnx(graph, embed_weights=...)` lowers each IR op through `ops.LOWERINGS` (factorized
layers are just chains of MatMul/Conv). Weights are initializers named like the IR constants;
with ``embed_weights=False`` they are marked as external data and returned in
`EmittedModel.tensors` for the `.ecw` container, and `edgecompile.bundle` hands them to
onnxruntime in memory when it creates the session.

Quantized graphs (see `ir/graph.py` for the convention): int8 weights feed DequantizeLinear (per
channel), int32 biases too, and every quantized activation gets QuantizeLinear -> DequantizeLinear,
which onnxruntime fuses into integer kernels. Two knobs, measured by `bench/bench_onnx_int8.py`
(onnxruntime 1.32, AMD EPYC with AVX512-VNNI, 1 thread, median of 9x30 interleaved runs; latency
as a ratio to the fp32 model; every int8 form agreed with the executor to 0.0 output steps):

    graph                    s8s8 QDQ  u8s8 QDQ  s8 integer ops  u8 integer ops
    CNN 1x3x96x96 (MBv2-ish)   1.02      0.60        14.4            0.61
    CNN digits 1x1x8x8         2.77      1.82         5.3            1.86
    transformer 64x128 L4      1.43      1.06        12.7            1.14
    transformer 16x64 L2       1.89      1.55         3.9            1.72

U8S8 QDQ is the fastest or tied everywhere, so it is the default (``activations="uint8"``,
``int8_ops="qdq"``). With int8 activations onnxruntime converts Q/DQ pairs to uint8 itself but
skips pairs whose DequantizeLinear feeds two nodes (a residual branch), leaving those convs in
float; its s8s8 integer kernels (QLinearConv, MatMulInteger) take a slow path on x86. Tiny models
are dominated by per-op overhead (the extra Q/DQ nodes), where int8 loses to fp32 whatever the form.
``activations="uint8"`` shifts activation zero points by 128 (same real values) and
``int8_ops="integer"`` writes QLinearConv / MatMulInteger explicitly (`qops`).

Dynamic-range int8 layers (``node.meta["arith"] == "int8-dynamic"``) are written as onnxruntime's
``quantize_dynamic`` writes them (``dynamic_ops="standard"``: DynamicQuantizeLinear ->
MatMulInteger / ConvInteger -> Cast -> Mul(s_x * s_w) -> Add bias) or as the com.microsoft
DynamicQuantizeMatMul op (``"contrib"``). onnxruntime 1.32 fuses the standard form into the same
kernel: on the 22M-parameter MiniLM encoder (8x32 tokens, 1 thread, median of 5x5 interleaved
runs) standard 25.3 ms, contrib 26.2 ms, fp32 59.6 ms; both agree with the executor to 4e-7.
Standard is the default (plain ONNX, any runtime).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ...container import QuantInfo
from ...ir.graph import Graph, QuantParams
from ...ir.verify import verify
from ..base import EmittedModel
from .builder import OnnxBuilder, OnnxEmitError, elem_type
from .ops import LOWERINGS
from .qops import DYNAMIC_FORMS, INTEGER_LOWERINGS, dynamic_layer

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17
DEFAULT_ACTIVATIONS = "uint8"   # measured: see the module docstring
DEFAULT_INT8_OPS = "qdq"
DEFAULT_DYNAMIC_OPS = "standard"   # measured: see the module docstring

__all__ = ["EmittedModel", "OnnxEmitError", "emit_onnx", "DEFAULT_OPSET"]


def _weights_only(graph: Graph) -> bool:
    """True for a graph with int8 weights but no quantized activations (weights-only int8)."""
    has_wq = any(v.quant is not None and v.data.dtype == np.int8 for v in graph.consts.values())
    has_aq = any(v.quant is not None for n in graph.nodes for v in n.outputs) or \
        any(v.quant is not None for v in graph.inputs)
    return has_wq and not has_aq


def emit_onnx(graph: Graph, *, embed_weights: bool, activations: str = DEFAULT_ACTIVATIONS,
              int8_ops: str = DEFAULT_INT8_OPS, opset: int = DEFAULT_OPSET, check: bool = True,
              dequantize_at_load: bool | None = None, minify: bool = False,
              dynamic_ops: str = DEFAULT_DYNAMIC_OPS) -> EmittedModel:
    """Writes `graph` as an ONNX model.

    Parameters
    ----------
    graph : Graph
        A verified IR graph with static shapes (float, or quantized by the quantize pass).
    embed_weights : bool
        True: a self-contained model (the fp32 baseline). False: weights are external
        initializers, supplied at session creation from the container (`loader.create_session`).
    activations : {"int8", "uint8"}
        Element type of quantized activations in Q/DQ nodes.
    int8_ops : {"qdq", "integer"}
        "qdq": QuantizeLinear/DequantizeLinear around float ops, fused by onnxruntime.
        "integer": QLinearConv / MatMulInteger written out explicitly.
    opset : int
        Default-domain opset, 17 to 21 (from 20, gelu is the Gelu op).
    dequantize_at_load : bool or None
        For weights-only int8 graphs: declare float initializers and let the loader dequantize the
        container's int8 weights once (listed in `EmittedModel.dequantize_at_load`). None: on for
        weights-only graphs.
    minify : bool
        With external weights: short tensor names, no node names (the deployable form; names were
        most of a small model's bytes). `EmittedModel.source_names` maps container names back.
    dynamic_ops : {"standard", "contrib"}
        How dynamic-range int8 layers (``meta["arith"] == "int8-dynamic"``) are written (see
        `qops.DYNAMIC_FORMS`).
    check : bool
        Run `onnx.checker.check_model` on the result (embedded weights only: the checker
        wants external data to exist as files).

    Returns
    -------
    EmittedModel

    Raises
    ------
    OnnxEmitError
        An op or dtype the backend cannot express; the message names the node.
    VerifyError
        The graph is not valid IR.
    """
    if dynamic_ops not in DYNAMIC_FORMS:
        raise ValueError(f"dynamic_ops must be one of {DYNAMIC_FORMS}, got {dynamic_ops!r}")
    if int8_ops not in ("qdq", "integer"):
        raise ValueError(f"int8_ops must be 'qdq' or 'integer', got {int8_ops!r}")
    if not 17 <= opset <= 21:
        raise ValueError(f"opset {opset} is not supported; use 17 to 21")
    verify(graph)
    if dequantize_at_load is None:
        dequantize_at_load = _weights_only(graph)
    b = OnnxBuilder(graph, activations, opset, dequantize_at_load=dequantize_at_load)
    node_map: list[tuple[int, str, str]] = []
    for v in graph.inputs:
        node_map.append((len(b.nodes), v.name, "input"))
        b.define(v, v.name)
    integer = INTEGER_LOWERINGS if int8_ops == "integer" else {}
    for node in graph.nodes:
        lower = LOWERINGS.get(node.op)
        if lower is None:
            raise OnnxEmitError(f"node {node.name}: op {node.op!r} has no ONNX lowering; "
                                f"supported: {', '.join(sorted(LOWERINGS))}")
        node_map.append((len(b.nodes), node.name, node.op))
        if node.meta.get("arith") == "int8-dynamic" and dynamic_layer(b, node, dynamic_ops):
            continue
        if node.op in integer and integer[node.op](b, node):
            continue
        lower(b, node)
    node_map.append((len(b.nodes), ", ".join(v.name for v in graph.outputs), "output"))
    outputs = _outputs(b, graph)
    model = _assemble(b, graph, outputs, embed_weights)
    if check and embed_weights:
        onnx.checker.check_model(model)
    quant = {k: _quant_info(q) if k in b.load_dequantized else None for k, q in b.weight_quant.items()}
    # contrib (com.microsoft) ops have no schema in onnx: recorded at their domain version 1
    ops = sorted({(n.op_type, onnx.defs.get_schema(n.op_type, opset, n.domain).since_version
                   if n.domain in ("", "ai.onnx") else 1) for n in model.graph.node})
    log.debug("emitted %s: %d nodes, %d weights, ops %s", graph.name, len(model.graph.node), len(b.weights), ops)
    tensors, deq = dict(b.weights), tuple(sorted(b.load_dequantized))
    source = {k: k for k in tensors}
    if minify and not embed_weights:
        rename = _minify(model, keep={v.name for v in graph.inputs} | set(outputs))
        tensors = {rename[k]: a for k, a in tensors.items()}
        quant = {rename[k]: q for k, q in quant.items()}
        deq = tuple(rename[k] for k in deq)
        source = {rename[k]: k for k in source}
    return EmittedModel(model.SerializeToString(), tensors, quant, ops, dequantize_at_load=deq, source_names=source,
                        node_map=_spans(node_map))


def _spans(node_map: list[tuple[int, str, str]]) -> tuple[tuple[int, str, str], ...]:
    """The map without entries that emitted no node (the next entry starts where they start)."""
    return tuple(e for i, e in enumerate(node_map) if i + 1 == len(node_map) or node_map[i + 1][0] > e[0])


def _minify(model: onnx.ModelProto, keep: set[str]) -> dict[str, str]:
    """Short names for every tensor but the graph's inputs and outputs; no node or graph names.

    In a deployable model the names are most of the bytes (measured: 52 KB of 82 KB for a small
    int8 transformer, ~200 B per node); the container and the loader use the short names too.
    Names are 1, 2, ... characters of ``[0-9a-zA-Z]``, the most referenced tensors first.
    Returns the old -> new map of every renamed initializer and value.
    """
    g = model.graph
    uses: dict[str, int] = {}
    for name in [t.name for t in g.initializer] + [x for n in g.node for x in (*n.input, *n.output)]:
        if name and name not in keep:
            uses[name] = uses.get(name, 0) + 1
    short = _short_names(keep)
    rename = {name: next(short) for name in sorted(uses, key=lambda k: -uses[k])}   # stable: ties keep order
    for t in g.initializer:
        t.name = rename.get(t.name, t.name)
    for n in g.node:
        n.ClearField("name")
        n.input[:] = [rename.get(x, x) for x in n.input]
        n.output[:] = [rename.get(x, x) for x in n.output]
    for vi in list(g.value_info):
        vi.name = rename.get(vi.name, vi.name)
    g.ClearField("name")
    return rename


_NAME_CHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _short_names(taken: set[str]):
    """``0``, ``1``, ..., ``Z``, ``00``, ... (skipping `taken`): the shortest names first."""
    width = 1
    while True:
        for i in range(len(_NAME_CHARS) ** width):
            name = ""
            for _ in range(width):
                i, r = divmod(i, len(_NAME_CHARS))
                name = _NAME_CHARS[r] + name
            if name not in taken:
                yield name
        width += 1


def _outputs(b: OnnxBuilder, graph: Graph) -> list[str]:
    """Real-valued output tensor names, made distinct from inputs, weights and each other."""
    taken = {v.name for v in graph.inputs} | set(b.weights)
    names = []
    for v in graph.outputs:
        name = b.real(v)
        if name in taken or name in names:
            name = b.add("Identity", [name], b.fresh(f"{v.name}.out"))[0]
        names.append(name)
    return names


def _assemble(b: OnnxBuilder, graph: Graph, outputs: list[str], embed: bool) -> onnx.ModelProto:
    inits = []
    for name, arr in b.weights.items():
        if name in b.load_dequantized:
            q = b.weight_quant[name]
            arr = q.dequantize(arr) if embed else arr
            t = numpy_helper.from_array(arr, name) if embed else _declared(name, arr.shape, TensorProto.FLOAT)
        else:
            t = numpy_helper.from_array(arr, name)
        if not embed:
            # external, without a location: onnxruntime takes the data from the session options
            # (the loader), and `onnx.load` refuses the tensor ("Location ... should not be empty")
            # instead of reading some file as its data; a location would cost ~26 bytes a weight
            t.ClearField("raw_data")
            t.data_location = TensorProto.EXTERNAL
        inits.append(t)
    ins = [helper.make_tensor_value_info(v.name, elem_type(v.dtype), list(v.shape)) for v in graph.inputs]
    outs = [helper.make_tensor_value_info(name, elem_type(v.dtype), list(v.shape))
            for name, v in zip(outputs, graph.outputs)]
    g = helper.make_graph(b.nodes, graph.name, ins, outs, initializer=inits + b.small)
    opsets = [helper.make_opsetid("", b.opset)]
    if any(n.domain == "com.microsoft" for n in b.nodes):
        opsets.append(helper.make_opsetid("com.microsoft", 1))
    model = helper.make_model(g, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets[:1]))
    return model


def _declared(name: str, shape, elem_type: int) -> TensorProto:
    """An initializer's name, type and shape, without data (filled from the container)."""
    t = TensorProto()
    t.name, t.data_type = name, elem_type
    t.dims.extend(int(d) for d in shape)
    return t


def _quant_info(q: QuantParams | None) -> QuantInfo | None:
    return None if q is None else QuantInfo(q.scale, q.zero_point, q.axis)
