"""Per-op tests of the TFLite backend: structure (op counts in the flatbuffer) and numerics in LiteRT.

float32: against the PyTorch executor to 1e-5 (relative to the output's magnitude).
int8: within one output quantization step of the executor's fake-quantized output.
"""

import numpy as np
import pytest

from edgecompile.backends.tflite import emit_tflite, op_counts
from edgecompile.ir import Graph, infer_shapes, run_graph, verify

from tflite_util import quantize_for_test, run_tflite, step

RNG = np.random.default_rng(0)


def f32(*s):
    return RNG.standard_normal(s).astype(np.float32)


def conv_attrs(stride=1, padding=0, dilation=1, groups=1, nd=2):
    return {"stride": [stride] * nd, "padding": [padding] * nd, "dilation": [dilation] * nd, "groups": groups}


def single(op, shapes, attrs=None, consts=()):
    g = Graph(op)
    xs = [g.add_input(f"x{i}", s) for i, s in enumerate(shapes)]
    cs = [None if c is None else g.add_const(f"c{i}", c) for i, c in enumerate(consts)]
    g.outputs = [g.add_node(op, xs + cs, attrs or {}).output]
    infer_shapes(g)
    verify(g)
    return g


def conv_then(op, x_shape, attrs, consts):
    """A 1x1 conv, then `op`: the op's input has a channels-last form (TFLite's conv layout)."""
    g = Graph(op)
    c, nd = x_shape[1], len(x_shape) - 2
    h = g.add_node("conv", [g.add_input("x0", x_shape), g.add_const("w", f32(c, c, *[1] * nd)), None],
                   conv_attrs(nd=nd)).output
    cs = [None if v is None else g.add_const(f"c{i}", v) for i, v in enumerate(consts)]
    g.outputs = [g.add_node(op, [h] + cs, attrs).output]
    infer_shapes(g)
    verify(g)
    return g


def embedding():
    g = Graph("embedding")
    ids = g.add_input("ids", (2, 5), "int64")
    table = g.add_const("emb.weight", f32(11, 8))
    g.outputs = [g.add_node("gather", [table, ids], {"axis": 0}).output]
    infer_shapes(g)
    return g


