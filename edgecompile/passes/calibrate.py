"""Calibration: activation ranges from running the float graph on sample inputs.

`collect_ranges(graph, batches, method)` runs the graph node by node with torch (float, no fake
quantization) on each input tuple and returns, for every float activation (graph inputs and node
outputs), the range to quantize: the observed min/max ("minmax"), a two-sided percentile of the
observed values ("percentile"), or the clipping range minimizing the int8 round-trip mean
squared error over the observed values ("mse"). Non-finite values (masked attention scores set to
-inf) are left out of the statistics; quantization clamps them to the range's ends. A tensor
that held -inf (an additive mask) keeps its range at least `MASK_DEPTH` below its maximum.

`activation_qparams(lo, hi)` turns a range into per-tensor asymmetric int8 parameters whose range
always contains 0 (so that zero padding and ReLU zeros are exact).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..ir import Graph, QuantParams
from ..ir.torch_ops import TORCH_DTYPES, run_op, to_torch
from ..errors import InputError

__all__ = ["CalibrationError", "ValueStats", "collect_ranges", "activation_qparams", "mse_range", "channel_means"]

log = logging.getLogger(__name__)

SAMPLES_PER_VALUE = 1 << 16     # values kept per activation for percentile / MSE (a uniform subsample)
MSE_SAMPLES = 1 << 14           # values the MSE range search evaluates (64 candidates each)
QMIN, QMAX = -128, 127
MASK_DEPTH = 32.0               # how far below its maximum a tensor that held -inf keeps the mask


class CalibrationError(InputError, ValueError):
    """Calibration inputs that do not fit the graph, or an activation never observed finite."""


@dataclass
class ValueStats:
    """Running statistics of one activation: exact min/max and a bounded uniform subsample."""

    lo: float = np.inf
    hi: float = -np.inf
    samples: list | None = None
    seen: int = 0
    neg_inf: bool = False       # -inf seen (an additive attention mask)

    def update(self, x: np.ndarray, rng: np.random.Generator, keep_samples: bool) -> None:
        self.neg_inf = self.neg_inf or bool(np.isneginf(x).any())
        x = x[np.isfinite(x)].ravel()
        if x.size == 0:
            return
        self.lo, self.hi = min(self.lo, float(x.min())), max(self.hi, float(x.max()))
        if keep_samples:
            self.samples = self.samples or []
            self.samples.append(x if x.size <= SAMPLES_PER_VALUE else rng.choice(x, SAMPLES_PER_VALUE, replace=False))
        self.seen += x.size

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        x = np.concatenate(self.samples)
        return x if x.size <= SAMPLES_PER_VALUE else rng.choice(x, SAMPLES_PER_VALUE, replace=False)


def activation_qparams(lo: float, hi: float) -> QuantParams:
    """Per-tensor asymmetric int8 parameters for the range [lo, hi] widened to contain 0.

    ``scale = (hi - lo) / 255``; ``zero_point = -128 - round(lo / scale)`` in [-128, 127], so the
    real value 0 is exactly representable.
    """
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo < 1e-12:            # an all-zero activation: any scale represents it exactly
        hi = lo + 1e-8 * (QMAX - QMIN)
    scale = np.float32((hi - lo) / (QMAX - QMIN))
    zp = int(np.clip(QMIN - np.rint(lo / float(scale)), QMIN, QMAX))
    return QuantParams(np.array([scale]), np.array([zp]), None, "int8")


def _fq(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Asymmetric int8 quantize-dequantize of `x` (S,) for each candidate range (K,) -> (K, S)."""
    scale = ((hi - lo) / (QMAX - QMIN))[:, None]
    zp = np.clip(QMIN - np.rint(lo[:, None] / scale), QMIN, QMAX)
    q = np.clip(np.rint(x[None] / scale) + zp, QMIN, QMAX)
    return (q - zp) * scale


def mse_range(x: np.ndarray, lo: float, hi: float, steps: int = 64) -> tuple[float, float]:
    """The clipping range ``(a·lo', b·hi')`` minimizing the int8 round-trip MSE on samples `x`.

    lo' = min(lo, 0), hi' = max(hi, 0); a and b are searched independently on a grid over
    [1/steps, 1] (first the upper end with the lower fixed, then the lower end).
    """
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi - lo < 1e-12:
        return lo, hi
    frac = np.linspace(1.0 / steps, 1.0, steps)
    x = x.astype(np.float64)
    best_hi = hi
    if hi > 0:
        err = ((_fq(x, np.full(steps, lo), hi * frac) - x) ** 2).mean(1)
        best_hi = float(hi * frac[np.argmin(err)])
    best_lo = lo
    if lo < 0:
        err = ((_fq(x, lo * frac, np.full(steps, best_hi)) - x) ** 2).mean(1)
        best_lo = float(lo * frac[np.argmin(err)])
    return best_lo, best_hi


