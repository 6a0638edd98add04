"""Whole models from tests/models.py: frontend -> IR -> ONNX, run by onnxruntime.

Float: equal to the executor within 1e-5 (and so to PyTorch). Quantized with the real quantize
pass: equal to the executor's fake quantization within a few output steps (onnxruntime's int8
kernels, e.g. QLinearAveragePool and QLinearSoftmax, round some elements one step differently,
and later layers can grow that), with the mean error a fraction of a step.
"""

import numpy as np
import onnx
import pytest
import torch

from edgecompile.backends.onnx import emit_onnx
from edgecompile.frontend import import_model
from edgecompile.ir import run_graph
from edgecompile.bundle.onnx_session import create_session
from edgecompile.passes.quantize import QuantConfig, QuantizePass
from tests.models import ZOO


def _import(name):
    model, example = ZOO[name]()
    graph = import_model(model, example)
    arrays = [t.numpy() for t in example]
    return model, graph, arrays


def _run(m, graph, arrays):
    sess = create_session(m.model_bytes, m.tensors, threads=1)
    return sess.run(None, {v.name: a for v, a in zip(graph.inputs, arrays)})


@pytest.mark.parametrize("name", sorted(ZOO))
def test_float_model_matches_executor_and_torch(name):
    model, graph, arrays = _import(name)
    embedded = emit_onnx(graph, embed_weights=True)
    onnx.checker.check_model(onnx.load_from_string(embedded.model_bytes), full_check=True)
    m = emit_onnx(graph, embed_weights=False)
    got = _run(m, graph, arrays)
    want = run_graph(graph, *arrays)
    want = want if isinstance(want, tuple) else (want,)
    with torch.no_grad():
        ref = model(*[torch.from_numpy(a) for a in arrays])
    ref = ref.to_tuple() if hasattr(ref, "to_tuple") else ref          # transformers' ModelOutput
    ref = ref if isinstance(ref, tuple) else (ref,)
    for g_, w_, r_ in zip(got, want, ref):
        np.testing.assert_allclose(g_, w_, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(g_, r_.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["cnn", "mobilenet_block", "conv1d_net", "lstm_cell_model", "tiny_transformer",
                                  "unet_transposed", "unet_bilinear"])
def test_quantized_model_matches_fake_quant(name):
    _, graph, arrays = _import(name)
    rng = np.random.default_rng(1)
    calib = [[a if a.dtype.kind != "f" else rng.standard_normal(a.shape).astype(a.dtype) for a in arrays]
             for _ in range(4)]
    graph = QuantizePass(QuantConfig(), calib)(graph).graph
    m = emit_onnx(graph, embed_weights=False)
    got = _run(m, graph, arrays)[0]
    want = run_graph(graph, *arrays)
    want = want[0] if isinstance(want, tuple) else want
    step = float(graph.outputs[0].quant.scale[0])
    err = np.abs(got - want) / step
    assert err.max() <= 3.0, f"max error {err.max():.2f} output steps"
    assert err.mean() <= 0.25, f"mean error {err.mean():.2f} output steps"
