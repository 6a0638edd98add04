"""Fixtures for the low-rank tests: weights of a small MLP trained on scikit-learn's digits."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch


@contextlib.contextmanager
def _one_thread():
    """Runs BLAS and torch on one thread, then restores the previous settings.

    The matrices here are small: on a loaded 2-core machine, two spinning BLAS threads per process
    made these tests ~10x slower (measured), one thread is fastest.
    """
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def one_thread():
    with _one_thread():
        yield


def _train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int,
           weight_decay: float = 0.0) -> float:
    """300 Adam steps on random batches; returns the training accuracy."""
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=weight_decay)
    with _one_thread():
        for _ in range(300):
            idx = torch.randint(0, len(x), (batch,))
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


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
    acc = _train(model, x, y, batch=128, weight_decay=1e-4)
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


@pytest.fixture(scope="session")
def digits_cnn() -> dict[str, np.ndarray]:
    """Conv weights (float32) of a small CNN trained 300 Adam steps on digits (8x8 images).

    conv1 [16, 1, 3, 3] (pad 1), conv2 [32, 16, 3, 3] (stride 2, pad 1), conv3 [48, 32, 3, 3]
    (pad 1), then mean pooling and a 48 -> 10 linear. About two seconds on one core.
    """
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(y)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(32, 48, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(48, 10))
    acc = _train(model, x, y, batch=64)
    assert acc > 0.9, f"the digits CNN fixture trained badly (accuracy {acc:.3f})"
    convs = [m for m in model if isinstance(m, torch.nn.Conv2d)]
    return {f"conv{k}": c.weight.detach().numpy().copy() for k, c in enumerate(convs, start=1)}
