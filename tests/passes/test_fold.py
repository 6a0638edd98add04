import numpy as np
import torch
from torch import nn

from edgecompile.ir import Graph, infer_shapes, run_graph, verify
from edgecompile.passes.fold import CleanupPass, FoldBatchNormPass


def conv_bn_graph(with_bias=True, shared=False):
    rng = np.random.default_rng(0)
    g = Graph("convbn")
    x = g.add_input("x", (2, 3, 8, 8))
    w = g.add_const("conv.weight", rng.standard_normal((4, 3, 3, 3)).astype(np.float32))
    b = g.add_const("conv.bias", rng.standard_normal(4).astype(np.float32)) if with_bias else None
    attrs = dict(stride=[1, 1], padding=[1, 1], dilation=[1, 1], groups=1)
    h = g.add_node("conv", [x, w, b], attrs, name="conv").output
    stats = [g.add_const(f"bn.{k}", v.astype(np.float32)) for k, v in
             [("mean", rng.standard_normal(4)), ("var", rng.uniform(0.5, 2, 4)),
              ("weight", rng.standard_normal(4)), ("bias", rng.standard_normal(4))]]
    y = g.add_node("batch_norm", [h] + stats, {"eps": 1e-5}, name="bn").output
    out = g.add_node("relu", [y]).output
    g.outputs = [out, h] if shared else [out]
    infer_shapes(g)
    return g


def test_fold_conv_bn_structure_and_numerics():
    for bias in (True, False):
        g = conv_bn_graph(bias)
        x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
        ref = run_graph(g, x)
        res = FoldBatchNormPass()(g)
        assert res.modified
        verify(g)
        assert g.op_counts() == {"conv": 1, "relu": 1}
        np.testing.assert_allclose(run_graph(g, x), ref, rtol=1e-5, atol=1e-5)


def test_fold_linear_bn_matches_torch():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6)).eval()
    m[1].running_mean.uniform_(-1, 1)
    m[1].running_var.uniform_(0.5, 2)
    g = Graph("linbn")
    x = g.add_input("x", (3, 5))
    h = g.add_node("linear", [x, g.add_const("w", m[0].weight.detach().numpy()),
                              g.add_const("b", m[0].bias.detach().numpy())], name="fc").output
    bn = m[1]
    y = g.add_node("batch_norm", [h] + [g.add_const(n, t.detach().numpy()) for n, t in
                                       [("m", bn.running_mean), ("v", bn.running_var), ("g", bn.weight),
                                        ("bb", bn.bias)]], {"eps": bn.eps}).output
    g.outputs = [y]
    infer_shapes(g)
    assert FoldBatchNormPass()(g).modified
    xi = torch.randn(3, 5)
    np.testing.assert_allclose(run_graph(g, xi.numpy()), m(xi).detach().numpy(), rtol=1e-5, atol=1e-5)


def test_fold_negative_when_conv_output_is_shared():
    g = conv_bn_graph(shared=True)
    before = g.dump()
    res = FoldBatchNormPass()(g)
    assert not res.modified and g.dump() == before
    assert res.records[0]["reason"] == "output of conv has other uses"


def test_fold_golden_dump():
    g = conv_bn_graph()
    FoldBatchNormPass()(g)
    assert g.dump() == (
        "graph convbn(x: float32[2, 3, 8, 8])\n"
        "  const conv.weight_0: float32[4, 3, 3, 3]\n"
        "  const conv.bias_1: float32[4]\n"
        "  conv: float32[2, 4, 8, 8] = conv(x, conv.weight_0, conv.bias_1) dilation=[1,1] groups=1"
        " padding=[1,1] stride=[1,1]\n"
        "  relu: float32[2, 4, 8, 8] = relu(conv)\n"
        "  return relu\n")


def test_cleanup_removes_identity_ops():
    g = Graph("c")
    x = g.add_input("x", (2, 3))
    r = g.add_node("reshape", [x], {"shape": [2, 3]}).output
    t = g.add_node("transpose", [r], {"perm": [0, 1]}).output
    y = g.add_node("relu", [t]).output
    g.outputs = [y]
    infer_shapes(g)
    assert CleanupPass()(g).modified
    verify(g)
    assert g.op_counts() == {"relu": 1}
    assert not CleanupPass()(g).modified


def _masked_softmax(mask: np.ndarray) -> Graph:
    g = Graph("mask")
    x = g.add_input("x", (2, 2, 4, 4))
    m = g.add_const("mask", mask)
    fill = g.add_const("fill", np.array(-np.inf, np.float32))
    w = g.add_node("where", [m, x, fill], name="where").output
    g.outputs = [g.add_node("softmax", [w], {"axis": 3}, name="softmax").output]
    infer_shapes(g)
    return g


def test_cleanup_drops_where_on_an_all_true_mask():
    """A Hugging Face mask without padding (all-true bool [1, 1, 1, 1]) selects x everywhere:
    the where and its bool constant go, the output is the same."""
    g = _masked_softmax(np.ones((1, 1, 1, 1), bool))
    x = np.random.default_rng(0).standard_normal((2, 2, 4, 4)).astype(np.float32)
    before = run_graph(g, x)
    assert CleanupPass()(g).modified
    verify(g)
    assert g.op_counts() == {"softmax": 1} and "mask" not in g.consts
    np.testing.assert_array_equal(run_graph(g, x), before)


def test_cleanup_keeps_where_on_a_causal_mask():
    """Negative case: a mask of both values (causal) selects per element; nothing changes."""
    g = _masked_softmax(np.tril(np.ones((1, 1, 4, 4), bool)))
    assert not CleanupPass()(g).modified
    assert g.op_counts() == {"where": 1, "softmax": 1}
