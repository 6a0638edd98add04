"""The fidelity gate judges each output by its kind: each failure mode a user met on real models is
caught, and a good model is never failed for a metric that does not fit its output."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from edgecompile.build import BuildConfig, DoesNotFit, VerificationFailed, build
from edgecompile.report.fidelity import (
    FidelitySpecError, OutputSpec, Thresholds, compare, parse_output_specs, per_sample_cosine, set_correlation,
)
from edgecompile.inputs.model import LoadedModel

rng = np.random.default_rng(0)


def test_one_value_probability_is_not_judged_by_cosine():
    """A detector whose bundle says 'no speech' everywhere: per-sample cosine of a 1-element output
    is always 1.0, so the gate must use decisions and correlation over the set."""
    ref = rng.uniform(0, 1, (200, 1))
    broken = np.full_like(ref, 0.01)
    fid = compare([ref], [broken], [OutputSpec("probability")])
    assert not fid.passed
    assert fid.outputs[0].mean_cosine is None          # never computed on one value
    assert fid.outputs[0].positive_rate_bundle == 0.0
    assert any("decision agreement" in f for f in fid.failures())
    good = compare([ref], [ref + rng.normal(0, 0.005, ref.shape)], [OutputSpec("probability")])
    assert good.passed


def test_scalar_auto_output_uses_correlation():
    ref = rng.normal(size=(100, 1))
    fid = compare([ref], [np.zeros_like(ref)])
    assert not fid.passed and fid.checks[0].metric == "correlation over the set"


def test_embedding_judged_by_cosine_not_argmax():
    """An int8 embedding whose largest dimension moves but whose direction holds must pass."""
    ref = rng.normal(size=(64, 384))
    got = ref + rng.normal(0, 0.15, ref.shape)
    assert (ref.argmax(1) == got.argmax(1)).mean() < 0.9    # argmax would have failed it
    fid = compare([ref], [got], [OutputSpec("embedding")])
    assert fid.passed and fid.outputs[0].top1_agreement is None
    assert fid.checks[0].metric == "mean per-sample cosine" and fid.checks[0].value > 0.98


def test_auto_never_uses_argmax_without_labels():
    ref = rng.normal(size=(50, 10))
    fid = compare([ref], [ref * 1.01])
    assert fid.outputs[0].top1_agreement is None and fid.passed


def test_labels_make_the_first_output_logits():
    ref = rng.normal(size=(100, 5))
    labels = ref.argmax(1)
    fid = compare([ref], [ref], labels=labels)
    assert fid.outputs[0].kind == "logits" and fid.outputs[0].accuracy_bundle == 1.0 and fid.passed


def test_every_output_is_compared():
    """A broken recurrent state fails the gate even when the first output is perfect."""
    prob = rng.uniform(0, 1, (80, 1))
    state = rng.normal(size=(80, 2, 64))
    fid = compare([prob, state], [prob, -state], parse_output_specs("probability,state", 2), names=["p", "h"])
    assert not fid.passed and fid.failures()[0].startswith("h: mean per-sample cosine")


def test_custom_metric_from_factory():
    ref = rng.uniform(0, 1, (50, 1))

    def stream(r, g):
        return {"name": "stream agreement", "value": float(((r[0] > .5) == (g[0] > .5)).mean()), "threshold": 0.99}

    fid = compare([ref], [1 - ref], [OutputSpec("regression")], metric=stream)
    assert not fid.passed and any("stream agreement" in f for f in fid.failures())
    with pytest.raises(FidelitySpecError, match="must return"):
        compare([ref], [ref], metric=lambda r, g: {"value": 1.0})


def test_zero_outputs_and_constant_references():
    z = np.zeros((4, 3))
    assert np.all(per_sample_cosine(z, z) == 1.0)
    assert np.all(per_sample_cosine(z, z + 1) == 0.0)
    c = np.full((10, 1), 0.3)
    assert set_correlation(c, c) == 1.0 and set_correlation(c, c + 0.5) == 0.0


def test_threshold_knobs_and_spec_errors():
    ref = rng.normal(size=(40, 8))
    got = ref + rng.normal(0, 0.3, ref.shape)
    assert not compare([ref], [got], thresholds=Thresholds(min_cosine=0.999)).passed
    assert compare([ref], [got], thresholds=Thresholds(min_cosine=0.5)).passed
    with pytest.raises(FidelitySpecError, match="unknown output kind"):
        parse_output_specs("logits,banana", 2)
    with pytest.raises(FidelitySpecError, match="3 output kinds"):
        parse_output_specs(["logits", "state", "state"], 2)
    assert [s.kind for s in parse_output_specs("classify", 2)] == ["logits", "auto"]


# -- through the build ---------------------------------------------------------------------------

class TinyVAD(nn.Module):
    """Conv front end + GRU cell: a speech probability per chunk and the new state."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 8, 9, stride=4)
        self.cell = nn.GRUCell(8, 16)
        self.head = nn.Linear(16, 1)

    def forward(self, x, h):
        f = torch.relu(self.conv(x)).mean(-1)
        h = self.cell(f, h)
        return torch.sigmoid(self.head(h)), h


