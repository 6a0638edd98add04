"""Intrinsic dimension: the Fastfood projection is a seeded linear map with ‖Pz‖ ≈ ‖z‖ that is
never stored densely, and the search finds a small d for a problem that needs few directions."""

import numpy as np
import pytest
import torch
from scipy.linalg import hadamard
from torch import nn

from edgecompile.analyze.intrinsic import (FastfoodProjection, IntrinsicConfig, fwht, initial_params,
                                           intrinsic_dimension)


def test_fwht_is_the_hadamard_transform():
    x = torch.randn(3, 16, dtype=torch.float64)
    np.testing.assert_allclose(fwht(x).numpy(), x.numpy() @ hadamard(16).T, atol=1e-10)


def test_projection_linear_seeded_and_norm_preserving():
    p, q = FastfoodProjection(100, 5000, seed=3), FastfoodProjection(100, 5000, seed=3)
    z1, z2 = torch.randn(100), torch.randn(100)
    torch.testing.assert_close(p(z1 + 2 * z2), p(z1) + 2 * p(z2), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(p(z1), q(z1))                          # regenerated from the seed
    assert not torch.allclose(p(z1), FastfoodProjection(100, 5000, seed=4)(z1))
    ratios = [float(p(z).norm() / z.norm()) for z in torch.randn(20, 100)]
    assert 0.8 < np.mean(ratios) < 1.2
    held = sum(b.numel() for b in p.buffers())
    assert held <= 3 * 128 * 40 < 5000 * 100                        # O(D), not D x d


def test_initial_params_are_seeded_and_not_the_trained_ones():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    a, b = initial_params(m, 1), initial_params(m, 1)
    for k in a:
        torch.testing.assert_close(a[k], b[k])
    assert not torch.allclose(a["0.weight"], m[0].weight)


@pytest.mark.parametrize("seed", [0])
def test_search_finds_a_small_dimension(seed):
    """Two Gaussian blobs in 20 dimensions: a linear classifier needs few directions, so d_int90
    is far below the 42 parameters, and the runs double then bisect."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 400)
    x = (rng.standard_normal((400, 20)) + 2.0 * (2 * y[:, None] - 1) * (np.arange(20) < 3)).astype(np.float32)
    torch.manual_seed(seed)
    model = nn.Linear(20, 2)
    opt = torch.optim.Adam(model.parameters(), 0.05)
    for _ in range(200):
        loss = nn.functional.cross_entropy(model(torch.from_numpy(x[:300])), torch.from_numpy(y[:300]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    res = intrinsic_dimension(model, (x[:300], y[:300]), (x[300:], y[300:]),
                              IntrinsicConfig(d_start=1, epochs=10, lr=0.1, seed=seed))
    assert res["full_accuracy"] > 0.95
    assert res["d_int"] is not None and res["d_int"] <= 8
    ds = [r["d"] for r in res["runs"]]
    assert ds[:2] == [1, 2] or ds[0] == 1
    assert res["description_bytes"] == 4 * res["d_int"] + 16
