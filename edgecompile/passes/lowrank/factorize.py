"""`LowRankPass`: factorize weight layers into chains of smaller ones.

    linear(W)            -> linear(V) · linear(U, bias)              W ≈ U V   (truncated SVD)
    gather(T) (embedding) -> gather(U) · linear(Vᵀ)                  T ≈ U V
    matmul(x, B const)   -> matmul(P) · matmul(Q)                    B ≈ P Q
    conv 1x1             -> conv1x1(V; stride, padding) · conv1x1(U, bias)
    conv kxk (groups=1)  -> conv1x1 · conv kxk (stride, padding, dilation) · conv1x1 (Tucker-2)
    large linear         -> tensor-train chain (reshape / linear / transpose), when smaller

Invariants: a layer is rewritten only when its factorized weights are fewer than its dense ones;
the squared Frobenius error of each weight is at most the discarded squared singular values
(both Tucker-2 unfoldings' for convs, and the TT-SVD error bound set to the SVD's for TT); with
`budget_bytes`, the weight bytes after the pass (at `bytes_per_param`) are within the budget.

Ranks come from a `RankSpec` per layer (effective rank, energy, fraction, fixed) or from the
global budget search `rank.budget_ranks`. The numerics live in `decompose.py` and `rank.py`;
the graph surgery in `rewrite.py`.
"""

from __future__ import annotations

import fnmatch
import logging
import math
from dataclasses import dataclass

import numpy as np

from ...ir import Graph, Node, infer_shapes
from ...ir.ops import weight_input
from ..base import Pass, PassResult
from . import rewrite
from .decompose import factor_modes, svd_factors, tt_decompose, tt_params, tt_reconstruct, tucker2
from .rank import (LayerSpectrum, RankSpec, budget_ranks, max_useful_rank, mode_spectra, parse_rank_spec,
                   singular_values)
from ...errors import InputError

log = logging.getLogger(__name__)

__all__ = ["LowRankConfig", "LowRankPass", "LowRankConfigError"]


class LowRankConfigError(InputError, ValueError):
    """A low-rank configuration value that cannot work."""


@dataclass(frozen=True)
class LowRankConfig:
    """Settings of `LowRankPass`.

    rank : RankSpec or its text ("erank", "energy:0.95", ...): per-layer ranks when no budget.
    budget_bytes : if set, ranks come from the global greedy search so that all weights of the
        graph take at most this many bytes at `bytes_per_param` (`rank` is then ignored).
    bytes_per_param : bytes per stored weight for the budget (4 fp32, 1 int8).
    min_params : layers with fewer weights are left alone (not worth the extra op).
    tt_min_params : linear layers with at least this many weights also try a tensor train.
    tt_policy : "auto" (TT when smaller than the SVD form at the same error bound), "always"
        (TT whenever it is smaller than the dense weight), or "never".
    tt_modes : number of TT cores d.
    tucker_iters : HOOI sweeps after the HOSVD start.
    exclude : fnmatch patterns of node names to leave dense (e.g. the classifier head).
    min_saving : with a rank spec (not a budget), factorize only when it removes at least this
        fraction of the layer's weights: a 1.5% saving is not worth an extra op and its latency.
    """

    rank: RankSpec | str = "erank"
    budget_bytes: int | None = None
    bytes_per_param: float = 4.0
    min_params: int = 4096
    tt_min_params: int = 1 << 20
    tt_policy: str = "auto"
    tt_modes: int = 3
    tucker_iters: int = 3
    exclude: tuple[str, ...] = ()
    min_saving: float = 0.15

    def __post_init__(self) -> None:
        if isinstance(self.rank, str):
            object.__setattr__(self, "rank", parse_rank_spec(self.rank))
        if self.budget_bytes is not None and self.budget_bytes <= 0:
            raise LowRankConfigError(f"budget_bytes must be positive, got {self.budget_bytes}")
        if not self.bytes_per_param > 0:
            raise LowRankConfigError(f"bytes_per_param must be positive, got {self.bytes_per_param}")
        if self.tt_policy not in ("auto", "always", "never"):
            raise LowRankConfigError(f"tt_policy must be 'auto', 'always' or 'never', got {self.tt_policy!r}")
        if self.tt_modes < 2:
            raise LowRankConfigError(f"tt_modes must be at least 2, got {self.tt_modes}")
        object.__setattr__(self, "exclude", tuple(self.exclude))


