"""Tests of `LowRankPass`: structure, numerics against the IR torch executor, negative cases, golden dump."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from edgecompile.ir import Graph, QuantParams, TorchExecutor, infer_shapes, run_graph, verify
from edgecompile.passes.lowrank.decompose import factor_modes, tt_reconstruct
from edgecompile.passes.lowrank.factorize import LowRankConfig, LowRankConfigError, LowRankPass
from edgecompile.passes.lowrank.rank import mode_spectra, singular_values

GOLDEN = Path(__file__).with_name("golden_lowrank.txt")
EXACT_REL = 1e-5  # float32 executor, exact-rank weights


def _rng(seed=0):
    return np.random.default_rng(seed)


def _low_rank(rng, m, n, r):
    return (rng.standard_normal((m, r)) @ rng.standard_normal((r, n)) / math.sqrt(r)).astype(np.float32)


def _tucker_conv(rng, o, i, kernel, r_out, r_in):
    core = rng.standard_normal((r_out, r_in, *kernel))
    w = np.einsum("ab...,oa,ib->oi...", core, rng.standard_normal((o, r_out)), rng.standard_normal((i, r_in)))
    return (w / math.sqrt(r_out * r_in * math.prod(kernel))).astype(np.float32)


def _conv_attrs(stride=1, padding=0, dilation=1, groups=1, nd=2):
    return {"stride": [stride] * nd, "padding": [padding] * nd, "dilation": [dilation] * nd, "groups": groups}


def _mixed_graph(seed=0) -> Graph:
    """embedding + linear + matmul + 3x3 conv + 1x1 conv, every weight of exact low rank."""
    rng = _rng(seed)
    g = Graph("mixed")
    img = g.add_input("img", (2, 12, 9, 9))
    ids = g.add_input("ids", (2, 6), "int64")
    h = g.add_node("conv", [img, g.add_const("c1.w", _tucker_conv(rng, 24, 12, (3, 3), 5, 4)),
                            g.add_const("c1.b", rng.standard_normal(24).astype(np.float32))],
                   _conv_attrs(stride=2, padding=1, dilation=1), name="c1").output         # [2, 24, 5, 5]
    h = g.add_node("relu", [h]).output
    h = g.add_node("conv", [h, g.add_const("c2.w", _low_rank(rng, 36, 24, 3).reshape(36, 24, 1, 1)), None],
                   _conv_attrs(padding=1), name="c2").output                               # [2, 36, 7, 7]
    h = g.add_node("mean", [h], {"axes": [2, 3], "keepdims": False}).output                # [2, 36]
    h = g.add_node("reshape", [h], {"shape": [2, 6, 6]}).output
    e = g.add_node("gather", [g.add_const("emb", _low_rank(rng, 200, 40, 4)), ids], {"axis": 0},
                   name="emb").output                                                      # [2, 6, 40]
    e = g.add_node("linear", [e, g.add_const("fc.w", _low_rank(rng, 48, 40, 6)),
                              g.add_const("fc.b", rng.standard_normal(48).astype(np.float32))],
                   name="fc").output                                                       # [2, 6, 48]
    e = g.add_node("matmul", [e, g.add_const("proj", _low_rank(rng, 48, 36, 2))], name="proj").output
    out = g.add_node("matmul", [h, e]).output                                                # [2, 6, 36]
    g.outputs = [out]
    infer_shapes(g)
    verify(g)
    return g


def _inputs(seed=1):
    rng = _rng(seed)
    return rng.standard_normal((2, 12, 9, 9)).astype(np.float32), rng.integers(0, 200, (2, 6))


def _run(pass_, g):
    result = pass_(g)
    verify(result.graph)
    return result


def _rel_err(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


EXACT_CFG = LowRankConfig("energy:0.999999", min_params=0, tt_policy="never")


# -------------------------------------------------------------------------------------- structure

def test_structure_of_every_rewrite():
    g = _mixed_graph()
    before = g.op_counts()
    result = _run(LowRankPass(EXACT_CFG), g)
    assert result.modified
    after = g.op_counts()
    # c1: 1 conv -> 3 (Tucker-2); c2: 1x1 conv -> 2; emb: gather -> gather + linear;
    # fc: linear -> 2 linears; proj: matmul -> 2 matmuls
    assert after["conv"] == before["conv"] + 3
    assert after["gather"] == before["gather"]
    assert after["linear"] == before["linear"] + 2
    assert after["matmul"] == before["matmul"] + 1
    done = {r["node"]: r for r in result.records if r["kind"] == "lowrank"}
    assert {k: (r["method"], r["rank"]) for k, r in done.items()} == {
        "c1": ("tucker2", [5, 4]), "c2": ("svd", 3), "emb": ("svd", 4), "fc": ("svd", 6),
        "proj": ("svd", 2)}
    for r in done.values():
        assert r["params_after"] < r["params_before"]
    # every new node says where it came from
    tagged = [n for n in g.nodes if "lowrank" in n.meta]
    assert len(tagged) == 3 + 2 + 2 + 2 + 2
    assert {n.meta["lowrank"]["original"] for n in tagged} == set(done)
    # the graph output keeps its value; the chain's last node took over the original output
    last = g.outputs[0].producer
    assert last.name == "matmul" and g.node("fc.u").output.name == "fc"
    assert g.node("fc.u").meta["lowrank"] == {
        "method": "svd", "rank": 6, "original": "fc", "params_before": 48 * 40,
        "params_after": 6 * 88, "part": 1, "parts": 2}


def test_executor_sees_the_chain_as_layers():
    g = _mixed_graph()
    _run(LowRankPass(EXACT_CFG), g)
    ex = TorchExecutor(g)
    assert isinstance(ex.layer_for_node("fc.v"), torch.nn.Linear)
    assert isinstance(ex.layer_for_node("c1.core"), torch.nn.Conv2d)
    assert isinstance(ex.layer_for_node("emb.gather"), torch.nn.Embedding)


# -------------------------------------------------------------------------------------- numerics

def test_exact_rank_weights_give_the_same_outputs():
    g = _mixed_graph()
    xs = _inputs()
    ref = run_graph(g, *xs)
    _run(LowRankPass(EXACT_CFG), g)
    assert _rel_err(run_graph(g, *xs), ref) < EXACT_REL


@pytest.mark.parametrize("kernel, stride, padding, dilation", [
    ((3, 3), 1, 1, 1), ((3, 3), 2, 0, 1), ((5, 5), 1, 4, 2), ((3,), 2, 1, 1), ((1, 1), 2, 1, 1)])
def test_conv_geometry_is_kept(kernel, stride, padding, dilation):
    rng = _rng(3)
    nd = len(kernel)
    g = Graph("conv")
    x = g.add_input("x", (2, 16) + (11,) * nd)
    w = _tucker_conv(rng, 20, 16, kernel, 6, 5) if math.prod(kernel) > 1 else \
        _low_rank(rng, 20, 16, 5).reshape(20, 16, *kernel)
    y = g.add_node("conv", [x, g.add_const("w", w), g.add_const("b", np.ones(20, np.float32))],
                   _conv_attrs(stride, padding, dilation, nd=nd), name="conv").output
    g.outputs = [y]
    infer_shapes(g)
    xv = rng.standard_normal((2, 16) + (11,) * nd).astype(np.float32)
    ref = run_graph(g, xv)
    result = _run(LowRankPass(EXACT_CFG), g)
    assert result.modified
    assert _rel_err(run_graph(g, xv), ref) < EXACT_REL


def test_trained_linear_error_within_discarded_energy(digits_mlp):
    """‖Y − Ŷ‖_F <= ‖X‖_F · sqrt(Σ discarded s²) for each factorized layer of a trained MLP."""
    rng = _rng(4)
    for name, w in digits_mlp.items():
        w = w.astype(np.float32)
        g = Graph(name)
        x = g.add_input("x", (32, w.shape[1]))
        g.outputs = [g.add_node("linear", [x, g.add_const("w", w), None], name=name).output]
        infer_shapes(g)
        xv = rng.standard_normal((32, w.shape[1])).astype(np.float32)
        ref = run_graph(g, xv)
        result = _run(LowRankPass(LowRankConfig("erank:0.5", min_params=0)), g)
        (record,) = result.records
        if record["kind"] == "kept":
            continue
        s = singular_values(w)
        bound = np.linalg.norm(xv) * math.sqrt(np.sum(s[record["rank"]:] ** 2))
        assert np.linalg.norm(run_graph(g, xv) - ref) <= bound * 1.001 + 1e-4


def test_trained_conv_error_within_tucker_bound(digits_cnn):
    """‖Y − Ŷ‖_F <= ‖ΔW‖_F ‖im2col(X)‖_F, and ‖ΔW‖_F² <= the two unfoldings' discarded energy."""
    rng = _rng(5)
    for name, w in digits_cnn.items():
        if w.shape[1] == 1:
            continue  # conv1 has one input channel: nothing to factorize
        g = Graph(name)
        x = g.add_input("x", (4, w.shape[1], 8, 8))
        attrs = _conv_attrs(padding=1)
        g.outputs = [g.add_node("conv", [x, g.add_const("w", w), None], attrs, name=name).output]
        infer_shapes(g)
        xv = np.abs(rng.standard_normal((4, w.shape[1], 8, 8))).astype(np.float32)
        ref = run_graph(g, xv)
        result = _run(LowRankPass(LowRankConfig("energy:0.9", min_params=0)), g)
        (record,) = result.records
        assert record["kind"] == "lowrank" and record["method"] == "tucker2"
        r_out, r_in = record["rank"]
        s_out, s_in = mode_spectra(w)
        bound_w = math.sqrt(np.sum(s_out[r_out:] ** 2) + np.sum(s_in[r_in:] ** 2))
        lost_w = math.sqrt(1 - record["energy_kept"]) * np.linalg.norm(w)
        assert lost_w <= bound_w * 1.001
        cols = torch.nn.functional.unfold(torch.from_numpy(xv), 3, padding=1)
        assert np.linalg.norm(run_graph(g, xv) - ref) <= lost_w * float(cols.norm()) * 1.001 + 1e-4