def _vad(seed=0):
    torch.manual_seed(seed)
    m = TinyVAD().eval()
    with torch.no_grad():
        m.head.bias.fill_(-float(m.head(torch.zeros(16)).item()))   # centre the decisions
    g = np.random.default_rng(seed)
    x = (g.normal(size=(96, 1, 64)) * g.uniform(0.1, 3, (96, 1, 1))).astype(np.float32)
    h = np.tanh(g.normal(size=(96, 16))).astype(np.float32)
    data = {"calib": (x[:64], h[:64]), "eval": (x[64:], h[64:]), "outputs": ["probability", "state"]}
    return LoadedModel("tinyvad", m, (torch.from_numpy(x[:4]), torch.from_numpy(h[:4])), data)


def test_build_judges_probability_and_state(tmp_path):
    res = build(_vad(), BuildConfig(target="host", out=tmp_path / "v", latency_repeats=2))
    fid = res.report["fidelity"]
    assert [o["kind"] for o in fid["outputs"]] == ["probability", "state"]
    metrics = [c["metric"] for c in fid["checks"]]
    assert metrics == ["decision agreement at 0.5", "correlation over the set", "mean per-sample cosine"]
    assert fid["n_samples"] == 32            # the whole eval set, a remainder batch included


def test_build_fails_a_broken_probability(tmp_path):
    """The user's trap: a pruned detector whose 1-value output cosine is 1.0 must fail."""
    loaded = _vad()
    with torch.no_grad():
        loaded.module.head.bias.fill_(-40.0)   # the bundle would say "no speech" everywhere
    ref_model = _vad().module                   # the original stays the reference
    loaded = LoadedModel(loaded.name, ref_model, loaded.example_inputs, loaded.data)
    cfg = BuildConfig(target="host", out=tmp_path / "v", prune="magnitude:0.95", quant="int8:weights_only",
                      latency_repeats=2)
    with pytest.raises(VerificationFailed):
        build(loaded, cfg)
    rep = json.loads((tmp_path / "v.failed" / "report.json").read_text())
    assert rep["fidelity"]["outputs"][0]["mean_cosine"] is None


def test_task_option_overrides_and_is_checked(tmp_path):
    res = build(_vad(), BuildConfig(target="host", out=tmp_path / "v", task="regression,auto", latency_repeats=2))
    assert [o["kind"] for o in res.report["fidelity"]["outputs"]] == ["regression", "auto"]
    from edgecompile.build import BuildError
    with pytest.raises(BuildError, match="unknown output kind"):
        build(_vad(), BuildConfig(target="host", out=tmp_path / "w", task="banana"))
    assert not (tmp_path / "w").exists()


def test_oversize_bundle_fails_unless_allowed(tmp_path):
    torch.manual_seed(0)
    big = nn.Sequential(nn.Linear(512, 2560), nn.ReLU(), nn.Linear(2560, 16)).eval()   # 1.35 M params
    x = torch.randn(1, 512)
    loaded = LoadedModel("big", big, (x,), {})
    with pytest.raises(DoesNotFit, match="does not fit nrf52840's flash") as info:
        build(loaded, BuildConfig(target="nrf52840", out=tmp_path / "b", latency_repeats=2))
    assert info.value.exit_code == 5 and not (tmp_path / "b").exists()
    assert (tmp_path / "b.failed" / "report.json").is_file()
    res = build(loaded, BuildConfig(target="nrf52840", out=tmp_path / "b", latency_repeats=2, allow_oversize=True))
    assert res.report["verdict"]["oversize"] and (tmp_path / "b" / "manifest.json").is_file()


