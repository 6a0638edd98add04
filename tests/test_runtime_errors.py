"""A runtime that refuses or fails a bundle's model gives one `BackendRuntimeError` line naming the
runtime's op and operator and our layer (IR node), through the emitters' node maps.

Every model here is emitted from IR by the real backends, then made genuinely invalid the way a
lowering bug would (a zero stride, a reshape to the wrong size, an attribute out of range, an op
type nobody implements) by editing the emitted model with the same object APIs the writers use,
and run by the real onnxruntime / LiteRT through the bundle loader.
"""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from ai_edge_litert import schema_py_generated as fb

from edgecompile.backends.onnx import emit_onnx
from edgecompile.backends.tflite import emit_tflite
from edgecompile.backends.tflite.builder import BUILTIN_NAMES
from edgecompile.container import write_container
from edgecompile.ir import Graph, infer_shapes
from edgecompile.bundle.onnx_session import parse_ort_error
from edgecompile.bundle.ship import ship
from edgecompile.bundle import BackendRuntimeError, BundleError, NodeMap, load_bundle
from edgecompile.bundle.tflite_model import pack_model
from edgecompile.bundle.tflite_session import parse_litert_error


def _vad_graph() -> Graph:
    """Conv1d front end, a channel slice (the silero-vad split), an activation, a flatten."""
    rng = np.random.default_rng(0)
    g = Graph("vad")
    x = g.add_input("x", (2, 1, 32))
    w = g.add_const("encoder.0.conv.weight", rng.standard_normal((8, 1, 3)).astype(np.float32))
    b = g.add_const("encoder.0.conv.bias", rng.standard_normal(8).astype(np.float32))
    h = g.add_node("conv", [x, w, b], {"stride": [1], "padding": [1], "dilation": [1], "groups": 1},
                   name="encoder.0.conv").output
    h = g.add_node("slice", [h], {"axis": 1, "start": 0, "end": 4, "step": 1}, name="encoder.1.split").output
    h = g.add_node("relu", [h], name="encoder.1.act").output
    h = g.add_node("reshape", [h], {"shape": [2, 128]}, name="head.flatten").output
    h = g.add_node("softmax", [h], {"axis": -1}, name="head.softmax").output
    g.outputs = [h]
    infer_shapes(g)
    return g


def _embedding_graph() -> Graph:
    g = Graph("emb")
    ids = g.add_input("ids", (2, 3), "int64")
    table = g.add_const("embed.weight", np.arange(20, dtype=np.float32).reshape(5, 4))
    h = g.add_node("gather", [table, ids], {"axis": 0}, name="embed").output
    g.outputs = [g.add_node("relu", [h], name="act").output]
    infer_shapes(g)
    return g


def _write(out: Path, graph: Graph, emitted, backend: str, model_bytes: bytes, with_map: bool = True) -> Path:
    """A bundle as the build writes it (model file, weights.ecw, manifest), with `model_bytes`."""
    out.mkdir(parents=True)
    name = "model.onnx" if backend == "onnx" else "model.tflite"
    (out / name).write_bytes(model_bytes)
    write_container(out / "weights.ecw", emitted.tensors, {k: q for k, q in emitted.quant.items() if q is not None})
    io = lambda vs: [{"name": v.name, "shape": list(v.shape), "dtype": v.dtype} for v in vs]  # noqa: E731
    manifest = {"format": "edgecompile-bundle", "version": 1, "backend": backend, "model": name,
                "weights": "weights.ecw", "inputs": io(graph.inputs), "outputs": io(graph.outputs),
                "target": "host", "edgecompile_version": "test"}
    if with_map:
        manifest["node_map"] = emitted.node_map
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


# -- TFLite --------------------------------------------------------------------------------------
def _tflite(graph: Graph):
    em = emit_tflite(graph, embed_weights=False)
    return em, fb.ModelT.InitFromPackedBuf(bytearray(em.model_bytes), 0)


def _operators(model: fb.ModelT, op: str) -> list[tuple[int, fb.OperatorT]]:
    sg = model.subgraphs[0]
    out = []
    for i, o in enumerate(sg.operators):
        c = model.operatorCodes[o.opcodeIndex]
        if BUILTIN_NAMES[max(c.builtinCode, c.deprecatedBuiltinCode)] == op:
            out.append((i, o))
    return out


