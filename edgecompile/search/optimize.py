"""`--optimize`: the compiler chooses each layer's compression by measurement, under the gate.

``int8 graph -> int8 graph whose layer weights are pruned and/or shared (k-means levels) per layer``

The search works on the quantized graph, whose int8 weights the container then codes (rANS /
`lut`): fewer distinct values and more zeros cost fewer bits. For every layer weight (at least
`min_params` values) it walks a ladder of settings (sparsity, bits), from mild to aggressive, and
measures each setting *alone* with the IR executor on a search set held out from the calibration
data: the gate's own checks (`fidelity.compare`, output kinds included) against the float model,
with thresholds tightened by `margin`. A setting's cost is how much it lowers that score; its
gain the estimated bytes it saves (order-0 entropy of the int8 values, which is what the rANS
coder reaches). Then one tolerance is searched by bisection: every layer takes its smallest
setting whose solo cost is within the tolerance, and the largest tolerance whose *joint* result
still passes the tightened gate wins. The real-runtime gate checks the result afterwards.

Cost: at most (layers × ladder steps) forward passes of the search set (capped by `max_evals`;
only the largest layers holding `coverage` of the bytes are searched) plus ~10 joint ones; a solo
walk stops at the first setting that fails the gate alone (it could never be chosen). Low rank is not in the ladder: measured on pretrained
weights, effective ranks are ~0.7 of full rank, so factorizing adds bytes (DESIGN.md).

With ``size``, each layer whose channel scales differ is also tried on one grid for the whole
tensor (`per_tensor_grid`): fewer levels in small channels, fewer coded bits.

Goals: ``size`` (the whole ladder), ``balanced`` (at least 4 bits, at most 50 % sparsity),
``latency`` and ``none`` (no search: shared levels do not make int8 kernels faster).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..ir.ops import weight_input
from ..errors import InputError
from ..report.fidelity import OutputSpec, Thresholds, compare
from ..ir import Graph, TorchExecutor
from ..passes.cluster import cluster_int8
from ..passes.gptq import Rounder, as_rows, from_rows, gram_shape_ok, layer_grams

log = logging.getLogger(__name__)

GOALS = ("size", "balanced", "latency", "none")
# (sparsity, bits): from mild to aggressive. Six steps: each costs one forward pass of the search
# set per layer, and the bits a weight costs fall fastest between 5 and 2 levels' bits.
LADDER = ((0.0, 5), (0.0, 4), (0.0, 3), (0.5, 3), (0.0, 2), (0.75, 2))
BALANCED = ((0.0, 6), (0.0, 5), (0.0, 4), (0.5, 4))


class OptimizeError(InputError, ValueError):
    """An --optimize goal that cannot be understood."""


@dataclass(frozen=True)
class OptimizeConfig:
    goal: str = "size"
    margin: float = 0.3          # keep this share of each threshold's headroom on the search set
    min_params: int = 1024       # smaller weights cost little and are often sensitive
    coverage: float = 0.95       # search the largest layers holding this share of the int8 bytes
    max_evals: int = 320         # forward passes of the search set in the solo phase
    max_seconds: float = 240.0   # wall-clock budget of the solo phase (the plain build's order of time)
    min_headroom: float = 0.05   # below this base score, int8 alone leaves nothing to spend

    def __post_init__(self) -> None:
        if self.goal not in GOALS:
            raise OptimizeError(f"unknown --optimize goal {self.goal!r}; use one of {', '.join(GOALS)}")

    @property
    def ladder(self) -> tuple[tuple[float, int], ...]:
        return {"size": LADDER, "balanced": BALANCED}.get(self.goal, ())


def entropy_bytes(q: np.ndarray) -> float:
    """Order-0 entropy of int8 values, in bytes: what an ideal per-tensor entropy coder needs."""
    counts = np.bincount(q.ravel().astype(np.int16) + 128, minlength=256)
    p = counts[counts > 0] / q.size
    return float(q.size * -(p * np.log2(p)).sum() / 8)


def apply_setting(q: np.ndarray, sparsity: float, bits: int, rounder: Rounder | None = None,
                  op: str = "linear") -> np.ndarray:
    """Zeros the `sparsity` share of smallest-magnitude int8 values, then shares the rest among
    at most 2^bits levels (zero kept exact); bits 8 keeps the values.

    With a `rounder` (the layer's input statistics, `passes.gptq`), the same sparsity and levels are
    reached by error-compensated rounding: the kept weights move to cancel what pruning and
    rounding cost the layer's output on calibration data (on correlated inputs: ~35 % less output
    error than nearest-level rounding at 2-5 bits; tests/passes/test_gptq.py).
    Measured on the pretrained zoo at the goal thresholds: MTCNN O-net 209 -> 130 KB,
    EfficientNet-Lite0 4.34 -> 3.67 MB, both passing the gate."""
    out, mask = q, None
    if sparsity > 0:
        mag = np.abs(q.astype(np.int16))
        k = int(sparsity * mag.size)
        if k > 0:
            cut = np.partition(mag.ravel(), k - 1)[k - 1]
            mask = mag <= cut
            out = np.where(mask, 0, q).astype(q.dtype)
    if bits < 8:
        out = cluster_int8(out, bits)
    if rounder is None or (mask is None and bits >= 8):
        return out
    # The levels come from the magnitude-pruned weights. The mask is the magnitude mask or the
    # rounder's own (the weights whose removal costs the output least, SparseGPT's choice),
    # whichever leaves the smaller output error: neither wins on every layer.
    levels = np.unique(out) if bits < 8 else np.arange(-127, 128)
    rows = as_rows(op, q)
    got = rounder.round(rows, levels, None if mask is None else as_rows(op, mask))
    if mask is not None:
        alt = rounder.round(rows, levels, sparsity=sparsity)
        if rounder.loss(rows, alt) < rounder.loss(rows, got):
            got = alt
    return from_rows(op, got, q.shape)


def per_tensor_grid(q: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The int8 values requantized onto one grid for the whole tensor (the largest channel scale):
    channels with a small range then use few levels, which the entropy coder turns into fewer
    bits (measured on MTCNN O-net's convs: 6.0-6.5 bits against 6.8-7.2 per channel). Returns the
    new values and the (broadcastable) scale, equal in every channel."""
    big = np.float32(scale.max())
    q2 = np.clip(np.rint(q.astype(np.float32) * (scale / big)), -127, 127).astype(np.int8)
    return q2, np.full_like(scale, big)


