"""`LowRankPass` on a graph from the real frontend (torch.export), checked against the torch model."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from edgecompile.frontend import import_model
from edgecompile.ir import run_graph, verify
from edgecompile.passes.fold import CleanupPass, FoldBatchNormPass
from edgecompile.passes.lowrank import LowRankConfig, LowRankPass


class _Net(nn.Module):
    """Conv-BN-ReLU, an embedding bag (mean), and a two-layer head: every kind of weight."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.emb = nn.Embedding(100, 32)
        self.fc = nn.Linear(16 * 4 * 4 + 32, 64)
        self.out = nn.Linear(64, 10)

    def forward(self, x, ids):
        h = torch.relu(self.bn(self.conv(x))).flatten(1)
        e = self.emb(ids).mean(1)
        return self.out(torch.relu(self.fc(torch.cat([h, e], 1))))


def _exact_low_rank(net: _Net, gen: torch.Generator) -> None:
    """Gives every weight an exact low (multilinear) rank and BN non-trivial statistics."""
    def lr(m, n, r):
        return torch.randn(m, r, generator=gen) @ torch.randn(r, n, generator=gen) / r ** 0.5

    with torch.no_grad():
        core = torch.randn(5, 3, 3, 3, generator=gen)
        net.conv.weight.copy_(torch.einsum("abkl,oa,ib->oikl", core, torch.randn(16, 5, generator=gen),
                                           torch.randn(8, 3, generator=gen)) / 4)
        net.bn.running_mean.copy_(torch.randn(16, generator=gen))
        net.bn.running_var.copy_(torch.rand(16, generator=gen) + 0.5)
        net.emb.weight.copy_(lr(100, 32, 4))
        net.fc.weight.copy_(lr(64, 288, 6) / 8)
        net.out.weight.copy_(lr(10, 64, 3) / 4)


def test_frontend_graph_factorizes_and_matches_torch():
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = _Net().eval()
    _exact_low_rank(net, gen)
    x = torch.randn(2, 8, 4, 4, generator=gen)
    ids = torch.randint(0, 100, (2, 5), generator=gen)
    graph = import_model(net, (x, ids))
    FoldBatchNormPass()(graph)
    CleanupPass()(graph)
    params = graph.param_count()
    result = LowRankPass(LowRankConfig("energy:0.999999", min_params=0))(graph)
    verify(graph)
    done = {r["node"]: (r["method"], r["rank"]) for r in result.records if r["kind"] == "lowrank"}
    # BN folding scales output channels, which keeps the conv's multilinear ranks (5, 3)
    assert done == {"conv": ("tucker2", [5, 3]), "emb": ("svd", 4), "fc": ("svd", 6), "out": ("svd", 3)}
    assert graph.param_count() < params / 3
    with torch.no_grad():
        ref = net(x, ids).numpy()
    got = run_graph(graph, x.numpy(), ids.numpy())
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 1e-5
