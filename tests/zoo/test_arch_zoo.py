"""The conversion zoo (bench/zoo/archs.py) in the slow suite: every architecture either converts
exactly (the verified pure-conversion build, cosine >= 0.9999 to PyTorch through the real runtime)
or fails with one line naming what blocks it and the exit code the CLI gives — never a traceback,
never the corrupt-bundle code for a model problem. `CONVERTS` lists the architectures that must
convert; bench/bench_zoo.py prints the whole table next to the peers.
"""
from __future__ import annotations

import pytest
import torch

from bench.zoo.archs import ARCHS
from edgecompile.build import BuildConfig, BuildError, build
from edgecompile.cli import EXIT_CORRUPT, _input_errors

pytestmark = pytest.mark.slow

# Converted at cosine >= 0.9999 on ONNX and on TFLite (bench_zoo.py, this session's table).
CONVERTS = {
    "bert-tiny", "distilbert", "mobilebert", "albert", "roberta", "gpt2", "t5-encoder", "vit",
    "whisper-tiny-encoder", "lstm", "gru", "multihead-attention", "transformer-encoder-layer",
    "mobilenet-v2", "mobilenet-v3-small", "resnet18", "shufflenet-v2", "squeezenet", "mnasnet",
    "ds-cnn-kws",
    # group_norm, softplus / log1p, dense as_strided (branch ops-norm, 2026-12-05)
    "wav2vec2", "mish-block", "softplus-block", "groupnorm-block", "convnext-atto", "mobilevit-xxs",
    "efficientvit-b0", "fastvit-t8", "repvit-m0.9",
}
# Large or slow ones are covered by the bench only: each costs a minute or more here.
BENCH_ONLY = {"swin-t", "convnext-tiny", "resnet50", "levit-128s", "efficientformerv2-s0", "densenet121"}


def _pure(arch, backend: str, out):
    torch.manual_seed(0)
    return build(arch.loaded(8, 8), BuildConfig(target="rpi4", out=out, backend=backend, quant="none",
                                                optimize="none", latency_repeats=1, allow_degraded=True))


@pytest.mark.parametrize("name", sorted(set(ARCHS) - BENCH_ONLY))
@pytest.mark.parametrize("backend", ["onnx", "tflite"])
def test_architecture_converts_or_fails_in_one_line(name, backend, tmp_path):
    torch.set_num_threads(1)
    try:
        r = _pure(ARCHS[name], backend, tmp_path / "b")
    except (BuildError, *_input_errors()) as e:
        assert name not in CONVERTS, f"{name} no longer converts on {backend}: {e}"
        msg = str(e)
        assert "\n" not in msg and len(msg) > 20
        assert getattr(e, "exit_code", 3) != EXIT_CORRUPT
        assert not (tmp_path / "b").exists()       # nothing half-written
        return
    assert r.fidelity.primary.mean_cosine >= 0.9999, (name, backend, r.fidelity.primary.mean_cosine)
    assert r.fidelity.passed
