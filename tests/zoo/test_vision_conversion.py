"""torchvision's ConvNeXt-T and Swin-T, timm's ConvNeXt-atto (random weights, seeded) through
import, ONNX and TFLite.

ConvNeXt's adaptive average pooling of a permuted tensor decomposes to mean + as_strided; Swin's
shift mask and relative position bias are constants folded through permute + contiguous + view.
Pure conversion must keep cosine >= 0.9999 against torch in onnxruntime and LiteRT; int8 (min/max
calibration on random images) must stay close to float. Each model is imported once (~4 s) at the
smallest input its architecture takes (64 x 64: Swin pads each stage to its 7 x 7 windows).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from edgecompile.backends.onnx import emit_onnx
from edgecompile.backends.tflite import emit_tflite
from edgecompile.frontend import import_model
from edgecompile.bundle.onnx_session import create_session
from edgecompile.passes.fold import CleanupPass, FoldBatchNormPass
from edgecompile.passes.quantize import QuantConfig, QuantizePass
from tests.backends.tflite_util import run_tflite

SIZE = 64
# measured (2026-12-05, seed 0): pure conversion >= 0.99999982 on both runtimes for both models;
# int8 0.99931 (ConvNeXt-T), 0.9980 (Swin-T), 0.99939 (ConvNeXt-atto) on both runtimes
MIN_COSINE_FLOAT = 0.9999
MIN_COSINE_INT8 = 0.995


@functools.cache
def _imported(name: str):
    torch.manual_seed(0)
    if name.startswith("timm:"):
        import timm
        model = timm.create_model(name[5:], pretrained=False).eval()
    else:
        import torchvision
        model = getattr(torchvision.models, name)().eval()
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((1, 3, SIZE, SIZE)).astype(np.float32) for _ in range(5)]
    with torch.no_grad():
        refs = [model(torch.from_numpy(x)).numpy() for x in xs[3:]]
    g = import_model(model, (torch.from_numpy(xs[0]),))
    FoldBatchNormPass()(g)
    CleanupPass()(g)
    return g, xs, refs


def _cosine(a, b):
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def _outputs(graph, runtime, xs):
    if runtime == "onnx":
        m = emit_onnx(graph, embed_weights=True)
        sess = create_session(m.model_bytes, {}, threads=1)
        return [sess.run(None, {graph.inputs[0].name: x})[0] for x in xs]
    model = emit_tflite(graph, embed_weights=True).model_bytes
    return [run_tflite(model, x)[0] for x in xs]


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["onnx", "tflite"])
@pytest.mark.parametrize("name", ["convnext_tiny", "swin_t", "timm:convnext_atto"])
def test_torchvision_model_converts_and_quantizes(name, runtime):
    g, xs, refs = _imported(name)
    got = _outputs(g, runtime, xs[3:])
    assert min(_cosine(r, o) for r, o in zip(refs, got)) >= MIN_COSINE_FLOAT
    q = g.copy()
    QuantizePass(QuantConfig(), [[x] for x in xs[:3]])(q)
    got = _outputs(q, runtime, xs[3:])
    assert min(_cosine(r, o) for r, o in zip(refs, got)) >= MIN_COSINE_INT8
