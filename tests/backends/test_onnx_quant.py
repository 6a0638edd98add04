"""Quantized graphs through the ONNX backend vs the executor's fake-quant numerics.

Graphs are quantized by hand here (the convention of ir/graph.py: int8 per-channel symmetric
weights, int32 bias with scale s_in * s_w, per-tensor asymmetric int8 activations from calibration
ranges), so these tests do not depend on the quantize pass. onnxruntime's integer kernels may round
an intermediate differently from float fake quantization, so outputs must agree within two
quantization steps of the output.
"""

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgecompile.backends.onnx import emit_onnx
from edgecompile.ir import Graph, QuantParams, infer_shapes, run_graph, verify
from edgecompile.bundle.onnx_session import create_session

MODES = [("int8", "qdq"), ("uint8", "qdq"), ("int8", "integer"), ("uint8", "integer")]


def _float_values(g: Graph):
    vals = [v for v in g.inputs if v.dtype == "float32"]
    return vals + [n.output for n in g.nodes if n.output.dtype == "float32"]


FIXED = {"softmax": (1 / 256, -128), "sigmoid": (1 / 256, -128), "tanh": (1 / 128, 0)}
SHARED = {"reshape", "transpose", "max_pool", "slice", "pad", "expand"}


def quantize_by_hand(g: Graph, calib: list[np.ndarray]) -> Graph:
    """Quantizes `g` in place following the IR convention (incl. TFLite's fixed and shared
    activation parameters); returns it."""
    probe = g.copy()
    probe.outputs = _float_values(probe)
    outs = run_graph(probe, *calib, fake_quant=False)
    outs = outs if isinstance(outs, tuple) else (outs,)
    for v, o in zip(_float_values(g), outs):
        op = v.producer.op if v.producer is not None else None
        if op in FIXED:
            v.quant = QuantParams([FIXED[op][0]], [FIXED[op][1]])
        elif op in SHARED and v.producer.inputs[0].quant is not None:
            v.quant = v.producer.inputs[0].quant
        else:
            lo, hi = min(float(o.min()), 0.0), max(float(o.max()), 0.0)
            scale = max(hi - lo, 1e-8) / 255.0
            v.quant = QuantParams([scale], [int(np.clip(np.rint(-128 - lo / scale), -128, 127))])
    for node in g.nodes:
        if node.op not in ("linear", "conv"):
            continue
        x, w, b = node.input(0), node.input(1), node.input(2)
        s_w = (np.abs(w.data).reshape(w.data.shape[0], -1).max(1) / 127).astype(np.float32)
        qw = QuantParams(s_w, np.zeros_like(s_w, np.int32), axis=0)
        w.data, w.quant = qw.quantize(w.data), qw
        if b is not None:
            s_b = (np.float32(x.quant.scale[0]) * s_w).astype(np.float32)
            qb = QuantParams(s_b, np.zeros_like(s_b, np.int32), axis=0, dtype="int32")
            b.data, b.quant = qb.quantize(b.data), qb
    verify(g)
    return g


