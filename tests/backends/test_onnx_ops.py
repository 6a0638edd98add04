"""Every IR op through the ONNX backend: onnxruntime vs the torch executor (1e-5), plus structure.

Each case is a tiny hand-built graph and the exact ONNX op multiset it must lower to.
"""

from collections import Counter

import numpy as np
import onnx
import pytest
import torch

from edgecompile.backends.onnx import OnnxEmitError, emit_onnx
from edgecompile.backends.onnx.ops import LOWERINGS
from edgecompile.ir import OPS, Graph, infer_shapes, run_graph
from edgecompile.bundle.onnx_session import create_session

RNG = np.random.default_rng(0)


def _f(*shape, positive=False):
    a = RNG.standard_normal(shape).astype(np.float32)
    return np.abs(a) + 0.1 if positive else a


def _case(inputs: dict, body, consts=None):
    """inputs: name -> example array; body(g, vals) -> list of output values."""
    def build():
        g = Graph("case")
        vals = [g.add_input(k, a.shape, str(a.dtype)) for k, a in inputs.items()]
        g.outputs = list(body(g, vals))
        infer_shapes(g)
        return g, list(inputs.values())
    return build


def _unary(op, attrs=None, positive=False, shape=(2, 3, 5)):
    return _case({"x": _f(*shape, positive=positive)},
                 lambda g, v: [g.add_node(op, [v[0]], attrs or {}).output])


def _binary(op, a, b):
    return _case({"a": a, "b": b}, lambda g, v: [g.add_node(op, v).output])


def _with_const(op, x, c, attrs=None):
    return _case({"x": x}, lambda g, v: [g.add_node(op, [v[0], g.add_const("c", c)], attrs or {}).output])


def _linear(x_shape, bias=True):
    def body(g, v):
        w = g.add_const("fc.weight", _f(6, x_shape[-1]))
        b = g.add_const("fc.bias", _f(6)) if bias else None
        return [g.add_node("linear", [v[0], w, b]).output]
    return _case({"x": _f(*x_shape)}, body)


def _conv(x_shape, w_shape, bias=True, **attrs):
    a = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1} | attrs
    nd = len(w_shape) - 2
    a = {k: ([v] * nd if k != "groups" else v) for k, v in a.items()}

    def body(g, v):
        w = g.add_const("conv.weight", _f(*w_shape))
        b = g.add_const("conv.bias", _f(w_shape[0])) if bias else None
        return [g.add_node("conv", [v[0], w, b], a).output]
    return _case({"x": _f(*x_shape)}, body)


def _conv_transpose(x_shape, w_shape, bias=True, **attrs):
    a = {"stride": 1, "padding": 0, "output_padding": 0, "dilation": 1, "groups": 1} | attrs
    nd = len(w_shape) - 2
    a = {k: ([v] * nd if k != "groups" else v) for k, v in a.items()}

    def body(g, v):
        w = g.add_const("up.weight", _f(*w_shape))
        b = g.add_const("up.bias", _f(w_shape[1] * a["groups"])) if bias else None
        return [g.add_node("conv_transpose", [v[0], w, b], a).output]
    return _case({"x": _f(*x_shape)}, body)


def _resize(x_shape, mode, size, scales=None, align_corners=False):
    attrs = {"mode": mode, "size": list(size), "scales": scales, "align_corners": align_corners}
    return _case({"x": _f(*x_shape)}, lambda g, v: [g.add_node("resize", [v[0]], attrs).output])


def _batch_norm(affine):
    def body(g, v):
        ins = [v[0], g.add_const("mean", _f(4)), g.add_const("var", _f(4, positive=True))]
        if affine:
            ins += [g.add_const("w", _f(4)), g.add_const("b", _f(4))]
        return [g.add_node("batch_norm", ins, {"eps": 1e-5}).output]
    return _case({"x": _f(2, 4, 3, 3)}, body)


def _layer_norm(k, affine):
    def body(g, v):
        shape = v[0].shape[-k:]
        ins = [v[0]] + ([g.add_const("w", _f(*shape)), g.add_const("b", _f(*shape))] if affine else [])
        return [g.add_node("layer_norm", ins, {"normalized_ndim": k, "eps": 1e-5}).output]
    return _case({"x": _f(2, 3, 8)}, body)


