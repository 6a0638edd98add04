"""Error-compensated rounding (passes/gptq.py): the layer statistics are the layer's real inputs,
the rounding stays on the allowed levels and masks, and it lowers the layer's output error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgecompile.frontend import import_model
from edgecompile.search.optimize import apply_setting
from edgecompile.passes.cluster import cluster_int8
from edgecompile.passes.gptq import Rounder, as_rows, from_rows, gram_shape_ok, layer_grams


def _problem(seed=0, n=1500, i=96, o=48):
    """Correlated inputs X [n, i] and an int8 weight [o, i] with per-row scales."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, i)) @ (np.eye(i) + 0.3 * rng.normal(size=(i, i)))
    w = rng.normal(size=(o, i))
    s = np.abs(w).max(1, keepdims=True) / 127
    return x, np.clip(np.rint(w / s), -127, 127).astype(np.int8), s


def _out_err(x, q, q2, s):
    return np.linalg.norm(x @ ((q - q2.astype(np.float64)) * s).T) / np.linalg.norm(x @ (q * s).T)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_rounding_beats_nearest_level_on_the_same_levels(bits):
    x, q, s = _problem()
    near = cluster_int8(q, bits)
    levels = np.unique(near)
    got = Rounder(x.T @ x).round(q, levels)
    assert got.dtype == np.int8 and got.shape == q.shape
    assert set(np.unique(got)) <= set(levels) | {0}
    assert _out_err(x, q, got, s) < 0.8 * _out_err(x, q, near, s)


def test_masked_weights_are_zero_and_their_loss_is_compensated():
    x, q, s = _problem(seed=1)
    mask = np.abs(q) <= np.quantile(np.abs(q), 0.5)
    got = Rounder(x.T @ x).round(q, np.arange(-127, 128), mask)
    assert np.all(got[mask] == 0)
    assert _out_err(x, q, got, s) < _out_err(x, q, np.where(mask, 0, q), s)


def test_dead_inputs_and_an_ill_conditioned_gram_are_handled():
    x, q, s = _problem(seed=2, i=32, o=8)
    x[:, 5] = 0                       # an input that is always zero
    x[:, 7] = x[:, 6]                 # two identical inputs: a singular Gram matrix
    got = Rounder(x.T @ x).round(q, np.unique(cluster_int8(q, 3)))
    assert np.isfinite(_out_err(x, q, got, s))


def test_the_rounders_own_mask_and_its_loss():
    x, q, s = _problem(seed=4, i=384, o=64)
    r = Rounder(x.T @ x)
    got = r.round(q, np.arange(-127, 128), sparsity=0.5)
    assert abs((got == 0).mean() - 0.5) < 0.02
    assert np.isclose(r.loss(q, got), np.linalg.norm(x @ (q - got.astype(np.float64)).T) ** 2, rtol=1e-6)


def test_apply_setting_with_a_rounder_keeps_sparsity_and_level_count():
    x, q, s = _problem(seed=3)
    r = Rounder(x.T @ x)
    plain = apply_setting(q, 0.5, 3)
    got = apply_setting(q, 0.5, 3, r, "linear")
    assert (got == 0).mean() >= 0.5 - 0.02          # either mask: the same sparsity
    assert len(np.unique(got)) <= (1 << 3) + 1
    assert _out_err(x, q, got, s) < _out_err(x, q, plain, s)
    assert np.array_equal(apply_setting(q, 0.0, 8, r), q)          # nothing to round


def test_matmul_weights_are_rounded_along_their_output_axis():
    q = np.arange(12, dtype=np.int8).reshape(3, 4)                 # x @ W: W is [in, out]
    rows = as_rows("matmul", q)
    assert rows.shape == (4, 3) and np.array_equal(from_rows("matmul", rows, q.shape), q)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(3, 4, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(2, 5, 3, padding=1, dilation=2)
        self.dw = nn.Conv2d(5, 5, 3, groups=5)
        self.fc = nn.Linear(4 * 8, 6)

    def forward(self, a, b):
        return self.fc(self.c1(a).flatten(1)), self.dw(self.c2(b))


def test_layer_grams_are_the_gram_of_each_layers_inputs():
    torch.manual_seed(0)
    net = _Net().eval()
    a, b = torch.randn(4, 3, 16), torch.randn(4, 2, 9, 9)
    g = import_model(net, (a[:2], b[:2]))
    # keyed by op, groups and weight rank: conv13 (1-D), conv14 (2-D), conv54 (depthwise), linear
    names = {n.op + (f"{n.attrs['groups']}{len(n.input(1).shape)}" if n.op == "conv" else ""): n.name
             for n in g.nodes if n.op in ("linear", "conv")}
    assert not gram_shape_ok(g.node(names["conv54"]))
    grams = layer_grams(g, [a.numpy(), b.numpy()], [n.name for n in g.nodes if n.op in ("linear", "conv")])
    with torch.no_grad():
        u1 = torch.nn.functional.unfold(a.unsqueeze(2).double(), (1, 3), padding=(0, 1), stride=(1, 2))
        u1 = u1.transpose(1, 2).reshape(-1, 9)
        u2 = torch.nn.functional.unfold(b.double(), 3, padding=1, dilation=2).transpose(1, 2).reshape(-1, 18)
        f = net.c1(a).flatten(1).double()
    assert np.allclose(grams[names["conv13"]], (u1.T @ u1).numpy())
    assert np.allclose(grams[names["conv14"]], (u2.T @ u2).numpy())
    assert np.allclose(grams[names["linear"]], (f.T @ f).numpy(), rtol=1e-5)
    assert len(grams) == 3                               # the depthwise conv has none


def test_layer_grams_count_the_rows_an_embedding_reads():
    class Emb(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.e = torch.nn.Embedding(50, 8)

        def forward(self, ids):
            return self.e(ids).sum(1)

    ids = torch.tensor([[1, 2, 2, 7], [7, 7, 0, 49]])
    g = import_model(Emb().eval(), (ids,))
    node = next(n for n in g.nodes if n.op == "gather")
    got = layer_grams(g, [ids.numpy()], [node.name])[node.name]
    assert got.shape == (50,) and np.array_equal(got, np.bincount(ids.ravel().numpy(), minlength=50))
