"""Group norm, softplus / mish / log1p and as_strided through the frontend: the IR they become, and
its numerics against torch; the one-line errors for what does not convert."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgecompile.frontend import UnsupportedOpError, import_model
from edgecompile.frontend.op_table import decomposition_table
from edgecompile.ir import run_graph
from tests.frontend.test_frontend_patterns import check
from tests.models import group_norm_net


@pytest.mark.parametrize("shape,groups,affine", [
    ((2, 8, 5, 6), 4, True),            # U-Net / diffusion blocks
    ((2, 6, 10), 6, True),              # wav2vec2's feature extractor: one group per channel, on conv1d
    ((3, 6, 2, 2, 2), 3, False),        # 3-D feature maps, no affine
    ((4, 6), 2, True),                  # [N, C]
])
def test_group_norm_is_one_op(shape, groups, affine):
    torch.manual_seed(0)
    gn = nn.GroupNorm(groups, shape[1], affine=affine)
    if affine:
        with torch.no_grad():
            gn.weight.normal_()
            gn.bias.normal_()
    graph = check(gn, torch.randn(*shape) * 3 + 1)
    assert graph.op_counts() == {"group_norm": 1}
    node = graph.nodes[0]
    assert node.attrs == {"num_groups": groups, "eps": 1e-5}
    assert [v is not None for v in node.inputs] == [True, affine, affine]


def test_softplus_with_beta_and_threshold_and_mish_keep_softplus_whole():
    class M(nn.Module):
        def forward(self, x):
            return F.softplus(x, beta=2.0, threshold=1.5), F.mish(x), F.softplus(x)

    x = torch.cat([torch.linspace(-30, 30, 61), torch.tensor([-1e-6, 0.7, 0.76, 0.74, 25.0])]).reshape(2, -1)
    graph = check(M(), x)
    assert graph.op_counts() == {"softplus": 2, "tanh": 1, "mul": 1}
    attrs = sorted((n.attrs["beta"], n.attrs["threshold"]) for n in graph.nodes if n.op == "softplus")
    assert attrs == [(1.0, 20.0), (2.0, 1.5)]
    # torch.export alone would have spelled it exp -> log1p -> where
    ep = torch.export.export(M(), (x,), strict=False).run_decompositions(decomposition_table())
    assert torch.ops.aten.softplus.default in {n.target for n in ep.graph.nodes}


def test_log1p_keeps_tiny_values():
    class M(nn.Module):
        def forward(self, x):
            return torch.log1p(x)

    x = torch.tensor([1e-12, -3e-9, 1e-5, 0.5, 4.0, -0.9])
    graph = check(M(), x)
    assert graph.op_counts() == {"log1p": 1}
    got = run_graph(graph, x.numpy())
    np.testing.assert_allclose(got, np.log1p(x.double().numpy()), rtol=2e-7)


def test_adaptive_pool_of_a_permuted_tensor_drops_its_as_strided():
    """ConvNeXt's LayerNorm2d (permute, layer_norm, permute) before adaptive average pooling: the
    pooling's decomposition restores the input's strides with as_strided, a plain re-view here."""
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln = nn.LayerNorm(6)

        def forward(self, x):
            return F.adaptive_avg_pool2d(self.ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2), 1)

    x = torch.randn(2, 6, 4, 5)
    ep = torch.export.export(M(), (x,), strict=False).run_decompositions(decomposition_table())
    assert torch.ops.aten.as_strided.default in {n.target for n in ep.graph.nodes}
    graph = check(M(), x)
    assert graph.op_counts() == {"transpose": 2, "layer_norm": 1, "mean": 1}


def test_dense_as_strided_becomes_reshape_and_transpose():
    """Reading a channels-last buffer back in NCHW order, and a flat view with unit axes."""
    class M(nn.Module):
        def forward(self, x):
            nhwc = (x * 2).permute(0, 2, 3, 1).contiguous()
            nchw = nhwc.as_strided((2, 3, 4, 5), (60, 1, 15, 3))
            flat = (x + 1).as_strided((2, 1, 60), (60, 60, 1))
            return nchw, flat

    graph = check(M(), torch.randn(2, 3, 4, 5))
    assert set(graph.op_counts()) <= {"mul", "add", "transpose", "reshape"}


def test_overlapping_as_strided_is_a_one_line_error_naming_the_line():
    class Windows(nn.Module):
        def forward(self, x):
            return (x + 1).as_strided((3, 4), (1, 1))       # sliding windows: overlapping reads

    with pytest.raises(UnsupportedOpError) as e:
        import_model(Windows(), (torch.randn(8),))
    msg = str(e.value)
    assert "\n" not in msg and e.value.ops == ("aten.as_strided.default",)
    assert "only dense re-layouts" in msg and "test_frontend_norm_ops.py:" in msg


def test_unsupported_op_names_its_module():
    class Inner(nn.Module):
        def forward(self, x):
            return torch.cumprod(x, 1)

    model = nn.Sequential(nn.Linear(4, 4), Inner())
    with pytest.raises(UnsupportedOpError, match=r"aten.cumprod.default in 1 \(Inner\) at "):
        import_model(model, (torch.randn(2, 4),))


def test_permuted_constant_made_contiguous_then_viewed_folds():
    """Swin's relative position bias and shift mask: constants viewed, permuted, made contiguous
    (or reshaped: clone + view), viewed again. Folded, the permute is a strided tensor that must be
    laid out again before the view (torchvision's swin_t failed here with torch's RuntimeError)."""
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.table = nn.Parameter(torch.randn(9, 2))
            self.register_buffer("index", torch.randint(0, 9, (16,)))

        def forward(self, x):
            bias = self.table[self.index].view(4, 4, -1).permute(2, 0, 1).contiguous()
            mask = bias.permute(0, 2, 1).reshape(2, 16)
            return x + bias.view(2, 16).view(1, 2, 4, 4) + mask.view(1, 2, 4, 4)

    graph = check(M(), torch.randn(3, 2, 4, 4))
    assert graph.op_counts() == {"add": 2}


def test_group_norm_net_imports_exactly():
    model, inputs = group_norm_net()
    graph = check(model, *inputs)
    assert graph.op_counts()["group_norm"] == 2 and graph.op_counts()["softplus"] == 2
