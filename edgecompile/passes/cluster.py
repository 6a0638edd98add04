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
from ..container.cluster import kmeans_cluster
from ..ir import Graph
from .base import Pass, PassError, PassResult


@dataclass(frozen=True)
class ClusterConfig:
    bits: int = 4
    min_params: int = 1024    # smaller weights are not worth a codebook

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 6:
            raise PassError(f"cluster bits must be 1..6 (the lut codec holds up to 64 values), got {self.bits}")


def cluster_int8(q: np.ndarray, bits: int) -> np.ndarray:
    """Non-zero int8 values clustered to at most 2^bits levels on the int8 grid; zeros stay zero."""
    out = q.copy()
    nz = q != 0
    if nz.sum() <= (1 << bits):
        return out
    cent = kmeans_cluster(q[nz].astype(np.float32), bits)
    out[nz] = np.clip(np.rint(cent), -127, 127).astype(q.dtype)
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