def test_trained_mlp_keeps_its_accuracy(digits_mlp):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    g = Graph("mlp")
    h = g.add_input("x", x.shape)
    for k, (name, w) in enumerate(digits_mlp.items()):
        h = g.add_node("linear", [h, g.add_const(name, w.astype(np.float32)), None], name=name).output
        if k < len(digits_mlp) - 1:
            h = g.add_node("relu", [h]).output
    g.outputs = [h]
    infer_shapes(g)
    acc = lambda: float(np.mean(run_graph(g, x).argmax(1) == y))  # noqa: E731
    # biases left out: the fixture keeps weights only, so compare against the same graph dense
    dense_acc = acc()
    params = g.param_count()
    _run(LowRankPass(LowRankConfig("energy:0.95", min_params=0)), g)
    assert g.param_count() < 0.8 * params
    assert acc() >= dense_acc - 0.03


@pytest.mark.parametrize("lead", [(3, 5), (4,), ()])
def test_tensor_train_chain_matches(lead):
    rng = _rng(6)
    outs, ins = factor_modes(64, 3), factor_modes(96, 3)   # (4, 4, 4), (4, 4, 6)
    ranks = [1, 3, 5, 1]
    cores = [rng.standard_normal((ranks[k], outs[k], ins[k], ranks[k + 1])) for k in range(3)]
    w = (tt_reconstruct(cores) / 5).astype(np.float32)
    g = Graph("tt")
    x = g.add_input("x", (*lead, 96))
    g.outputs = [g.add_node("linear", [x, g.add_const("w", w), g.add_const("b", np.ones(64, np.float32))],
                            name="fc").output]
    infer_shapes(g)
    xv = rng.standard_normal((*lead, 96)).astype(np.float32)
    ref = run_graph(g, xv)
    cfg = LowRankConfig("energy:0.999999", min_params=0, tt_min_params=0, tt_policy="always")
    result = _run(LowRankPass(cfg), g)
    (record,) = result.records
    assert record["method"] == "tt" and record["rank"] == [3, 5]
    assert record["params_after"] == sum(c.size for c in cores)
    assert g.op_counts()["linear"] == 3 and g.op_counts()["add"] == 1
    assert _rel_err(run_graph(g, xv), ref) < EXACT_REL
    # "auto" takes the TT form too: 408 weights against an SVD rank of ~40 (6400 weights)
    g2 = Graph("tt2")
    x2 = g2.add_input("x", (*lead, 96))
    g2.outputs = [g2.add_node("linear", [x2, g2.add_const("w", w), None], name="fc").output]
    infer_shapes(g2)
    auto = _run(LowRankPass(LowRankConfig("energy:0.999999", min_params=0, tt_min_params=0)), g2)
    assert auto.records[0]["method"] == "tt"


