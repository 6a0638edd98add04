"""How much the model's outputs suffer when one layer alone is compressed, for every setting the
passes offer, and a per-layer recommendation under the gate.

Settings (each computed by the pass's own numerics, never a copy):

- ``int8`` and ``bits:5|4|3|2``: per-channel symmetric int8 (`quantize.quantize_weight`), then the
  non-zero values shared among 2^bits levels (`optimize.apply_setting`, k-means as `--cluster-bits`
  and `--optimize` do; nearest-level rounding, the build's GPTQ rounding does better);
- ``step:4|8|16|32``: every 4th... 32nd int8 value kept, a uniform grid that much coarser
  (`optimize.apply_setting` with ``step``, a rung of `--optimize`'s ladder too);
- ``sparsity:0.5|0.75|0.9``: magnitude pruning of the layer (`prune.magnitude_masks`), int8 after;
- ``rank:R``: the low-rank pass's factorization at R (SVD, or Tucker-2 for k×k convs; `spectrum`),
  at a quarter, a half and an eighth of full rank and at the effective rank, where it saves weights.

Each setting is measured alone on calibration samples by swapping the layer's weight in one IR
executor (`optimize._Scorer`'s approach) and judged by the gate's own checks (`fidelity.compare`
through `optimize.GateScore`): score = min over checks of (value − threshold)/(1 − threshold), ≥ 0
passes. Estimated bytes are what the container would store: the order-0 entropy of the int8 values
(`optimize.entropy_bytes`, what the rANS coder reaches), of each factor for a factorized layer.

The recommendation is `--optimize`'s own allocation (`search.allocation.Allocation`): a layer takes
the setting minimizing bytes + multiplier x solo score drop, and the smallest multiplier whose
*joint* result still passes the gate (tightened by a margin) wins, found by bisection.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..ir import TorchExecutor
from ..search.allocation import Allocation
from ..search.optimize import GateScore, apply_setting, entropy_bytes, executor_outputs
from ..passes.prune import magnitude_masks
from ..passes.quantize import quantize_weight
from ..passes.lowrank.rank import effective_rank
from .spectrum import Layer, factors, fraction_rank, saves

FAMILIES = ("bits", "grid", "sparsity", "rank")     # `Option.family`, in the order reports show them
BITS = (5, 4, 3, 2)
STEPS = (4, 8, 16, 32)
SPARSITIES = (0.5, 0.75, 0.9)
RANK_FRACTIONS = (0.5, 0.25, 0.125)


@dataclass
class Option:
    """One setting of one layer, measured alone."""

    family: str            # "bits", "grid", "sparsity", "rank"
    label: str             # "int8", "bits:4", "step:8", "sparsity:0.75", "rank:8" or "rank:8x4"
    weight: np.ndarray     # the dense weight the layer computes with (fake-quantized / pruned / low rank)
    bytes: float           # estimated stored bytes (int8, entropy-coded)
    params: int            # stored weights
    score: float = np.nan  # the gate score with this layer alone compressed
    checks: dict = field(default_factory=dict)


def _int8(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(int8 values, dequantized weight) of per-channel symmetric int8."""
    q, qp = quantize_weight(w, axis)
    s, _ = qp.broadcast(w.ndim)
    return q, (q.astype(np.float32) * s).astype(w.dtype)


def _stored_bytes(arrays: Sequence[np.ndarray], axis: int = 0) -> float:
    return float(sum(entropy_bytes(quantize_weight(a, axis if a.ndim > 1 else 0)[0]) for a in arrays))