def _group_norm(x_shape, groups, affine=True):
    def body(g, v):
        c = x_shape[1]
        ins = [v[0]] + ([g.add_const("w", _f(c)), g.add_const("b", _f(c))] if affine else [])
        return [g.add_node("group_norm", ins, {"num_groups": groups, "eps": 1e-5}).output]
    return _case({"x": _f(*x_shape) * 3 + 1}, body)


def _tiny_and_large(op, attrs):
    """Values where log1p / softplus lose accuracy when written naively: tiny, huge, near thresholds."""
    x = np.array([[1e-12, -3e-9, 1e-5, 0.5, 4.0, -0.9], [-90.0, -20.0, 0.74, 0.76, 19.0, 95.0]], np.float32)
    return _case({"x": x}, lambda g, v: [g.add_node(op, v, attrs).output])


def _pool(op, x_shape, **attrs):
    return _case({"x": _f(*x_shape)}, lambda g, v: [g.add_node(op, v, attrs).output])


def _where():
    def body(g, v):
        cond = g.add_node("gt", [v[0], g.add_const("zero", np.zeros((), np.float32))]).output
        return [g.add_node("where", [cond, v[0], v[1]]).output]
    return _case({"a": _f(3, 4), "b": _f(1, 4)}, body)


def _embedding():
    def body(g, v):
        table = g.add_const("emb.weight", _f(10, 4))
        return [g.add_node("gather", [table, v[0]], {"axis": 0}).output]
    return _case({"ids": RNG.integers(0, 10, (2, 5)).astype(np.int64)}, body)


def _gather_axis1():
    return _case({"x": _f(2, 6, 3)}, lambda g, v: [
        g.add_node("gather", [v[0], g.add_const("idx", np.array([4, 0, 4], np.int64))], {"axis": 1}).output])


def _concat():
    return _case({"a": _f(2, 3), "b": _f(2, 1), "c": _f(2, 2)},
                 lambda g, v: [g.add_node("concat", v, {"axis": 1}).output])


def _cast_roundtrip():
    def body(g, v):
        i = g.add_node("cast", [v[0]], {"dtype": "int32"}).output
        return [g.add_node("cast", [i], {"dtype": "float32"}).output]
    return _case({"x": _f(3, 4) * 5}, body)


