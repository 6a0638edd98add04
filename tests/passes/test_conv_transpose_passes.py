"""The passes on `conv_transpose` and `resize`: BN folding, int8 quantization (channel axis 1 of
torch's [in, out/groups, *k] weight), low rank and pruning (which must leave the op correct), and
the analysis figures that the report reads."""

from __future__ import annotations

import numpy as np
import pytest

from edgecompile.ir.analysis import layer_figures, node_macs
from edgecompile.backends.onnx import emit_onnx
from edgecompile.ir import Graph, infer_shapes, run_graph, verify
from edgecompile.bundle.onnx_session import create_session
from edgecompile.passes.fold import FoldBatchNormPass
from edgecompile.passes.lowrank.factorize import LowRankConfig, LowRankPass
from edgecompile.passes.prune import PruneConfig, make_prune_pass
from edgecompile.passes.quantize import QuantConfig, QuantizePass

CONV = dict(stride=[1, 1], padding=[1, 1], dilation=[1, 1], groups=1)


def _f32(rng, *shape, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def up_net(groups: int = 1, seed: int = 0) -> Graph:
    """conv -> relu -> conv_transpose(k3 s2 p1 op1, groups) -> batch_norm -> resize x2 bilinear -> conv."""
    rng = np.random.default_rng(seed)
    g = Graph("up")
    x = g.add_input("x", (2, 4, 6, 6))
    h = g.add_node("conv", [x, g.add_const("c1.weight", _f32(rng, 8, 4, 3, 3, scale=0.3)),
                            g.add_const("c1.bias", _f32(rng, 8))], CONV, name="c1").output
    h = g.add_node("relu", [h], name="r1").output
    h = g.add_node("conv_transpose", [h, g.add_const("up.weight", _f32(rng, 8, 12 // groups, 3, 3, scale=0.3)),
                                      g.add_const("up.bias", _f32(rng, 12))],
                   dict(stride=[2, 2], padding=[1, 1], output_padding=[1, 1], dilation=[1, 1], groups=groups),
                   name="up").output
    bn = [g.add_const("bn.mean", _f32(rng, 12, scale=0.1)), g.add_const("bn.var", rng.random(12).astype(np.float32) + 0.5),
          g.add_const("bn.weight", rng.random(12).astype(np.float32) + 0.5), g.add_const("bn.bias", _f32(rng, 12))]
    h = g.add_node("batch_norm", [h] + bn, {"eps": 1e-5}, name="bn").output
    h = g.add_node("resize", [h], dict(mode="linear", size=[24, 24], scales=None, align_corners=False),
                   name="resize").output
    g.outputs = [g.add_node("conv", [h, g.add_const("head.weight", _f32(rng, 2, 12, 1, 1)), None],
                            dict(CONV, padding=[0, 0]), name="head").output]
    infer_shapes(g)
    verify(g)
    return g


def _x(n=1, seed=1):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((2, 4, 6, 6)).astype(np.float32) for _ in range(n)]


@pytest.mark.parametrize("groups", [1, 2])
def test_batch_norm_folds_into_conv_transpose(groups):
    g = up_net(groups)
    (x,) = _x()
    before = run_graph(g, x)
    res = FoldBatchNormPass()(g)
    verify(g)
    assert res.modified and "batch_norm" not in g.op_counts()
    np.testing.assert_allclose(run_graph(g, x), before, rtol=1e-5, atol=1e-5 * np.abs(before).max())


@pytest.mark.parametrize("groups", [1, 2])
def test_quantize_conv_transpose_per_output_channel(groups):
    g = up_net(groups)
    FoldBatchNormPass()(g)
    w_float = g.node("up").input(1).data.copy()
    calib = [(a,) for a in _x(4)]
    res = QuantizePass(QuantConfig(), calib)(g)
    verify(g)
    node = g.node("up")
    w, b, x = node.input(1), node.input(2), node.input(0)
    assert w.data.dtype == np.int8 and w.quant.axis == 1 and w.quant.scale.size == 12 // groups
    s, _ = w.quant.broadcast(4)
    assert np.abs(w.data * s - w_float).max() <= w.quant.scale.max() / 2 + 1e-7
    # one int32 bias scale per output channel: channel j of every group shares the weight's scale j
    want = (np.float32(x.quant.scale[0]) * np.tile(w.quant.scale, groups)).astype(np.float32)
    assert b.data.dtype == np.int32 and np.array_equal(b.quant.scale, want)
    assert node.meta["arith"] == "int8"
    assert g.node("resize").output.quant == g.node("resize").input(0).quant
    assert {r["node"] for r in res.records} >= {"up", "c1", "head"}


def test_dynamic_range_leaves_conv_transpose_weights_only():
    """No backend has a dynamic-range transposed conv: int8 weights, float input and arithmetic."""
    g = up_net()
    QuantizePass(QuantConfig(activations="dynamic"))(g)
    assert g.node("up").meta["arith"] == "fp32" and g.node("c1").meta["arith"] == "int8-dynamic"
    assert g.consts["up.weight"].data.dtype == np.int8
    (x,) = _x()
    m = emit_onnx(g, embed_weights=True)
    got = create_session(m.model_bytes, {}, threads=1).run(None, {"x": x})[0]
    want = run_graph(g, x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_low_rank_leaves_conv_transpose_dense():
    g = up_net()
    FoldBatchNormPass()(g)
    (x,) = _x()
    before = run_graph(g, x)
    LowRankPass(LowRankConfig(rank="fraction:0.25", min_params=0, min_saving=0.0))(g)
    verify(g)
    assert g.op_counts()["conv_transpose"] == 1 and g.node("up").input(1).shape == (8, 12, 3, 3)
    assert not np.allclose(run_graph(g, x), before)      # the convs were factorized


def test_magnitude_pruning_treats_conv_transpose_as_a_layer():
    g = up_net()
    res = make_prune_pass(PruneConfig("magnitude", 0.5))(g)
    w = g.consts["up.weight"].data
    assert "up.weight" in res.masks and np.count_nonzero(w == 0) == w.size // 2


def test_channel_pruning_does_not_resize_across_conv_transpose():
    """c1's output channels feed the transposed conv, which the channel planner does not resize:
    c1 keeps its channels and the graph still runs."""
    g = up_net()
    FoldBatchNormPass()(g)
    make_prune_pass(PruneConfig("channel", 0.5))(g)
    verify(g)
    assert g.consts["c1.weight"].data.shape[0] == 8 and g.node("up").input(1).shape[0] == 8
    run_graph(g, *_x())


def test_analysis_counts_conv_transpose_macs_and_layer():
    g = up_net(groups=2)
    node = g.node("up")
    assert node_macs(node) == 2 * 8 * 6 * 6 * (12 // 2) * 9      # every input element x out/groups x k
    assert "up" in layer_figures(g) and layer_figures(g)["up"].params == 8 * 6 * 9 + 12
