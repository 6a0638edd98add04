"""Pre-set factorized layers: each computes its factorization exactly, starts from a trained layer
through the low-rank pass's own decompositions, trains, and compiles with its structure kept."""

import numpy as np
import torch
from torch import nn

from edgecompile import SVDLinear, TTLinear, Tucker2Conv
from edgecompile.ir.analysis import layer_figures
from edgecompile.frontend import import_model
from edgecompile.ir import run_graph
from edgecompile.passes.lowrank.decompose import tt_reconstruct
from edgecompile.passes.lowrank.factorize import LowRankConfig, LowRankPass


def test_from_dense_is_exact_at_full_rank_and_close_below():
    torch.manual_seed(0)
    lin, conv = nn.Linear(12, 8), nn.Conv2d(6, 5, 3, padding=1)
    x, xc = torch.randn(4, 12), torch.randn(2, 6, 7, 7)
    torch.testing.assert_close(SVDLinear.from_dense(lin, 8)(x), lin(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(Tucker2Conv.from_dense(conv, (5, 6))(xc), conv(xc), atol=1e-4, rtol=1e-4)
    lin16 = nn.Linear(16, 16)
    x16 = torch.randn(3, 16)
    torch.testing.assert_close(TTLinear.from_dense(lin16, (4, 4), (4, 4), 16)(x16), lin16(x16), atol=1e-4,
                               rtol=1e-4)
    low = SVDLinear.from_dense(lin, 3)
    assert sum(p.numel() for p in low.parameters()) == 3 * (12 + 8) + 8


def test_tt_forward_is_the_tt_matrix():
    torch.manual_seed(0)
    tt = TTLinear((2, 3, 4), (4, 2, 3), ranks=3)
    w = tt_reconstruct([c.detach().numpy() for c in tt.cores])
    x = torch.randn(5, 24)
    np.testing.assert_allclose(tt(x).detach().numpy(), x.numpy() @ w.T, rtol=1e-4, atol=1e-5)
    assert abs(float(torch.as_tensor(w).std()) - (1 / (3 * 24)) ** 0.5) < 0.1   # nn.Linear's scale


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = Tucker2Conv(1, 8, 3, (4, 1), padding=1)
        self.fc = SVDLinear(8 * 16, 16, 4)
        self.tt = TTLinear((4, 4), (2, 5), 2)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        return self.tt(torch.relu(self.fc(torch.nn.functional.max_pool2d(h, 2).flatten(1))))


def test_trains_and_imports_with_its_structure():
    torch.manual_seed(0)
    net = Net()
    x = torch.randn(64, 1, 8, 8)
    y = (x.mean((1, 2, 3)) > 0).long() + 2 * (x[:, 0, 0, 0] > 0).long()
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    first = None
    for _ in range(60):
        loss = nn.functional.cross_entropy(net(x), y)
        first = first if first is not None else float(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.5 * first
    net.eval()
    g = import_model(net, (x[:2],))
    np.testing.assert_allclose(run_graph(g, x[:2].numpy()), net(x[:2]).detach().numpy(), rtol=1e-4, atol=1e-5)
    figs = layer_figures(g)
    assert {"conv", "fc", "tt"} <= set(figs)
    assert figs["fc"].meta["method"] == "svd" and figs["fc"].meta["rank"] == 4
    assert figs["tt"].meta["method"] == "tt" and figs["conv"].meta["rank"] == [4, 1]
    before = g.param_count()
    res = LowRankPass(LowRankConfig("erank:0.5", min_params=1, min_saving=0.0))(g)
    assert g.param_count() == before and not res.modified
    assert all("already factorized" in r["reason"] for r in res.records if r["kind"] == "kept")


def test_build_keeps_the_factorized_layers(tmp_path):
    """The whole build (int8, onnxruntime gate) on a pre-set factorized model: it passes, and the
    report lists each factorized layer once with its method and rank."""
    from edgecompile.build import BuildConfig, build
    from edgecompile.inputs.model import LoadedModel

    torch.manual_seed(0)
    net = Net().eval()
    x = np.random.default_rng(0).standard_normal((128, 1, 8, 8)).astype(np.float32)
    loaded = LoadedModel("net", net, (torch.from_numpy(x[:1]),), {"calib": (x[:96],), "eval": (x[96:],)})
    r = build(loaded, BuildConfig(target="rpi4", out=tmp_path / "b", optimize="none"))
    assert r.report["verdict"]["passed"]
    rows = {row["layer"]: row for row in r.report["layers"]}
    assert rows["fc"]["method"] == "svd" and rows["fc"]["rank"] == 4
    assert rows["conv"]["method"] == "tucker2" and rows["tt"]["method"] == "tt"
