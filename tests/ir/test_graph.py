import numpy as np
import pytest
import torch

from edgecompile.ir import OPS, Graph, QuantParams, TorchExecutor, VerifyError, infer_shapes, run_graph, verify
from edgecompile.ir.torch_ops import OP_IMPLS


def small_mlp():
    rng = np.random.default_rng(0)
    g = Graph("mlp")
    x = g.add_input("x", (4, 8))
    w1 = g.add_const("fc1.weight", rng.standard_normal((16, 8)).astype(np.float32))
    b1 = g.add_const("fc1.bias", rng.standard_normal(16).astype(np.float32))
    h = g.add_node("linear", [x, w1, b1], name="fc1").output
    h = g.add_node("relu", [h]).output
    w2 = g.add_const("fc2.weight", rng.standard_normal((3, 16)).astype(np.float32))
    y = g.add_node("linear", [h, w2, None], name="fc2").output
    g.outputs = [y]
    infer_shapes(g)
    return g


def test_every_op_has_an_implementation():
    assert set(OPS) == set(OP_IMPLS)


def test_executor_matches_numpy_and_verify_passes():
    g = small_mlp()
    verify(g)
    x = np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)
    c = g.consts
    ref = np.maximum(x @ c["fc1.weight"].data.T + c["fc1.bias"].data, 0) @ c["fc2.weight"].data.T
    np.testing.assert_allclose(run_graph(g, x), ref, rtol=1e-5, atol=1e-5)
    assert g.nodes[2].output.shape == (4, 3)


def test_executor_layers_are_nn_modules_and_write_back():
    g = small_mlp()
    ex = TorchExecutor(g)
    assert isinstance(ex.layer_for_node("fc1"), torch.nn.Linear)
    with torch.no_grad():
        ex.layer_for_node("fc1").weight.mul_(2)
    ex.write_back()
    x = np.ones((4, 8), np.float32)
    assert np.allclose(g.consts["fc1.weight"].data, 2 * small_mlp().consts["fc1.weight"].data)
    assert run_graph(g, x).shape == (4, 3)


def test_quantized_const_is_dequantized():
    g = small_mlp()
    w = g.consts["fc2.weight"]
    q = QuantParams(np.abs(w.data).max(1) / 127, np.zeros(3), axis=0)
    w.data, w.quant = q.quantize(w.data), q
    verify(g)
    out = run_graph(g, np.ones((4, 8), np.float32))
    assert np.isfinite(out).all()


def test_verify_catches_broken_links_and_shapes():
    g = small_mlp()
    g.nodes[0].output.shape = (4, 99)
    with pytest.raises(VerifyError, match="inferred"):
        verify(g)
    g = small_mlp()
    g.nodes.reverse()
    with pytest.raises(VerifyError, match="before it is defined"):
        verify(g)


def test_copy_is_independent_and_dump_is_stable():
    g = small_mlp()
    c = g.copy()
    verify(c)
    assert c.dump() == g.dump()
    c.nodes[1].op = "sigmoid"
    assert g.nodes[1].op == "relu"
    assert "fc1 = linear(x, fc1.weight, fc1.bias)" in g.dump().replace(": float32[4, 16]", "")


def test_remove_unused():
    g = small_mlp()
    dead = g.add_node("tanh", [g.inputs[0]])
    assert dead in g.nodes
    assert g.remove_unused() == 1
    verify(g)
