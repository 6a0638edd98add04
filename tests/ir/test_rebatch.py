import numpy as np
import pytest
import torch

from edgecompile.frontend import import_model
from edgecompile.ir import run_graph
from edgecompile.ir.rebatch import RebatchError, rebatch
from tests.models import ZOO


@pytest.mark.parametrize("name", ["cnn", "tiny_transformer", "lstm_cell_model"])
def test_rebatch_matches_per_sample(name):
    torch.manual_seed(0)
    model, inputs = ZOO[name]()
    g = import_model(model, inputs)
    b = g.inputs[0].shape[0]
    rng = np.random.default_rng(0)
    xs = []
    for _v, t in zip(g.inputs, inputs):
        reps = [8] + [1] * (t.dim() - 1)
        xs.append(np.tile(t.numpy(), reps))
    xs = [x + rng.standard_normal(x.shape).astype(x.dtype) * 0.1 if x.dtype.kind == "f" else x for x in xs]
    g8 = rebatch(g, 8 * b, check_inputs=xs)
    assert g8.inputs[0].shape[0] == 8 * b
    out = run_graph(g8, *xs)
    out = out[0] if isinstance(out, tuple) else out
    assert out.shape[0] == 8 * b


def test_rebatch_rejects_batch_mixing():
    from edgecompile.ir import Graph, infer_shapes
    g = Graph("mix")
    x = g.add_input("x", (2, 3))
    y = g.add_node("mean", [x], {"axes": [0], "keepdims": True}).output  # mixes samples
    z = g.add_node("add", [x, y]).output
    g.outputs = [z]
    infer_shapes(g)
    xs = [np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)]
    with pytest.raises(RebatchError, match="differs"):
        rebatch(g, 4, check_inputs=xs)


def test_rebatch_follows_the_batch_through_attention_reshapes():
    """nn.MultiheadAttention works in [T, B*H, D] internally: the batch is not on axis 0 there."""
    model, inputs = ZOO["encoder_layer_classifier"]()
    g = import_model(model, inputs)
    b = g.inputs[0].shape[0]
    xs = [np.concatenate([t.numpy()] * 4) for t in inputs]
    g4 = rebatch(g, 4 * b, check_inputs=xs)
    assert g4.inputs[0].shape[0] == 4 * b
