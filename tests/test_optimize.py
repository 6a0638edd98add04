"""`--optimize`: per-layer sparsity / shared levels chosen by measurement under the gate."""

import numpy as np
import pytest
import torch

from edgecompile.inputs.reference import reference_outputs
from edgecompile.data.digits import model as digits_model
from edgecompile.report.fidelity import OutputSpec, Thresholds
from edgecompile.frontend import import_model
from edgecompile.ir import TorchExecutor, verify
from edgecompile.inputs.model import LoadedModel
from edgecompile.search.optimize import (
    MAX_PLANS, PLAN_STEP, GateScore, OptimizeConfig, OptimizeError, Setting, apply_plan, apply_setting, entropy_bytes, executor_outputs,
    optimize_weights,
)
from edgecompile.passes.fold import CleanupPass, FoldBatchNormPass
from edgecompile.passes.quantize import QuantConfig, QuantizePass


def test_apply_setting_uniform_step_keeps_multiples_of_the_step():
    from edgecompile.search.optimize import uniform, uniform_levels

    rng = np.random.default_rng(0)
    q = np.clip(np.rint(rng.normal(0, 30, (16, 64))), -127, 127).astype(np.int8)
    out = apply_setting(q, 0.0, 8, step=8)
    assert set(np.unique(out)) <= set(uniform_levels(8)) and np.abs(out.astype(int) - q).max() <= 4
    assert entropy_bytes(out) < 0.7 * entropy_bytes(q)
    assert uniform(8).bits == 5 and uniform(32).bits == 3 and len(uniform_levels(32)) == 7


def test_apply_setting_sparsity_and_levels():
    rng = np.random.default_rng(0)
    q = np.clip(np.rint(rng.normal(0, 30, (64, 128))), -127, 127).astype(np.int8)
    out = apply_setting(q, 0.5, 3)
    assert out.dtype == np.int8 and out.shape == q.shape
    assert (out == 0).mean() >= 0.5
    assert len(np.unique(out[out != 0])) <= 8
    assert np.array_equal(apply_setting(q, 0.0, 8), q)


def test_entropy_bytes():
    assert entropy_bytes(np.zeros(1000, np.int8)) == 0.0
    u = np.arange(-128, 128, dtype=np.int8).repeat(4)
    assert entropy_bytes(u) == pytest.approx(u.size)          # 8 bits a value


def test_unknown_goal():
    with pytest.raises(OptimizeError, match="unknown --optimize goal"):
        OptimizeConfig("smallest")
    assert OptimizeConfig("latency").ladder == ()
    assert all(st.bits >= 4 and st.sparsity <= 0.5 for st in OptimizeConfig("balanced").ladder)


@pytest.fixture(scope="module")
def digits():
    torch.set_num_threads(1)
    module, example, data = digits_model()
    g = import_model(module, example)
    FoldBatchNormPass()(g)
    CleanupPass()(g)
    calib = data["calib"][0]
    QuantizePass(QuantConfig(), [(calib[i:i + 1],) for i in range(0, 64)])(g)
    loaded = LoadedModel("digits", module, example, data)
    samples = (calib[-128:],)
    ref = reference_outputs(loaded, samples, 1)
    return g, samples, ref


def test_search_shrinks_weights_and_keeps_the_gate(digits):
    g, samples, ref = digits
    gate = GateScore([OutputSpec("logits")], Thresholds())
    res = optimize_weights(g, samples, ref, gate, OptimizeConfig("size"))
    assert res["plans"], res
    best = res["plans"][0]
    assert best["est_bytes_after"] < 0.6 * best["est_bytes_before"]
    sizes = [p["est_bytes_after"] for p in res["plans"]]
    # the fallbacks step up in bytes, each at least PLAN_STEP times the last (rounding aside)
    assert 2 <= len(sizes) <= MAX_PLANS
    assert all(b >= PLAN_STEP * a - 1 for a, b in zip(sizes, sizes[1:])), sizes
    cand = g.copy()
    apply_plan(cand, best)
    verify(cand)
    got = executor_outputs(TorchExecutor(cand, fake_quant=True).eval(), [torch.as_tensor(samples[0])])
    assert gate(ref, got) >= 0                          # the plan passes the (tightened) gate it was chosen by
    assert any(r["bits"] < 8 for r in best["layers"]) and all(r["why"] for r in best["layers"])
    before = {k: v.data.copy() for k, v in g.consts.items()}
    assert all(np.array_equal(before[k], v.data) for k, v in g.consts.items())   # the input graph is unchanged