POOL = {"dilation": [1, 1], "ceil_mode": False}
AVG = {"ceil_mode": False, "count_include_pad": True}
# name -> (graph, TFLite op that must appear (float model))
CASES = {
    "relu": (single("relu", [(2, 3, 4, 5)]), "RELU"),
    "sigmoid": (single("sigmoid", [(2, 8)]), "LOGISTIC"),
    "tanh": (single("tanh", [(2, 8)]), "TANH"),
    "silu": (single("silu", [(2, 8)]), "LOGISTIC"),
    "hardswish": (single("hardswish", [(2, 8)]), "HARD_SWISH"),
    "hardsigmoid": (single("hardsigmoid", [(2, 8)]), "RELU6"),
    "exp": (single("exp", [(2, 8)]), "EXP"),
    "abs": (single("abs", [(2, 8)]), "ABS"),
    "neg": (single("neg", [(2, 8)]), "NEG"),
    "erf": (single("erf", [(3, 8)]), "SIGN"),
    "gelu": (single("gelu", [(2, 8)], {"approximate": "none"}), "GELU"),
    "gelu_tanh": (single("gelu", [(2, 8)], {"approximate": "tanh"}), "GELU"),
    "relu6": (single("clip", [(2, 8)], {"min": 0.0, "max": 6.0}), "RELU6"),
    "clip": (single("clip", [(2, 8)], {"min": -0.5, "max": 0.7}), "MINIMUM"),
    "add": (single("add", [(2, 3, 4), (2, 3, 4)]), "ADD"),
    "mul_const": (single("mul", [(2, 3, 4)], consts=[f32(4)]), "MUL"),
    "sub_bcast": (single("sub", [(2, 3, 4), (3, 4)]), "SUB"),
    "div": (single("div", [(2, 8)], consts=[np.abs(f32(8)) + 1]), "DIV"),
    "maximum": (single("maximum", [(2, 8), (2, 8)]), "MAXIMUM"),
    "softmax": (single("softmax", [(2, 5, 8)], {"axis": -1}), "SOFTMAX"),
    "softmax_axis1": (single("softmax", [(2, 5, 8)], {"axis": 1}), "SOFTMAX"),
    "log_softmax": (single("log_softmax", [(2, 8)], {"axis": 1}), "LOG_SOFTMAX"),
    "linear": (single("linear", [(4, 8)], consts=[f32(6, 8), f32(6)]), "FULLY_CONNECTED"),
    "linear_3d": (single("linear", [(2, 4, 8)], consts=[f32(6, 8), None]), "FULLY_CONNECTED"),
    "matmul_const": (single("matmul", [(2, 4, 8)], consts=[f32(8, 5)]), "FULLY_CONNECTED"),
    "batch_matmul": (single("matmul", [(2, 4, 8), (2, 8, 5)]), "BATCH_MATMUL"),
    "conv": (single("conv", [(1, 3, 9, 9)], conv_attrs(padding=1), [f32(8, 3, 3, 3), f32(8)]), "CONV_2D"),
    "conv_stride2": (single("conv", [(1, 3, 10, 10)], conv_attrs(2, 1), [f32(8, 3, 3, 3), None]), "CONV_2D"),
    "conv_dilated": (single("conv", [(1, 3, 10, 10)], conv_attrs(1, 2, 2), [f32(4, 3, 3, 3), f32(4)]), "CONV_2D"),
    "depthwise": (single("conv", [(1, 4, 8, 8)], conv_attrs(1, 1, 1, 4), [f32(8, 1, 3, 3), f32(8)]),
                  "DEPTHWISE_CONV_2D"),
    "grouped": (single("conv", [(1, 4, 8, 8)], conv_attrs(groups=2), [f32(6, 2, 3, 3), f32(6)]), "SPLIT"),
    "conv1d": (single("conv", [(2, 3, 16)], conv_attrs(2, 2, nd=1), [f32(5, 3, 5), f32(5)]), "CONV_2D"),
    "conv_transpose": (single("conv_transpose", [(1, 4, 5, 5)], {**conv_attrs(2, 1), "output_padding": [1, 1]},
                              [f32(4, 6, 3, 3), f32(6)]), "TRANSPOSE_CONV"),
    "conv_transpose_1d": (single("conv_transpose", [(2, 3, 7)], {**conv_attrs(2, nd=1), "output_padding": [0]},
                                 [f32(3, 5, 4), None]), "TRANSPOSE_CONV"),
    "resize_nearest": (single("resize", [(1, 3, 4, 5)], {"mode": "nearest", "size": [8, 10], "scales": None,
                                                       "align_corners": False}), "RESIZE_NEAREST_NEIGHBOR"),
    "resize_bilinear": (single("resize", [(1, 3, 4, 5)], {"mode": "linear", "size": [7, 9], "scales": None,
                                                        "align_corners": True}), "RESIZE_BILINEAR"),
    "max_pool": (single("max_pool", [(1, 3, 8, 8)], {"kernel": [2, 2], "stride": [2, 2], "padding": [0, 0],
                                                    **POOL}), "MAX_POOL_2D"),
    "max_pool_ceil": (single("max_pool", [(1, 3, 9, 9)], {"kernel": [3, 3], "stride": [2, 2], "padding": [1, 1],
                                                         **POOL, "ceil_mode": True}), "MAX_POOL_2D"),
    "avg_pool": (single("avg_pool", [(1, 3, 8, 8)], {"kernel": [2, 2], "stride": [2, 2], "padding": [0, 0], **AVG}),
                 "AVERAGE_POOL_2D"),
    "avg_pool_pad": (single("avg_pool", [(1, 3, 8, 8)], {"kernel": [3, 3], "stride": [1, 1], "padding": [1, 1],
                                                        **AVG}), "PAD"),
    "avg_pool_1d": (single("avg_pool", [(2, 3, 8)], {"kernel": [2], "stride": [2], "padding": [0], **AVG}),
                    "AVERAGE_POOL_2D"),
    "mean_hw": (single("mean", [(2, 3, 4, 5)], {"axes": [2, 3], "keepdims": False}), "MEAN"),
    "sum": (single("sum", [(2, 3, 4)], {"axes": [1], "keepdims": True}), "SUM"),
    "reduce_max": (single("reduce_max", [(2, 3, 4)], {"axes": [2], "keepdims": False}), "REDUCE_MAX"),
    "reshape": (single("reshape", [(2, 3, 4)], {"shape": [2, 12]}), "RESHAPE"),
    "transpose": (single("transpose", [(2, 3, 4)], {"perm": [2, 0, 1]}), "TRANSPOSE"),
    "slice": (single("slice", [(2, 9, 4)], {"axis": 1, "start": 1, "end": 8, "step": 2}), "STRIDED_SLICE"),
    "concat": (single("concat", [(2, 3), (2, 5)], {"axis": 1}), "CONCATENATION"),
    "pad": (single("pad", [(2, 3, 4)], {"pads": [0, 1, 2, 0, 0, 1], "value": 0.0}), "PAD"),
    "pad_value": (single("pad", [(2, 3, 4)], {"pads": [0, 1, 2, 0, 0, 1], "value": 1.5}), "PADV2"),
    "expand": (single("expand", [(2, 1, 4)], {"shape": [2, 3, 4]}), "BROADCAST_TO"),
    "layer_norm": (single("layer_norm", [(2, 5, 8)], {"normalized_ndim": 1, "eps": 1e-5}, [f32(8), f32(8)]),
                   "RSQRT"),
    "group_norm": (single("group_norm", [(2, 6, 4, 5)], {"num_groups": 3, "eps": 1e-5}, [f32(6), f32(6)]), "MEAN"),
    "group_norm_cl": (conv_then("group_norm", (1, 6, 5, 5), {"num_groups": 2, "eps": 1e-5}, [f32(6), f32(6)]),
                      "MEAN"),
    "group_norm_1d_cl": (conv_then("group_norm", (2, 6, 9), {"num_groups": 6, "eps": 1e-5}, [f32(6), None]),
                         "MEAN"),
    "group_norm_2d_plain": (single("group_norm", [(3, 6)], {"num_groups": 2, "eps": 1e-5}), "RSQRT"),
    "log1p": (single("log1p", [(3, 8)]), "LOG"),
    "cumsum": (single("cumsum", [(2, 3, 8)], {"axis": 1}), "CUMSUM"),
    "softplus": (single("softplus", [(3, 8)], {"beta": 1.0, "threshold": 20.0}), "EXP"),
    "softplus_beta": (single("softplus", [(3, 8)], {"beta": 2.0, "threshold": 1.5}), "SELECT_V2"),
    "batch_norm": (single("batch_norm", [(2, 4, 5, 5)], {"eps": 1e-5},
                          [f32(4), np.abs(f32(4)) + 0.5, f32(4), f32(4)]), "MUL"),
    "rsqrt": (single("rsqrt", [(2, 8)]), "RSQRT"),
    "embedding": (embedding(), "GATHER"),
}