@dataclass
class _Layer:
    node: str
    const: str
    q: np.ndarray                 # the int8 values before the search
    scale: np.ndarray             # broadcastable per-channel scale
    bytes0: float
    options: list                 # (cost, bytes, setting, q', scale' or None) measured alone
    op: str = "linear"
    rounder: Rounder | None = None  # error-compensated rounding from the layer's input statistics


class GateScore:
    """The gate's checks (output kinds included) as one number on unlabelled search samples:
    ``min over checks of (value - tightened threshold) / (1 - threshold)``; >= 0 passes.

    Thresholds are tightened by `margin` (that share of each threshold's headroom is kept), so a
    result chosen on the search set keeps room for the eval set. With `labelled`, logits will be
    gated by accuracy drop, which a changed decision can cost: agreement must then stay within
    twice the allowed drop."""

    def __init__(self, specs: Sequence[OutputSpec], t: Thresholds, margin: float = 0.3, labelled: bool = False,
                 metric=None):
        def tight(x):
            return x + (1 - x) * margin
        top1 = max(t.min_top1_agreement, 1 - 2 * t.max_accuracy_drop) if labelled else t.min_top1_agreement
        self.base = Thresholds(**{**t.__dict__, "min_top1_agreement": top1})
        self.t = Thresholds(min_top1_agreement=tight(top1), min_cosine=tight(t.min_cosine),
                            max_accuracy_drop=t.max_accuracy_drop,
                            min_decision_agreement=tight(t.min_decision_agreement),
                            min_correlation=tight(t.min_correlation))
        self.specs, self.metric, self.margin = specs, metric, margin

    def _floor(self, metric: str) -> float:
        b = self.base
        if metric.startswith("top-1 agreement"):
            return b.min_top1_agreement
        return {"mean per-sample cosine": b.min_cosine, "correlation over the set": b.min_correlation}.get(
            metric, b.min_decision_agreement)

    def __call__(self, ref: list[np.ndarray], got: list[np.ndarray]) -> float:
        fid = compare(ref, got, self.specs, self.t, metric=self.metric)
        return min((self._margin(c) for c in fid.checks), default=np.inf)

    def _margin(self, c) -> float:
        """How far one check is above its tightened threshold, in units of the threshold's headroom
        (-inf when it could not be measured: a NaN must never look like a pass)."""
        if not np.isfinite(c.value):
            return -np.inf
        if c.output != "model":
            return float((c.value - c.threshold) / max(1 - self._floor(c.metric), 1e-6))
        # the factory's own check: tightened alike when it is a [0, 1] figure
        if c.higher_is_better and 0 < c.threshold < 1:
            tight = c.threshold + (1 - c.threshold) * self.margin
            return float((c.value - tight) / (1 - c.threshold))
        gap = c.value - c.threshold if c.higher_is_better else c.threshold - c.value
        return float(gap / max(abs(c.threshold), 1e-6))


