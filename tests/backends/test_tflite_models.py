"""End-to-end: models from tests/models.py imported, (quantized,) emitted as TFLite and run in LiteRT."""

import functools
import json

import numpy as np
import pytest

from edgecompile.backends.memory_plan import plan_tflite
from edgecompile.backends.tflite import TFLiteUnsupportedError, emit_tflite, op_counts, tflite_op_table
from edgecompile.backends.tflite.builder import TFL_TYPES, unpack_model
from edgecompile.container import write_container
from edgecompile.frontend.torch_export import import_model
from edgecompile.ir import Graph, infer_shapes, run_graph
from edgecompile.passes.fold import CleanupPass, FoldBatchNormPass
from edgecompile.passes.quantize import QuantConfig, QuantizePass
from edgecompile.bundle import BundleError
from edgecompile.bundle.tflite_model import fill_weights
from edgecompile.bundle.tflite_session import load_tflite_bundle
from tflite_util import models, run_tflite, step

MODELS = ["cnn", "mobilenet_block", "conv1d_net", "encoder_layer_classifier", "tiny_transformer",
          "lstm_cell_model", "gru_cell_model", "unet_transposed", "unet_bilinear"]


def _prepare(name):
    g, xs = _imported(name)
    return g.copy(), xs


@functools.cache
def _imported(name):
    """torch.export once per model (the slow part); tests get copies."""
    model, example = models.ZOO[name]()
    xs = [e.numpy() for e in example]
    if name == "tiny_transformer":
        # no padding tokens: the executor's fake quantization turns masked -inf scores into NaN
        xs = [np.where(x == 0, 1, x) for x in xs]
    g = import_model(model, example)
    FoldBatchNormPass()(g)
    CleanupPass()(g)
    return g, xs


@pytest.mark.parametrize("name", MODELS)
def test_float_model_matches_executor(name):
    g, xs = _prepare(name)
    m = emit_tflite(g, embed_weights=True)
    out = run_tflite(m.model_bytes, *xs)[0]
    ref = run_graph(g, *xs)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5 * max(1.0, float(np.abs(ref).max())))


@pytest.mark.parametrize("name", MODELS)
def test_int8_model_matches_fake_quant(name):
    """Within two output steps: per-op one-step differences may reach the output once more."""
    g, xs = _prepare(name)
    QuantizePass(QuantConfig(), [xs])(g)
    m = emit_tflite(g, embed_weights=True)
    out = run_tflite(m.model_bytes, *xs)[0]
    ref = run_graph(g, *xs)
    # rows the executor makes NaN (fake-quantized -inf attention masks; see the report) are skipped
    rows = np.isfinite(ref).all(axis=-1)
    assert rows.any()
    assert np.abs(out[rows] - ref[rows]).max() <= 2 * step(g) + 1e-6
    counts = op_counts(m.model_bytes)
    assert counts["QUANTIZE"] >= 1 and counts["DEQUANTIZE"] >= 1
    plan = plan_tflite(m.model_bytes)
    assert plan.arena_bytes < plan.naive_bytes


def test_int8_cnn_is_int8_end_to_end_and_smaller():
    g, xs = _prepare("cnn")
    f = emit_tflite(g, embed_weights=True)
    QuantizePass(QuantConfig(), [xs])(g)
    q = emit_tflite(g, embed_weights=True)
    assert len(q.model_bytes) < len(f.model_bytes)
    table = {name: (ver, n) for name, ver, n in tflite_op_table(q.model_bytes)}
    assert table["CONV_2D"] == (3, 2) and table["FULLY_CONNECTED"][0] == 4


