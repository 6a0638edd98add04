"""One identity rule (`ir.identity`) for the frontend's clean-up and `CleanupPass`: an identity that
is a graph output stays a node, so the output never becomes the graph's input (issue 15)."""

import numpy as np
import torch

from edgecompile.frontend.torch_export import import_model
from edgecompile.ir import run_graph, verify
from edgecompile.passes.fold import CleanupPass


class SameShape(torch.nn.Module):
    def forward(self, x):
        return x.reshape(x.shape)


class Inner(torch.nn.Module):
    def forward(self, x):
        return (x + 1).reshape(x.shape) * 2


def test_output_identity_of_the_input_is_kept():
    x = torch.randn(2, 3)
    g = import_model(SameShape(), (x,))
    assert g.outputs[0] is not g.inputs[0], g.dump()
    assert [n.op for n in g.nodes] == ["reshape"]
    verify(g)
    CleanupPass()(g)
    assert g.outputs[0] is not g.inputs[0] and len(g.nodes) == 1
    np.testing.assert_array_equal(run_graph(g, x.numpy()), x.numpy())


def test_inner_identity_is_removed():
    x = torch.randn(2, 3)
    g = import_model(Inner(), (x,))
    assert "reshape" not in [n.op for n in g.nodes]
    np.testing.assert_allclose(run_graph(g, x.numpy()), (x.numpy() + 1) * 2, rtol=1e-6)