def _set_const(model: fb.ModelT, tensor_index: int, value: np.ndarray) -> None:
    t = model.subgraphs[0].tensors[tensor_index]
    model.buffers[t.buffer].data = np.ascontiguousarray(value).view(np.uint8).reshape(-1)


def test_zero_stride_slice_names_strided_slice_and_the_layer(tmp_path):
    """The rank-3 slice bug, made again by hand: a 0 in the strides of the slice after the Conv1d."""
    g = _vad_graph()
    em, model = _tflite(g)
    [(index, op)] = _operators(model, "STRIDED_SLICE")
    _set_const(model, op.inputs[3], np.array([1, 0, 1, 1], np.int32))
    bundle = _write(tmp_path / "b", g, em, "tflite", pack_model(model))
    with pytest.raises(BackendRuntimeError) as info:
        load_bundle(bundle)
    e = info.value
    assert (e.runtime, e.stage, e.op, e.operator) == ("LiteRT", "prepare", "STRIDED_SLICE", str(index))
    assert (e.layer, e.ir_op) == ("encoder.1.split", "slice")
    msg = str(e)
    assert "\n" not in msg and "stride value has to be non-zero" in msg
    assert "'encoder.1.split'" in msg and "STRIDED_SLICE" in msg and "--backend onnx" in msg
    assert isinstance(e, RuntimeError) and not isinstance(e, BundleError)


def test_node_map_passed_by_the_caller_when_the_manifest_has_none(tmp_path):
    g = _vad_graph()
    em, model = _tflite(g)
    [(_, op)] = _operators(model, "STRIDED_SLICE")
    _set_const(model, op.inputs[3], np.array([1, 0, 1, 1], np.int32))
    bundle = _write(tmp_path / "b", g, em, "tflite", pack_model(model), with_map=False)
    with pytest.raises(BackendRuntimeError) as info:
        load_bundle(bundle)
    assert info.value.layer is None and "layer unknown" in str(info.value)
    assert info.value.op == "STRIDED_SLICE"
    with pytest.raises(BackendRuntimeError, match=r"of layer 'encoder\.1\.split' \(slice\)"):
        load_bundle(bundle, node_map=em.node_map)


def test_xnnpack_failure_is_traced_to_the_operator(tmp_path):
    """A reshape to the wrong element count fails inside XNNPACK, whose message names only the
    delegate; the loader repeats the step on LiteRT's own kernels to find RESHAPE and its layer."""
    g = _vad_graph()
    em, model = _tflite(g)
    spans = NodeMap(em.node_map)
    # the flatten's own RESHAPE (its span also holds the conversion out of the channels-last layout)
    index, op = [(i, o) for i, o in _operators(model, "RESHAPE") if spans.lookup(i)[0] == "head.flatten"][-1]
    _set_const(model, op.inputs[1], np.array([2, 100], np.int32))
    op.builtinOptions.newShape = [2, 100]
    bundle = _write(tmp_path / "b", g, em, "tflite", pack_model(model))
    with pytest.raises(BackendRuntimeError) as info:
        load_bundle(bundle)
    e = info.value
    assert (e.op, e.operator, e.layer, e.ir_op) == ("RESHAPE", str(index), "head.flatten", "reshape")
    assert "256 != 200" in e.detail and "Delegate" not in str(e)


def test_missing_kernel_version_names_the_first_operator_using_it(tmp_path):
    g = _vad_graph()
    em, model = _tflite(g)
    [(index, op)] = _operators(model, "RELU")
    model.operatorCodes[op.opcodeIndex].version = 99
    bundle = _write(tmp_path / "b", g, em, "tflite", pack_model(model))
    with pytest.raises(BackendRuntimeError) as info:
        load_bundle(bundle)
    e = info.value
    assert (e.stage, e.op, e.operator, e.layer) == ("load", "RELU", str(index), "encoder.1.act")
    assert "version 99" in str(e) and "\n" not in str(e)