def test_search_gives_nothing_when_the_gate_cannot_hold(digits):
    g, samples, ref = digits
    gate = GateScore([OutputSpec("auto")], Thresholds(min_cosine=0.999999))
    res = optimize_weights(g, samples, ref, gate, OptimizeConfig("size"))
    assert res["plans"] == [] and "edge of the gate" in res["note"]


def test_per_tensor_grid_keeps_values_and_moves_the_int32_bias(digits):
    from edgecompile.search.optimize import _layers, per_tensor_grid

    g, samples, ref = digits
    lay = next(lay for lay in _layers(g, 1024) if g.node(lay.node).op == "conv")
    q2, sc = per_tensor_grid(lay.q, lay.scale)
    real, real2 = lay.q * lay.scale, q2 * sc
    assert np.all(np.abs(real2 - real) <= sc.max() / 2 + 1e-7)               # within half a step of the grid
    assert entropy_bytes(q2) <= entropy_bytes(lay.q)
    plan = {"weights": {lay.const: (lay.node, Setting(0.0, 8, grid="tensor"), q2, sc)}}
    cand = g.copy()
    apply_plan(cand, plan)
    verify(cand)
    n = cand.node(lay.node)
    w, b, x = n.input(1), n.input(2), n.inputs[0]
    assert np.all(w.quant.scale == np.float32(sc.max()))
    assert b.data.dtype == np.int32 and np.array_equal(b.quant.scale, np.float32(x.quant.scale[0]) * w.quant.scale)
    got = executor_outputs(TorchExecutor(cand, fake_quant=True).eval(), [torch.as_tensor(samples[0])])
    assert (got[0].argmax(1) == ref[0].argmax(1)).mean() > 0.95


def test_layer_output_error_is_the_executors(digits):
    """`_Layer.error` from the Gram equals the relative output error of that layer alone, measured
    with its real inputs."""
    from edgecompile.search.optimize import _layers
    from edgecompile.passes.gptq import layer_grams

    g, samples, _ = digits
    lay = next(lay for lay in _layers(g, 1024) if g.node(lay.node).op == "linear")
    lay.gram = layer_grams(g, samples, [lay.node])[lay.node]
    q2 = apply_setting(lay.q, 0.5, 3)
    seen = []
    ex = TorchExecutor(g, fake_quant=True).eval()
    ex.observers = {lay.node: seen.append}
    ex(torch.as_tensor(samples[0]))
    x = torch.cat(seen).double().numpy()
    w, w2 = lay.q * lay.scale, q2 * lay.scale
    want = np.sum((x @ (w - w2).T) ** 2) / np.sum((x @ w.T) ** 2)
    assert lay.error(q2) == pytest.approx(want, rel=1e-6)
    assert lay.error(lay.q) == 0.0


def test_search_predicts_costs_when_the_budget_is_short(digits):
    """With time for only a few measurements, the unmeasured costs are predicted from each
    layer's output error and the plan still passes the gate it was chosen by."""
    g, samples, ref = digits
    gate = GateScore([OutputSpec("logits")], Thresholds())
    res = optimize_weights(g, samples, ref, gate, OptimizeConfig("size", max_evals=4),
                           gram_samples=(samples[0][:64],))
    assert res["costs_measured"] <= 4 < res["costs_predicted"] and res["plans"]
    best = res["plans"][0]
    assert any("predicted" in r["why"] for r in best["layers"])
    cand = g.copy()
    apply_plan(cand, best)
    got = executor_outputs(TorchExecutor(cand, fake_quant=True).eval(), [torch.as_tensor(samples[0])])
    assert gate(ref, got) >= 0 and best["est_bytes_after"] < 0.8 * best["est_bytes_before"]


def test_search_budget_counts_work_not_seconds(digits):
    """The solo phase stops on multiply-accumulates, so the same inputs give the same plan however
    loaded the machine is: a budget of three evaluations' work measures three costs, and two runs
    choose the same settings."""
    from edgecompile.ir.analysis import total_macs

    g, samples, ref = digits
    gate = GateScore([OutputSpec("logits")], Thresholds())
    per_eval = total_macs(g) / int(g.inputs[0].shape[0]) * len(samples[0])
    cfg = OptimizeConfig("size", work=3 * per_eval)
    runs = [optimize_weights(g, samples, ref, gate, cfg, gram_samples=(samples[0][:64],)) for _ in range(2)]
    assert all(r["costs_measured"] == 3 for r in runs)
    assert [lay["bits"] for lay in runs[0]["plans"][0]["layers"]] == [lay["bits"] for lay in runs[1]["plans"][0]["layers"]]
    assert runs[0]["plans"][0]["est_bytes_after"] == runs[1]["plans"][0]["est_bytes_after"]
