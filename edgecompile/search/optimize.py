"""`--optimize`: the compiler chooses each layer's compression by measurement, under the gate.

``int8 graph -> int8 graph whose layer weights are pruned and/or shared (k-means levels) per layer``

The search works on the quantized graph, whose int8 weights the container then codes (rANS /
`lut`): fewer distinct values and more zeros cost fewer bits. For every layer weight (at least
`min_params` values) it walks a ladder of settings (`Setting`: sparsity, then k-means levels or a
uniform grid coarser than int8), from mild to aggressive, and
measures each setting *alone* with the IR executor on a search set held out from the calibration
data: the gate's own checks (`fidelity.compare`, output kinds included) against the float model,
with thresholds tightened by `margin`. A setting's cost is how much it lowers that score (measured
while the work budget lasts, else predicted from the layer's output error: `_solo`); its gain the
estimated bytes it saves (order-0 entropy of the int8 values, which is what the rANS coder
reaches). Then a Lagrange multiplier is searched by bisection: every layer takes the setting
minimizing ``bytes + multiplier * cost``, and the smallest multiplier whose *joint* result still
passes the tightened gate wins. The real-runtime gate checks the result afterwards.

Cost: at most (layers × ladder steps) forward passes of the search set (capped by `max_evals` and
`work`; only the largest layers holding `coverage` of the bytes are searched) plus ~10 joint ones;
a solo walk stops at the first setting that fails the gate alone (it could never be chosen). The
budget counts multiply-accumulates, not seconds, so that the same model, data and options give the
same bundle on a quiet or a loaded machine (with a time budget, a loaded machine measured fewer
layers and shipped a larger bundle); `max_seconds` only stops a search gone far past its budget. Low rank is not in the ladder: measured on pretrained weights, effective ranks are ~0.7
of full rank, so factorizing adds bytes (DESIGN.md).

With ``size``, each layer whose channel scales differ is also tried on one grid for the whole
tensor (`per_tensor_grid`): fewer levels in small channels, fewer coded bits.

Goals: ``size`` (the whole ladder), ``balanced`` (at least 16 levels, at most 50 % sparsity),
``latency`` and ``none`` (no search: shared levels do not make int8 kernels faster).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import numpy as np
import torch

from ..ir.ops import weight_input
from ..errors import InputError
from ..report.fidelity import OutputSpec, Thresholds, compare
from ..ir import Graph, TorchExecutor
from ..ir.analysis import macs_per_sample
from ..passes.cluster import cluster_int8
from ..passes.gptq import Rounder, as_rows, from_rows, gram_shape_ok, layer_grams
from .allocation import Allocation

log = logging.getLogger(__name__)

GOALS = ("size", "balanced", "latency", "none")
MAX_PLANS = 5        # searched plans the build may try in the real runtime, most compressed first
PLAN_STEP = 1.12     # each fallback plan's estimated bytes at least this many times the last one's


class OptimizeError(InputError, ValueError):
    """An --optimize goal that cannot be understood."""


@dataclass(frozen=True)
class OptimizeConfig:
    goal: str = "size"
    margin: float = 0.15         # keep this share of each threshold's headroom on the search set.
    #   0.3 before the fallback plans stepped by bytes: a failed plan 1 then cost up to 36 % more bytes,
    #   now ~12 %. Measured at the goal thresholds, full data: MiniLM 10.95 -> 10.48 MB, MTCNN O-net
    #   and silero-vad unchanged, EfficientNet-Lite0 3.19 MB on 1 torch thread either way (2.76 MB on
    #   2 threads at 0.15); 0.0 made MiniLM's plan 1 fail.
    min_params: int = 1024       # smaller weights cost little and are often sensitive
    coverage: float = 0.95       # search the largest layers holding this share of the int8 bytes
    max_evals: int = 320         # forward passes of the search set in the solo phase
    work: float | None = None    # multiply-accumulates the solo phase's measurements may spend (None: no cap)
    max_seconds: float = 900.0   # emergency stop only (a machine far slower than any measured): the
    #                              result depends on the machine's speed only past it
    min_headroom: float = 0.05   # below this base score, int8 alone leaves nothing to spend

    def __post_init__(self) -> None:
        if self.goal not in GOALS:
            raise OptimizeError(f"unknown --optimize goal {self.goal!r}; use one of {', '.join(GOALS)}")

    @property
    def ladder(self) -> tuple[Setting, ...]:
        return {"size": LADDER, "balanced": BALANCED}.get(self.goal, ())


def entropy_bytes(q: np.ndarray) -> float:
    """Order-0 entropy of int8 values, in bytes: what an ideal per-tensor entropy coder needs."""
    counts = np.bincount(q.ravel().astype(np.int16) + 128, minlength=256)
    p = counts[counts > 0] / q.size
    return float(q.size * -(p * np.log2(p)).sum() / 8)


class Setting(NamedTuple):
    """One way to store a layer's int8 weight: prune `sparsity`, then either share the rest among
    at most 2^bits k-means levels (``step`` 1) or keep every ``step``-th int8 value (a uniform grid
    ``step`` times coarser, ``bits`` then counts its levels); `grid` "tensor" puts every channel
    on the tensor's largest scale first (`per_tensor_grid`)."""
    sparsity: float
    bits: int
    step: int = 1
    grid: str = "channel"

    @property
    def label(self) -> str:
        how = f"step {self.step}" if self.step > 1 else f"{self.bits}-bit levels" if self.bits < 8 else "int8"
        return how + (f", {self.sparsity:.0%} sparse" if self.sparsity else "") + (", one grid" if self.grid == "tensor" else "")