def inputs_for(name, g):
    rng = np.random.default_rng(1)
    out = []
    for v in g.inputs:
        if v.dtype == "int64":
            out.append(rng.integers(0, 11, v.shape).astype(np.int64))
        else:
            x = rng.standard_normal(v.shape).astype(np.float32)
            if name == "log1p":         # tiny, moderate and near -1 values
                x = np.where(np.abs(x) < 1, x * 1e-3, np.tanh(x))
            if name.startswith("softplus"):  # both sides of the threshold, large magnitudes
                x = x * 12
            out.append(np.abs(x) + 0.1 if name == "rsqrt" else x)
    return out


@pytest.mark.parametrize("name", sorted(CASES))
def test_float32_matches_executor(name):
    g, must = CASES[name]
    xs = inputs_for(name, g)
    m = emit_tflite(g, embed_weights=True)
    counts = op_counts(m.model_bytes)
    assert must in counts, counts
    assert "QUANTIZE" not in counts and "DEQUANTIZE" not in counts
    out = run_tflite(m.model_bytes, *xs)[0]
    ref = run_graph(g, *xs)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5 * max(1.0, float(np.abs(ref).max())))


@pytest.mark.parametrize("name", sorted(CASES))
def test_int8_within_one_step_of_fake_quant(name):
    g, _ = CASES[name]
    xs = inputs_for(name, g)
    q = quantize_for_test(g, *xs)
    m = emit_tflite(q, embed_weights=True)
    out = run_tflite(m.model_bytes, *xs)[0]
    ref = run_graph(q, *xs)
    assert np.abs(out - ref).max() <= step(q) * 1.001 + 1e-6


INT8_KERNELS = {  # int8 graphs run these ops as int8 kernels (no float island around them)
    "conv": "CONV_2D", "depthwise": "DEPTHWISE_CONV_2D", "linear": "FULLY_CONNECTED", "add": "ADD",
    "softmax": "SOFTMAX", "sigmoid": "LOGISTIC", "max_pool": "MAX_POOL_2D", "mean_hw": "MEAN", "relu": "RELU",
    "batch_matmul": "BATCH_MATMUL", "gelu": "GELU", "hardswish": "HARD_SWISH",
}


@pytest.mark.parametrize("name", sorted(INT8_KERNELS))
def test_int8_structure(name):
    from edgecompile.backends.tflite import tensor_types
    g, _ = CASES[name]
    q = quantize_for_test(g, *inputs_for(name, g))
    m = emit_tflite(q, embed_weights=True)
    counts = op_counts(m.model_bytes)
    # one QUANTIZE per float input, one DEQUANTIZE for the output: nothing in between
    assert counts["QUANTIZE"] == len(g.inputs) and counts["DEQUANTIZE"] == 1, counts
    assert INT8_KERNELS[name] in counts
    types = tensor_types(m.model_bytes)
    assert any(n.startswith(q.outputs[0].name) and t == "int8" for n, t in types.items())
    for v in q.consts.values():
        if v.data.dtype == np.int8:
            assert types[v.name] == "int8"