def test_failure_while_running_names_the_layer(tmp_path):
    g = _embedding_graph()
    em = emit_tflite(g, embed_weights=False)
    bundle = _write(tmp_path / "b", g, em, "tflite", em.model_bytes)
    session = load_bundle(bundle)
    ok = session.run(np.array([[0, 1, 2], [3, 4, 0]], np.int64))[0]
    assert ok.shape == (2, 3, 4)
    with pytest.raises(BackendRuntimeError) as info:
        session.run(np.array([[0, 1, 2], [3, 4, 9]], np.int64))       # row 9 of a 5-row table
    e = info.value
    assert (e.stage, e.op, e.layer, e.ir_op) == ("run", "GATHER", "embed", "gather")
    assert "out of bounds" in str(e)


def test_a_damaged_tflite_file_stays_a_bundle_error(tmp_path):
    g = _vad_graph()
    em = emit_tflite(g, embed_weights=False)
    bundle = _write(tmp_path / "b", g, em, "tflite", b"TFL3" + bytes(64))
    with pytest.raises(BundleError, match=r"model\.tflite: not a readable \.tflite model") as info:
        load_bundle(bundle)
    assert not isinstance(info.value, BackendRuntimeError) and "\n" not in str(info.value)


# -- ONNX -----------------------------------------------------------------------------------------
def _onnx(graph: Graph):
    em = emit_onnx(graph, embed_weights=False, minify=True)
    model = onnx.ModelProto()
    model.ParseFromString(em.model_bytes)
    return em, model


def _node(model, op_type: str) -> tuple[int, onnx.NodeProto]:
    [(i, n)] = [(i, n) for i, n in enumerate(model.graph.node) if n.op_type == op_type]
    return i, n


def test_onnx_bad_attribute_names_the_layer_of_a_minified_model(tmp_path):
    g = _vad_graph()
    em, model = _onnx(g)
    index, node = _node(model, "Softmax")
    assert node.name == ""                                   # minified: onnxruntime cannot name it
    node.attribute[0].i = 5                                  # axis 5 of a rank-2 tensor
    bundle = _write(tmp_path / "b", g, em, "onnx", model.SerializeToString())
    with pytest.raises(BackendRuntimeError) as info:
        load_bundle(bundle)
    e = info.value
    assert (e.runtime, e.stage, e.op, e.operator) == ("onnxruntime", "load", "Softmax", str(index))
    assert (e.layer, e.ir_op) == ("head.softmax", "softmax")
    assert "axis" in e.detail and "\n" not in str(e) and "--backend tflite" in str(e)


def test_onnx_unknown_op_names_op_and_layer(tmp_path):
    g = _vad_graph()
    em, model = _onnx(g)
    index, node = _node(model, "Relu")
    node.op_type = "Rectify"
    bundle = _write(tmp_path / "b", g, em, "onnx", model.SerializeToString())
    with pytest.raises(BackendRuntimeError) as info:
        load_bundle(bundle)
    e = info.value
    assert (e.op, e.operator, e.layer) == ("Rectify", str(index), "encoder.1.act")


def test_onnx_kernel_failure_while_running_names_the_layer(tmp_path):
    g = _vad_graph()
    em, model = _onnx(g)
    index, node = _node(model, "Reshape")
    shape = next(t for t in model.graph.initializer if t.name == node.input[1])
    shape.CopyFrom(onnx.numpy_helper.from_array(np.array([2, 100], np.int64), shape.name))
    bundle = _write(tmp_path / "b", g, em, "onnx", model.SerializeToString())
    session = load_bundle(bundle)
    with pytest.raises(BackendRuntimeError) as info:
        session.run(np.zeros((2, 1, 32), np.float32))
    e = info.value
    assert (e.stage, e.op, e.operator, e.layer, e.ir_op) == ("run", "Reshape", str(index), "head.flatten", "reshape")
    assert "requested shape" in e.detail and "::" not in e.detail and ".h:" not in e.detail


def test_missing_weight_is_still_a_bundle_error(tmp_path):
    g = _vad_graph()
    em, model = _onnx(g)
    bundle = _write(tmp_path / "b", g, em, "onnx", em.model_bytes)
    write_container(bundle / "weights.ecw", dict(list(em.tensors.items())[1:]))
    with pytest.raises(BundleError, match="cannot load the model") as info:
        load_bundle(bundle)
    assert not isinstance(info.value, BackendRuntimeError)