# ------------------------------------------------------------------------------------ byte budget

def test_budget_is_met_on_the_graph():
    g = _mixed_graph()
    dense = g.param_count() * 4
    for frac in (0.2, 0.4, 0.7):
        h = _mixed_graph()
        budget = int(frac * dense)
        _run(LowRankPass(LowRankConfig(budget_bytes=budget, min_params=0, tt_policy="never")), h)
        assert h.param_count() * 4 <= budget


def test_impossible_budget_is_one_clear_error():
    from edgecompile.passes.lowrank.rank import BudgetError

    g = _mixed_graph()
    before = g.dump()
    with pytest.raises(BudgetError, match=r"byte budget 100 is below the smallest achievable size \d+"):
        LowRankPass(LowRankConfig(budget_bytes=100, min_params=0))(g)
    assert g.dump() == before


# ---------------------------------------------------------------------------------- negative cases

def _single(op, weight, attrs=None, inputs_shape=None, quant=None, shared=False):
    g = Graph("neg")
    x = g.add_input("x", inputs_shape)
    w = g.add_const("w", weight, quant=quant)
    y = g.add_node(op, [x, w, None], attrs or {}, name="layer").output
    if shared:
        y = g.add_node("add", [y, g.add_node(op, [x, w, None], attrs or {}, name="twin").output]).output
    g.outputs = [y]
    infer_shapes(g)
    return g


