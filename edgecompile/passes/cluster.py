"""Weight clustering on int8 weights: `int8 W -> int8 W` with at most 2^bits non-zero levels.

Deep Compression's weight sharing (Han, Mao and Dally, ICLR 2016) applied after quantization: the
non-zero int8 values of each layer weight are clustered by 1-D k-means (`container.cluster`) and
replaced by their centroids rounded to the int8 grid, so a tensor holds at most 2^bits + 1 distinct
values (zero kept exact, so pruning masks survive). The container's `lut` codec then stores bit-packed
(or rANS-coded) indices and a small codebook. Per-channel scales are unchanged: the codebook is shared
by all channels in the normalized int8 domain. The invariant kept: every weight moves by at most half
the distance between neighbouring centroids; accuracy is checked by the build's verification.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir.ops import weight_input
from ..ir import Graph
from .base import Pass, PassError, PassResult


@dataclass(frozen=True)
class ClusterConfig:
    bits: int = 4
    min_params: int = 1024    # smaller weights are not worth a codebook

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 6:
            raise PassError(f"cluster bits must be 1..6 (the lut codec holds up to 64 values), got {self.bits}")


def cluster_int8(q: np.ndarray, bits: int, iters: int = 30) -> np.ndarray:
    """Non-zero int8 values clustered to at most 2^bits levels on the int8 grid; zeros stay zero.

    Lloyd's 1-D k-means with linear initialization (as `container.kmeans_cluster`), run on the
    histogram of the at most 254 distinct non-zero values instead of on every weight: the same
    assignments and centroids, in time independent of the tensor's size (MiniLM's 11.7M-entry word
    embedding: 4-6 s per call on every weight, ~1 ms on the histogram), which is what lets the
    per-layer search afford the ladder on large tables."""
    out = q.copy()
    nz = q != 0
    if np.count_nonzero(nz) <= (1 << bits):
        return out
    counts = np.bincount(q[nz].astype(np.int16).ravel() + 127, minlength=255)
    vals = np.flatnonzero(counts).astype(np.float64) - 127          # the distinct values, sorted
    cnt = counts[counts > 0].astype(np.float64)
    k = 1 << bits
    lo, hi = vals[0], vals[-1]
    cent = lo + (hi - lo) * (np.arange(k) + 0.5) / k
    assign = None
    for _ in range(iters):
        new = np.searchsorted((cent[1:] + cent[:-1]) / 2, vals, side="right")
        if assign is not None and np.array_equal(new, assign):
            break
        assign = new
        total = np.bincount(assign, weights=cnt * vals, minlength=k)
        n = np.bincount(assign, weights=cnt, minlength=k)
        cent = np.sort(np.where(n > 0, total / np.maximum(n, 1), cent))   # an empty cluster keeps its centroid
    assign = np.searchsorted((cent[1:] + cent[:-1]) / 2, vals, side="right")
    table = np.zeros(255, np.int8)
    table[(vals + 127).astype(np.int64)] = np.clip(np.rint(cent[assign]), -127, 127)
    out[nz] = table[q[nz].astype(np.int16) + 127]
    return out


class WeightClusterPass(Pass):
    """int8 layer weights -> at most 2^bits + 1 distinct int8 values each (see module docstring)."""

    name = "cluster"

    def __init__(self, config: ClusterConfig):
        self.config = config

    def requires(self, graph: Graph) -> None:
        if not any(v.quant is not None and v.data.dtype == np.int8 for v in graph.consts.values()):
            raise PassError("weight clustering works on int8 weights: quantize first (--quant int8)")

    def call(self, graph: Graph) -> PassResult:
        records = []
        for node in graph.nodes:
            w = weight_input(node)
            if w is None or w.quant is None or w.data.dtype != np.int8 or w.data.size < self.config.min_params:
                continue
            if node.meta.get("clustered"):
                continue
            new = cluster_int8(w.data, self.config.bits)
            err = float(np.abs(new.astype(np.int16) - w.data).mean())
            w.data = new
            node.meta["clustered"] = self.config.bits
            records.append({"node": node.name, "op": node.op, "kind": "cluster", "bits": self.config.bits,
                            "levels": int(len(np.unique(new))), "mean_abs_change_lsb": round(err, 4)})
        return PassResult(graph, bool(records), records)
