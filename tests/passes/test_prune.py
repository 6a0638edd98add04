"""Tests for magnitude and channel pruning (edgecompile/passes/prune.py, channel_plan.py)."""

from __future__ import annotations

import numpy as np
import pytest

from edgecompile.ir import Graph, infer_shapes, run_graph, verify
from edgecompile.passes.prune import (
    ChannelPrunePass, MagnitudePrunePass, PruneConfig, PruneSpecError, channel_scores,
    magnitude_masks, make_prune_pass, parse_prune_spec, select_channels,
)

CONV0 = dict(stride=[1, 1], padding=[0, 0], dilation=[1, 1], groups=1)
CONV1 = dict(CONV0, padding=[1, 1])
POOL = dict(kernel=[2, 2], stride=[2, 2], padding=[0, 0], dilation=[1, 1], ceil_mode=False)


def _f32(rng, *shape, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def cnn(seed: int = 0) -> Graph:
    """conv(pad 1)+bias -> batch_norm -> relu -> max_pool -> conv(pad 0) -> silu -> flatten -> linear."""
    rng = np.random.default_rng(seed)
    g = Graph("cnn")
    x = g.add_input("x", (2, 3, 8, 8))
    h = g.add_node("conv", [x, g.add_const("c1.weight", _f32(rng, 8, 3, 3, 3)),
                            g.add_const("c1.bias", _f32(rng, 8))], CONV1, name="c1").output
    bn = [g.add_const("bn.mean", _f32(rng, 8)), g.add_const("bn.var", rng.random(8).astype(np.float32) + 0.5),
          g.add_const("bn.weight", _f32(rng, 8)), g.add_const("bn.bias", _f32(rng, 8))]
    h = g.add_node("batch_norm", [h, *bn], {"eps": 1e-5}, name="bn").output
    h = g.add_node("relu", [h], name="relu1").output
    h = g.add_node("max_pool", [h], POOL, name="pool").output
    h = g.add_node("conv", [h, g.add_const("c2.weight", _f32(rng, 6, 8, 3, 3)),
                            g.add_const("c2.bias", _f32(rng, 6))], CONV0, name="c2").output
    h = g.add_node("silu", [h], name="silu").output
    h = g.add_node("reshape", [h], {"shape": [2, 24]}, name="flat").output
    g.outputs = [g.add_node("linear", [h, g.add_const("fc.weight", _f32(rng, 5, 24)), None], name="fc").output]
    infer_shapes(g)
    verify(g)
    return g


def mlp(seed: int = 0) -> Graph:
    """linear -> gelu -> mul(per-feature const) -> linear -> relu -> linear, with an embedding input."""
    rng = np.random.default_rng(seed)
    g = Graph("mlp")
    ids = g.add_input("ids", (4, 3), "int64")
    h = g.add_node("gather", [g.add_const("emb", _f32(rng, 11, 8)), ids], {"axis": 0}, name="emb").output
    h = g.add_node("linear", [h, g.add_const("fc1.weight", _f32(rng, 16, 8)),
                              g.add_const("fc1.bias", _f32(rng, 16))], name="fc1").output
    h = g.add_node("gelu", [h], {"approximate": "none"}, name="gelu").output
    h = g.add_node("mul", [h, g.add_const("gain", _f32(rng, 16))], name="gain").output
    h = g.add_node("linear", [h, g.add_const("fc2.weight", _f32(rng, 12, 16)),
                              g.add_const("fc2.bias", _f32(rng, 12))], name="fc2").output
    h = g.add_node("relu", [h], name="relu").output
    h = g.add_node("mean", [h], {"axes": [1], "keepdims": False}, name="pool").output
    g.outputs = [g.add_node("linear", [h, g.add_const("fc3.weight", _f32(rng, 3, 12)), None], name="fc3").output]
    infer_shapes(g)
    verify(g)
    return g


def _zero_rows(g: Graph, name: str, rows: list[int]) -> None:
    w = g.consts[name]
    d = w.data.copy()
    d[rows] = 0
    w.data = d


# ---------------------------------------------------------------------------- specs

def test_parse_prune_spec():
    assert parse_prune_spec("none") == PruneConfig()
    assert parse_prune_spec("magnitude:0.5") == PruneConfig("magnitude", 0.5, "layer")
    assert parse_prune_spec("magnitude:global:0.6") == PruneConfig("magnitude", 0.6, "global")
    assert parse_prune_spec("Channel:0.25") == PruneConfig("channel", 0.25)
    assert make_prune_pass(parse_prune_spec("none")) is None
    assert isinstance(make_prune_pass(parse_prune_spec("channel:0.25")), ChannelPrunePass)
    for bad in ["magnitude", "magnitude:1.5", "magnitude:x", "lottery:0.5", "channel:local:0.3", "channel:0.1:0.2:3"]:
        with pytest.raises(PruneSpecError, match="--prune"):
            parse_prune_spec(bad)


# ------------------------------------------------------------------------- numerics

def test_magnitude_masks_drop_exactly_the_smallest():
    rng = np.random.default_rng(0)
    ws = {"a": _f32(rng, 30, 7), "b": _f32(rng, 5, 4, 3, scale=0.4), "c": _f32(rng, 64, 3, scale=2.0)}
    per_layer = magnitude_masks(ws, 0.6, "layer")
    for n, w in ws.items():
        m = per_layer[n]
        assert m.shape == w.shape and (~m).sum() == round(0.6 * w.size)
        assert np.abs(w[~m]).max() <= np.abs(w[m]).min()
    glob = magnitude_masks(ws, 0.6, "global")
    dropped = np.concatenate([np.abs(w[~glob[n]]) for n, w in ws.items()])
    kept = np.concatenate([np.abs(w[glob[n]]) for n, w in ws.items()])
    assert dropped.size == round(0.6 * sum(w.size for w in ws.values()))
    assert dropped.max() <= kept.min()                      # one threshold across layers
    assert (~glob["b"]).mean() > 0.9 and (~glob["c"]).mean() < 0.4     # small layers lose more


def test_global_magnitude_never_empties_a_layer():
    rng = np.random.default_rng(1)
    ws = {"tiny": _f32(rng, 10, 10, scale=1e-4), "big": _f32(rng, 100, 100)}
    m = magnitude_masks(ws, 0.5, "global")
    assert m["tiny"].sum() == 2                             # ceil(2% of 100)


def test_select_channels_layer_and_global():
    scores = {"a": np.array([5.0, 1.0, 3.0, 0.5]), "b": np.array([1.0, 1.0, 1.0, 1.0, 1.0, 0.01, 0.02, 1.0])}
    sel = select_channels(scores, 0.25, "layer")
    np.testing.assert_array_equal(sel["a"], [3])
    np.testing.assert_array_equal(sel["b"], [5, 6])
    glob = select_channels(scores, 0.25, "global")          # 3 of 12: b's two near-dead ones, then a's weakest
    assert glob["b"].tolist() == [5, 6] and glob["a"].tolist() == [3]
    assert select_channels({"a": np.ones(2)}, 0.9, "layer")["a"].size == 1   # a layer keeps one channel
    np.testing.assert_allclose(channel_scores(np.ones((2, 4)), np.array([2.0, -0.5])), [4.0, 1.0])


# ----------------------------------------------------------------- magnitude: the pass

def test_magnitude_pass_structure_and_masks():
    g = mlp()
    before = {n: v.data for n, v in g.consts.items()}
    res = MagnitudePrunePass(parse_prune_spec("magnitude:0.5"))(g)
    verify(g)
    assert res.modified
    assert {r["weight"] for r in res.records} == {"emb", "fc1.weight", "fc2.weight", "fc3.weight"}
    for r in res.records:
        v = g.consts[r["weight"]]
        assert v.data.shape == before[v.name].shape
        assert r["sparsity"] == pytest.approx(1 - r["params_after"] / r["params_before"])
        assert abs(r["sparsity"] - 0.5) < 0.5 / v.data.size + 1e-9
        m = res.masks[v.name]
        np.testing.assert_array_equal(v.data, np.where(m, before[v.name], 0))
    for n in ("fc1.bias", "fc2.bias", "gain"):               # biases and other constants untouched
        assert g.consts[n].data is before[n]
    assert set(g.meta["sparsity_masks"]) == set(res.masks)


def test_magnitude_pass_numerics_match_the_masked_reference():
    g, ref = cnn(), cnn()
    res = MagnitudePrunePass(parse_prune_spec("magnitude:global:0.7"))(g)
    for name, m in res.masks.items():                        # the same graph, pruned by hand
        ref.consts[name].data = ref.consts[name].data * m
    x = np.random.default_rng(5).standard_normal((2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(run_graph(g, x), run_graph(ref, x))
    total = sum(r["params_before"] for r in res.records)
    assert sum(r["params_after"] for r in res.records) == total - round(0.7 * total)
    for n in ("bn.weight", "bn.bias", "c1.bias"):
        np.testing.assert_array_equal(g.consts[n].data, ref.consts[n].data)


def test_magnitude_nothing_to_do_leaves_graph_unchanged():
    g = cnn()
    dump = g.dump()
    res = MagnitudePrunePass(PruneConfig("magnitude", 0.5, skip=("c1", "c2", "fc")))(g)
    assert not res.modified and res.records == [] and res.masks == {} and g.dump() == dump
    res = MagnitudePrunePass(PruneConfig("magnitude", 0.0))(g)
    assert not res.modified and "sparsity_masks" not in g.meta


# ------------------------------------------------------------------- channel: the pass

def test_channel_prune_structure():
    g = cnn()
    res = ChannelPrunePass(parse_prune_spec("channel:0.25"))(g)
    verify(g)
    assert res.modified
    by_node = {r["node"]: r for r in res.records}
    assert by_node["fc"]["skipped"] == "its channels reach the graph output fc"
    assert (by_node["c1"]["channels_before"], by_node["c1"]["channels_after"]) == (8, 6)
    assert (by_node["c2"]["channels_before"], by_node["c2"]["channels_after"]) == (6, 4)
    shapes = {n: v.data.shape for n, v in g.consts.items()}
    assert shapes["c1.weight"] == (6, 3, 3, 3) and shapes["c1.bias"] == (6,)
    assert all(shapes[f"bn.{k}"] == (6,) for k in ("mean", "var", "weight", "bias"))
    assert shapes["c2.weight"] == (4, 6, 3, 3) and shapes["fc.weight"] == (5, 16)
    assert g.node("flat").attrs["shape"] == [2, 16] and g.node("fc").output.shape == (2, 5)
    assert by_node["c2"]["params_after"] < by_node["c2"]["params_before"]


@pytest.mark.parametrize("make, x_of, zero", [
    (cnn, lambda r: r.standard_normal((2, 3, 8, 8)).astype(np.float32), {"c1.weight": [1, 4], "c2.weight": [0, 2]}),
    (mlp, lambda r: r.integers(0, 11, (4, 3)), {"fc1.weight": [3, 7, 9, 12], "fc2.weight": [0, 5, 6]}),
])
def test_removing_zero_weight_channels_keeps_the_output(make, x_of, zero):
    """Channels whose weights are zero (biases not) go; their constant output is folded downstream."""
    g = make()
    for name, rows in zero.items():
        _zero_rows(g, name, rows)
    x = x_of(np.random.default_rng(3))
    ref = run_graph(g, x)
    res = ChannelPrunePass(PruneConfig("channel", 0.25))(g)
    verify(g)
    pruned = {r["node"]: r["removed"] for r in res.records if "removed" in r}
    assert sorted(map(sorted, pruned.values())) == sorted(zero.values())
    assert all(r["bias_fold"] == "exact" for r in res.records if "removed" in r)
    np.testing.assert_allclose(run_graph(g, x), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_pruning_equals_zeroing_the_removed_channels_weights():
    """With non-zero weights the pruned graph computes what the graph with those rows zeroed does."""
    g, ref = mlp(1), mlp(1)
    res = ChannelPrunePass(PruneConfig("channel", 0.4, "global"))(g)
    for r in res.records:
        if "removed" in r:
            _zero_rows(ref, f"{r['node']}.weight", r["removed"])
    x = np.random.default_rng(4).integers(0, 11, (4, 3))
    out, want = run_graph(g, x), run_graph(ref, x)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    assert g.consts["gain"].data.shape == (g.consts["fc1.weight"].data.shape[0],)


def test_padded_next_conv_is_reported_approximate():
    g = cnn()
    g.consts["bn.bias"].data = np.full(8, 10.0, np.float32)    # removed channels output relu(10) > 0
    g.node("c2").attrs["padding"] = [1, 1]
    g.node("flat").attrs["shape"] = [2, 6 * 16]
    fc = g.consts["fc.weight"]
    fc.data = np.ones((5, 96), np.float32)
    fc.shape = fc.data.shape
    infer_shapes(g, overwrite=True)
    verify(g)
    res = ChannelPrunePass(PruneConfig("channel", 0.25))(g)
    c1 = next(r for r in res.records if r["node"] == "c1")
    assert c1["bias_fold"] == "approximate at padded borders"


# ---------------------------------------------------------------------- preconditions

def blocked_graph() -> Graph:
    """Every producer is blocked: residual add, concat, depthwise consumer, channel-mixing reshape."""
    rng = np.random.default_rng(0)
    g = Graph("blocked")
    x = g.add_input("x", (1, 4, 6, 6))
    a = g.add_node("conv", [x, g.add_const("a.w", _f32(rng, 4, 4, 1, 1)), None], CONV0, name="a").output
    r = g.add_node("add", [a, x], name="residual").output
    b = g.add_node("conv", [r, g.add_const("b.w", _f32(rng, 4, 4, 1, 1)), None], CONV0, name="b").output
    d = g.add_node("conv", [b, g.add_const("d.w", _f32(rng, 4, 1, 3, 3)), None], dict(CONV1, groups=4),
                   name="dw").output
    c = g.add_node("conv", [d, g.add_const("c.w", _f32(rng, 4, 4, 1, 1)), None], CONV0, name="c").output
    cat = g.add_node("concat", [c, r], {"axis": 1}, name="cat").output
    e = g.add_node("conv", [cat, g.add_const("e.w", _f32(rng, 4, 8, 1, 1)), None], CONV0, name="e").output
    t = g.add_node("reshape", [e, ], {"shape": [1, 24, 6]}, name="mix").output
    g.outputs = [t]
    infer_shapes(g)
    verify(g)
    return g


def test_unprunable_channels_are_skipped_with_reasons():
    g = blocked_graph()
    dump = g.dump()
    res = ChannelPrunePass(PruneConfig("channel", 0.5))(g)
    assert not res.modified and g.dump() == dump
    why = {r["node"]: r["skipped"] for r in res.records}
    assert why["a"] == "feeds residual add residual"
    assert why["b"] == "feeds grouped/depthwise conv dw (groups=4)"
    assert why["dw"] == "grouped/depthwise conv (groups=4)"
    assert why["c"] == "feeds concat cat"
    assert why["e"].startswith("feeds reshape mix, which mixes channels")


def test_channel_check_on_shared_weights():
    g = cnn()
    c2 = g.node("c2")
    twin = g.add_node("conv", [c2.input(0), c2.input(1), None], CONV0, name="twin")   # shares c2's weight
    g.outputs.append(twin.output)
    infer_shapes(g)
    assert ChannelPrunePass.check(g, c2) == "weight or bias is shared with another node or not a float constant"
    assert ChannelPrunePass.check(g, g.node("bn")) == "batch_norm is not a conv or linear layer"


# ---------------------------------------------------------------------------- golden

GOLDEN = """\
graph tiny(x: float32[2, 4])
  const fc1.weight: float32[2, 4]
  const fc1.bias: float32[2]
  const fc2.weight: float32[3, 2]
  const fc2.bias: float32[3]
  fc1: float32[2, 2] = linear(x, fc1.weight, fc1.bias)
  relu: float32[2, 2] = relu(fc1)
  fc2: float32[2, 3] = linear(relu, fc2.weight, fc2.bias)
  return fc2
"""


def test_golden_dump_after_channel_prune():
    rng = np.random.default_rng(0)
    g = Graph("tiny")
    x = g.add_input("x", (2, 4))
    w1 = _f32(rng, 4, 4) * np.array([[1], [0.01], [1], [0.02]], np.float32)
    h = g.add_node("linear", [x, g.add_const("fc1.weight", w1), g.add_const("fc1.bias", _f32(rng, 4))],
                   name="fc1").output
    h = g.add_node("relu", [h]).output
    g.outputs = [g.add_node("linear", [h, g.add_const("fc2.weight", _f32(rng, 3, 4)), None], name="fc2").output]
    infer_shapes(g)
    res = ChannelPrunePass(parse_prune_spec("channel:0.5"))(g)
    assert [r.get("removed") for r in res.records] == [[1, 3], None]     # records in graph order
    assert g.dump() == GOLDEN


# ------------------------------------------------------------- imported models (frontend)

@pytest.mark.parametrize("name", [
    "cnn", "mobilenet_block", "group_norm_net",
    *[pytest.param(n, marks=pytest.mark.slow) for n in ("mlp", "conv1d_net", "bert_encoder",
                                                         "tiny_transformer", "lstm_cell_model")],
])
def test_passes_on_imported_models(name):
    """On frontend graphs: both passes keep the graph valid; channel pruning equals zeroing rows."""
    from edgecompile.frontend import import_model
    from tests.models import ZOO

    model, example = ZOO[name]()
    g = import_model(model, example)
    xs = tuple(t.numpy() for t in example)
    mag = g.copy()
    res = MagnitudePrunePass(parse_prune_spec("magnitude:0.5"))(mag)
    verify(mag)
    assert res.modified and all(abs(r["sparsity"] - 0.5) < 0.01 for r in res.records)
    pruned, zeroed = g.copy(), g.copy()
    res = ChannelPrunePass(parse_prune_spec("channel:0.3"))(pruned)
    verify(pruned)
    done = [r for r in res.records if "removed" in r]
    assert all(r["skipped"] for r in res.records if "removed" not in r)
    if not done:      # conv1d_net, the LSTM cell: every channel reaches a reshape, gate or output
        assert not res.modified and pruned.dump() == g.dump()
        return
    for r in done:
        _zero_rows(zeroed, zeroed.node(r["node"]).input(1).name, r["removed"])
    out, want = run_graph(pruned, *xs), run_graph(zeroed, *xs)
    if all(r["bias_fold"] == "exact" for r in done):
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    else:   # a padded conv sees the folded constant only approximately at its borders
        assert np.abs(out - want).max() < 0.3 * np.abs(want).max()
    assert pruned.param_count() < g.param_count()