def options(layer: Layer, w: np.ndarray) -> list[Option]:
    """Every setting the passes offer for `layer` (weights `w`), mildest first in each family."""
    q, deq = _int8(w, layer.axis)
    out = [Option("bits", "int8", deq, entropy_bytes(q), layer.params)]
    s, _ = quantize_weight(w, layer.axis)[1].broadcast(w.ndim)
    for b in BITS:
        qb = apply_setting(q, 0.0, b)
        out.append(Option("bits", f"bits:{b}", (qb.astype(np.float32) * s).astype(w.dtype),
                          entropy_bytes(qb), layer.params))
    for k in STEPS:
        qk = apply_setting(q, 0.0, 8, step=k)
        out.append(Option("grid", f"step:{k}", (qk.astype(np.float32) * s).astype(w.dtype),
                          entropy_bytes(qk), layer.params))
    for sp in SPARSITIES:
        mask = magnitude_masks({"w": w}, sp)["w"]
        qs, dq = _int8(np.where(mask, w, 0).astype(w.dtype), layer.axis)
        out.append(Option("sparsity", f"sparsity:{sp:g}", dq, entropy_bytes(qs), int(mask.sum())))
    if layer.kind is None:
        return out
    ranks = [fraction_rank(layer, f) for f in RANK_FRACTIONS]
    er = effective_rank(layer.spectrum.spectra[0])
    if layer.kind == "svd":
        ranks.append(max(1, int(np.ceil(er))))
    else:
        ranks.append((max(1, int(np.ceil(er))), max(1, int(np.ceil(effective_rank(layer.spectrum.spectra[1]))))))
    seen = set()
    for r in sorted(ranks, key=lambda r: -np.prod(r)):
        if r in seen or not saves(layer, r):
            continue
        seen.add(r)
        fs = factors(layer, w, r)
        # int8 factors, as the build stores them: the layer computes with the dequantized chain
        deq_f = [_int8(f, 0)[1] for f in fs]
        if layer.kind == "svd":
            dense = (deq_f[0].astype(np.float64) @ deq_f[1]).reshape(w.shape).astype(w.dtype)
        else:
            from ..passes.lowrank.factorize import _tucker_weight
            dense = _tucker_weight(*deq_f).reshape(w.shape).astype(w.dtype)
        label = f"rank:{r}" if layer.kind == "svd" else f"rank:{r[0]}x{r[1]}"
        out.append(Option("rank", label, dense, _stored_bytes(fs), int(sum(f.size for f in fs))))
    return out


class Scorer:
    """One float IR executor on the calibration samples; layer weights can be swapped in and out."""

    def __init__(self, graph, samples: Sequence[np.ndarray], gate: GateScore, specs, thresholds):
        self.ex = TorchExecutor(graph, fake_quant=False).eval()
        self.x = [torch.as_tensor(a) for a in samples]
        self.ref = executor_outputs(self.ex, self.x)
        self.gate, self.specs, self.thresholds = gate, specs, thresholds
        self.evals = 0

    def set(self, const: str, w: np.ndarray) -> None:
        with torch.no_grad():
            self.ex.const_tensor(const).copy_(torch.from_numpy(np.ascontiguousarray(w, np.float32)))

    def score(self) -> tuple[float, dict]:
        """The gate score and each check's value (metric -> value)."""
        from ..report.fidelity import compare

        self.evals += 1
        got = executor_outputs(self.ex, self.x)
        fid = compare(self.ref, got, self.specs, self.gate.t)
        return self.gate(self.ref, got), {f"{c.output}: {c.metric}": round(float(c.value), 5) for c in fid.checks}


def measure(layers: list[Layer], weights: dict[str, np.ndarray], scorer: Scorer,
            progress=None) -> dict[str, list[Option]]:
    """Every option of every layer, each measured alone (the others keep their float weights)."""
    res = {}
    for i, layer in enumerate(layers):
        w = weights[layer.const]
        opts = options(layer, w)
        for o in opts:
            scorer.set(layer.const, o.weight)
            o.score, o.checks = scorer.score()
        scorer.set(layer.const, w)
        res[layer.node] = opts
        if progress:
            progress(f"sensitivity of {layer.node}", (i + 1) / len(layers))
    return res


