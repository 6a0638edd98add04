"""Every zoo model imports, verifies, and computes what the torch model computes (rel. error <= 1e-5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgecompile.ir import TorchExecutor, run_graph, verify
from tests.frontend.conftest import relative_error
from tests.models import ZOO

TOL = 1e-5


def fresh_inputs(name: str, inputs: tuple, seed: int) -> tuple:
    """New values of the example inputs' shapes and dtypes (ids in range, masks with zeros)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for x in inputs:
        if x.dtype == torch.bool:
            out.append(torch.rand(x.shape, generator=g) < 0.3)
        elif x.dtype == torch.int64 and name == "bert_encoder" and x is inputs[1]:
            m = torch.ones_like(x)
            m[:, x.shape[1] // 2 + 1:] = (torch.rand(x.shape[0], 1, generator=g) < 0.5).long()
            out.append(m)
        elif x.dtype == torch.int64:
            hi = int(inputs[0].max()) + 1
            out.append(torch.randint(0, hi, x.shape, generator=g))
        else:
            out.append(torch.randn(x.shape, generator=g))
    return tuple(out)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_import_matches_torch(imported, name):
    model, inputs, graph = imported(name)
    verify(graph)
    for seed, xs in enumerate([inputs, fresh_inputs(name, inputs, 1), fresh_inputs(name, inputs, 2)]):
        with torch.no_grad():
            ref = model(*xs)
        ref = ref.logits if hasattr(ref, "logits") else ref
        out = run_graph(graph, *[x.numpy() for x in xs])
        assert out.shape == tuple(ref.shape)
        assert relative_error(ref, out) <= TOL, f"{name} input set {seed}"


@pytest.mark.parametrize("name", ["cnn", "bert_encoder", "lstm_cell_model"])
def test_executor_gradients_flow_to_every_layer(imported, name):
    """The imported graph is trainable: every linear/conv/embedding weight gets a gradient."""
    _, inputs, graph = imported(name)
    ex = TorchExecutor(graph)
    # Only the layers train here: F.batch_norm refuses running statistics that require grad, and
    # the executor makes every float constant (BN statistics included) a Parameter.
    ex.params.requires_grad_(False)
    out = ex(*inputs)
    out.float().square().sum().backward()
    grads = [p.grad for p in ex.layers.parameters()]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_bert_softmax_depends_on_the_mask_input(imported):
    model, (ids, mask), graph = imported("bert_encoder")
    assert [v.name for v in graph.inputs] == ["input_ids", "attention_mask"]
    assert graph.inputs[1].uses, "attention_mask must feed the graph"
    full = torch.ones_like(mask)
    a = run_graph(graph, ids.numpy(), mask.numpy())
    b = run_graph(graph, ids.numpy(), full.numpy())
    assert np.abs(a[-1] - b[-1]).max() > 1e-4        # the padded sequence changes
    np.testing.assert_allclose(a[0], b[0], atol=1e-6)  # the unpadded one does not
    with torch.no_grad():
        assert relative_error(model(ids, full).logits, b) <= TOL
    assert graph.op_counts()["softmax"] == 2 and "where" in graph.op_counts()


def test_bert_linears_are_real_linear_layers(imported):
    model, _, graph = imported("bert_encoder")
    linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    nodes = {n.name: n for n in graph.nodes if n.op == "linear"}
    assert set(nodes) == linears
    sd = model.state_dict()
    for name, node in nodes.items():
        w = node.input(1)
        assert w.name == f"{name}.weight" and w.shape == tuple(sd[w.name].shape)   # [out, in]
        np.testing.assert_array_equal(w.data, sd[w.name].numpy())


def test_lstm_cell_uses_sigmoid_tanh_and_slices(imported):
    _, _, graph = imported("lstm_cell_model")
    ops = graph.op_counts()
    steps = 4
    assert ops["sigmoid"] == 3 * steps and ops["tanh"] == 2 * steps
    assert ops["linear"] == 2 * steps          # input and hidden projections per step (+ head below)
    assert "matmul" not in ops


def test_weights_are_copied_not_shared(imported):
    """The IR owns its constants: changing the model afterwards leaves the graph unchanged."""
    from tests.models import mlp
    from edgecompile.frontend import import_model

    model, inputs = mlp()
    graph = import_model(model, inputs)
    before = run_graph(graph, inputs[0].numpy())
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    np.testing.assert_array_equal(run_graph(graph, inputs[0].numpy()), before)
    for v in graph.consts.values():
        assert v.data.flags.c_contiguous and v.data.flags.owndata