@dataclass(frozen=True)
class _Layer:
    """An eligible node, how it would be factorized, and its spectrum."""

    node: Node
    kind: str            # "svd" or "tucker2"
    matrix: np.ndarray   # the weight as the decomposition sees it ([m, n], or the conv weight)
    spectrum: LayerSpectrum


#: The layers this pass decomposes (a conv_transpose is left to pruning and quantization).
FACTORIZED_OPS = ("linear", "conv", "matmul", "gather")


def _weight_of(node: Node):
    """The node's weight (`ir.ops.weight_input`) when this pass decomposes its op, else None."""
    return weight_input(node) if node.op in FACTORIZED_OPS else None


def _why_not(graph: Graph, node: Node, cfg: LowRankConfig) -> str:
    """Why `node` cannot be factorized ('' if it can)."""
    w = _weight_of(node)
    if node.meta.get("lowrank"):
        return "already factorized (" + ("a pre-set factorized layer" if node.meta["lowrank"].get("preset")
                                         else "by an earlier low-rank pass") + ")"
    if w.quant is not None or w.data.dtype.kind != "f":
        return "weight is already quantized; run low-rank before quantization"
    if len(w.uses) != 1 or any(o is w for o in graph.outputs):
        return f"weight {w.name} is shared by {len(w.uses)} nodes"
    if any(fnmatch.fnmatchcase(node.name, pat) for pat in cfg.exclude):
        return "excluded by configuration"
    if w.data.size < cfg.min_params:
        return f"{w.data.size} weights, below min_params={cfg.min_params}"
    if node.op == "gather" and (node.attrs.get("axis") != 0 or w.data.ndim != 2):
        return "gather is not an embedding lookup (2-D table, axis 0)"
    if node.op == "matmul" and (w.data.ndim != 2 or node.input(0).is_const):
        return "matmul is not activation @ constant matrix"
    if node.op == "conv" and node.attrs.get("groups", 1) != 1:
        return f"grouped convolution (groups={node.attrs['groups']}) is not eligible"
    if node.op == "linear" and w.data.ndim != 2:
        return "linear weight is not 2-D"
    return ""


def _as_layer(node: Node) -> _Layer:
    w = _weight_of(node).data
    if node.op == "conv" and math.prod(w.shape[2:]) > 1:
        o, i = w.shape[:2]
        ksize = math.prod(w.shape[2:])
        spec = LayerSpectrum(node.name, "tucker2", (o, i, ksize), mode_spectra(w))
        return _Layer(node, "tucker2", w, spec)
    matrix = w.reshape(w.shape[0], w.shape[1]) if node.op == "conv" else w
    spec = LayerSpectrum(node.name, "svd", matrix.shape, (singular_values(matrix),))
    return _Layer(node, "svd", matrix, spec)


def _spec_rank(layer: _Layer, spec: RankSpec):
    """The layer's rank under a per-layer spec (a pair for Tucker-2)."""
    s = layer.spectrum
    if layer.kind == "svd":
        m, n = s.shape
        return spec.resolve(s.spectra[0], m, n)
    o, i, k = s.shape
    return spec.resolve(s.spectra[0], o, i * k), spec.resolve(s.spectra[1], i, o * k)


def _kept_energy(layer: _Layer, rank) -> float:
    """1 - (discarded squared singular values) / ‖W‖², summed over the unfoldings for Tucker-2."""
    s = layer.spectrum
    if s.energy <= 0:
        return 1.0
    ranks = (rank,) if layer.kind == "svd" else rank
    lost = sum(float(np.sum(sp[r:] ** 2)) for sp, r in zip(s.spectra, ranks))
    return max(0.0, 1.0 - lost / s.energy)