@pytest.mark.parametrize("make, cfg, reason", [
    (lambda: _single("conv", np.ones((16, 1, 3, 3), np.float32), _conv_attrs(groups=16, padding=1),
                     (1, 16, 6, 6)), EXACT_CFG, "grouped"),
    (lambda: _single("linear", np.ones((32, 32), np.float32), None, (2, 32)), LowRankConfig(), "min_params"),
    (lambda: _single("linear", np.ones((64, 64), np.int8), None, (2, 64),
                     QuantParams(np.full(64, 0.1), np.zeros(64), axis=0)), EXACT_CFG, "quantized"),
    (lambda: _single("linear", np.ones((64, 64), np.float32), None, (2, 64), shared=True), EXACT_CFG, "shared"),
    (lambda: _single("linear", np.ones((64, 64), np.float32), None, (2, 64)),
     LowRankConfig("none", min_params=0), "none"),
    (lambda: _single("linear", _rng().standard_normal((64, 64)).astype(np.float32), None, (2, 64)),
     LowRankConfig("fraction:0.6", min_params=0), "would not save"),
    (lambda: _single("linear", np.ones((64, 64), np.float32), None, (2, 64)),
     LowRankConfig(min_params=0, exclude=("lay*",)), "excluded"),
])
def test_nothing_eligible_leaves_the_graph_unchanged(make, cfg, reason):
    g = make()
    before = g.dump()
    result = LowRankPass(cfg)(g)
    verify(g)
    assert not result.modified
    assert g.dump() == before
    assert any(reason in r.get("reason", "") for r in result.records), result.records


@pytest.mark.parametrize("kwargs, match", [
    (dict(rank="bogus"), "rank spec"), (dict(budget_bytes=0), "budget_bytes"),
    (dict(tt_policy="sometimes"), "tt_policy"), (dict(tt_modes=1), "tt_modes"),
    (dict(bytes_per_param=0), "bytes_per_param")])
def test_bad_config_is_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LowRankConfig(**kwargs)
    assert issubclass(LowRankConfigError, ValueError)


# ------------------------------------------------------------------------------------ golden dump

def test_golden_dump():
    g = _mixed_graph()
    _run(LowRankPass(EXACT_CFG), g)
    text = g.dump()
    # to update after an intended change: write g.dump() to GOLDEN and review the diff
    assert text == GOLDEN.read_text()
