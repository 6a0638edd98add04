"""Import-time rewrites: constant folding, dropped no-ops, merged patterns, and op coverage."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgecompile.frontend import import_model
from edgecompile.ir import run_graph, verify
from tests.frontend.conftest import relative_error


def check(model: nn.Module, *inputs: torch.Tensor):
    """Imports `model`, verifies the graph and compares it with torch; returns the graph."""
    model.eval()
    graph = import_model(model, inputs)
    verify(graph)
    with torch.no_grad():
        ref = model(*inputs)
    out = run_graph(graph, *[x.numpy() for x in inputs])
    refs = ref if isinstance(ref, tuple) else (ref,)
    outs = out if isinstance(out, tuple) else (out,)
    assert len(refs) == len(outs)
    for r, o in zip(refs, outs):
        assert o.dtype == r.detach().numpy().dtype and o.shape == tuple(r.shape)
        assert relative_error(r.float(), o.astype(np.float32)) <= 1e-5
    return graph


def test_constant_subgraphs_fold_and_noops_vanish():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("table", torch.randn(6, 4))
            self.drop = nn.Dropout(0.5)

        def forward(self, x):
            pos = torch.arange(x.shape[1])                       # constant
            bias = self.table[pos % 6].exp().sum(0) / 3.0          # constant
            y = self.drop(x.clone().detach()) + bias
            return nn.Identity()(y.contiguous()).view(x.shape)

    graph = check(M(), torch.randn(2, 4))
    assert graph.op_counts() == {"add": 1}
    assert len(graph.consts) == 1 and next(iter(graph.consts.values())).shape == (4,)


def test_transposed_weight_matmuls_become_linear_on_the_original_weight():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(5, 3))
            self.b = nn.Parameter(torch.randn(5))
            self.v = nn.Parameter(torch.randn(5, 5))

        def forward(self, x, z):
            a = torch.addmm(self.b, x, self.w.t())                # 2-D: addmm(b, x, W^T)
            c = z @ self.w.transpose(0, 1)                         # 3-D: matmul(z, W^T)
            d = F.linear(a, self.v) + torch.mm(a.relu(), self.v.permute(1, 0))
            return a, c, d

    graph = check(M(), torch.randn(4, 3), torch.randn(2, 4, 3))
    linears = [n for n in graph.nodes if n.op == "linear"]
    assert len(linears) == 4 and "matmul" not in graph.op_counts()
    assert {n.input(1).name for n in linears} == {"w", "v"}
    assert linears[0].input(2).name == "b"
    assert graph.consts["w"].shape == (5, 3)


def test_decomposed_3d_linear_reshapes_fold_away():
    """view + addmm + view (nn.Linear on a 3-D input in plain core ATen) imports as one linear."""
    from torch.export import export

    from edgecompile.frontend import import_exported_program

    model = nn.Sequential(nn.Linear(8, 6)).eval()
    x = torch.randn(2, 5, 8)
    ep = export(model, (x,), strict=False).run_decompositions()     # plain core ATen
    assert any(n.target == torch.ops.aten.addmm.default for n in ep.graph.nodes)
    graph = import_exported_program(ep)
    assert graph.op_counts() == {"linear": 1}
    np.testing.assert_allclose(run_graph(graph, x.numpy()), model(x).detach().numpy(), atol=1e-6)


def test_layout_ops():
    class M(nn.Module):
        def forward(self, x):
            a, b, c = x.split([1, 2, 3], dim=2)                     # uneven split
            parts = torch.unbind(x[:, :2], dim=1)
            sel = x.select(1, -1)
            st = torch.stack([a.squeeze(2), c[..., 0]], dim=-1)
            rep = b.repeat(1, 2, 1)
            gathered = x[:, torch.tensor([2, 0])]                   # one index tensor -> gather
            picked = torch.index_select(x, 2, torch.tensor([5, 1]))
            padded = F.pad(x, (2, 1, 0, 3), value=0.5)
            strided = x[:, ::2, 1:5:2]
            return (a, parts[1], sel, st, rep, gathered, picked, padded, strided,
                    torch.flatten(x.unsqueeze(0).transpose(1, 2), 2), x.chunk(2, dim=1)[1])

    graph = check(M(), torch.randn(2, 4, 6))
    assert "gather" in graph.op_counts() and "pad" in graph.op_counts()


def test_elementwise_and_logic_ops():
    class M(nn.Module):
        def forward(self, x, y, n):
            a = torch.rsqrt(x.abs() + 1) * torch.erf(x) - torch.log(torch.sqrt(y.abs() + 1)).neg()
            b = torch.pow(x, 2) + 2 ** y.clamp(-2, 2) + 1.0 / (y.abs() + 1) - (3 - x)
            c = torch.where((x > 0) & (y <= 0.5) | ~(x != y), x, y.exp())
            d = x.masked_fill(x >= y, -1.0).clamp(min=y - 1, max=y + 1)
            e = F.hardtanh(x, -0.5, 0.5) + F.leaky_relu(y, 0.2) + torch.maximum(x, y) - torch.minimum(x, 0.3 * y)
            f = (n + 1) * 2 + n.float() / 2          # int arithmetic, int -> float division
            g = (n == 3) | (n < 1)
            return a, b, c, d, e, f, g.to(torch.int64), x.amax(1), torch.max(y, dim=1).values, x.sum(), (n > 2).any(1)

    g = torch.Generator().manual_seed(0)
    graph = check(M(), torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g),
                  torch.randint(0, 5, (3, 5), generator=g))
    assert "cast" in graph.op_counts()


def test_pooling_and_activations():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, stride=(2, 1), padding=(1, 2), dilation=(1, 2))

        def forward(self, x):
            y = F.hardswish(self.conv(x))
            a = F.max_pool2d(y, (2, 3), stride=1, padding=1, dilation=1, ceil_mode=True)
            b = F.avg_pool2d(y, 3, stride=2, padding=1, count_include_pad=False)
            c = F.adaptive_avg_pool2d(y, (2, 2)) + F.adaptive_max_pool2d(y, (2, 2))
            d = F.adaptive_avg_pool2d(y, 1) + F.adaptive_max_pool2d(y, 1)
            return F.gelu(a, approximate="tanh"), F.softmax(b, 1), F.log_softmax(c, -1), F.relu6(d), torch.sigmoid(y)

    graph = check(M(), torch.randn(1, 3, 8, 8))
    ops = graph.op_counts()
    assert ops["mean"] == 1 and ops["reduce_max"] == 1 and ops["max_pool"] == 2 and ops["avg_pool"] == 2


@pytest.mark.parametrize("variant", ["causal", "float_mask", "bool_mask", "default_scale"])
def test_scaled_dot_product_attention(variant):
    class M(nn.Module):
        def forward(self, q, k, v, m):
            if variant == "causal":
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)
            if variant == "float_mask":
                return F.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=0.3)
            if variant == "bool_mask":
                return F.scaled_dot_product_attention(q, k, v, attn_mask=m > 0)
            return F.scaled_dot_product_attention(q, k, v)

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4, generator=g) for _ in range(3))
    m = torch.randn(2, 1, 5, 5, generator=g)
    graph = check(M(), q, k, v, m)
    assert graph.op_counts()["softmax"] == 1 and graph.op_counts()["matmul"] == 2


def test_unbatched_pooling_and_embedding_with_padding_idx():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4, padding_idx=0)

        def forward(self, ids, x):
            return self.emb(ids), F.max_pool1d(x, 2), F.avg_pool1d(x, 2)

    graph = check(M(), torch.tensor([[0, 3, 9]]), torch.randn(3, 8))
    assert graph.node("emb").op == "gather" and graph.node("emb").input(0).name == "emb.weight"


def test_fully_decomposed_attention_imports():
    """SDPA in plain core ATen (bmm, _softmax and the fully-masked-row guard: eq(-inf), logical_not,
    any, where) converts too, e.g. for programs decomposed before they reach us."""
    from torch.export import export

    from edgecompile.frontend import import_exported_program

    class M(nn.Module):
        def forward(self, q, k, v, keep):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=keep)

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 4, 8, generator=g) for _ in range(3))
    keep = torch.rand(2, 1, 4, 4, generator=g) > 0.3
    keep[..., 0] = True
    ep = export(M(), (q, k, v, keep), strict=False).run_decompositions()
    targets = {str(n.target) for n in ep.graph.nodes}
    assert "aten.bmm.default" in targets and "aten.any.dim" in targets
    graph = import_exported_program(ep)
    verify(graph)
    ref = M()(q, k, v, keep)
    out = run_graph(graph, q.numpy(), k.numpy(), v.numpy(), keep.numpy())
    assert relative_error(ref, out) <= 1e-5