rounded = np.round(_f(3, 4))
POOL2 = dict(kernel=[3, 3], stride=[2, 2], padding=[1, 1])
CASES = {
    **{op: (_unary(op, positive=op in ("log", "sqrt", "rsqrt")), {t: 1})
       for op, t in [("relu", "Relu"), ("sigmoid", "Sigmoid"), ("tanh", "Tanh"), ("exp", "Exp"),
                     ("log", "Log"), ("sqrt", "Sqrt"), ("neg", "Neg"), ("abs", "Abs"), ("erf", "Erf"),
                     ("hardswish", "HardSwish"), ("hardsigmoid", "HardSigmoid")]},
    "silu": (_unary("silu"), {"Sigmoid": 1, "Mul": 1}),
    "rsqrt": (_unary("rsqrt", positive=True), {"Sqrt": 1, "Reciprocal": 1}),
    "gelu": (_unary("gelu", {"approximate": "none"}), {"Erf": 1, "Mul": 3, "Add": 1}),
    "gelu_tanh": (_unary("gelu", {"approximate": "tanh"}), {"Tanh": 1, "Mul": 6, "Add": 2}),
    "clip": (_unary("clip", {"min": 0.0, "max": 6.0}), {"Clip": 1}),
    "clip_max_only": (_unary("clip", {"min": None, "max": 0.5}), {"Clip": 1}),
    "softmax": (_unary("softmax", {"axis": -1}), {"Softmax": 1}),
    "log_softmax": (_unary("log_softmax", {"axis": 1}), {"LogSoftmax": 1}),
    **{op: (_binary(op, _f(2, 3, 5), _f(1, 5)), {t: 1})
       for op, t in [("add", "Add"), ("sub", "Sub"), ("mul", "Mul"), ("div", "Div"),
                     ("maximum", "Max"), ("minimum", "Min")]},
    "pow": (_binary("pow", _f(2, 5, positive=True), _f(1, 5)), {"Pow": 1}),
    **{op: (_binary(op, rounded, np.round(_f(1, 4))), {t: 1})
       for op, t in [("eq", "Equal"), ("lt", "Less"), ("gt", "Greater")]},
    "add_int_const": (_with_const("add", _f(2, 3), np.arange(3, dtype=np.int64)), {"Add": 1, "Cast": 1}),
    "linear_3d": (_linear((2, 4, 8)), {"MatMul": 1, "Add": 1}),
    "linear_2d": (_linear((4, 8)), {"Gemm": 1}),
    "linear_nobias": (_linear((2, 4, 8), bias=False), {"MatMul": 1}),
    "matmul": (_binary("matmul", _f(2, 3, 4), _f(2, 4, 5)), {"MatMul": 1}),
    "matmul_const": (_with_const("matmul", _f(2, 3, 4), _f(4, 5)), {"MatMul": 1}),
    "conv": (_conv((1, 4, 9, 9), (6, 2, 3, 3), stride=2, padding=1, dilation=1, groups=2), {"Conv": 1}),
    "conv_dilated_nobias": (_conv((1, 3, 9, 9), (4, 3, 3, 3), False, padding=2, dilation=2), {"Conv": 1}),
    "conv_depthwise": (_conv((1, 4, 8, 8), (4, 1, 3, 3), padding=1, groups=4), {"Conv": 1}),
    "conv1d": (_conv((2, 3, 16), (5, 3, 4), stride=2, padding=1), {"Conv": 1}),
    "conv_transpose": (_conv_transpose((1, 4, 5, 5), (4, 3, 3, 3), stride=2, padding=1, output_padding=1,
                                       groups=2), {"ConvTranspose": 1}),
    "conv_transpose_1d_dilated": (_conv_transpose((2, 3, 6), (3, 4, 3), False, stride=3, dilation=2),
                                  {"ConvTranspose": 1}),
    "resize_nearest": (_resize((1, 2, 4, 5), "nearest", (8, 10)), {"Resize": 1}),
    "resize_nearest_exact_1d": (_resize((2, 3, 5), "nearest_exact", (8,)), {"Resize": 1}),
    "resize_bilinear": (_resize((1, 2, 4, 5), "linear", (7, 9)), {"Resize": 1}),
    "resize_bilinear_corners": (_resize((1, 2, 4, 5), "linear", (7, 9), align_corners=True), {"Resize": 1}),
    "resize_bilinear_scales": (_resize((1, 2, 5, 6), "linear", (8, 10), scales=[1.7, 1.7]), {"Resize": 1}),
    "batch_norm": (_batch_norm(True), {"BatchNormalization": 1}),
    "batch_norm_plain": (_batch_norm(False), {"BatchNormalization": 1}),
    "layer_norm": (_layer_norm(1, True), {"LayerNormalization": 1}),
    "layer_norm_2d_plain": (_layer_norm(2, False), {"LayerNormalization": 1}),
    "group_norm": (_group_norm((2, 6, 4, 5), 3), {"Reshape": 4, "InstanceNormalization": 1, "Mul": 1, "Add": 1}),
    "group_norm_1d_per_channel": (_group_norm((2, 6, 7), 6), {"Reshape": 4, "InstanceNormalization": 1, "Mul": 1,
                                                              "Add": 1}),
    "group_norm_plain": (_group_norm((3, 4), 2, affine=False), {"Reshape": 2, "InstanceNormalization": 1}),
    "log1p": (_tiny_and_large("log1p", {}), {"Add": 1, "Sub": 1, "Log": 1, "Mul": 1, "Div": 1, "Equal": 1,
                                            "Where": 1}),
    "softplus": (_tiny_and_large("softplus", {"beta": 1.0, "threshold": 20.0}), {"Softplus": 1, "Greater": 1,
                                                                                "Where": 1}),
    "softplus_beta": (_tiny_and_large("softplus", {"beta": 2.0, "threshold": 1.5}),
                      {"Mul": 1, "Softplus": 1, "Div": 1, "Greater": 1, "Where": 1}),
    "max_pool": (_pool("max_pool", (1, 2, 9, 9), dilation=[1, 1], ceil_mode=False, **POOL2), {"MaxPool": 1}),
    "max_pool_ceil": (_pool("max_pool", (1, 2, 8, 8), kernel=[3, 3], stride=[2, 2], padding=[0, 0],
                            dilation=[1, 1], ceil_mode=True), {"MaxPool": 1}),
    "max_pool_1d": (_pool("max_pool", (2, 3, 10), kernel=[2], stride=[2], padding=[0], dilation=[2],
                          ceil_mode=False), {"MaxPool": 1}),
    "avg_pool": (_pool("avg_pool", (1, 2, 9, 9), ceil_mode=False, count_include_pad=True, **POOL2),
                 {"AveragePool": 1}),
    "avg_pool_exclude_pad": (_pool("avg_pool", (1, 2, 9, 9), ceil_mode=False, count_include_pad=False, **POOL2),
                             {"AveragePool": 1}),
    "avg_pool_ceil": (_pool("avg_pool", (1, 2, 8, 8), kernel=[3, 3], stride=[2, 2], padding=[1, 1],
                            ceil_mode=True, count_include_pad=True), {"Pad": 1, "AveragePool": 1}),
    "avg_pool_ceil_nopad": (_pool("avg_pool", (2, 3, 4, 5), kernel=[2, 2], stride=[2, 2], padding=[0, 0],
                                  ceil_mode=True, count_include_pad=True), {"AveragePool": 1}),
    "avg_pool_ceil_exclude_pad": (_pool("avg_pool", (1, 2, 8, 8), kernel=[3, 3], stride=[2, 2], padding=[1, 1],
                                        ceil_mode=True, count_include_pad=False), {"AveragePool": 1}),
    "avg_pool_1d_ceil": (_pool("avg_pool", (2, 3, 7), kernel=[2], stride=[2], padding=[0],
                               ceil_mode=True, count_include_pad=False), {"AveragePool": 1}),
    "mean": (_unary("mean", {"axes": [2, 3], "keepdims": True}, shape=(2, 3, 4, 5)), {"ReduceMean": 1}),
    "sum": (_unary("sum", {"axes": [-1], "keepdims": False}), {"ReduceSum": 1}),
    "reduce_max": (_unary("reduce_max", {"axes": [1], "keepdims": False}), {"ReduceMax": 1}),
    "reshape": (_unary("reshape", {"shape": [2, -1]}), {"Reshape": 1}),
    "transpose": (_unary("transpose", {"perm": [2, 0, 1]}), {"Transpose": 1}),
    "slice": (_unary("slice", {"axis": 2, "start": 1, "end": 2**62, "step": 2}), {"Slice": 1}),
    "concat": (_concat(), {"Concat": 1}),
    "pad": (_unary("pad", {"pads": [0, 0, 1, 0, 1, 2], "value": 0.5}), {"Pad": 1}),
    "gather_embedding": (_embedding(), {"Gather": 1}),
    "gather_axis1": (_gather_axis1(), {"Gather": 1}),
    "expand": (_unary("expand", {"shape": [4, 3, 5]}, shape=(1, 3, 1)), {"Expand": 1}),
    "where": (_where(), {"Greater": 1, "Where": 1}),
    "cast": (_cast_roundtrip(), {"Cast": 2}),
    "cumsum": (_unary("cumsum", {"axis": 2}), {"CumSum": 1}),
    "cumsum_int64": (_case({"x": np.arange(-6, 6, dtype=np.int64).reshape(3, 4)},
                           lambda g, v: [g.add_node("cumsum", [v[0]], {"axis": 1}).output]), {"CumSum": 1}),
}


