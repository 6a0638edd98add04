"""Weight clustering (lossy): k-means to at most 2^bits values, per tensor or per channel.

Deep Compression (Han, Mao and Dally, ICLR 2016) shares weights by 1-D k-means with linear
initialization over [min, max]; the ``lut`` codec then stores the result losslessly. This is the
numerics only: a pass decides where to apply it and checks the accuracy it costs.
"""
from __future__ import annotations

import numpy as np


def kmeans_cluster(weights: np.ndarray, bits: int, axis: int | None = None, iters: int = 30) -> np.ndarray:
    """Replace every weight by its cluster centroid (Lloyd's 1-D k-means, linear init).

    Parameters
    ----------
    weights : np.ndarray
        Floating-point weights.
    bits : int
        At most ``2**bits`` distinct values result (per channel if ``axis`` is given), 1..8.
    axis : int or None
        Channel axis: cluster each slice along it separately; None clusters the whole tensor.
    iters : int
        Lloyd iterations (stops early once assignments settle).

    Returns
    -------
    np.ndarray
        Same shape and dtype; each value is the mean of the original weights assigned to it, so
        within a cluster the sum of weights is kept (up to float rounding).
    """
    w = np.asarray(weights)
    if not np.issubdtype(w.dtype, np.floating):
        raise TypeError(f"kmeans_cluster needs floating-point weights, got {w.dtype}")
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be 1..8, got {bits}")
    if w.size == 0:
        return w.copy()
    if axis is None:
        rows = w.reshape(1, -1)
    else:
        rows = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    rows = rows.astype(np.float64)
    c, n = rows.shape
    k = 1 << bits
    lo, hi = rows.min(axis=1, keepdims=True), rows.max(axis=1, keepdims=True)
    cent = lo + (hi - lo) * (np.arange(k) + 0.5) / k  # linear initialization
    # Map row r into [2r, 2r+1] so one searchsorted over all rows assigns every weight.
    span = np.where(hi > lo, hi - lo, 1.0)
    shifted = (rows - lo) / span + 2 * np.arange(c)[:, None]
    flat_row = np.repeat(np.arange(c), n)
    assign = None
    for _ in range(iters):
        mids = (cent[:, 1:] + cent[:, :-1]) / 2
        edges = ((mids - lo) / span + 2 * np.arange(c)[:, None]).ravel()
        new = np.searchsorted(edges, shifted.ravel(), side="right") - flat_row * (k - 1)
        if assign is not None and np.array_equal(new, assign):
            break
        assign = new
        key = flat_row * k + assign
        total = np.bincount(key, weights=rows.ravel(), minlength=c * k).reshape(c, k)
        count = np.bincount(key, minlength=c * k).reshape(c, k)
        cent = np.where(count > 0, total / np.maximum(count, 1), cent)  # empty cluster: keep centroid
        cent = np.sort(cent, axis=1)
    mids = (cent[:, 1:] + cent[:, :-1]) / 2
    edges = ((mids - lo) / span + 2 * np.arange(c)[:, None]).ravel()
    assign = np.searchsorted(edges, shifted.ravel(), side="right") - flat_row * (k - 1)
    out = cent[flat_row, assign].reshape(rows.shape).astype(w.dtype)
    if axis is None:
        return out.reshape(w.shape)
    moved = np.moveaxis(w, axis, 0).shape
    return np.moveaxis(out.reshape(moved), 0, axis)
