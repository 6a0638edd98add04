"""int8 conv / depthwise / FC in LiteRT against a numpy integer reference computed as TFLite does.

TFLite's int8 kernels: acc = sum((x_q - zp_x) * w_q) + bias_q in int32 (weights symmetric, per output
channel), then y_q = clamp(round(acc * s_x * s_w[c] / s_y) + zp_y, -128, 127). The fixed-point
multiplier may round differently at ties, so results agree within one output step.
"""

import numpy as np
import pytest

from edgecompile.backends.tflite import emit_tflite, tensor_types, tflite_op_table
from edgecompile.ir import Graph, infer_shapes

from tflite_util import quantize_for_test, run_tflite

RNG = np.random.default_rng(7)


def requant(acc, s_x, s_w, s_y, zp_y):
    return np.clip(np.rint(acc * (s_x * s_w / s_y)) + zp_y, -128, 127).astype(np.int64)


def conv_int_reference(xq, zx, wq, bq, stride, pad, groups):
    """Integer NCHW convolution (int64 accumulation) with zero-point padding."""
    x = np.pad(xq.astype(np.int64) - zx, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    o, ipg, kh, kw = wq.shape
    win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]
    n, c, oh, ow = win.shape[:4]
    win = win.reshape(n, groups, c // groups, oh, ow, kh, kw)
    w = wq.astype(np.int64).reshape(groups, o // groups, ipg, kh, kw)
    acc = np.einsum("ngchwij,gocij->ngohw", win, w).reshape(n, o, oh, ow)
    return acc + bq.reshape(1, -1, 1, 1)


def _quantized_layer(op, x_shape, w, b, attrs):
    g = Graph(op)
    x = g.add_input("x", x_shape)
    y = g.add_node(op, [x, g.add_const("w", w), g.add_const("b", b)], attrs).output
    g.outputs = [y]
    infer_shapes(g)
    xs = RNG.standard_normal(x_shape).astype(np.float32)
    return quantize_for_test(g, xs), xs


def _int_out(q, out):
    oq = q.outputs[0].quant
    return np.rint(out / oq.scale[0]).astype(np.int64) + int(oq.zero_point[0])


@pytest.mark.parametrize("groups,stride,pad", [(1, 1, 1), (1, 2, 0), (4, 1, 1), (2, 1, 1)])
def test_conv_int8_matches_integer_reference(groups, stride, pad):
    c_in, c_out = 4, 8
    w = RNG.standard_normal((c_out, c_in // groups, 3, 3)).astype(np.float32)
    b = RNG.standard_normal(c_out).astype(np.float32)
    attrs = {"stride": [stride] * 2, "padding": [pad] * 2, "dilation": [1, 1], "groups": groups}
    q, xs = _quantized_layer("conv", (2, c_in, 9, 9), w, b, attrs)
    m = emit_tflite(q, embed_weights=True)
    got = _int_out(q, run_tflite(m.model_bytes, xs)[0])
    xq_p = q.inputs[0].quant
    wv, bv = q.consts["w"], q.consts["b"]
    assert wv.data.dtype == np.int8 and bv.data.dtype == np.int32
    xq = xq_p.quantize(xs).astype(np.int64)
    acc = conv_int_reference(xq, int(xq_p.zero_point[0]), wv.data, bv.data, stride, pad, groups)
    oq = q.outputs[0].quant
    ref = requant(acc, xq_p.scale[0], wv.quant.scale.reshape(1, -1, 1, 1), oq.scale[0], oq.zero_point[0])
    assert np.abs(got - ref).max() <= 1
    assert (got == ref).mean() > 0.95
    kind = "DEPTHWISE_CONV_2D" if groups == c_in else "CONV_2D"
    assert kind in {n for n, _, _ in tflite_op_table(m.model_bytes)}
    assert tensor_types(m.model_bytes)["w" if groups in (1, c_in) else "w.g0"] == "int8"


def test_fully_connected_int8_matches_integer_reference():
    w = RNG.standard_normal((6, 16)).astype(np.float32)
    b = RNG.standard_normal(6).astype(np.float32)
    q, xs = _quantized_layer("linear", (5, 16), w, b, {})
    m = emit_tflite(q, embed_weights=True)
    got = _int_out(q, run_tflite(m.model_bytes, xs)[0])
    xq_p, wv, bv, oq = q.inputs[0].quant, q.consts["w"], q.consts["b"], q.outputs[0].quant
    xq = xq_p.quantize(xs).astype(np.int64)
    acc = (xq - xq_p.zero_point[0]) @ wv.data.astype(np.int64).T + bv.data
    ref = requant(acc, xq_p.scale[0], wv.quant.scale, oq.scale[0], oq.zero_point[0])
    assert np.abs(got - ref).max() <= 1
    types = tensor_types(m.model_bytes)
    assert types["w"] == "int8" and types["b"] == "int32"


def test_weight_only_int8_dequantizes_weights_in_the_model():
    w = RNG.standard_normal((6, 16)).astype(np.float32)
    g = Graph("wo")
    x = g.add_input("x", (5, 16))
    g.outputs = [g.add_node("linear", [x, g.add_const("w", w), None]).output]
    infer_shapes(g)
    xs = RNG.standard_normal((5, 16)).astype(np.float32)
    q = quantize_for_test(g, xs, weights_only=True)
    m = emit_tflite(q, embed_weights=True)
    assert tensor_types(m.model_bytes)["w"] == "int8"
    np.testing.assert_allclose(run_tflite(m.model_bytes, xs)[0], xs @ q.consts["w"].real().T, atol=1e-5)
