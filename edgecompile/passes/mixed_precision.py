"""Mixed precision by measured sensitivity: which nodes to keep in float so that int8 holds.

`select_float_nodes(graph, calib_batches, score_fn, min_score)` quantizes a copy of the float
graph (full int8, `QuantizePass`), then

1. estimates in one forward + backward per calibration batch how much each quantized activation
   costs the outputs: the Fisher-style sum ``sum((g * (fq(x) - x))**2)`` with ``g`` the gradient
   of the outputs' normalized squared error with respect to the fake-quantized activation
   (straight-through). An activation and the reshape / transpose / pool ... outputs that share its
   quantization parameters form one unit (un-quantizing a reshape alone changes nothing);
2. walks the units from the costliest estimate down, un-quantizing each in turn and measuring the
   score with one forward per calibration batch; a unit is kept float only if the measured score
   rose, and the walk stops once `min_score` is reached, after `max_float` units, or after
   `max_evals` measurements;
3. quantizes another copy with ``QuantConfig(skip=...)`` and measures the final score (ranges are
   recalibrated there, so this is exactly what the build will ship).

With ``config.fallback == "dynamic"`` the measurement runs float-kept layers as the build will:
int8 weights with run-time (dynamic-range) input quantization.

The measurement runs the IR with torch ops and fake quantization, the executor's numerics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import torch

from ..ir import Graph, QuantParams, Value
from ..ir.torch_ops import TORCH_DTYPES, dynamic_fake_quant, fake_quant, run_op, to_torch
from .calibrate import activation_qparams, collect_ranges
from .quantize import DYNAMIC_OPS, MAC_OPS, SHARED_QPARAMS, QuantConfig, QuantizePass

__all__ = ["select_float_nodes", "mean_cosine", "quant_units"]

log = logging.getLogger(__name__)

ScoreFn = Callable[[list[np.ndarray], list[np.ndarray]], float]


def mean_cosine(ref: list[np.ndarray], got: list[np.ndarray]) -> float:
    """Mean per-sample cosine over all outputs (axis 0 is the sample); an output with one value
    per sample is judged by one cosine over the whole set instead (never a 1-element cosine)."""
    scores = []
    for r, g in zip(ref, got):
        r = np.asarray(r, np.float64).reshape(len(r), -1)
        g = np.asarray(g, np.float64).reshape(len(g), -1)
        if r.shape[1] == 1:
            r, g = r.reshape(1, -1), g.reshape(1, -1)
        num = (r * g).sum(1)
        den = np.linalg.norm(r, axis=1) * np.linalg.norm(g, axis=1)
        # two all-zero vectors agree; one zero against a non-zero one does not
        c = np.where(den > 0, num / np.where(den > 0, den, 1), np.where(np.abs(r).sum(1) + np.abs(g).sum(1) == 0, 1, 0))
        scores.append(float(np.clip(c, -1, 1).mean()))
    return float(np.mean(scores))


def quant_units(graph: Graph) -> dict[str, list[Value]]:
    """Quantized node outputs grouped into units keyed by the producing node's name.

    A unit is one node's output plus, transitively, the outputs of single-input shared-parameter
    ops (`SHARED_QPARAMS`) that read it and carry the very same parameters.
    """
    units: dict[str, list[Value]] = {}
    root_of: dict[int, str] = {}       # id(value) -> the unit it belongs to
    for node in graph.nodes:
        v = node.output
        if v.quant is None:
            continue
        src = node.inputs[0] if node.inputs else None
        if node.op in SHARED_QPARAMS and node.op != "concat" and src is not None \
                and id(src) in root_of and src.quant is v.quant:
            root = root_of[id(src)]
        else:
            root = node.name
            units[root] = []
        units[root].append(v)
        root_of[id(v)] = root
    return units


def _neighbours(vs: list[Value], unit_of: dict[int, str]) -> list[str]:
    """Units that produce an input of, or consume, the values `vs` (in graph order, no repeats)."""
    out: dict[str, None] = {}
    for v in vs:
        if v.producer is not None:
            for i in v.producer.inputs:
                if i is not None and id(i) in unit_of:
                    out[unit_of[id(i)]] = None
        for n, _ in v.uses:
            if id(n.output) in unit_of:
                out[unit_of[id(n.output)]] = None
    return list(out)


class _Runner:
    """Runs a quantized graph with fake quantization, with chosen units left unquantized."""

    def __init__(self, graph: Graph, float_graph: Graph | None = None, dynamic: bool = False):
        self.graph = graph
        # QuantConfig.fallback == "dynamic": a float-kept layer keeps int8 weights and quantizes its
        # input at run time, as does any int8 layer whose input is float
        self.dynamic = dynamic
        self.consts = {id(v): to_torch(v.real()) for v in graph.consts.values()}
        # a node kept float also keeps float weights (what QuantConfig.skip does)
        self.float_consts = {} if float_graph is None else {
            id(v): to_torch(float_graph.consts[v.name].data) for v in graph.consts.values()
            if v.quant is not None and v.name in float_graph.consts
            and float_graph.consts[v.name].quant is None}

    def run(self, inputs: Sequence[np.ndarray], off: set[int], probe: bool = False,
            override: dict[int, QuantParams] | None = None):
        """Outputs (and, with `probe`, {id(value): (pre, fake-quantized, zero-grad handle)}).

        `off`: ids of values left unquantized; `override`: other parameters for some values."""
        g = self.graph
        env: dict[int, torch.Tensor] = dict(self.consts)
        probes: dict[int, tuple] = {}
        self.override = override or {}
        for v, x in zip(g.inputs, inputs):
            t = torch.as_tensor(np.asarray(x)).to(TORCH_DTYPES[v.dtype])
            env[id(v)] = self._fq(v, t, off, probes if probe else None)
        for node in g.nodes:
            args = [None if v is None else env[id(v)] for v in node.inputs]
            if node.meta.get("arith") == "int8-dynamic" and args:     # as the executor does
                args[0] = dynamic_fake_quant(args[0])
            elif self.dynamic and node.op in MAC_OPS and args and id(node.input(1)) in self.float_consts \
                    and not node.input(0).is_const:
                x = node.input(0)
                if (id(node.output) in off or x.quant is None or id(x) in off) and node.op in DYNAMIC_OPS:
                    args[0] = dynamic_fake_quant(args[0])
            elif id(node.output) in off:
                args = [self.float_consts.get(id(v), a) if v is not None else a for v, a in zip(node.inputs, args)]
            env[id(node.output)] = self._fq(node.output, run_op(node.op, args, node.attrs), off,
                                            probes if probe else None)
        outs = [env[id(v)] for v in g.outputs]
        return (outs, probes) if probe else outs

    def _fq(self, v: Value, t: torch.Tensor, off: set[int], probes: dict | None) -> torch.Tensor:
        q: QuantParams | None = self.override.get(id(v), v.quant)
        if q is None or id(v) in off or not t.is_floating_point():
            return t
        lo, hi = q.qrange()
        x = t.detach().requires_grad_(False) if probes is None else t
        y = fake_quant(x, torch.as_tensor(q.scale), torch.as_tensor(q.zero_point).float(), lo, hi, q.axis)
        if probes is None:
            return y
        # a zero added to the quantized value: its gradient is dL/dy for this activation
        handle = torch.zeros_like(y, requires_grad=True)
        probes[id(v)] = (t.detach(), y.detach(), handle)
        return y + handle


def _outputs(runner: _Runner, batches, off: set[int], override: dict | None = None) -> list[np.ndarray]:
    with torch.no_grad():
        per_batch = [runner.run(b, off, override=override) for b in batches]
    return [np.concatenate([o[k].float().numpy() for o in per_batch]) for k in range(len(per_batch[0]))]


def _estimate(runner: _Runner, batches, ref: list[np.ndarray], units: dict[str, list[Value]]) -> dict[str, float]:
    """Single-pass sensitivity of each unit: sum over batches of sum((dL/dy * (y - x))**2)."""
    est = dict.fromkeys(units, 0.0)
    start = 0
    for b in batches:
        outs, probes = runner.run(b, set(), probe=True)
        n = outs[0].shape[0]
        loss = 0.0
        for o, r in zip(outs, ref):
            rr = torch.as_tensor(r[start:start + n])
            if o.is_floating_point():
                loss = loss + ((o - rr) ** 2).sum() / (rr ** 2).sum().clamp_min(1e-12)
        start += n
        handles = [h for _, _, h in probes.values()]
        if not isinstance(loss, torch.Tensor) or not handles:
            continue
        grads = torch.autograd.grad(loss, handles, allow_unused=True)
        gmap = {vid: gr for vid, gr in zip(probes, grads)}
        for name, vs in units.items():
            for v in vs:
                if id(v) in probes and gmap[id(v)] is not None:
                    x, y, _ = probes[id(v)]
                    # A first-order estimate means nothing far outside the range (a -3.4e38
                    # mask fill meets a ~0 softmax gradient): clip the error to the range width.
                    width = float(v.quant.scale.max()) * (v.quant.qrange()[1] - v.quant.qrange()[0])
                    d = torch.where(torch.isfinite(x), (y - x).clamp(-width, width), torch.zeros_like(y))
                    est[name] += float(((gmap[id(v)] * d) ** 2).sum())
    return est


def _alternative_qparams(graph: Graph, batches, units: dict[str, list[Value]], methods: Sequence[str],
                         config: QuantConfig) -> dict[str, dict[str, list[QuantParams]]]:
    """method -> unit -> parameters of each of its values, from that method's ranges (one range
    over the unit, as the quantize pass groups shared-parameter values)."""
    out = {}
    for m in methods:
        if m == config.calibration:
            continue
        r = collect_ranges(graph, batches, m, config.percentile)
        per_unit = {}
        for name, vs in units.items():
            if any(v.name not in r for v in vs):
                continue
            qp = activation_qparams(min(r[v.name][0] for v in vs), max(r[v.name][1] for v in vs))
            per_unit[name] = [qp] * len(vs)
        out[m] = per_unit
    return out


def select_float_nodes(graph: Graph, calib_batches: Sequence[Sequence[np.ndarray]],
                       score_fn: ScoreFn | None = None, min_score: float = 0.99,
                       max_float: int | None = None, config: QuantConfig | None = None,
                       max_evals: int = 64, try_ranges: Sequence[str] = ()
                       ) -> tuple[tuple[str, ...], list[dict]]:
    """Nodes to keep in float (``QuantConfig.skip``) so that full int8 scores at least `min_score`.

    Parameters
    ----------
    graph : the float graph (not modified)
    calib_batches : input tuples matching the graph inputs (a few batches: each measurement
        runs all of them)
    score_fn : ``score_fn(ref_outputs, got_outputs) -> float`` in [0, 1], higher is better; the
        lists hold one array per graph output, samples along axis 0. Default `mean_cosine`.
    min_score : stop keeping nodes in float once the measured score reaches it
    max_float : at most this many units kept in float (None: no limit)
    config : the int8 config to start from (`activations` must be "all"); its `skip` is kept
    max_evals : at most this many measurements in the walk
    try_ranges : range methods ("percentile", "mse") to try on an activation before keeping it
        float: the first that recovers 90 % of float's measured gain keeps it int8 with that
        range (costs one calibration per method and one measurement per method and candidate)

    Returns
    -------
    skip : node names to keep in float (each unit's producer and its shared-parameter followers),
        including `config.skip`
    records : one dict per node of the walk: ``node``, ``op``, ``estimate`` (single-pass cost),
        ``measured_gain`` (score change when it was un-quantized, None if not measured),
        ``score_after``, ``float`` (kept float?), ``range`` (the range method chosen instead, or
        None), ``reason``; plus a last record with ``node`` None holding ``score_int8``,
        ``score_final``, ``ranges`` (pass as ``QuantConfig.ranges``), ``seconds``, ``evals``.
    """
    t0 = time.perf_counter()
    score_fn = score_fn or mean_cosine
    config = config or QuantConfig()
    if config.activations != "all":
        raise ValueError("select_float_nodes needs full int8 (QuantConfig(activations='all'))")
    batches = [tuple(b) if isinstance(b, (tuple, list)) else (b,) for b in calib_batches]
    if not batches:
        raise ValueError("select_float_nodes needs at least one calibration batch")
    ref = _outputs(_Runner(graph), batches, set())
    q = graph.copy()
    QuantizePass(config, batches)(q)
    runner = _Runner(q, graph, dynamic=config.fallback == "dynamic")
    units = quant_units(q)
    units = {k: vs for k, vs in units.items() if k not in set(config.skip)}
    est = _estimate(runner, batches, ref, units)
    order = sorted(units, key=lambda k: -est[k])
    off: set[int] = set()
    score = base = score_fn(ref, _outputs(runner, batches, off))
    records: list[dict] = []
    kept: list[str] = []
    evals = 0
    unit_of = {id(v): k for k, vs in units.items() for v in vs}
    alt = _alternative_qparams(graph, batches, units, try_ranges, config)
    override: dict[int, QuantParams] = {}
    ranges: list[tuple[str, str]] = []
    best, best_q = 0.0, {}
    settled: set[str] = set()          # units given another range: int8, not walked again
    for name in order:
        if name in kept or name in settled:
            continue
        if score >= min_score or (max_float is not None and len(kept) >= max_float) or evals >= max_evals:
            break
        group = [name]
        trial = off | {id(v) for v in units[name]}
        s = score_fn(ref, _outputs(runner, batches, trial))
        evals += 1
        if s <= score:
            # A chain (linear -> relu, add -> layer_norm) shares one bad range: un-quantizing one
            # link alone gains nothing while the other still rounds. Try it with its neighbours.
            group += [k for k in _neighbours(units[name], unit_of) if k not in kept and k not in settled
                      and k != name]
            if len(group) > 1 and (max_float is None or len(kept) + len(group) <= max_float):
                trial = off | {id(v) for k in group for v in units[k]}
                s = score_fn(ref, _outputs(runner, batches, trial))
                evals += 1
            else:
                group = [name]
        gain = s - score
        keep = gain > 0
        method = None
        if keep and alt:
            # a cheaper fix than float: other ranges for these activations, kept if they recover
            # at least 90 % of what float does
            for m, qps in alt.items():
                if any(k not in qps for k in group):
                    continue
                trial_q = {id(v): qp for k in group for v, qp in zip(units[k], qps[k])}
                s_m = score_fn(ref, _outputs(runner, batches, off, override | trial_q))
                evals += 1
                if s_m - score >= 0.9 * gain and (method is None or s_m > best):
                    method, best, best_q = m, s_m, trial_q
            if method is not None:
                override |= best_q
                settled.update(group)
                ranges += [(v.producer.name, method) for k in group for v in units[k]]
                gain, score, keep = best - score, best, False
        if keep:
            off, score = trial, s
            kept += group
        for k in group if keep else [name]:
            records.append({"node": k, "op": q.node(k).op, "estimate": est[k], "measured_gain": gain,
                            "score_after": score, "float": keep, "range": method,
                            "reason": (f"{method} range recovers {gain:.4g} of the score (measured); stays int8"
                                       + ("" if len(group) == 1 else f" (with {', '.join(x for x in group if x != k)})")
                                       if method else "no measured gain from float; stays int8" if not keep else
                                       f"int8 output cost {gain:.4g} of the score (measured); kept float"
                                       + ("" if k == name and len(group) == 1 else
                                          f" together with {', '.join(x for x in group if x != k)}"))})
    measured = {r["node"] for r in records}
    records += [{"node": n, "op": q.node(n).op, "estimate": est[n], "measured_gain": None, "score_after": None,
                 "float": False, "reason": "not measured: the score was reached before it"} for n in order
                if n not in measured]
    skip = tuple(dict.fromkeys(list(config.skip) + [v.producer.name for k in kept for v in units[k]]))
    ranges_t = tuple(config.ranges) + tuple(ranges)
    final = score
    if kept or ranges:
        g2 = graph.copy()
        QuantizePass(replace(config, skip=skip, ranges=ranges_t), batches)(g2)
        final = score_fn(ref, _outputs(_Runner(g2), batches, set()))
    records.append({"node": None, "score_int8": base, "score_final": final, "float_units": len(kept),
                    "ranges": ranges_t, "evals": evals, "seconds": round(time.perf_counter() - t0, 3)})
    log.info("mixed precision: %d of %d units kept float; score %.4f -> %.4f (%d measurements, %.1f s)",
             len(kept), len(units), base, final, evals, time.perf_counter() - t0)
    return skip, records