def executor_outputs(ex: TorchExecutor, x: Sequence[torch.Tensor]) -> list[np.ndarray]:
    """Every output of the IR executor on the stacked samples `x`."""
    with torch.no_grad():
        out = ex(*x)
    return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]


class _Scorer:
    """The executor on the search set, scored by a `GateScore`; weights can be swapped in."""

    def __init__(self, graph: Graph, samples: Sequence[np.ndarray], ref: list[np.ndarray], gate: GateScore):
        self.ex = TorchExecutor(graph, fake_quant=True).eval()
        self.x = [torch.as_tensor(a) for a in samples]
        self.ref, self.gate = ref, gate
        self.evals = 0

    def __call__(self) -> float:
        self.evals += 1
        return self.gate(self.ref, executor_outputs(self.ex, self.x))

    def set_weight(self, layer: _Layer, q: np.ndarray, scale: np.ndarray | None = None) -> None:
        s = layer.scale if scale is None else scale
        with torch.no_grad():
            self.ex.const_tensor(layer.const).copy_(torch.from_numpy(q.astype(np.float32) * s))


def _layers(graph: Graph, min_params: int) -> list[_Layer]:
    out, seen = [], set()
    for node in graph.nodes:
        w = weight_input(node)
        if w is None or w.quant is None or w.data.dtype != np.int8 or w.data.size < min_params or w.name in seen:
            continue
        if np.any(w.quant.zero_point != 0):
            continue
        seen.add(w.name)
        scale, _ = w.quant.broadcast(w.data.ndim)
        out.append(_Layer(node.name, w.name, w.data.copy(), scale.astype(np.float32), entropy_bytes(w.data), [],
                          node.op))
    return out


