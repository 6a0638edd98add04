"""`resize` and `conv_transpose` through both backends, float and int8, each run by its real runtime.

float: onnxruntime and LiteRT against PyTorch's own functions (1e-5 of the output's magnitude).
int8 (the real quantize pass): within one output step of the executor's fake-quantized graph, and
TFLite's graph integer from its QUANTIZE to its DEQUANTIZE. Negative cases: what TFLite cannot
express is one line naming the node and suggesting --backend onnx; the C backend refuses both ops.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

from edgecompile.backends.c.model import CBackendError, emit_c
from edgecompile.backends.onnx import emit_onnx
from edgecompile.backends.tflite import TFLiteUnsupportedError, emit_tflite, op_counts, tensor_types
from edgecompile.ir import Graph, infer_shapes, run_graph, verify
from edgecompile.bundle.onnx_session import create_session
from edgecompile.passes.quantize import QuantConfig, QuantizePass

from tflite_util import run_tflite

RNG = np.random.default_rng(0)


def _resize(shape, mode, size, scales=None, align=False):
    g = Graph("resize")
    x = g.add_input("x", shape)
    g.outputs = [g.add_node("resize", [x], {"mode": mode, "size": list(size), "scales": scales,
                                             "align_corners": align}).output]
    infer_shapes(g)
    verify(g)

    def ref(a):
        t = torch.from_numpy(a)
        torch_mode = {"nearest": "nearest", "nearest_exact": "nearest-exact"}.get(mode) or (
            "linear" if len(shape) == 3 else "bilinear")
        kw = {"align_corners": align} if mode == "linear" else {}
        if scales is not None:
            return F.interpolate(t, scale_factor=scales, mode=torch_mode, **kw).numpy()
        return F.interpolate(t, size=tuple(size), mode=torch_mode, **kw).numpy()
    return g, ref


def _conv_t(x_shape, c_out, k, stride=1, padding=0, output_padding=0, dilation=1, groups=1, bias=True):
    nd = len(x_shape) - 2
    w = (RNG.standard_normal((x_shape[1], c_out // groups) + (k,) * nd) * 0.3).astype(np.float32)
    b = RNG.standard_normal(c_out).astype(np.float32) if bias else None
    attrs = {"stride": [stride] * nd, "padding": [padding] * nd, "output_padding": [output_padding] * nd,
             "dilation": [dilation] * nd, "groups": groups}
    g = Graph("conv_transpose")
    x = g.add_input("x", x_shape)
    wv = g.add_const("up.weight", w)
    bv = g.add_const("up.bias", b) if bias else None
    g.outputs = [g.add_node("conv_transpose", [x, wv, bv], attrs, name="up").output]
    infer_shapes(g)
    verify(g)
    fn = F.conv_transpose1d if nd == 1 else F.conv_transpose2d

    def ref(a):
        return fn(torch.from_numpy(a), torch.from_numpy(w), None if b is None else torch.from_numpy(b),
                  stride, padding, output_padding, groups, dilation).numpy()
    return g, ref


# name -> (builder, TFLite ops the float model must hold, or None when TFLite refuses it)
CASES = {
    "nearest_x2": (lambda: _resize((2, 3, 4, 5), "nearest", (8, 10)), {"RESIZE_NEAREST_NEIGHBOR"}),
    "nearest_odd": (lambda: _resize((1, 2, 7, 5), "nearest", (3, 13)), {"RESIZE_NEAREST_NEIGHBOR"}),
    "nearest_exact": (lambda: _resize((1, 2, 4, 5), "nearest_exact", (9, 7)), {"RESIZE_NEAREST_NEIGHBOR"}),
    "nearest_1d": (lambda: _resize((2, 3, 5), "nearest", (7,)), {"RESIZE_NEAREST_NEIGHBOR", "RESHAPE"}),
    "bilinear_x2": (lambda: _resize((2, 3, 4, 5), "linear", (8, 10)), {"RESIZE_BILINEAR"}),
    "bilinear_corners": (lambda: _resize((1, 3, 4, 5), "linear", (7, 9), align=True), {"RESIZE_BILINEAR"}),
    "bilinear_down": (lambda: _resize((1, 2, 7, 9), "linear", (3, 4)), {"RESIZE_BILINEAR"}),
    "bilinear_to_1": (lambda: _resize((1, 2, 4, 5), "linear", (1, 3)), {"RESIZE_BILINEAR"}),
    "linear_1d": (lambda: _resize((2, 3, 5), "linear", (10,)), {"RESIZE_BILINEAR"}),
    "linear_1d_corners": (lambda: _resize((2, 3, 5), "linear", (7,), align=True), {"RESIZE_BILINEAR"}),
    "bilinear_fractional_scale": (lambda: _resize((1, 2, 5, 6), "linear", (8, 10), scales=[1.7, 1.7]), None),
    "convt_k2_s2": (lambda: _conv_t((2, 4, 5, 5), 6, 2, stride=2), {"TRANSPOSE_CONV"}),
    "convt_k4_s2_p1_same": (lambda: _conv_t((1, 4, 5, 5), 6, 4, stride=2, padding=1), {"TRANSPOSE_CONV"}),
    "convt_k3_s2_p1_op1": (lambda: _conv_t((2, 4, 5, 5), 6, 3, 2, 1, 1), {"TRANSPOSE_CONV", "STRIDED_SLICE"}),
    "convt_k3_s2_op1_no_bias": (lambda: _conv_t((1, 4, 5, 5), 6, 3, 2, 0, 1, bias=False), {"TRANSPOSE_CONV"}),
    "convt_dilated": (lambda: _conv_t((1, 4, 5, 6), 6, 3, 2, 2, 1, dilation=2), {"TRANSPOSE_CONV", "STRIDED_SLICE"}),
    "convt_1d": (lambda: _conv_t((2, 4, 7), 6, 5, 3, 2, 2), {"TRANSPOSE_CONV", "STRIDED_SLICE", "RESHAPE"}),
    "convt_grouped": (lambda: _conv_t((1, 4, 5, 5), 6, 3, 2, 1, 1, groups=2), None),
}


def _inputs(g, n=1, seed=1):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(g.inputs[0].shape).astype(np.float32) for _ in range(n)]


def _onnx(g, x):
    m = emit_onnx(g, embed_weights=True)
    onnx.checker.check_model(onnx.load_from_string(m.model_bytes), full_check=True)
    return create_session(m.model_bytes, {}, threads=1).run(None, {g.inputs[0].name: x})[0], m


def _close(got, want, rel=1e-5):
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=rel * max(1.0, float(np.abs(want).max())))


@pytest.mark.parametrize("name", sorted(CASES))
def test_float_onnx_and_tflite_match_torch(name):
    build, tfl_ops = CASES[name]
    g, ref = build()
    (x,) = _inputs(g)
    want = ref(x)
    _close(run_graph(g, x), want)
    got, m = _onnx(g, x)
    _close(got, want)
    assert {"resize": "Resize", "conv_transpose": "ConvTranspose"}[g.nodes[0].op] in {o for o, _ in m.ops}
    if tfl_ops is None:
        return
    t = emit_tflite(g, embed_weights=True)
    counts = op_counts(t.model_bytes)
    assert tfl_ops <= set(counts) and "DEQUANTIZE" not in counts, counts
    _close(run_tflite(t.model_bytes, x)[0], want)


@pytest.mark.parametrize("name", sorted(CASES))
def test_int8_both_backends_within_one_step_of_fake_quant(name):
    build, tfl_ops = CASES[name]
    g, _ = build()
    calib = _inputs(g, 4, seed=2)
    QuantizePass(QuantConfig(), [(c,) for c in calib])(g)
    verify(g)
    out_q = g.outputs[0].quant
    if g.nodes[0].op == "resize":     # same parameters in and out: the int8 kernels requantize nothing
        assert out_q == g.inputs[0].quant
    else:
        w, b = g.nodes[0].input(1), g.nodes[0].input(2)
        assert w.data.dtype == np.int8 and w.quant.axis == 1
        if b is not None:
            groups = g.nodes[0].attrs["groups"]
            assert b.data.dtype == np.int32 and np.array_equal(
                b.quant.scale, np.float32(g.inputs[0].quant.scale[0]) * np.tile(w.quant.scale, groups))
    step = float(out_q.scale[0])
    x = calib[0]
    want = run_graph(g, x)
    got, _ = _onnx(g, x)
    assert np.abs(got - want).max() <= step * 1.001 + 1e-6
    if tfl_ops is None:
        return
    t = emit_tflite(g, embed_weights=True)
    counts = op_counts(t.model_bytes)
    assert counts["QUANTIZE"] == 1 and counts["DEQUANTIZE"] == 1, counts     # integer in between
    types = tensor_types(t.model_bytes)
    if "up.weight" in types:
        assert types["up.weight"] == "int8"
    assert np.abs(run_tflite(t.model_bytes, x)[0] - want).max() <= step * 1.001 + 1e-6


@pytest.mark.parametrize("name, needle", [
    ("convt_grouped", r"up \(conv_transpose\): TFLite's TRANSPOSE_CONV has no groups \(groups=2\); use --backend onnx"),
    ("bilinear_fractional_scale", r"\(resize\): scale factors \[1.7, 1.7\].*; use --backend onnx"),
])
def test_tflite_refuses_what_it_cannot_express_in_one_line(name, needle):
    g, _ = CASES[name][0]()
    with pytest.raises(TFLiteUnsupportedError, match=needle) as e:
        emit_tflite(g)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["nearest_x2", "convt_k2_s2"])
def test_c_backend_refuses_both_ops_in_one_line(name):
    g, _ = CASES[name][0]()
    QuantizePass(QuantConfig(), [(c,) for c in _inputs(g, 2)])(g)
    with pytest.raises(CBackendError, match=rf"\({g.nodes[0].op}\).*--backend tflite") as e:
        emit_c(g)
    assert "\n" not in str(e.value)