def _rng_f(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def mlp(rng):
    g = Graph("mlp")
    x = g.add_input("x", (8, 16))
    h = g.add_node("linear", [x, g.add_const("fc1.weight", _rng_f(rng, 32, 16)),
                              g.add_const("fc1.bias", _rng_f(rng, 32))]).output
    h = g.add_node("relu", [h]).output
    y = g.add_node("linear", [h, g.add_const("fc2.weight", _rng_f(rng, 10, 32)),
                              g.add_const("fc2.bias", _rng_f(rng, 10))]).output
    g.outputs = [y]
    return g, [_rng_f(rng, 8, 16)]


def cnn(rng):
    g = Graph("cnn")
    x = g.add_input("x", (2, 3, 12, 12))
    conv = {"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "groups": 1}
    h = g.add_node("conv", [x, g.add_const("c1.weight", _rng_f(rng, 8, 3, 3, 3)),
                            g.add_const("c1.bias", _rng_f(rng, 8))], conv).output
    h = g.add_node("relu", [h]).output
    d = g.add_node("conv", [h, g.add_const("dw.weight", _rng_f(rng, 8, 1, 3, 3)),
                            g.add_const("dw.bias", _rng_f(rng, 8))], conv | {"groups": 8}).output
    h = g.add_node("add", [h, d]).output
    h = g.add_node("max_pool", [h], {"kernel": [2, 2], "stride": [2, 2], "padding": [0, 0],
                                     "dilation": [1, 1], "ceil_mode": False}).output
    h = g.add_node("mean", [h], {"axes": [2, 3], "keepdims": False}).output
    y = g.add_node("linear", [h, g.add_const("fc.weight", _rng_f(rng, 5, 8)),
                              g.add_const("fc.bias", _rng_f(rng, 5))]).output
    g.outputs = [y]
    return g, [_rng_f(rng, 2, 3, 12, 12)]


def attention(rng):
    """One self-attention block over [B, T, D] with factorized (two-linear) output projection."""
    g = Graph("attn")
    x = g.add_input("x", (2, 6, 16))
    def const(name, *shape):
        return g.add_const(name, _rng_f(rng, *shape))

    q = g.add_node("linear", [x, const("q.weight", 16, 16), const("q.bias", 16)]).output
    k = g.add_node("linear", [x, g.add_const("k.weight", _rng_f(rng, 16, 16)), None]).output
    kt = g.add_node("transpose", [k], {"perm": [0, 2, 1]}).output
    s = g.add_node("matmul", [q, kt]).output
    s = g.add_node("mul", [s, g.add_const("inv_sqrt_d", np.float32(0.25))]).output
    p = g.add_node("softmax", [s], {"axis": -1}).output
    a = g.add_node("matmul", [p, x]).output
    u = g.add_node("linear", [a, g.add_const("o.0.weight", _rng_f(rng, 4, 16)), None]).output
    o = g.add_node("linear", [u, const("o.1.weight", 16, 4), const("o.1.bias", 16)]).output
    h = g.add_node("add", [x, o]).output
    h = g.add_node("layer_norm", [h, const("ln.weight", 16), const("ln.bias", 16)],
                   {"normalized_ndim": 1, "eps": 1e-5}).output
    y = g.add_node("gelu", [h], {"approximate": "none"}).output
    g.outputs = [y]
    return g, [_rng_f(rng, 2, 6, 16)]


GRAPHS = {"mlp": mlp, "cnn": cnn, "attention": attention}


def _build(name, seed=0):
    rng = np.random.default_rng(seed)
    g, calib = GRAPHS[name](rng)
    infer_shapes(g)
    fp32 = g.copy()
    quantize_by_hand(g, calib)
    return fp32, g, [_rng_f(rng, *a.shape) * 0.9 for a in calib]


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_float_graph_matches_executor(name):
    fp32, _, x = _build(name)
    m = emit_onnx(fp32, embed_weights=True)
    onnx.checker.check_model(onnx.load_from_string(m.model_bytes), full_check=True)
    got = create_session(m.model_bytes, {}).run(None, {"x": x[0]})[0]
    np.testing.assert_allclose(got, run_graph(fp32, *x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("activations,int8_ops", MODES)
@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_quantized_graph_within_two_steps(name, activations, int8_ops):
    _, g, x = _build(name)
    m = emit_onnx(g, embed_weights=False, activations=activations, int8_ops=int8_ops)
    embedded = emit_onnx(g, embed_weights=True, activations=activations, int8_ops=int8_ops)
    onnx.checker.check_model(onnx.load_from_string(embedded.model_bytes), full_check=True)
    got = create_session(m.model_bytes, m.tensors).run(None, {"x": x[0]})[0]
    want = run_graph(g, *x)
    step = float(g.outputs[0].quant.scale[0])
    err = np.abs(got - want)
    assert err.max() <= 2 * step + 1e-6, f"max error {err.max() / step:.2f} steps"
    assert np.mean(err > 0.5 * step) < 0.05   # almost everything on the very same level


def _op_counts(model_bytes):
    return Counter(n.op_type for n in onnx.load_from_string(model_bytes).graph.node)


def test_qdq_structure_and_container_tensors():
    _, g, _ = _build("cnn")
    m = emit_onnx(g, embed_weights=False)
    ops = _op_counts(m.model_bytes)
    n_act = sum(1 for v in g.values() if v.quant is not None and not v.is_const)
    n_weights = sum(1 for v in g.consts.values() if v.quant is not None)
    assert ops["QuantizeLinear"] == n_act
    assert ops["DequantizeLinear"] == n_act + n_weights
    assert m.tensors["c1.weight"].dtype == np.int8 and m.tensors["c1.bias"].dtype == np.int32
    assert m.tensors["fc.weight"].shape == (8, 5)                # transposed for MatMul: axis 0 -> 1
    # the scales live in the model (DequantizeLinear inputs): the container would only repeat them
    assert m.quant == dict.fromkeys(m.tensors)
    model = onnx.load_from_string(m.model_bytes)
    init = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer if not t.data_location}
    dq = {n.input[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    np.testing.assert_array_equal(init[dq["fc.weight"].input[1]], g.consts["fc.weight"].quant.scale)
    assert [a.i for a in dq["fc.weight"].attribute if a.name == "axis"] == []    # axis 1: the default
    # an int32 bias is dequantized with s_x * s_w, the float32 product the quantize pass used,
    # computed in the graph from the two scales the model holds anyway (no zero point: it is 0)
    [mul] = [n for n in model.graph.node if dq["c1.bias"].input[1] in n.output]
    assert mul.op_type == "Mul" and len(dq["c1.bias"].input) == 2
    s_x, s_w = (init[i] for i in mul.input)
    np.testing.assert_array_equal(s_x * s_w, g.consts["c1.bias"].quant.scale)
    np.testing.assert_array_equal(s_w, g.consts["c1.weight"].quant.scale)
    # uint8 activations: same real values, zero points shifted by 128
    u8 = onnx.load_from_string(emit_onnx(g, embed_weights=True, activations="uint8").model_bytes)
    u8_init = {t.name: onnx.numpy_helper.to_array(t) for t in u8.graph.initializer}
    qs = [n for n in u8.graph.node if n.op_type == "QuantizeLinear"]
    assert len(qs) == n_act and all(u8_init[n.input[2]].dtype == np.uint8 for n in qs)
    act_zps = sorted({int(v.quant.zero_point[0]) + 128 for v in g.values() if v.quant is not None and not v.is_const})
    assert sorted({int(u8_init[n.input[2]]) for n in qs}) == act_zps


def test_integer_ops_structure():
    _, g, _ = _build("attention")
    ops = _op_counts(emit_onnx(g, embed_weights=True, int8_ops="integer").model_bytes)
    assert ops["MatMulInteger"] == 6          # 4 linears (q, k, factorized o) + 2 activation matmuls
    assert ops["MatMul"] == 0 and ops["Gemm"] == 0
    _, g, _ = _build("cnn")
    ops = _op_counts(emit_onnx(g, embed_weights=True, int8_ops="integer").model_bytes)
    assert ops["QLinearConv"] == 2 and ops["Conv"] == 0 and ops["MatMulInteger"] == 1


def _optimized_ops(model_bytes, path):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.optimized_model_filepath = str(path)
    ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
    return _op_counts(path.read_bytes())


def test_onnxruntime_fuses_default_qdq_into_integer_kernels(tmp_path):
    """The QDQ form is only worth it if onnxruntime recognizes it: check its optimized graph."""
    _, g, _ = _build("cnn")
    ops = _optimized_ops(emit_onnx(g, embed_weights=True).model_bytes, tmp_path / "cnn.onnx")
    assert ops["QLinearConv"] == 2 and ops["Conv"] == 0 and ops["QLinearAdd"] == 1 and ops["QGemm"] == 1
    _, g, _ = _build("attention")
    ops = _optimized_ops(emit_onnx(g, embed_weights=True).model_bytes, tmp_path / "attn.onnx")
    assert ops["MatMul"] == ops["Gemm"] == 0 and ops["QLinearMatMul"] + ops["QGemm"] == 6
