"""Tests for mixed precision by measured sensitivity (edgecompile/passes/mixed_precision.py).

The model is a small MLP with one planted outlier channel: fc1 writes a constant 500 into one
channel that fc2 ignores, so a per-tensor int8 range over fc1's (and relu's) output leaves the
other channels ~1 step of resolution. Every other activation quantizes well.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgecompile.ir import Graph, infer_shapes, run_graph, verify
from edgecompile.passes.mixed_precision import mean_cosine, quant_units, select_float_nodes
from edgecompile.passes.base import PassError
from edgecompile.passes.quantize import QuantConfig, QuantizePass, QuantSpecError

B, D, H, N_OUT = 16, 24, 48, 10


def outlier_mlp(outlier: float = 500.0) -> Graph:
    """x -> fc1 (channel 3 is the constant `outlier`) -> relu -> reshape -> fc2 (ignores channel 3)."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 1 / np.sqrt(D), (H, D)).astype(np.float32)
    b1 = rng.normal(0, 0.1, H).astype(np.float32)
    w1[3] = 0
    b1[3] = outlier
    w2 = rng.normal(0, 1 / np.sqrt(H), (N_OUT, H)).astype(np.float32)
    w2[:, 3] = 0
    g = Graph("outlier_mlp")
    x = g.add_input("x", (B, D))
    h = g.add_node("linear", [x, g.add_const("w1", w1), g.add_const("b1", b1)], name="fc1").output
    h = g.add_node("relu", [h], name="act").output
    h = g.add_node("reshape", [h], {"shape": [B, H]}, name="flat").output
    y = g.add_node("linear", [h, g.add_const("w2", w2), g.add_const("b2", np.zeros(N_OUT, np.float32))],
                   name="fc2").output
    g.outputs = [y]
    infer_shapes(g)
    verify(g)
    return g