class StatefulGRU(nn.Module):
    """A recurrent model whose state is laid out [layers, B, hidden], as nn.GRU wants it."""

    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(4, 16, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x, h):
        y, h = self.gru(x, h)
        return self.head(y[:, -1]), h


def test_batch_axis_declared_by_the_factory(tmp_path):
    torch.manual_seed(0)
    g = np.random.default_rng(0)
    x = g.normal(size=(80, 6, 4)).astype(np.float32)
    h = (0.5 * g.normal(size=(80, 1, 16))).astype(np.float32)          # samples on axis 0: [N, layers, hidden]
    data = {"calib": (x[:48], h[:48]), "eval": (x[48:], h[48:]), "outputs": ["auto", "state"],
            "batch_axes": [0, 1]}
    loaded = LoadedModel("gru", StatefulGRU().eval(), (torch.from_numpy(x[:2]), torch.from_numpy(h[:2]).transpose(0, 1)),
                         data)
    res = build(loaded, BuildConfig(target="host", out=tmp_path / "g", latency_repeats=2))
    man = json.loads((tmp_path / "g" / "manifest.json").read_text())
    assert [i["shape"] for i in man["inputs"]] == [[2, 6, 4], [2, 1, 16]]     # batch-first in the bundle
    assert [o["kind"] for o in res.report["fidelity"]["outputs"]] == ["auto", "state"]
    assert res.report["fidelity"]["n_samples"] == 32 and res.report["verdict"]["passed"]
    from edgecompile.inputs.model import ModelSpecError, _check_data
    with pytest.raises(ModelSpecError, match="batch_axes"):
        _check_data({"batch_axes": [0]}, 2, "factory")


def test_logits_judged_on_decided_samples():
    """Near-ties flip under any rounding; a classifier is judged on the samples it decides, and a
    real change of decisions is still caught."""
    g = np.random.default_rng(1)
    ref = g.normal(size=(200, 10))
    ref[:100, 0] += 5.0                                    # half the set clearly decided
    got = ref + g.normal(0, 0.2, ref.shape)                # small noise: flips only near-ties
    fid = compare([ref], [got], [OutputSpec("logits")])
    o = fid.outputs[0]
    assert o.top1_agreement < 0.97 <= o.top1_agreement_decided and 0.25 <= o.decided_fraction < 1
    assert fid.passed and "decided samples" in fid.checks[0].metric
    broken = got.copy()
    broken[:100, 0] -= 10.0                                # the decided samples change class
    assert not compare([ref], [broken], [OutputSpec("logits")]).passed


def test_stream_metric_drives_the_bundle_on_its_own_state(tmp_path):
    """A factory's stream check runs the compiled model itself (here: feeding back its state)."""
    loaded = _vad()
    x = loaded.data["eval"][0][:4]

    def stream(run, threshold):
        h_ref = h = np.zeros((4, 16), np.float32)
        agree = []
        for _ in range(5):
            p, h = run(x, h)
            with torch.no_grad():
                p_ref, h_ref = (t.numpy() for t in loaded.module(torch.from_numpy(x), torch.from_numpy(h_ref)))
            agree.append(((p > 0.5) == (p_ref > 0.5)).mean())
        return {"name": "stream agreement", "value": float(np.mean(agree)), "threshold": threshold}

    data = dict(loaded.data, stream_metric=lambda run: stream(run, 0.9))
    res = build(LoadedModel("v", loaded.module, loaded.example_inputs, data),
                BuildConfig(target="host", out=tmp_path / "ok", latency_repeats=2))
    assert any(c["metric"] == "stream agreement" and c["passed"] for c in res.report["fidelity"]["checks"])
    data = dict(loaded.data, stream_metric=lambda run: stream(run, 1.01))      # cannot be met
    with pytest.raises(VerificationFailed, match="stream agreement"):
        build(LoadedModel("v", loaded.module, loaded.example_inputs, data),
              BuildConfig(target="host", out=tmp_path / "no", latency_repeats=2))