def _run(model_bytes, tensors, graph, arrays):
    sess = create_session(model_bytes, tensors, threads=1)
    return sess.run(None, {v.name: a for v, a in zip(graph.inputs, arrays)})


def test_every_ir_op_has_a_lowering_and_a_case():
    assert set(LOWERINGS) == set(OPS)
    covered = set()
    for build, _ in CASES.values():
        g, _ = build()
        covered |= {n.op for n in g.nodes}
    assert covered == set(OPS)


@pytest.mark.parametrize("case", sorted(CASES))
def test_op_matches_executor(case):
    build, expected_ops = CASES[case]
    g, arrays = build()
    m = emit_onnx(g, embed_weights=True)
    model = onnx.load_from_string(m.model_bytes)
    onnx.checker.check_model(model, full_check=True)
    assert Counter(n.op_type for n in model.graph.node) == Counter(expected_ops)
    got = _run(m.model_bytes, {}, g, arrays)[0]
    want = run_graph(g, *arrays)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_opset_20_uses_gelu_op_and_18_reduce_axes_inputs():
    g, arrays = CASES["gelu_tanh"][0]()
    m = emit_onnx(g, embed_weights=True, opset=20)
    assert [op for op, _ in m.ops] == ["Gelu"] and m.ops[0][1] == 20
    np.testing.assert_allclose(_run(m.model_bytes, {}, g, arrays)[0], run_graph(g, *arrays), rtol=1e-5, atol=1e-5)
    g, arrays = CASES["reduce_max"][0]()
    m = emit_onnx(g, embed_weights=True, opset=18)
    assert m.ops == [("ReduceMax", 18)]
    np.testing.assert_allclose(_run(m.model_bytes, {}, g, arrays)[0], run_graph(g, *arrays), rtol=1e-5)


