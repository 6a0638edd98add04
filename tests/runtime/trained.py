"""A small trained model for bench/bench_codec.py: an MLP on sklearn's digits, int8 per-channel."""
from __future__ import annotations

import warnings

import numpy as np

from edgecompile.container import QuantInfo


def digits_mlp_int8(hidden=(96,), seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, QuantInfo], float]:
    """Train (seeded, ~1 s), quantize weights to int8 per output channel (symmetric), biases to
    int32 with scale = weight scale (input scale 1). Returns tensors, quant params, test accuracy."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    x, y = load_digits(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(x / 16.0, y, test_size=0.25, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlp = MLPClassifier(hidden_layer_sizes=hidden, max_iter=80, random_state=seed).fit(xtr, ytr)
    tensors, quant = {}, {}
    for i, (w, b) in enumerate(zip(mlp.coefs_, mlp.intercepts_)):
        w = w.T.astype(np.float32)  # (out, in)
        scale = (np.abs(w).max(axis=1) / 127).astype(np.float32)
        tensors[f"fc{i}.weight"] = np.clip(np.round(w / scale[:, None]), -127, 127).astype(np.int8)
        quant[f"fc{i}.weight"] = QuantInfo(scale, np.zeros_like(scale, dtype=np.int32), axis=0)
        tensors[f"fc{i}.bias"] = np.round(b / scale).astype(np.int32)
    return tensors, quant, float(mlp.score(xte, yte))