def recommend(layers: list[Layer], weights: dict[str, np.ndarray], measured: dict[str, list[Option]],
              scorer: Scorer, base: float) -> dict:
    """Per layer, the setting `--optimize`'s allocation picks (`search.allocation.Allocation`: fewest
    bytes + multiplier x solo cost, the smallest multiplier whose joint result passes).

    `base` is the float model's score under the gate the options were measured with (a setting's
    cost is how much it lowers that); `scorer.gate` judges the joint result (tightened by a margin).
    Every layer is at least int8 (the build's default); the joint score applies all picks at once.
    Returns the picks (layer -> Option label, bytes, solo score, why), the multiplier, the joint
    score, and the estimated bytes before (fp32, int8) and after."""
    t0 = time.perf_counter()
    int8 = {lay.node: measured[lay.node][0] for lay in layers}
    rest = {lay.node: measured[lay.node][1:] for lay in layers}
    # No change is free (as in `--optimize`'s solo phase): a setting measured at no cost (a
    # discrete check that did not move) still costs a tenth of the typical cost times the share
    # of bytes it removes, so that many such settings together cannot fail the joint gate at
    # every multiplier (measured on the digits CNN once uniform grids joined the options).
    drops = [base - o.score for opts in rest.values() for o in opts if np.isfinite(o.score) and base - o.score > 0]
    floor = 0.1 * float(np.median(drops)) if drops else 1e-6
    alloc = Allocation([[(max(base - o.score, floor * (1 - o.bytes / max(int8[lay.node].bytes, 1e-9))), o.bytes)
                         for o in rest[lay.node]] for lay in layers],
                       [int8[lay.node].bytes for lay in layers], base)

    def chosen(picks: list[int | None]) -> dict[str, Option]:
        return {lay.node: int8[lay.node] if j is None else rest[lay.node][j] for lay, j in zip(layers, picks)}

    def joint(picks: list[int | None]) -> float:
        for lay, o in zip(layers, chosen(picks).values()):
            scorer.set(lay.const, o.weight)
        s, _ = scorer.score()
        return s

    # the last multiplier keeps every layer int8; its joint score is measured, not assumed
    passing = alloc.search(joint, np.inf)
    k = min(passing)
    best = chosen(alloc.picks(alloc.lams[k]))
    best_s = passing[k] if np.isfinite(passing[k]) else joint(alloc.picks(np.inf))
    for lay in layers:
        scorer.set(lay.const, weights[lay.const])
    lam = alloc.lams[k]
    rows = []
    for lay in layers:
        o = best[lay.node]
        why = ("int8: no other setting saves enough bytes for what it costs the gate" if o.label == "int8"
               else f"fewest bytes + {lam:.3g} x solo score drop ({base - o.score:.3f})")
        rows.append({"layer": lay.node, "setting": o.label, "est_bytes": round(o.bytes),
                     "int8_bytes": round(int8[lay.node].bytes), "fp32_bytes": 4 * lay.params,
                     "solo_score": round(float(o.score), 4), "why": why})
    return {"layers": rows, "bytes_per_score": None if not np.isfinite(lam) else round(float(lam), 1),
            "joint_score": round(float(best_s), 4), "solo_base_score": round(float(base), 4),
            "fp32_bytes": sum(4 * lay.params for lay in layers),
            "int8_bytes": round(sum(r["int8_bytes"] for r in rows)),
            "est_bytes": round(sum(r["est_bytes"] for r in rows)),
            "seconds": round(time.perf_counter() - t0, 2)}


def option_rows(measured: dict[str, list[Option]]) -> dict[str, list[dict]]:
    """The report form of the measured options (no weights)."""
    return {name: [{"family": o.family, "setting": o.label, "est_bytes": round(o.bytes), "params": o.params,
                    "score": round(float(o.score), 4), "checks": o.checks} for o in opts]
            for name, opts in measured.items()}