def uniform_levels(step: int) -> np.ndarray:
    """The int8 values that are multiples of `step` (zero among them)."""
    top = 127 // step * step
    return np.arange(-top, top + 1, step)


def uniform(step: int, sparsity: float = 0.0) -> Setting:
    """The setting keeping every `step`-th int8 value; its bits count the levels."""
    return Setting(sparsity, int(np.ceil(np.log2(len(uniform_levels(step))))), step)


# Settings from mild to aggressive, each measured alone (one forward pass of the search set per
# layer): uniform grids 4, 8, 16 and 32 times coarser than int8 beside k-means levels, since
# neither family wins on every layer at the same coded bits. Measured at the goal thresholds
# (bench_pretrained --quick data) against the k-means ladder alone ((0, 5), (0, 4), (0, 3),
# (0.5, 3), (0, 2), (0.75, 2)): MiniLM 11.92 -> 11.34 MB, MTCNN O-net 141.7 -> 132.8 KB,
# silero-vad 166.6 -> 170.1 KB (one decision in 320 apart: within the search's noise).
LADDER = (uniform(4), uniform(8), Setting(0.0, 4), uniform(16), Setting(0.0, 3), Setting(0.5, 3), uniform(32),
          Setting(0.0, 2), Setting(0.75, 2))
BALANCED = (uniform(4), Setting(0.0, 6), uniform(8), Setting(0.0, 5), Setting(0.0, 4), Setting(0.5, 4))