# -- the pieces -----------------------------------------------------------------------------------
def test_node_maps_cover_every_operator_in_order():
    g = _vad_graph()
    tfl, onx = emit_tflite(g, embed_weights=False), emit_onnx(g, embed_weights=False, minify=True)
    counts = {id(tfl): len(fb.ModelT.InitFromPackedBuf(bytearray(tfl.model_bytes), 0).subgraphs[0].operators),
              id(onx): len(onnx.load_from_string(onx.model_bytes).graph.node)}
    for em in (tfl, onx):
        spans = em.node_map
        firsts = [s[0] for s in spans]
        assert firsts == sorted(firsts) and len(set(firsts)) == len(firsts) and firsts[0] == 0
        assert all(f < counts[id(em)] for f, _, op in spans if op != "output")
        layers = [s[1] for s in spans if s[2] not in ("input", "output")]
        assert layers == [n.name for n in g.nodes]                   # every node emits an operator
        assert json.loads(json.dumps(spans)) == [list(s) for s in spans]
    nm = NodeMap(emit_tflite(g, embed_weights=False).node_map)
    assert nm.lookup(0) == ("encoder.0.conv", "conv") and nm.lookup(-1) is None
    assert NodeMap.of("not a map") is None and NodeMap.of(None) is None


def test_message_parsers():
    op, index, reason = parse_litert_error(
        "tflite/kernels/strided_slice.cc stride value has to be non-zeroNode number 3 (STRIDED_SLICE) failed "
        "to prepare.")
    assert (op, index, reason) == ("STRIDED_SLICE", 3, "stride value has to be non-zero")
    op, index, reason = parse_litert_error("Didn't find op for builtin opcode 'GELU' version '7'. An older "
                                           "version...\nRegistration failed.\n")
    assert (op, index) == ("GELU", None) and "version 7" in reason
    op, name, reason = parse_ort_error(
        "[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running Reshape node. Name:'#12' "
        "Status Message: /src/reshape_helper.h:91 onnxruntime::ReshapeHelper::ReshapeHelper(const "
        "onnxruntime::TensorShape&, onnxruntime::TensorShapeVector&, bool) input_shape_size == "
        "requested_shape_size was false. The input tensor cannot be reshaped.\n")
    assert (op, name) == ("Reshape", "#12")
    assert reason.startswith("input_shape_size == requested_shape_size was false")
    op, name, _ = parse_ort_error('[ONNXRuntimeError] : 10 : INVALID_GRAPH : This is an invalid model. In Node, '
                                  '("", FooBar, "", -1) : ("x": tensor(float),) -> ("y",) , Error No Op')
    assert (op, name) == ("FooBar", "")
    assert parse_ort_error("something else entirely")[:2] == (None, None)


def test_copied_loader_without_torch_names_the_layer(tmp_path):
    """The bundle package as shipped in a bundle's python/ folder (no torch, no other edgecompile module)."""
    import subprocess
    import sys

    g = _vad_graph()
    em, model = _tflite(g)
    [(_, op)] = _operators(model, "STRIDED_SLICE")
    _set_const(model, op.inputs[3], np.array([1, 0, 1, 1], np.int32))
    bundle = _write(tmp_path / "b", g, em, "tflite", pack_model(model))
    py = tmp_path / "python"
    ship(py)
    script = ("import sys; sys.modules['torch'] = None\n"
              "import edgecompile.bundle as bundle\n"
              f"assert bundle.__file__.startswith({str(py)!r}), bundle.__file__\n"
              "try:\n"
              f"    bundle.load_bundle({str(bundle)!r})\n"
              "except bundle.BackendRuntimeError as e:\n"
              "    print('CAUGHT', e.op, e.layer, str(e))\n")
    run = subprocess.run([sys.executable, "-c", script], cwd=py, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    line = [x for x in run.stdout.splitlines() if x.startswith("CAUGHT")]
    assert line and line[0].startswith("CAUGHT STRIDED_SLICE encoder.1.split LiteRT cannot prepare")
