"""Dynamic-range ("hybrid") int8 through the TFLite backend: float activations, int8 per-channel
filters, run-time input quantization in LiteRT's hybrid FULLY_CONNECTED / CONV_2D /
DEPTHWISE_CONV_2D kernels (FULLY_CONNECTED per row, asymmetric; convs per sample).

The executor with ``QuantConfig(dynamic_per="row")`` reproduces those numerics, so LiteRT must
agree with it to float rounding (1e-5 of the output's scale); the model must also be measurably
different from the float one (the quantization really runs) and keep cosine > 0.999 to it.
"""

import numpy as np
import pytest

from edgecompile.backends.tflite import emit_tflite, op_counts, tensor_types
from edgecompile.ir import run_graph
from edgecompile.passes.quantize import QuantConfig, QuantizePass

from test_onnx_quant_dynamic import MODELS, _cos
from tflite_util import run_tflite


def _hybrid(name, per="row"):
    fp32, x = MODELS[name](np.random.default_rng(0))
    q = fp32.copy()
    QuantizePass(QuantConfig(activations="dynamic", dynamic_per=per))(q)
    return fp32, q, x


@pytest.mark.parametrize("name", sorted(MODELS))
def test_litert_hybrid_kernels_match_the_executor(name):
    fp32, q, x = _hybrid(name)
    m = emit_tflite(q, embed_weights=True)
    got = run_tflite(m.model_bytes, x)[0]
    want = run_graph(q, x)
    scale = float(np.abs(want).max())
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * scale)
    ref = run_graph(fp32, x, fake_quant=False)
    assert np.abs(got - ref).max() > 1e-3 * scale      # int8 arithmetic really ran
    assert _cos(got, ref) > 0.999


def test_structure_int8_filters_without_dequantize():
    _, q, _ = _hybrid("cnn")
    m = emit_tflite(q, embed_weights=True)
    ops = op_counts(m.model_bytes)
    assert "DEQUANTIZE" not in ops and "QUANTIZE" not in ops
    assert ops["CONV_2D"] == 1 and ops["DEPTHWISE_CONV_2D"] == 1 and ops["FULLY_CONNECTED"] == 1
    types = tensor_types(m.model_bytes)
    assert types["c1.weight"] == "int8" and types["dw.weight"] == "int8" and types["fc.weight"] == "int8"
    assert types["c1.bias"] == "float32"


def test_weights_only_still_dequantizes_and_per_tensor_differs():
    fp32, x = MODELS["seq"](np.random.default_rng(0))
    w = fp32.copy()
    QuantizePass(QuantConfig(activations="weights_only"))(w)
    assert op_counts(emit_tflite(w, embed_weights=True).model_bytes).get("DEQUANTIZE", 0) == 2
    # the executor's per-tensor mode (onnxruntime's) is not what LiteRT computes
    _, qt, _ = _hybrid("seq", per="tensor")
    got = run_tflite(emit_tflite(qt, embed_weights=True).model_bytes, x)[0]
    want = run_graph(qt, x)
    assert np.abs(got - want).max() > 1e-4 * float(np.abs(want).max())
