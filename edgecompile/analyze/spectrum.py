"""Per-layer singular spectra and the rank each selection rule would keep.

A layer is a node with a float constant weight (`analysis.weight_input`). Where the low-rank pass
could factorize it, the spectra are the ones the pass itself uses (`LayerSpectrum`: one matrix
spectrum for SVD layers, the two channel unfoldings' for Tucker-2 convs), and a rank's dense
equivalent comes from the pass's own decompositions (`svd_factors`, `tucker2`): a factorized
chain computes exactly the layer with that weight, so swapping it into one executor measures what
`--rank` would ship without rewriting the graph per setting (tests/analyze hold the two equal).

Rank rules compared (the survey's first finding; Ou et al., sec. on rank selection):
``erank`` ``ceil(c · exp H(s/Σs))``, ``energy`` the smallest r keeping a share of Σs², ``l1``
the smallest r keeping a share of Σs (the nuclear norm, an ℓ1 measure of the spectrum).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..ir.ops import weight_input
from ..ir import Graph, Node
from ..passes.lowrank.decompose import svd_factors, tucker2
from ..passes.lowrank.factorize import LowRankConfig, _tucker_weight, _why_not
from ..passes.lowrank.rank import (LayerSpectrum, effective_rank, energy_rank, factorized_params, mode_spectra,
                                   singular_values)

METHODS = ("erank", "energy", "l1")
SPECTRUM_POINTS = 128      # singular values kept per layer in the report (the largest)


@dataclass
class Layer:
    """One weight layer: where its weight lives, and its spectra when the pass could factorize it."""

    node: str
    op: str
    const: str
    shape: tuple[int, ...]
    axis: int                       # the per-channel quantization axis of the weight
    kind: str | None                # "svd", "tucker2", or None (not factorizable: `why`)
    spectrum: LayerSpectrum | None
    why: str = ""

    @property
    def params(self) -> int:
        return int(math.prod(self.shape))

    def matrix(self, w: np.ndarray) -> np.ndarray:
        """The weight as the SVD sees it ([out, in]; an embedding table; B of x @ B)."""
        return w.reshape(w.shape[0], -1) if w.ndim > 2 else w


def _quant_axis(node: Node, ndim: int) -> int:
    return ndim - 1 if node.op == "matmul" else 1 if node.op == "conv_transpose" else 0


def find_layers(graph: Graph, min_params: int = 1024) -> list[Layer]:
    """Every layer whose float weight has at least `min_params` values and one user, in graph order."""
    cfg = LowRankConfig(min_params=min_params)
    out, seen = [], set()
    for node in graph.nodes:
        w = weight_input(node)
        if w is None or w.name in seen or w.data.dtype.kind != "f" or w.data.size < min_params or w.data.ndim < 2:
            continue
        seen.add(w.name)
        data = np.asarray(w.data)
        why = _why_not(graph, node, cfg) if node.op in ("linear", "conv", "matmul", "gather") else \
            f"{node.op} is not factorized by the low-rank pass"
        kind = spec = None
        if not why:
            if node.op == "conv" and math.prod(data.shape[2:]) > 1:
                o, i = data.shape[:2]
                kind, spec = "tucker2", LayerSpectrum(node.name, "tucker2", (o, i, math.prod(data.shape[2:])),
                                                      mode_spectra(data))
            else:
                mat = data.reshape(data.shape[0], -1) if data.ndim > 2 else data
                kind, spec = "svd", LayerSpectrum(node.name, "svd", mat.shape, (singular_values(mat),))
        out.append(Layer(node.name, node.op, w.name, tuple(data.shape), _quant_axis(node, data.ndim), kind, spec,
                         why))
    return out


def l1_rank(s: np.ndarray, keep: float) -> int:
    """Smallest r with ``Σ_{i<r} s_i >= keep · Σ s_i``: the rank keeping a share of the nuclear norm."""
    c = np.cumsum(np.asarray(s, np.float64))
    if c.size == 0 or c[-1] <= 0:
        return 1
    return int(min(np.searchsorted(c, keep * c[-1] * (1 - 1e-12)) + 1, c.size))


def rule_rank(s: np.ndarray, full: int, method: str, knob: float) -> int:
    """The rank in [1, full] that `method` keeps at `knob` (erank scale, or the kept share)."""
    if method == "erank":
        r = math.ceil(knob * effective_rank(s) - 1e-9)
    elif method == "energy":
        r = energy_rank(s, min(max(knob, 1e-9), 1.0))
    elif method == "l1":
        r = l1_rank(s, min(max(knob, 1e-9), 1.0))
    else:
        raise ValueError(f"unknown rank rule {method!r}; use one of {', '.join(METHODS)}")
    return int(min(max(r, 1), full))


def layer_rank(layer: Layer, method: str, knob: float):
    """The layer's rank (a pair for Tucker-2) under a rule, as `_spec_rank` resolves a spec."""
    sp = layer.spectrum
    if layer.kind == "svd":
        return rule_rank(sp.spectra[0], min(sp.shape), method, knob)
    o, i, k = sp.shape
    return (rule_rank(sp.spectra[0], min(o, i * k), method, knob),
            rule_rank(sp.spectra[1], min(i, o * k), method, knob))