def test_group_norm_stays_exact_when_the_mean_dwarfs_the_spread():
    """Groups of mean 10 and std 0.05 (where onnxruntime's one-pass GroupNormalization-21 is 0.015
    off), at the default opset and at 21."""
    def body(g, v):
        return [g.add_node("group_norm", v, {"num_groups": 4, "eps": 1e-5}).output]
    x = (_f(2, 8, 6, 6) * 0.05 + 10).astype(np.float32)
    g, arrays = _case({"x": x}, body)()
    want = torch.nn.functional.group_norm(torch.from_numpy(x).double(), 4, eps=1e-5).numpy()
    for opset in (17, 21):
        m = emit_onnx(g, embed_weights=True, opset=opset)
        assert "GroupNormalization" not in {op for op, _ in m.ops}
        assert np.abs(_run(m.model_bytes, {}, g, arrays)[0] - want).max() < 1e-4


def test_group_norm_parameters_go_to_the_container():
    g, arrays = CASES["group_norm"][0]()
    m = emit_onnx(g, embed_weights=False)
    assert set(m.tensors) == {"w", "b"}
    np.testing.assert_allclose(_run(m.model_bytes, m.tensors, g, arrays)[0], run_graph(g, *arrays),
                               rtol=1e-5, atol=1e-5)


def test_external_weights_are_not_in_the_model_and_are_returned():
    g, arrays = CASES["linear_3d"][0]()
    embedded = emit_onnx(g, embed_weights=True)
    external = emit_onnx(g, embed_weights=False)
    w = g.consts["fc.weight"].data
    assert set(external.tensors) == {"fc.weight", "fc.bias"}
    np.testing.assert_array_equal(external.tensors["fc.weight"], w.T)   # stored as MatMul consumes it
    assert external.quant == {"fc.weight": None, "fc.bias": None}
    assert w.T.tobytes() not in external.model_bytes and w.T.tobytes() in embedded.model_bytes
    np.testing.assert_allclose(_run(external.model_bytes, external.tensors, g, arrays)[0], run_graph(g, *arrays),
                               rtol=1e-5, atol=1e-5)


def test_shared_linear_weight_is_stored_once_and_transposed_in_graph():
    """A tied embedding / output projection: one container tensor, a Transpose in the model."""
    def body(g, v):
        table = g.add_const("emb.weight", _f(10, 4))
        h = g.add_node("gather", [table, v[0]], {"axis": 0}).output
        return [g.add_node("linear", [h, table, None]).output]
    g, arrays = _case({"ids": RNG.integers(0, 10, (2, 5)).astype(np.int64)}, body)()
    m = emit_onnx(g, embed_weights=False)
    assert list(m.tensors) == ["emb.weight"] and m.tensors["emb.weight"].shape == (10, 4)
    assert Counter(n.op_type for n in onnx.load_from_string(m.model_bytes).graph.node) == \
        {"Gather": 1, "Transpose": 1, "MatMul": 1}
    got = _run(m.model_bytes, m.tensors, g, arrays)[0]
    np.testing.assert_allclose(got, run_graph(g, *arrays), rtol=1e-5, atol=1e-5)