def _batches(seed: int, n: int = 3) -> list[tuple[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [(rng.normal(0, 1, (B, D)).astype(np.float32),) for _ in range(n)]


def _score(graph: Graph, qgraph: Graph, batches) -> float:
    ref = [np.concatenate([run_graph(graph, *b, fake_quant=False) for b in batches])]
    got = [np.concatenate([run_graph(qgraph, *b) for b in batches])]
    return mean_cosine(ref, got)


def test_units_group_shared_parameter_followers():
    g = outlier_mlp()
    QuantizePass(QuantConfig(), _batches(0))(g)
    units = quant_units(g)
    # relu and fc1 carry their own ranges; the reshape shares relu's parameters
    assert set(units) == {"fc1", "act", "fc2"}
    assert [v.producer.name for v in units["act"]] == ["act", "flat"]


def test_keeps_the_outlier_activation_float_and_reaches_the_score():
    g = outlier_mlp()
    calib, held = _batches(0), _batches(1)
    full = g.copy()
    QuantizePass(QuantConfig(), calib)(full)
    base = _score(g, full, held)
    assert base < 0.99, f"the planted outlier should break full int8 (cosine {base:.4f})"

    skip, records = select_float_nodes(g, calib, min_score=0.999)
    summary = records[-1]
    assert {"fc1", "act", "flat"} <= set(skip) and "fc2" not in skip
    assert summary["score_final"] >= 0.999 and summary["score_int8"] < 0.99
    first = records[0]
    assert first["node"] in ("fc1", "act") and first["float"] and first["measured_gain"] > 0
    assert summary["float_units"] == 2
    assert all(r["reason"] for r in records[:-1])

    mixed = g.copy()
    QuantizePass(QuantConfig(skip=skip), calib)(mixed)
    assert mixed.node("fc1").output.quant is None and mixed.node("fc2").output.quant is not None
    # held-out inputs: the float-kept fc1 restores the score within 0.002 of what was measured
    assert _score(g, mixed, held) >= 0.997
    assert g.node("fc1").input(1).quant is None, "the input graph must not be modified"


def test_nothing_kept_float_when_int8_already_scores():
    g = outlier_mlp(outlier=1.0)
    skip, records = select_float_nodes(g, _batches(0), min_score=0.99)
    assert skip == ()
    assert records[-1]["evals"] == 0 and records[-1]["score_int8"] >= 0.99
    assert all(not r["float"] for r in records[:-1])


def test_max_float_and_custom_score_are_honoured():
    g = outlier_mlp()
    calls = []

    def strict(ref, got):
        calls.append(1)
        return mean_cosine(ref, got) - 1.0     # never reaches min_score

    skip, records = select_float_nodes(g, _batches(0), score_fn=strict, min_score=0.5, max_float=1)
    assert sum(r["float"] for r in records[:-1]) == 1 and len(skip) == 1
    assert calls


def test_rejects_a_non_full_int8_config():
    with pytest.raises(ValueError, match="full int8"):
        select_float_nodes(outlier_mlp(), _batches(0), config=QuantConfig(activations="weights_only"))


def test_mean_cosine_judges_scalar_outputs_over_the_set():
    ref = np.array([[1.0], [2.0], [3.0]])
    assert mean_cosine([ref], [-ref]) == pytest.approx(-1.0)   # a per-sample cosine would be 1 for 1 value
    assert mean_cosine([ref], [ref]) == pytest.approx(1.0)


def test_dynamic_fallback_keeps_int8_weights_and_integer_matmuls():
    from edgecompile.backends.onnx import emit_onnx
    from edgecompile.bundle.onnx_session import create_session

    g = outlier_mlp(outlier=1.0)
    calib, held = _batches(0), _batches(1)
    cfg = QuantConfig(fallback="dynamic")
    # an unreachable score: the walk measures every unit and keeps those that gain
    skip, records = select_float_nodes(g, calib, min_score=1.01, config=cfg)
    kept = [r["node"] for r in records[:-1] if r["float"]]
    assert kept and set(kept) <= set(skip)
    q = g.copy()
    QuantizePass(QuantConfig(fallback="dynamic", skip=skip), calib)(q)
    # what the walk reports is what the build gets (same config, recalibrated)
    assert records[-1]["score_final"] == pytest.approx(_score(g, q, calib), abs=1e-6)
    assert records[-1]["score_final"] >= records[-1]["score_int8"]
    for name in ("fc1", "fc2"):
        node = q.node(name)
        assert node.input(1).data.dtype == np.int8            # int8 weights even when kept float
        want = "int8" if node.input(0).quant is not None and node.output.quant is not None else "int8-dynamic"
        assert node.meta["arith"] == want
    assert any(q.node(n).meta.get("arith") == "int8-dynamic" for n in ("fc1", "fc2"))
    # onnxruntime computes what the executor does: within one output step
    x = held[0][0]
    m = emit_onnx(q, embed_weights=False)
    got = create_session(m.model_bytes, m.tensors).run(None, {"x": x})[0]
    step = float(q.outputs[0].quant.scale[0]) if q.outputs[0].quant is not None else 1e-5
    assert np.abs(got - run_graph(q, x)).max() <= step + 1e-5


def test_range_overrides_reach_the_calibration_and_are_validated():
    g = outlier_mlp()
    calib = _batches(0)
    a, b = g.copy(), g.copy()
    QuantizePass(QuantConfig(), calib)(a)
    QuantizePass(QuantConfig(ranges=(("fc2", "percentile"),)), calib)(b)
    # only the named node's range changes (percentile clips fc2's tails)
    assert a.node("fc1").output.quant == b.node("fc1").output.quant
    assert float(b.node("fc2").output.quant.scale[0]) < float(a.node("fc2").output.quant.scale[0])
    with pytest.raises(QuantSpecError):
        QuantConfig(ranges=(("fc2", "entropy"),))
    with pytest.raises(PassError, match="unknown node"):
        QuantizePass(QuantConfig(ranges=(("nope", "mse"),)), calib)(g.copy())


def test_try_ranges_keeps_an_activation_int8_when_a_range_recovers_it():
    # the outlier channel is a constant 500 in 1 of 48 channels: percentile(97) clips it away (fc2
    # ignores it), so a percentile range recovers what float does and fc1 / act stay int8
    g = outlier_mlp()
    cfg = QuantConfig(percentile=97.0)
    skip, records = select_float_nodes(g, _batches(0), min_score=0.999, config=cfg, try_ranges=("percentile",))
    summary = records[-1]
    chosen = dict(summary["ranges"])
    assert chosen and set(chosen.values()) == {"percentile"}
    assert "fc1" not in skip and "act" not in skip and chosen["fc1"] == chosen["act"] == "percentile"
    assert any(r.get("range") == "percentile" and not r["float"] for r in records[:-1])
    assert summary["score_final"] > summary["score_int8"]
