"""group_norm, log1p and softplus in the real runtimes: accuracy where naive forms lose it, the int8
path of a model built from them (onnxruntime and LiteRT vs the executor's fake quantization and
vs float), and the C backend's one-line refusal."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from edgecompile.backends.c.model import CBackendError, emit_c
from edgecompile.backends.onnx import emit_onnx
from edgecompile.backends.tflite import emit_tflite, op_counts, tensor_types
from edgecompile.frontend import import_model
from edgecompile.ir import Graph, infer_shapes, run_graph
from edgecompile.bundle.onnx_session import create_session
from edgecompile.passes.quantize import QuantConfig, QuantizePass
from tests.models import group_norm_net
from tflite_util import quantize_for_test, run_tflite, step

TINY = np.array([1e-12, -3e-9, 1e-5, -1e-4, 1e-3, 0.05, -0.05, 0.09, 0.11, 0.5, 4.0, -0.9], np.float32)
TAILS = np.array([-95.0, -40.0, -17.0, -1e-6, 0.0, 1e-6, 0.74, 0.76, 19.0, 21.0, 40.0, 95.0], np.float32)


def _graph(op, x, attrs=None):
    g = Graph(op)
    v = g.add_input("x", x.shape)
    g.outputs = [g.add_node(op, [v], attrs or {}).output]
    infer_shapes(g)
    return g


def _onnx(g, *xs):
    m = emit_onnx(g, embed_weights=True)
    sess = create_session(m.model_bytes, {}, threads=1)
    return sess.run(None, {v.name: x for v, x in zip(g.inputs, xs)})


@pytest.mark.parametrize("runtime", ["onnx", "tflite"])
def test_log1p_keeps_relative_accuracy_for_tiny_inputs(runtime):
    g = _graph("log1p", TINY)
    got = _onnx(g, TINY)[0] if runtime == "onnx" else run_tflite(emit_tflite(g, embed_weights=True).model_bytes,
                                                                  TINY)[0]
    want = np.log1p(TINY.astype(np.float64))
    assert np.abs(got / want - 1).max() < 1e-6          # log(1 + x) in float32 is 100% off at 1e-12


@pytest.mark.parametrize("runtime", ["onnx", "tflite"])
@pytest.mark.parametrize("beta,threshold", [(1.0, 20.0), (2.0, 1.5), (0.5, 10.0)])
def test_softplus_tails_and_threshold(runtime, beta, threshold):
    g = _graph("softplus", TAILS, {"beta": beta, "threshold": threshold})
    got = _onnx(g, TAILS)[0] if runtime == "onnx" else run_tflite(emit_tflite(g, embed_weights=True).model_bytes,
                                                                   TAILS)[0]
    want = torch.nn.functional.softplus(torch.from_numpy(TAILS).double(), beta, threshold).numpy()
    assert np.isfinite(got).all()                     # exp(95) overflows float32 in the naive form
    # below float32's normal range (softplus(-95) = 5.5e-42) a runtime may flush to zero
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=np.finfo(np.float32).tiny)


def test_tflite_group_norm_stays_exact_when_the_mean_dwarfs_the_spread():
    """Two-pass variance: groups of mean 10 and std 0.05 keep float32 accuracy."""
    x = (np.random.default_rng(0).standard_normal((2, 8, 6, 6)) * 0.05 + 10).astype(np.float32)
    g = _graph("group_norm", x, {"num_groups": 4, "eps": 1e-5})
    got = run_tflite(emit_tflite(g, embed_weights=True).model_bytes, x)[0]
    want = torch.nn.functional.group_norm(torch.from_numpy(x).double(), 4, eps=1e-5).numpy()
    assert np.abs(got - want).max() < 1e-4


@functools.cache
def _int8_net():
    model, (x,) = group_norm_net(batch=2)
    g = import_model(model, (x,))
    rng = np.random.default_rng(0)
    calib = [[rng.standard_normal(x.shape).astype(np.float32)] for _ in range(4)]
    float_g = g.copy()
    QuantizePass(QuantConfig(), calib)(g)
    test_x = rng.standard_normal(x.shape).astype(np.float32)
    return float_g, g, test_x


def _cosine(a, b):
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.parametrize("runtime", ["onnx", "tflite"])
def test_int8_group_norm_net_matches_fake_quant_and_float(runtime):
    """Every new op runs in float between int8 values: the runtime agrees with the executor's fake
    quantization to a few output steps, and int8 stays close to float."""
    float_g, q, x = _int8_net()
    assert {n.output.quant is not None for n in q.nodes if n.op in ("group_norm", "softplus", "log1p")} == {True}
    if runtime == "onnx":
        got = _onnx(q, x)[0]
    else:
        m = emit_tflite(q, embed_weights=True)
        counts = op_counts(m.model_bytes)
        assert counts["CONV_2D"] == 2 and counts["DEQUANTIZE"] >= 3      # float islands around the new ops
        assert tensor_types(m.model_bytes)["conv1.weight"] == "int8"
        got = run_tflite(m.model_bytes, x)[0]
    fake = run_graph(q, x)
    assert np.abs(got - fake).max() <= 3 * step(q) + 1e-6
    assert _cosine(got, run_graph(float_g, x)) > 0.99


@pytest.mark.parametrize("op,attrs", [("log1p", {}), ("softplus", {"beta": 1.0, "threshold": 20.0}),
                                      ("softplus", {"beta": 2.0, "threshold": 1.5})])
def test_c_backend_runs_log1p_and_softplus_as_lookup_tables(op, attrs):
    """int8 in, int8 out: one 256-entry table, within one step of the fake-quantized executor
    (tests/runtime/test_c_model.py runs such a table in the compiled C bit for bit)."""
    from edgecompile.backends.c.ref.graph import run_int8

    rng = np.random.default_rng(1)
    x = (rng.standard_normal((2, 4, 3, 3)) * 2).astype(np.float32)
    if op == "log1p":
        x = np.abs(x) - 0.5
    q = quantize_for_test(_graph(op, x, attrs), x)
    cm = emit_c(q)
    assert [c.kernel for c in cm.calls] == ["lut"] and "ecm_lut" in cm.files["model.c"]
    got = q.outputs[0].quant.dequantize(run_int8(q, q.inputs[0].quant.quantize(x))[0])
    assert np.abs(got - run_graph(q, x)).max() <= step(q) + 1e-6


@pytest.mark.parametrize("op,attrs", [("group_norm", {"num_groups": 2, "eps": 1e-5})])
def test_c_backend_refuses_the_new_ops_in_one_line(op, attrs):
    x = np.abs(np.random.default_rng(0).standard_normal((2, 4, 3, 3)).astype(np.float32))
    q = quantize_for_test(_graph(op, x, attrs), x)
    with pytest.raises(CBackendError) as e:
        emit_c(q)
    msg = str(e.value)
    assert "\n" not in msg and f"({op})" in msg and "--backend" in msg