def fraction_rank(layer: Layer, f: float):
    """`f` of the full rank (both modes for Tucker-2), at least 1."""
    sp = layer.spectrum
    if layer.kind == "svd":
        return max(1, math.ceil(f * min(sp.shape) - 1e-9))
    o, i, k = sp.shape
    return max(1, math.ceil(f * min(o, i * k) - 1e-9)), max(1, math.ceil(f * min(i, o * k) - 1e-9))


def rank_params(layer: Layer, rank) -> int:
    """Weights after factorizing at `rank`; the dense count when factorizing would not save (the
    pass never factorizes a layer where it adds weights)."""
    if rank is None:
        return layer.params
    return min(layer.params, factorized_params(layer.kind, layer.spectrum.shape, rank))


def saves(layer: Layer, rank) -> bool:
    return rank is not None and factorized_params(layer.kind, layer.spectrum.shape, rank) < layer.params


def factors(layer: Layer, w: np.ndarray, rank) -> list[np.ndarray]:
    """The stored factors at `rank`, as the low-rank pass computes them (``u, v`` or Tucker-2's
    ``first, core, last``; HOOI with the pass's default 3 sweeps)."""
    if layer.kind == "svd":
        return list(svd_factors(layer.matrix(w), int(rank)))
    first, core, last = tucker2(w, tuple(int(r) for r in rank), n_iter=LowRankConfig().tucker_iters)
    return [first, core, last]


def dense_equivalent(layer: Layer, w: np.ndarray, rank) -> np.ndarray:
    """The weight that the factorized chain at `rank` computes, in the layer's own shape."""
    f = factors(layer, w, rank)
    if layer.kind == "svd":
        return (f[0].astype(np.float64) @ f[1]).reshape(w.shape).astype(w.dtype)
    return _tucker_weight(*f).reshape(w.shape).astype(w.dtype)


def spectrum_row(layer: Layer) -> dict:
    """Report figures of one layer: full rank, effective rank, energy ranks (95 %, 99 %), ℓ1 rank
    (90 %), the smallest rank at which factorizing saves nothing, and the leading singular values."""
    row = {"layer": layer.node, "op": layer.op, "shape": list(layer.shape), "params": layer.params,
           "factorize": layer.kind or "no", "why": layer.why}
    if layer.spectrum is None:
        return row
    sp = layer.spectrum
    s = sp.spectra[0]
    full = int(s.size)
    er = effective_rank(s)
    row.update({"full_rank": full, "erank": round(er, 2), "erank_ratio": round(er / full, 3),
                "energy95": energy_rank(s, 0.95), "energy99": energy_rank(s, 0.99), "l1_90": l1_rank(s, 0.9),
                "spectrum": [float(x) for x in (s[:SPECTRUM_POINTS] / (s[0] if s[0] > 0 else 1))]})
    if layer.kind == "tucker2":
        row["erank_in"] = round(effective_rank(sp.spectra[1]), 2)
        row["full_rank_in"] = int(sp.spectra[1].size)
    # the largest common rank that still saves weights: factorizing pays below it
    lo, hi = 0, full
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if saves(layer, mid if layer.kind == "svd" else (mid, min(mid, sp.spectra[1].size))):
            lo = mid
        else:
            hi = mid - 1
    row["max_useful_rank"] = lo
    return row