def _observe(graph: Graph, inputs: Sequence[np.ndarray], stats: dict[str, ValueStats],
             rng: np.random.Generator, keep_samples: bool | set[str]) -> None:
    env = _run_float(graph, inputs)
    todo = [v for v in graph.inputs if v.dtype.startswith("float")]
    todo += [n.output for n in graph.nodes if n.output.dtype.startswith("float")]
    for v in todo:
        keep = keep_samples if isinstance(keep_samples, bool) else v.name in keep_samples
        stats.setdefault(v.name, ValueStats()).update(env[id(v)].numpy(), rng, keep)


def _run_float(graph: Graph, inputs: Sequence[np.ndarray]) -> dict[int, torch.Tensor]:
    """Every value of `graph` on one input tuple (float, no fake quantization), by id."""
    if len(inputs) != len(graph.inputs):
        raise CalibrationError(f"a calibration sample has {len(inputs)} inputs; graph {graph.name!r} "
                               f"takes {len(graph.inputs)} ({', '.join(v.name for v in graph.inputs)})")
    env: dict[int, torch.Tensor] = {id(v): to_torch(v.real()) for v in graph.consts.values()}
    for v, x in zip(graph.inputs, inputs):
        x = np.asarray(x)
        if v.shape is not None and tuple(x.shape) != v.shape:
            raise CalibrationError(f"calibration input {v.name!r} has shape {list(x.shape)}; the graph "
                                   f"expects {list(v.shape)}")
        env[id(v)] = torch.as_tensor(x).to(TORCH_DTYPES[v.dtype])
    with torch.no_grad():
        for node in graph.nodes:
            args = [None if v is None else env[id(v)] for v in node.inputs]
            env[id(node.output)] = run_op(node.op, args, node.attrs)
    return env


def channel_means(graph: Graph, batches: Sequence[Sequence[np.ndarray]], axes: dict[str, int]
                  ) -> dict[str, np.ndarray]:
    """Mean of each named activation per channel (`axes[name]`), over all other axes and batches.

    Used by bias correction: E[x] of a layer's input, from the float graph.
    """
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    names = {v.name: v for v in graph.values()}
    for inputs in batches:
        env = _run_float(graph, inputs if isinstance(inputs, (tuple, list)) else (inputs,))
        for name, axis in axes.items():
            x = env[id(names[name])].double()
            axis = axis % x.dim()
            other = [d for d in range(x.dim()) if d != axis]
            sums[name] = sums.get(name, 0) + x.sum(other).numpy()
            counts[name] = counts.get(name, 0) + x.numel() // x.shape[axis]
    return {k: (sums[k] / counts[k]) for k in sums}


def collect_ranges(graph: Graph, batches: Sequence[Sequence[np.ndarray]], method: str = "minmax",
                   percentile: float = 99.99, seed: int = 0, overrides: dict[str, str] | None = None
                   ) -> dict[str, tuple[float, float]]:
    """Quantization range of every float activation, by value name.

    Parameters
    ----------
    graph : the float graph (integer constants are dequantized as the executor does)
    batches : input tuples, each matching the graph inputs' shapes and order
    method : "minmax", "percentile" or "mse"
    percentile : for "percentile": the upper percentile (the lower is ``100 - percentile``)
    seed : for the subsampling of values kept for percentile / MSE
    overrides : value name -> method, for the values that use another method than `method`
        (chosen per tensor by measurement: `mixed_precision.select_float_nodes(try_ranges=...)`)
    """
    overrides = dict(overrides or {})
    for m in {method, *overrides.values()}:
        if m not in ("minmax", "percentile", "mse"):
            raise CalibrationError(f"unknown calibration method {m!r}; use minmax, percentile or mse")
    if not batches:
        raise CalibrationError("no calibration inputs: give at least one input tuple")
    rng = np.random.default_rng(seed)
    stats: dict[str, ValueStats] = {}
    for inputs in batches:
        _observe(graph, inputs if isinstance(inputs, (tuple, list)) else (inputs,), stats, rng,
                 keep_samples=method != "minmax" or {k for k, m in overrides.items() if m != "minmax"})
    ranges = {}
    for name, s in stats.items():
        if s.seen == 0:
            raise CalibrationError(f"activation {name!r} had no finite value on the calibration inputs")
        how = overrides.get(name, method)
        if s.neg_inf:
            # -inf is a mask (where(mask, -inf, 0), scores + mask): its code must stay MASK_DEPTH
            # below the largest value, or int8 clamps it into the live range and the mask vanishes
            # (a mask tensor of {0, -inf} would get the range [0, 0]: -inf -> 0). Softmax then
            # weighs a masked position by exp(-MASK_DEPTH) ~ 1e-14.
            ranges[name] = (min(s.lo, s.hi - MASK_DEPTH), s.hi)
        elif how == "minmax":
            ranges[name] = (s.lo, s.hi)
        elif how == "percentile":
            x = s.sample(rng)
            lo, hi = np.percentile(x, [100.0 - percentile, percentile])
            ranges[name] = (float(lo), float(hi))
        else:
            x = s.sample(rng)
            x = x if x.size <= MSE_SAMPLES else rng.choice(x, MSE_SAMPLES, replace=False)
            ranges[name] = mse_range(x, s.lo, s.hi)
    log.debug("calibrated %d activations on %d samples (%s)", len(ranges), len(batches), method)
    return ranges