def _measured_energy(w: np.ndarray, approx: np.ndarray) -> float:
    """1 - ‖W − Ŵ‖² / ‖W‖², measured."""
    total = float(np.sum(np.square(w, dtype=np.float64)))
    lost = float(np.sum(np.square(w.astype(np.float64) - approx.reshape(w.shape))))
    return 1.0 if total <= 0 else max(0.0, 1.0 - lost / total)


def _tucker_weight(first, core, last) -> np.ndarray:
    """The dense conv weight of a (possibly folded) Tucker-2 chain."""
    w = core.astype(np.float64)
    if first is not None:
        w = np.einsum("ab...,bi->ai...", w, first.reshape(first.shape[:2]))
    if last is not None:
        w = np.einsum("oa,ab...->ob...", last.reshape(last.shape[:2]), w)
    return w


class LowRankPass(Pass):
    """Linear(W) -> Linear(V)·Linear(U), Conv -> Tucker-2 chain, big Linear -> tensor train.

    Keeps ‖W − Ŵ‖_F² within the discarded spectrum energy per layer, never adds weights, and
    with a byte budget keeps all weights within it (raises `rank.BudgetError` when impossible).
    """

    name = "lowrank"

    def __init__(self, config: LowRankConfig | None = None):
        self.config = config or LowRankConfig()

    def call(self, graph: Graph) -> PassResult:
        cfg = self.config
        records: list[dict] = []
        layers: list[_Layer] = []
        if any(v.shape is None for n in graph.nodes for v in n.outputs):
            infer_shapes(graph)  # the TT rewrite needs static shapes
        for node in graph.nodes:
            if _weight_of(node) is None:
                continue  # not a layer (e.g. attention's activation @ activation)
            why = _why_not(graph, node, cfg)
            if why:
                records.append({"node": node.name, "op": node.op, "kind": "kept", "reason": why})
            else:
                layers.append(_as_layer(node))
        plan = self._plan(graph, layers)
        modified = False
        for layer in layers:
            record = self._apply(graph, layer, plan[layer.node.name])
            records.append(record)
            modified |= record["kind"] == "lowrank"
        if modified:
            graph.remove_unused()
            infer_shapes(graph)
        return PassResult(graph, modified, records)

    # -- planning ---------------------------------------------------------------------------------
    def _plan(self, graph: Graph, layers: list[_Layer]) -> dict:
        """Rank per layer name: int, (r_out, r_in), or None (keep dense)."""
        cfg = self.config
        if cfg.budget_bytes is not None:
            factorizable = sum(layer.matrix.size for layer in layers)
            fixed = (graph.param_count() - factorizable) * cfg.bytes_per_param
            return budget_ranks([layer.spectrum for layer in layers], cfg.budget_bytes,
                                cfg.bytes_per_param, fixed_bytes=math.ceil(fixed))
        if not cfg.rank.enabled:
            return {layer.node.name: None for layer in layers}
        return {layer.node.name: _spec_rank(layer, cfg.rank) for layer in layers}

    def _tt_cores(self, layer: _Layer, rank) -> list[np.ndarray] | None:
        """TT cores at the error bound of `rank`'s SVD, if the layer qualifies and TT is smaller."""
        cfg = self.config
        node, w = layer.node, layer.matrix
        if cfg.tt_policy == "never" or node.op != "linear" or w.size < cfg.tt_min_params or rank is None:
            return None
        out_modes, in_modes = factor_modes(w.shape[0], cfg.tt_modes), factor_modes(w.shape[1], cfg.tt_modes)
        if 1 in out_modes or 1 in in_modes:
            log.info("%s: %s does not split into %d balanced modes; no tensor train",
                     node.name, w.shape, cfg.tt_modes)
            return None
        # the error the chosen SVD rank would make (for an energy spec, the spec's own target),
        # floored at the weight's rounding level so that exact inputs do not keep noise ranks.
        eps = math.sqrt(max(0.0, 1.0 - _kept_energy(layer, rank)))
        if cfg.budget_bytes is None and cfg.rank.kind == "energy":
            eps = max(eps, math.sqrt(1.0 - cfg.rank.value))
        eps = max(eps, 1e-6 if w.dtype == np.float32 else 1e-12)
        cores = tt_decompose(w, in_modes, out_modes, rel_error=eps)
        limit = w.size if cfg.tt_policy == "always" else min(w.size, layer.spectrum.params(rank))
        return cores if tt_params(cores) < limit else None

    # -- rewriting --------------------------------------------------------------------------------
    def _apply(self, graph: Graph, layer: _Layer, rank) -> dict:
        node, spec = layer.node, layer.spectrum
        before = spec.dense_params
        base = {"node": node.name, "op": node.op, "params_before": before}
        tt = self._tt_cores(layer, rank)
        small_gain = (self.config.budget_bytes is None and rank is not None and tt is None
                      and before > spec.params(rank) > (1 - self.config.min_saving) * before)
        if small_gain:
            return dict(base, kind="kept", params_after=before,
                        reason=f"rank {rank} would save under {self.config.min_saving:.0%} of the weights")
        if tt is None and (rank is None or spec.params(rank) >= before):
            if self.config.budget_bytes is not None:
                reason = "kept dense by the budget search"
            elif rank is None:
                reason = "rank spec 'none'"
            else:
                m, n = spec.shape[:2]
                useful = (max_useful_rank(m, n) if layer.kind == "svd"
                          else max_useful_rank(m, n, "tucker2", ksize=spec.shape[2]))
                reason = f"rank {rank} would not save weights (factorizing pays below rank {useful + 1})"
            return dict(base, kind="kept", reason=reason, params_after=before)
        if tt is not None:
            method, shown = "tt", [int(c.shape[3]) for c in tt[:-1]]
        else:
            method, shown = layer.kind, (int(rank) if layer.kind == "svd" else [int(r) for r in rank])
        meta = {"method": method, "rank": shown, "original": node.name, "params_before": before}
        if method == "tt":
            after = tt_params(tt)
            meta["params_after"] = after
            kept = _measured_energy(layer.matrix, tt_reconstruct(tt))
            rewrite.replace_linear_tt(graph, node, tt, meta)
        elif method == "svd":
            u, v = svd_factors(layer.matrix, int(rank))
            after = u.size + v.size
            kept = _kept_energy(layer, rank)  # exact for a truncated SVD (Eckart–Young)
            meta["params_after"] = after
            if node.op == "linear":
                rewrite.replace_linear_svd(graph, node, u, v, meta)
            elif node.op == "gather":
                rewrite.replace_gather_svd(graph, node, u, v, meta)
            elif node.op == "matmul":
                # B [in, out] = P Q: P = U [in, r], Q = V [r, out]
                rewrite.replace_matmul_svd(graph, node, u, v, meta)
            else:
                rewrite.replace_conv_svd(graph, node, u, v, meta)
        else:
            first, core, last = self._tucker(layer, rank)
            after = sum(a.size for a in (first, core, last) if a is not None)
            kept = _measured_energy(layer.matrix, _tucker_weight(first, core, last))
            meta["params_after"] = after
            rewrite.replace_conv_tucker2(graph, node, first, core, last, meta)
        log.debug("%s: %s rank %s, %d -> %d weights", node.name, method, shown, before, after)
        return dict(base, kind="lowrank", method=method, rank=shown, params_after=after,
                    energy_kept=round(kept, 6), bound_energy_kept=round(_kept_energy(layer, rank), 6))

    def _tucker(self, layer: _Layer, rank):
        """Tucker-2 factors; a side whose rank is the full channel count is folded into the core."""
        w = layer.matrix
        o, i = w.shape[:2]
        first, core, last = tucker2(w, tuple(rank), n_iter=self.config.tucker_iters)
        r_out, r_in = rank
        if r_in == i:   # the first 1x1 conv is a square orthogonal map: fold it into the core
            core = np.einsum("ab...,bi->ai...", core, first.reshape(r_in, i))
            first = None
        if r_out == o:  # likewise the last one
            core = np.einsum("oa,ab...->ob...", last.reshape(o, r_out), core)
            last = None
        return first, core, last
