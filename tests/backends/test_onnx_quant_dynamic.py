"""Dynamic-range int8 (``QuantConfig(activations="dynamic")``) through the ONNX backend.

The executor fake-quantizes each layer input per tensor at run time exactly as onnxruntime's
DynamicQuantizeLinear does, and the integer matmul is exact, so onnxruntime must agree with the
executor to float rounding (1e-5 of the output's scale); against the float graph the per-sample
cosine must stay above 0.999 on these random-weight models.
"""

from collections import Counter

import numpy as np
import onnx
import pytest

from edgecompile.ir.analysis import macs_by_arith
from edgecompile.backends.onnx import emit_onnx
from edgecompile.ir import Graph, infer_shapes, run_graph, verify
from edgecompile.bundle.onnx_session import create_session
from edgecompile.passes.quantize import QuantConfig, QuantizePass, parse_quant_spec

CONV = {"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "groups": 1}


def _f(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def seq_model(rng) -> tuple[Graph, np.ndarray]:
    """[B, T, D] tokens: linear (3-D input, bias), gelu, matmul by a constant, a float-activation
    matmul (attention-like), layer norm."""
    g = Graph("seq")
    x = g.add_input("x", (4, 6, 16))
    h = g.add_node("linear", [x, g.add_const("fc1.weight", _f(rng, 32, 16)), g.add_const("fc1.bias", _f(rng, 32))],
                   name="fc1").output
    h = g.add_node("gelu", [h], {"approximate": "none"}, name="act").output
    h = g.add_node("matmul", [h, g.add_const("proj", _f(rng, 32, 16) * 0.2)], name="proj").output
    t = g.add_node("transpose", [h], {"perm": [0, 2, 1]}, name="t").output
    s = g.add_node("matmul", [h, t], name="scores").output
    y = g.add_node("layer_norm", [s, g.add_const("ln.weight", np.ones(6, np.float32)),
                                  g.add_const("ln.bias", np.zeros(6, np.float32))],
                   {"normalized_ndim": 1, "eps": 1e-5}, name="ln").output
    g.outputs = [y]
    infer_shapes(g)
    verify(g)
    return g, _f(rng, 4, 6, 16)


def conv_model(rng) -> tuple[Graph, np.ndarray]:
    """A CNN: conv, relu, depthwise conv, mean, linear."""
    g = Graph("cnn")
    x = g.add_input("x", (2, 3, 10, 10))
    h = g.add_node("conv", [x, g.add_const("c1.weight", _f(rng, 8, 3, 3, 3)), g.add_const("c1.bias", _f(rng, 8))],
                   CONV, name="c1").output
    h = g.add_node("relu", [h], name="r1").output
    h = g.add_node("conv", [h, g.add_const("dw.weight", _f(rng, 8, 1, 3, 3)), g.add_const("dw.bias", _f(rng, 8))],
                   CONV | {"groups": 8}, name="dw").output
    h = g.add_node("mean", [h], {"axes": [2, 3], "keepdims": False}, name="gap").output
    y = g.add_node("linear", [h, g.add_const("fc.weight", _f(rng, 5, 8)), g.add_const("fc.bias", _f(rng, 5))],
                   name="fc").output
    g.outputs = [y]
    infer_shapes(g)
    verify(g)
    return g, _f(rng, 2, 3, 10, 10)


MODELS = {"seq": seq_model, "cnn": conv_model}


def _cos(a, b):
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return float(np.mean((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))


def _dynamic(name):
    fp32, x = MODELS[name](np.random.default_rng(0))
    q = fp32.copy()
    res = QuantizePass(QuantConfig(activations="dynamic"))(q)    # no calibration needed
    return fp32, q, x, res


def test_pass_marks_arith_and_keeps_activations_and_biases_float():
    _, q, _, res = _dynamic("seq")
    arith = {n.name: n.meta.get("arith") for n in q.nodes if "arith" in n.meta}
    assert arith == {"fc1": "int8-dynamic", "proj": "int8-dynamic", "scores": "fp32"}
    assert all(n.output.quant is None for n in q.nodes)
    assert q.consts["fc1.weight"].data.dtype == np.int8 and q.consts["fc1.bias"].quant is None
    assert {r["node"]: r["arith"] for r in res.records} == {"fc1": "int8-dynamic", "proj": "int8-dynamic"}
    macs = macs_by_arith(q)
    assert macs["int8"] == 0 and macs["int8-dynamic"] == 4 * 6 * (32 * 16 + 16 * 32) and macs["fp32"] == 4 * 6 * 6 * 16
    assert parse_quant_spec("int8:dynamic") == QuantConfig(activations="dynamic")


@pytest.mark.parametrize("form", ["standard", "contrib"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_onnxruntime_matches_the_executor(name, form):
    fp32, q, x, _ = _dynamic(name)
    m = emit_onnx(q, embed_weights=False, dynamic_ops=form)
    got = create_session(m.model_bytes, m.tensors).run(None, {"x": x})[0]
    want = run_graph(q, x)
    scale = float(np.abs(want).max())
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * scale)
    assert _cos(got, run_graph(fp32, x, fake_quant=False)) > 0.999
    # the run-time quantization is real: without it the executor differs from onnxruntime
    assert np.abs(run_graph(q, x, fake_quant=False) - got).max() > 1e-4 * scale


def test_structure_standard_and_contrib():
    _, q, _, _ = _dynamic("seq")
    std = Counter(n.op_type for n in onnx.load_from_string(emit_onnx(q, embed_weights=True).model_bytes).graph.node)
    assert std["DynamicQuantizeLinear"] == 2 and std["MatMulInteger"] == 2 and std["QuantizeLinear"] == 0
    assert std["MatMul"] == 1      # the activation x activation matmul stays float
    m = emit_onnx(q, embed_weights=False, dynamic_ops="contrib")
    contrib = Counter(n.op_type for n in onnx.load_from_string(m.model_bytes).graph.node)
    assert contrib["DynamicQuantizeMatMul"] == 2 and contrib["DynamicQuantizeLinear"] == 0
    # the container holds the int8 weights as the integer ops read them ([in, out] for linear)
    assert m.tensors["fc1.weight"].dtype == np.int8 and m.tensors["fc1.weight"].shape == (16, 32)
    assert m.quant["fc1.weight"] is None      # its scales are the model's (a DynamicQuantizeMatMul input)
    _, qc, _, _ = _dynamic("cnn")
    cnn = Counter(n.op_type for n in onnx.load_from_string(emit_onnx(qc, embed_weights=True).model_bytes).graph.node)
    assert cnn["ConvInteger"] == 2 and cnn["MatMulInteger"] == 1


def test_negative_cases():
    fp32, q, x, _ = _dynamic("seq")
    with pytest.raises(ValueError, match="dynamic_ops"):
        emit_onnx(q, embed_weights=True, dynamic_ops="qlinear")
    # a node marked dynamic whose weight is float is written in float (nothing to multiply in int8)
    f = fp32.copy()
    f.node("fc1").meta["arith"] = "int8-dynamic"
    ops = Counter(n.op_type for n in onnx.load_from_string(emit_onnx(f, embed_weights=True).model_bytes).graph.node)
    assert ops["DynamicQuantizeLinear"] == 0 and ops["MatMulInteger"] == 0
    # full int8 and weights-only graphs get no dynamic ops
    w = fp32.copy()
    QuantizePass(QuantConfig(activations="weights_only"))(w)
    assert all(n.meta["arith"] == "fp32" for n in w.nodes if "arith" in n.meta)
    ops = Counter(n.op_type for n in onnx.load_from_string(emit_onnx(w, embed_weights=True).model_bytes).graph.node)
    assert ops["DynamicQuantizeLinear"] == 0