def test_graph_output_that_is_an_input_gets_an_identity():
    g = Graph("passthrough")
    x = g.add_input("x", (2, 3))
    y = g.add_node("relu", [x]).output
    g.outputs = [y, x]
    infer_shapes(g)
    m = emit_onnx(g, embed_weights=True)
    model = onnx.load_from_string(m.model_bytes)
    assert [o.name for o in model.graph.output] == [y.name, "x.out"]
    a = _f(2, 3)
    got = _run(m.model_bytes, {}, g, [a])
    np.testing.assert_array_equal(got[1], a)


def test_bad_options_and_unverified_graph_are_rejected():
    g, _ = CASES["relu"][0]()
    with pytest.raises(ValueError, match="int8_ops"):
        emit_onnx(g, embed_weights=True, int8_ops="fast")
    with pytest.raises(ValueError, match="opset 13"):
        emit_onnx(g, embed_weights=True, opset=13)
    g.nodes[0].op = "frobnicate"
    with pytest.raises(ValueError, match="frobnicate"):
        emit_onnx(g, embed_weights=True)
    assert issubclass(OnnxEmitError, ValueError)


def test_minified_model_has_short_names_and_maps_back():
    g, arrays = CASES["linear_3d"][0]()
    full = emit_onnx(g, embed_weights=False)
    small = emit_onnx(g, embed_weights=False, minify=True)
    assert len(small.model_bytes) < len(full.model_bytes) and b"fc.weight" not in small.model_bytes
    src = small.source_names
    assert set(src.values()) == {"fc.weight", "fc.bias"} and set(small.tensors) == set(src)
    for short, name in src.items():
        np.testing.assert_array_equal(small.tensors[short], full.tensors[name])
    np.testing.assert_allclose(_run(small.model_bytes, small.tensors, g, arrays)[0], run_graph(g, *arrays),
                               rtol=1e-5, atol=1e-5)


def test_deployable_model_spends_no_bytes_on_names_defaults_or_repeats():
    """Minified: no node, graph or producer names; default attributes left out (a stride-1 conv's
    strides, dilations, group, kernel_shape); equal small constants written once; external weights
    without a location. The model still runs as the IR does."""
    def body(g, v):
        w = g.add_const("conv.weight", _f(4, 3, 3, 3))
        h = g.add_node("conv", [v[0], w, g.add_const("conv.bias", _f(4))],
                       {"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "groups": 1}).output
        a = g.add_node("reshape", [h], {"shape": [1, 4 * 36]}).output
        b = g.add_node("reshape", [g.add_node("relu", [h]).output], {"shape": [1, 4 * 36]}).output
        return [g.add_node("add", [a, b]).output]
    g, arrays = _case({"x": _f(1, 3, 6, 6)}, body)()
    em = emit_onnx(g, embed_weights=False, minify=True)
    m = onnx.load_from_string(em.model_bytes)
    assert not m.producer_name and not m.graph.name and not any(n.name for n in m.graph.node)
    [conv] = [n for n in m.graph.node if n.op_type == "Conv"]
    assert [a.name for a in conv.attribute] == ["pads"]
    shapes = [t for t in m.graph.initializer if t.data_type == onnx.TensorProto.INT64]
    assert len(shapes) == 1 and all(n.input[1] == shapes[0].name for n in m.graph.node if n.op_type == "Reshape")
    external = [t for t in m.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert {t.name for t in external} == set(em.tensors) and not any(t.external_data for t in external)
    io = {v.name for v in [*m.graph.input, *m.graph.output]}
    assert max(len(x) for n in m.graph.node for x in [*n.input, *n.output] if x not in io) == 1
    np.testing.assert_allclose(_run(em.model_bytes, em.tensors, g, arrays)[0], run_graph(g, *arrays),
                               rtol=1e-5, atol=1e-5)