def test_bundle_round_trip_without_weights_on_disk(tmp_path):
    g, xs = _prepare("cnn")
    QuantizePass(QuantConfig(), [xs])(g)
    m = emit_tflite(g, embed_weights=False)
    embedded = emit_tflite(g, embed_weights=True)
    assert len(m.model_bytes) < len(embedded.model_bytes) - sum(a.nbytes for a in m.tensors.values()) + 64
    assert m.quant == {}                    # the model holds the quantization; the container adds none
    with pytest.raises(ValueError, match="not a valid Flatbuffer"):   # stripped (ECST): not runnable alone
        run_tflite(m.model_bytes, *xs)
    (tmp_path / "model.tflite").write_bytes(m.model_bytes)
    write_container(tmp_path / "weights.ecw", m.tensors, m.quant)
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"format": "edgecompile-bundle", "version": 1, "backend": "tflite", "model": "model.tflite",
         "weights": "weights.ecw"}))
    before = {p.name for p in tmp_path.iterdir()}
    sess = load_tflite_bundle(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == before
    assert sess.inputs[0].shape == tuple(g.inputs[0].shape) and sess.outputs[0].dtype == "float32"
    np.testing.assert_array_equal(sess.run(*xs)[0], run_tflite(embedded.model_bytes, *xs)[0])
    assert sess.latency(xs, repeats=3) > 0
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(BundleError, match="manifest"):
        load_tflite_bundle(tmp_path)


def test_unsupported_ops_are_all_named():
    g = Graph("bad")
    x = g.add_input("x", (1, 2, 5, 5))
    y = g.add_node("max_pool", [x], {"kernel": [2, 2], "stride": [1, 1], "padding": [0, 0], "dilation": [2, 2],
                                      "ceil_mode": False}).output
    g.outputs = [y]
    infer_shapes(g)
    with pytest.raises(TFLiteUnsupportedError, match=r"dilated pooling.*--backend onnx"):
        emit_tflite(g)
    g.nodes[0].op = "not_an_op"
    with pytest.raises(TFLiteUnsupportedError, match=r"max_pool \(not_an_op\); use --backend onnx"):
        emit_tflite(g)


def test_stripped_model_leaves_out_only_what_the_loader_restores():
    """Zero points of 0 and an int32 bias's quantization (input scale x filter scale) are not in a
    stripped model; after `fill_weights` every tensor's quantization is the embedded model's."""
    g, xs = _prepare("cnn")
    QuantizePass(QuantConfig(), [xs])(g)
    m, embedded = emit_tflite(g, embed_weights=False), emit_tflite(g, embed_weights=True)
    stripped = unpack_model(m.model_bytes).subgraphs[0].tensors
    full = unpack_model(embedded.model_bytes).subgraphs[0].tensors
    filled = unpack_model(fill_weights(m.model_bytes, m.tensors)).subgraphs[0].tensors
    int32 = [i for i, t in enumerate(full) if t.type == TFL_TYPES["int32"] and t.quantization is not None]
    assert int32 and all(stripped[i].quantization is None for i in int32)          # biases: derived
    assert not any(t.quantization is not None and t.quantization.zeroPoint is not None
                   and not any(t.quantization.zeroPoint) for t in stripped)       # no all-zero zero points
    for a, b in zip(filled, full):
        qa, qb = a.quantization, b.quantization
        assert (qa is None) == (qb is None)
        if qa is not None:
            np.testing.assert_array_equal(np.asarray(qa.scale, np.float32), np.asarray(qb.scale, np.float32))
            np.testing.assert_array_equal(qa.zeroPoint, qb.zeroPoint)
            assert qa.quantizedDimension == qb.quantizedDimension
    assert len(m.model_bytes) < len(embedded.model_bytes) - sum(a.nbytes for a in m.tensors.values())


def _conv_relu_graph(relu_also_output: bool) -> tuple[Graph, list[np.ndarray]]:
    rng = np.random.default_rng(0)
    g = Graph("conv_relu")
    x = g.add_input("x", (1, 2, 6, 6))
    w = g.add_const("conv.weight", rng.standard_normal((4, 2, 3, 3)).astype(np.float32))
    b = g.add_const("conv.bias", rng.standard_normal(4).astype(np.float32))
    h = g.add_node("conv", [x, w, b], {"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "groups": 1},
                   name="conv").output
    r = g.add_node("relu", [h], name="act").output
    g.outputs = [r, h] if relu_also_output else [r]
    infer_shapes(g)
    return g, [rng.standard_normal((1, 2, 6, 6)).astype(np.float32)]


@pytest.mark.parametrize("int8", [False, True])
def test_relu_after_a_conv_is_its_fused_activation(int8):
    """No RELU operator nor tensor: the conv's fused activation, same values (an int8 relu keeps its
    input's scale and zero point); a conv output read by something else keeps its own RELU."""
    g, xs = _conv_relu_graph(False)
    if int8:
        QuantizePass(QuantConfig(), [xs])(g)
    m = emit_tflite(g, embed_weights=True)
    assert op_counts(m.model_bytes).get("RELU", 0) == 0
    model = unpack_model(m.model_bytes)
    [conv] = [o for o in model.subgraphs[0].operators if o.builtinOptionsType == 1]   # Conv2DOptions
    assert conv.builtinOptions.fusedActivationFunction == 1                            # RELU
    out, ref = run_tflite(m.model_bytes, *xs)[0], run_graph(g, *xs)
    assert out.min() >= 0 and np.abs(out - ref).max() <= (step(g) if int8 else 1e-5)
    g, xs = _conv_relu_graph(True)
    if int8:
        QuantizePass(QuantConfig(), [xs])(g)
    assert op_counts(emit_tflite(g, embed_weights=True).model_bytes)["RELU"] == 1