def optimize_weights(graph: Graph, samples: Sequence[np.ndarray], ref: list[np.ndarray], gate: GateScore,
                     config: OptimizeConfig, progress: Callable[[float], None] | None = None,
                     gram_samples: Sequence[np.ndarray] | None = None) -> dict:
    """Searches per-layer (sparsity, bits) for the int8 `graph` (left unchanged); see the module
    docstring. Apply a result with `apply_plan`.

    Parameters
    ----------
    samples : the search inputs (one array per graph input, samples on axis 0), not the eval set
    ref : the float model's outputs on `samples`
    gate : the gate's checks as one score (`GateScore`)
    gram_samples : calibration inputs (best not `samples`) whose layer inputs drive error-compensated
        rounding (`passes.gptq`); None rounds each weight to its nearest level
    Returns a report dict with up to three ``plans`` (most compressed first), each with its
    per-layer settings and why, estimated bytes before/after, and the search's cost.
    """
    t0 = time.perf_counter()
    ladder = config.ladder
    layers = _layers(graph, config.min_params) if ladder else []
    if not layers:
        return {"goal": config.goal, "plans": [], "note": "no int8 layer weight to search"}
    scorer = _Scorer(graph, samples, ref, gate)
    base = scorer()
    if base < config.min_headroom:
        return {"goal": config.goal, "plans": [], "base_score": round(base, 4),
                "note": "int8 alone is at the edge of the gate on the search set: no further compression"}
    layers.sort(key=lambda lay: -lay.bytes0)
    total, kept, acc = sum(lay.bytes0 for lay in layers), [], 0.0
    for lay in layers:                    # the largest layers first, until `coverage` of the bytes
        if acc >= config.coverage * total:
            break
        kept.append(lay)
        acc += lay.bytes0
    layers = kept
    if gram_samples is not None and len(gram_samples[0]):
        nodes = {lay.node: graph.node(lay.node) for lay in layers}
        grams = layer_grams(graph, gram_samples, [n for n, node in nodes.items() if gram_shape_ok(node)])
        for lay in layers:
            if lay.node in grams:
                lay.rounder = Rounder(grams[lay.node])
    for i, layer in enumerate(layers):
        if scorer.evals >= config.max_evals or time.perf_counter() - t0 > config.max_seconds:
            break                         # out of budget: the smaller layers keep int8
        if config.goal == "size" and layer.scale.size > 1 and layer.scale.max() > 1.5 * layer.scale.min():
            q, sc = per_tensor_grid(layer.q, layer.scale)      # one grid for the tensor: off the ladder
            scorer.set_weight(layer, q, sc)
            s = scorer()
            layer.options.append((base - s, entropy_bytes(q), (0.0, 8, "tensor"), q, sc))
        for sparsity, bits in ladder:
            q = apply_setting(layer.q, sparsity, bits, layer.rounder, layer.op)
            scorer.set_weight(layer, q)
            s = scorer()
            layer.options.append((base - s, entropy_bytes(q), (sparsity, bits), q, None))
            if s < 0:          # fails the gate alone: it can never be chosen, and harsher steps cost more
                break
        scorer.set_weight(layer, layer.q)
        if progress:
            progress(0.8 * (i + 1) / len(layers))

    def choose(tol: float) -> list[tuple]:
        picks = []
        for layer in layers:
            ok = [o for o in layer.options if o[0] <= tol and o[1] < layer.bytes0]
            picks.append(min(ok, key=lambda o: o[1]) if ok else None)
        return picks

    def joint(picks) -> float:
        for layer, p in zip(layers, picks):
            scorer.set_weight(layer, layer.q if p is None else p[3], None if p is None else p[4])
        return scorer()

    tols = sorted({o[0] for layer in layers for o in layer.options if o[0] <= base})
    passing: dict[int, float] = {}        # tolerance index -> joint score, for those that pass
    lo, hi = 0, len(tols) - 1
    while lo <= hi:                       # largest tolerance whose joint result passes
        mid = (lo + hi) // 2
        s = joint(choose(tols[mid]))
        if s >= 0:
            passing[mid], lo = s, mid + 1
        else:
            hi = mid - 1
        if progress:
            progress(0.8 + 0.2 * min(1.0, scorer.evals / (scorer.evals + hi - lo + 2)))
    # Up to three plans, most compressed first: the best tolerance, then ones a half and a quarter
    # of the way down (the build falls back to them if the real runtime's gate disagrees).
    plans = []
    if passing:
        top = max(passing)
        for k in dict.fromkeys((top, top // 2, top // 4)):
            picks = choose(tols[k])
            plans.append(_plan(layers, picks, tols[k], passing.get(k)))
    elif tols:
        # Small solo costs can still add up past the gate. Then take the layers in order of bytes
        # saved per unit of solo cost at the median tolerance, and bisect on how many of them.
        tol = tols[len(tols) // 2]
        picks = choose(tol)
        order = sorted((i for i, p in enumerate(picks) if p is not None),
                       key=lambda i: -(layers[i].bytes0 - picks[i][1]) / max(picks[i][0], 1e-3))
        lo, hi, best = 1, len(order), None
        while lo <= hi:
            mid = (lo + hi) // 2
            keep = set(order[:mid])
            sub = [p if i in keep else None for i, p in enumerate(picks)]
            s = joint(sub)
            if s >= 0:
                best, lo = (sub, s, mid), mid + 1
            else:
                hi = mid - 1
        if best is not None:
            plans.append(_plan(layers, best[0], tol, best[1]))
    joint([None] * len(layers))
    return {"goal": config.goal, "plans": plans, "base_score": round(base, 4), "evaluations": scorer.evals,
            "seconds": round(time.perf_counter() - t0, 2), "margin": config.margin,
            "search_samples": int(len(samples[0])), "layers_searched": len(layers),
            "layers_measured": sum(1 for lay in layers if lay.options)}


def _plan(layers: list[_Layer], picks: list, tol: float, score: float | None) -> dict:
    """One searched configuration: new int8 values per constant and the report rows saying why."""
    rows, weights, before, after = [], {}, 0.0, 0.0
    for layer, p in zip(layers, picks):
        before += layer.bytes0
        after += layer.bytes0 if p is None else p[1]
        if p is not None:
            weights[layer.const] = (layer.node, p[2], p[3], p[4])
        rows.append({"node": layer.node, "kind": "optimize", "params": int(layer.q.size),
                     "sparsity": None if p is None else p[2][0], "bits": 8 if p is None else p[2][1],
                     "grid": "tensor" if p is not None and len(p[2]) > 2 else "channel",
                     "est_bytes_before": round(layer.bytes0),
                     "est_bytes_after": round(layer.bytes0 if p is None else p[1]),
                     "solo_cost": None if p is None else round(p[0], 4),
                     "why": "kept int8: every setting tried alone cost more than the tolerance" if p is None
                     else f"smallest setting whose solo score drop {p[0]:.3f} is within the tolerance {tol:.3f}"})
    return {"tolerance": round(tol, 4), "score": None if score is None else round(score, 4), "weights": weights,
            "layers": rows, "est_bytes_before": round(before), "est_bytes_after": round(after)}


def apply_plan(graph: Graph, plan: dict) -> None:
    """Writes a plan's int8 values (and, for a per-tensor grid, its scales; an int32 bias follows
    its new scale ``s_in * s_w``) into `graph` (a copy of the graph the search ran on)."""
    from ..ir import QuantParams

    for const, (node, setting, q, scale) in plan["weights"].items():
        w = graph.consts[const]
        w.data = q.copy()
        n = graph.node(node)
        sparsity, bits = setting[0], setting[1]
        n.meta["optimize"] = {"sparsity": sparsity, "bits": bits, "grid": setting[2] if len(setting) > 2 else "channel"}
        if bits < 8:
            n.meta["clustered"] = bits
        if scale is None:
            continue
        old = w.quant.scale.astype(np.float32)
        new = np.full_like(old, float(scale.max()))
        w.quant = QuantParams(new, np.zeros(new.size, np.int32), w.quant.axis, w.quant.dtype)
        b = n.input(2) if n.op in ("linear", "conv", "conv_transpose") else None
        x = n.inputs[0]
        if b is not None and b.quant is not None and b.data.dtype == np.int32 and x is not None and x.quant is not None:
            s_in = np.float32(x.quant.scale[0])
            reps = b.data.size // new.size      # a grouped conv_transpose: one weight scale per group member
            old, new = np.tile(old, reps), np.tile(new, reps)
            b.data = np.clip(np.rint(b.data.astype(np.float64) * (old / new)), -2**31 + 1, 2**31 - 1).astype(np.int32)
            b.quant = QuantParams((s_in * new).astype(np.float32), np.zeros(new.size, np.int32), b.quant.axis, "int32")