def apply_setting(q: np.ndarray, sparsity: float, bits: int, rounder: Rounder | None = None,
                  op: str = "linear", step: int = 1) -> np.ndarray:
    """Zeros the `sparsity` share of smallest-magnitude int8 values, then shares the rest among
    at most 2^bits levels (zero kept exact); bits 8 keeps the values. With ``step > 1`` the levels
    are instead every `step`-th int8 value: a uniform grid, which with an entropy coder loses less
    than k-means levels at the same coded bits (measured on MiniLM's word embedding, sentence
    cosine at ~3 bits a weight: 0.9977 uniform, 0.9963 with 5-bit k-means levels; at ~2.6 bits
    0.9955 against 0.9905), as entropy-coded scalar quantization predicts.

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
    if step > 1:
        levels = uniform_levels(step)
        out = np.clip(np.rint(out / step) * step, levels[0], levels[-1]).astype(q.dtype)
    elif bits < 8:
        out = cluster_int8(out, bits)
    if rounder is None or (mask is None and bits >= 8 and step == 1):
        return out
    # The levels come from the magnitude-pruned weights. The mask is the magnitude mask or the
    # rounder's own (the weights whose removal costs the output least, SparseGPT's choice),
    # whichever leaves the smaller output error: neither wins on every layer.
    levels = uniform_levels(step) if step > 1 else np.unique(out) if bits < 8 else np.arange(-127, 128)
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


def _energy(d: np.ndarray, h: np.ndarray | None) -> float:
    """``sum_r d_r^T H d_r`` over the rows of `d` (H: a Gram matrix, its diagonal, or None for I)."""
    if h is None:
        return float((d * d).sum())
    if h.ndim == 1:
        return float(h @ (d * d).sum(1))
    dt = torch.from_numpy(d)
    return float(((dt @ torch.from_numpy(h)) * dt).sum())


class _Option(NamedTuple):
    """One setting of one layer: its solo cost (measured, or predicted from its output error)."""
    cost: float                   # how much the setting alone lowers the gate score
    bytes: float                  # estimated coded bytes
    setting: Setting
    q: np.ndarray
    scale: np.ndarray | None      # a new (per-tensor grid) scale, or None
    error: float                  # the layer's relative output error (`_Layer.error`)
    measured: bool


@dataclass
class _Layer:
    node: str
    const: str
    q: np.ndarray                 # the int8 values before the search
    scale: np.ndarray             # broadcastable per-channel scale
    bytes0: float
    options: list                 # `_Option`s
    op: str = "linear"
    rounder: Rounder | None = None  # error-compensated rounding from the layer's input statistics
    gram: np.ndarray | None = None  # input Gram H [in, in], an embedding's row counts [rows], or None

    def error(self, q: np.ndarray, scale: np.ndarray | None = None) -> float:
        """The layer's output error with int8 values `q` (and `scale`) relative to its output, on
        the calibration inputs: ``||X (W - W')^T||^2 / ||X W^T||^2`` with ``H = X^T X`` (an
        embedding's H is the diagonal of its row counts; without statistics, H = I)."""
        rows, h, w, den = self._reference
        if den <= 0:
            return 0.0
        d = w - as_rows(self.op, q * (self.scale if scale is None else scale))[rows]
        return _energy(d, h) / den

    @cached_property
    def _reference(self) -> tuple:
        """(rows that count, H over them, the int8 weight's rows in real units, their output energy):
        the same for every setting, so computed once."""
        h, rows = self.gram, slice(None)
        if h is not None and h.ndim == 1:         # only the rows the data reads count
            rows = np.flatnonzero(h)
            h = h[rows]
        w = as_rows(self.op, self.q * self.scale)[rows].astype(np.float64)
        return rows, h, w, _energy(w, h)

    def settings(self, ladder, goal: str) -> list[tuple]:
        """(setting, q, scale) to try, mildest first: a per-tensor grid (``size``, channel scales
        that differ), then the ladder."""
        out = []
        if goal == "size" and self.scale.size > 1 and self.scale.max() > 1.5 * self.scale.min():
            q, sc = per_tensor_grid(self.q, self.scale)      # one grid for the tensor: off the ladder
            out.append((Setting(0.0, 8, grid="tensor"), q, sc))
        for st in ladder:
            out.append((st, apply_setting(self.q, st.sparsity, st.bits, self.rounder, self.op, st.step), None))
        return out


class GateScore:
    """The gate's checks (output kinds included) as one number on unlabelled search samples:
    ``min over checks of (value - tightened threshold) / (1 - threshold)``; >= 0 passes.

    Thresholds are tightened by `margin` (that share of each threshold's headroom is kept), so a
    result chosen on the search set keeps room for the eval set. With `labelled`, logits will be
    gated by accuracy drop, which a changed decision can cost: agreement must then stay within
    twice the allowed drop."""

    def __init__(self, specs: Sequence[OutputSpec], t: Thresholds, margin: float = OptimizeConfig.margin, labelled: bool = False,
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
        self.macs = macs_per_sample(graph) * len(samples[0]) if len(samples) else 0.0   # of one evaluation

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
    Returns a report dict with up to `MAX_PLANS` ``plans`` (most compressed first), each with its
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
        grams = layer_grams(graph, gram_samples, list(nodes))
        for lay in layers:
            lay.gram = grams.get(lay.node)
            if lay.gram is not None and gram_shape_ok(nodes[lay.node]):
                lay.rounder = Rounder(lay.gram)
    _solo(layers, scorer, base, config, t0, progress)

    alloc = Allocation([[(o.cost, o.bytes) for o in lay.options] for lay in layers],
                       [lay.bytes0 for lay in layers], base)

    def chosen(picks: list[int | None]) -> list[_Option | None]:
        return [None if j is None else lay.options[j] for lay, j in zip(layers, picks)]

    def joint(picks: list[int | None]) -> float:
        for layer, p in zip(layers, chosen(picks)):
            scorer.set_weight(layer, layer.q if p is None else p.q, None if p is None else p.scale)
        if progress:
            progress(0.8 + 0.2 * min(1.0, (time.perf_counter() - t0) / (1.5 * config.max_seconds)))
        return scorer()

    # out of time (1.5x the solo budget): the best plan that passed so far
    passing = alloc.search(joint, base, stop=lambda: time.perf_counter() - t0 > 1.5 * config.max_seconds)
    # The plans, most compressed first: the best multiplier, then larger ones, each ~PLAN_STEP times
    # the last one's estimated bytes, up to MAX_PLANS (the build falls back to them in turn when the
    # real runtime's gate disagrees with the search set's). Steps in bytes, not in multipliers: on
    # silero-vad a quarter of the way in multipliers was 5 % more bytes and half of it 36 %, so the
    # gate's closed-loop check that plan 1 missed shipped 36 % more than it needed.
    plans = []
    for k in alloc.fallbacks(min(passing), PLAN_STEP, MAX_PLANS):
        picks = chosen(alloc.picks(alloc.lams[k]))
        if any(p is not None for p in picks):
            plans.append(_plan(layers, picks, alloc.lams[k], passing.get(k)))
    joint([None] * len(layers))
    return {"goal": config.goal, "plans": plans, "base_score": round(base, 4), "evaluations": scorer.evals,
            "seconds": round(time.perf_counter() - t0, 2), "margin": config.margin,
            "search_samples": int(len(samples[0])), "layers_searched": len(layers),
            "layers_measured": sum(1 for lay in layers if any(o.measured for o in lay.options)),
            "costs_measured": sum(o.measured for lay in layers for o in lay.options),
            "costs_predicted": sum(not o.measured for lay in layers for o in lay.options)}


def _solo(layers: list[_Layer], scorer: _Scorer, base: float, config: OptimizeConfig, t0: float,
          progress: Callable[[float], None] | None) -> None:
    """Fills each layer's `options`: its settings, their estimated bytes and solo costs.

    A solo cost is measured (the search set through the executor with that one layer changed)
    while the budget lasts: first one probe per layer, largest layers first, at the middle of the
    ladder; then the rest of each layer's ladder, mildest first, until a setting fails the gate
    alone (harsher ones would too). A cost not measured is predicted as the layer's sensitivity
    times the setting's relative output error (`_Layer.error`: cheap, from the layer's input
    Gram): for small changes the gate's score drops in proportion to the output error a layer
    makes. The sensitivity is fitted to the layer's own measurements; a layer never measured takes
    the largest of the others'. On a small model every cost is measured; on MiniLM (22M weights,
    ~4 s a measurement on 2 busy cores) only the probes fit the budget, where measuring the whole
    ladder of every layer would take ~15 minutes (the build's work budget allows ~100 measurements). Settings are made layer by layer with their
    probe, so every layer reached is measured; a layer not reached within the budget keeps int8."""
    ladder = config.ladder
    probe = ladder[(len(ladder) - 1) // 2]
    cands: list[list[tuple]] = []                 # per layer: (setting, q, scale, error)
    measured: list[dict[int, float]] = []

    start = scorer.evals

    def left() -> bool:
        n = scorer.evals - start
        return (n < config.max_evals and time.perf_counter() - t0 <= config.max_seconds
                and (config.work is None or n * scorer.macs < config.work))

    def measure(i: int, j: int) -> float:
        _, q, sc, _ = cands[i][j]
        scorer.set_weight(layers[i], q, sc)
        measured[i][j] = cost = base - scorer()
        scorer.set_weight(layers[i], layers[i].q)
        if progress:
            progress(0.8 * min(1.0, (time.perf_counter() - t0) / config.max_seconds))
        return cost

    # Each layer's settings are made and one probe measured, largest layers first, while the
    # budget lasts (making the settings, GPTQ roundings, is a good part of it): a layer reached
    # has at least one measurement; one not reached keeps int8.
    for lay in layers:
        if cands and not left():
            break
        cands.append([(st, q, sc, lay.error(q, sc)) for st, q, sc in lay.settings(ladder, config.goal)])
        measured.append({})
        if left():
            measure(len(cands) - 1, next(j for j, c in enumerate(cands[-1]) if c[0] == probe))
    for i, cs in enumerate(cands):                # then each ladder, mildest first
        for j, (st, *_) in enumerate(cs):
            if j not in measured[i]:
                if not left():
                    break
                measure(i, j)
            if st.grid == "channel" and measured[i][j] > base:
                break                             # fails alone: harsher settings cannot be chosen

    def sensitivity(i: int) -> float | None:
        pts = [(max(c, 0.0), cands[i][j][3]) for j, c in measured[i].items()]
        err = sum(e for _, e in pts)
        return sum(c for c, _ in pts) / err if err > 0 else None

    fitted = [sensitivity(i) for i in range(len(cands))]
    known = [s for s in fitted if s is not None]
    if not known:
        return                                    # nothing measured: every layer keeps int8
    # No change is free: a cost measured as zero (a discrete check such as top-1 agreement did
    # not move on the search set) or a probe that happened to cost nothing still counts a tenth
    # of the typical sensitivity times its output error, so that harsher settings cost more and
    # the allocation can back off them when their joint effect shows.
    positive = [s for s in known if s > 0]
    floor = max(0.1 * float(np.median(positive)) if positive else 0.0, 1e-6)
    for i, cs in enumerate(cands):
        sens = max(fitted[i] if fitted[i] is not None else max(known), floor)
        worst = -np.inf                           # a ladder step costs at least what a milder one measured
        for j, (st, q, sc, err) in enumerate(cs):
            cost = max(measured[i][j], floor * err) if j in measured[i] else max(sens * err, worst)
            if st.grid == "channel" and j in measured[i]:
                worst = max(worst, cost)
            layers[i].options.append(_Option(cost, entropy_bytes(q), st, q, sc, err, j in measured[i]))


def _plan(layers: list[_Layer], picks: list, lam: float, score: float | None) -> dict:
    """One searched configuration: new int8 values per constant and the report rows saying why."""
    rows, weights, before, after = [], {}, 0.0, 0.0
    for layer, p in zip(layers, picks):
        before += layer.bytes0
        after += layer.bytes0 if p is None else p[1]
        if p is not None:
            weights[layer.const] = (layer.node, p[2], p[3], p[4])
        rows.append({"node": layer.node, "kind": "optimize", "params": int(layer.q.size),
                     "sparsity": None if p is None else p.setting.sparsity, "bits": 8 if p is None else p.setting.bits,
                     "step": 1 if p is None else p.setting.step, "grid": "channel" if p is None else p.setting.grid,
                     "setting": "int8" if p is None else p.setting.label,
                     "est_bytes_before": round(layer.bytes0),
                     "est_bytes_after": round(layer.bytes0 if p is None else p[1]),
                     "solo_cost": None if p is None else round(p[0], 4),
                     "why": "kept int8: no setting saves enough bytes for what it costs the gate" if p is None
                     else f"fewest bytes + {lam:.3g} x solo score drop ({p.cost:.3f}, "
                          f"{'measured' if p.measured else 'predicted from its output error'})",
                     "output_error": None if p is None else round(p.error, 6)})
    return {"bytes_per_score": round(lam, 1), "score": None if score is None else round(score, 4), "weights": weights,
            "layers": rows, "est_bytes_before": round(before), "est_bytes_after": round(after)}


def apply_plan(graph: Graph, plan: dict) -> None:
    """Writes a plan's int8 values (and, for a per-tensor grid, its scales; an int32 bias follows
    its new scale ``s_in * s_w``) into `graph` (a copy of the graph the search ran on)."""
    from ..ir import QuantParams

    for const, (node, setting, q, scale) in plan["weights"].items():
        w = graph.consts[const]
        w.data = q.copy()
        n = graph.node(node)
        n.meta["optimize"] = {"sparsity": setting.sparsity, "bits": setting.bits, "step": setting.step,
                              "grid": setting.grid}
        if setting.bits < 8:
            n.meta["clustered"] = setting.bits
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
