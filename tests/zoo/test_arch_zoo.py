"""The conversion zoo (bench/zoo/archs.py) in the slow suite: every architecture converts exactly —
the verified pure-conversion build (`--quant none --rank none`), cosine >= 0.9999 to PyTorch through
the real runtime, on ONNX and on TFLite. bench/bench_zoo.py prints the whole table next to the
peers (torch.onnx.export, litert-torch), with int8 builds, bytes and times.
"""
from __future__ import annotations

import pytest
import torch

from bench.zoo.archs import ARCHS
from edgecompile.build import BuildConfig, build

pytestmark = pytest.mark.slow

# Large or slow ones are covered by the bench (and tests/zoo/test_vision_conversion.py for the
# ConvNeXt / Swin patterns at a small size): each costs a minute or more here.
BENCH_ONLY = {"swin-t", "convnext-tiny", "resnet50", "levit-128s", "efficientformerv2-s0", "densenet121",
              "mobileone-s0"}


@pytest.mark.parametrize("name", sorted(set(ARCHS) - BENCH_ONLY))
@pytest.mark.parametrize("backend", ["onnx", "tflite"])
def test_architecture_converts_exactly(name, backend, tmp_path):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    r = build(ARCHS[name].loaded(8, 8), BuildConfig(target="rpi4", out=tmp_path / "b", backend=backend, quant="none",
                                                    optimize="none", latency_repeats=1))
    assert r.fidelity.primary.mean_cosine >= 0.9999, (name, backend, r.fidelity.primary.mean_cosine)
    assert r.fidelity.passed
