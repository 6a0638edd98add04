"""Fixtures for the low-rank tests: weights of a small MLP trained on scikit-learn's digits."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(scope="session")
def digits_mlp() -> dict[str, np.ndarray]:
    """Weights (float64, [out, in]) of a 64-256-128-10 ReLU MLP trained 300 Adam steps on digits.

    Trained weights, unlike Gaussian ones, have decaying spectra: the case rank selection is for.
    Takes about a second on one core.
    """
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 256), torch.nn.ReLU(),
        torch.nn.Linear(256, 128), torch.nn.ReLU(),
        torch.nn.Linear(128, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    for _ in range(300):
        idx = torch.randint(0, len(x), (128,))
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    assert acc > 0.95, f"the digits MLP fixture trained badly (accuracy {acc:.3f})"
    return {f"fc{k}": m.weight.detach().double().numpy()
            for k, m in enumerate(m for m in model if isinstance(m, torch.nn.Linear))}


def low_rank_plus_noise(m: int, n: int, rank: int, noise: float, seed: int) -> np.ndarray:
    """A rank-`rank` matrix with geometrically decaying singular values plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    p = np.linalg.qr(rng.standard_normal((m, rank)))[0]
    q = np.linalg.qr(rng.standard_normal((n, rank)))[0]
    s = 0.8 ** np.arange(rank)
    return (p * s) @ q.T + noise * rng.standard_normal((m, n)) / np.sqrt(max(m, n))


@pytest.fixture
def make_low_rank():
    """`low_rank_plus_noise` as a fixture: (m, n, rank, noise, seed) -> matrix."""
    return low_rank_plus_noise
