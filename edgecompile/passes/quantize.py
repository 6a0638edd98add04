"""Int8 quantization: per-channel symmetric weights, calibrated int8 activations, int32 biases.

``float graph -> graph whose layer weights are int8 constants and whose activations carry
QuantParams`` (the convention in `ir/graph.py`; the executor fake-quantizes, backends emit int8).

- Weights of linear, conv, conv_transpose, const matmul (b[K, N]) and embedding tables: symmetric
  per output channel, ``scale = max|w| / 127``, values in [-127, 127] (an embedding table's rows
  share the table's largest scale, one grid as onnxruntime and TFLite store it, where that costs its
  rows little: `_table_grid`); axis 0, axis 1 for a
  conv_transpose ([in, out/groups, *k]: with groups > 1 a scale serves channel j of every group),
  or the last axis for a matmul b. Every element dequantizes within scale / 2 of the float weight.
- Biases of linear/conv/conv_transpose whose input is quantized: int32 with ``scale = s_in * s_w``
  per output channel (exactly that float32 product); a weight scale is raised where the bias would
  not fit int32.
- Activations (float graph inputs and node outputs; integer ones such as token ids stay as they
  are): per-tensor asymmetric int8 from calibration ranges that always contain 0, plus TFLite's
  rules so that every backend agrees: fixed outputs for softmax (1/256, -128), sigmoid (1/256,
  -128), tanh (1/128, 0) and log_softmax (16/256, 127); reshape, transpose, max_pool, avg_pool,
  resize, slice, pad, expand, gather (not an embedding) and concat outputs share their inputs' parameters
  (one range over the group); a layer or sum whose only use is a relu / clip takes the clamp's
  output parameters (the backends fuse the clamp into the kernel). A range feeding only softmax
  is clipped to 32 below its maximum (exp(-32) is nothing next to the output step 1/256), so that
  additive masks (-1e4) and -inf do not wipe out the scores' resolution. An activation whose
  range still exceeds 1e6 after that (a mask tensor filled with finfo.min, added to the scores)
  stays float: no integer kernel can requantize a scale of 1e36.
- Float constants used by other ops (layer-norm and batch-norm parameters, additive masks...) stay
  float. Nodes in `QuantConfig.skip` keep float weights and a float output.
- Dynamic range (``activations="dynamic"``): int8 per-channel weights, float biases, no calibrated
  activations; each linear / conv / matmul-by-constant quantizes its input at run time (asymmetric
  uint8 over the whole tensor as onnxruntime's DynamicQuantizeLinear does, or per row as TFLite's
  hybrid kernels do: ``QuantConfig.dynamic_per``) and multiplies in integers.
- conv_transpose never runs dynamic-range (no backend has such a kernel): weights-only there.
- Every MAC node (linear, conv, conv_transpose, matmul) gets ``node.meta["arith"]``: "int8" (integer kernel with
  calibrated int8 activations), "int8-dynamic" or "fp32" (weights-only, kept float, or a matmul
  of float activations), so latency estimates count the arithmetic that really runs
  (`analysis.macs_by_arith`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..ir import Graph, Node, QuantParams, Value
from .base import Pass, PassError, PassResult
from .calibrate import CalibrationError, activation_qparams, channel_means, collect_ranges
from ..errors import InputError

__all__ = ["QuantConfig", "QuantSpecError", "parse_quant_spec", "quantize_weight", "quantize_bias",
           "QuantizePass", "FIXED_QPARAMS", "SHARED_QPARAMS", "DEFAULT_CALIBRATION", "MAC_OPS", "DYNAMIC_OPS", "bias_shift"]

log = logging.getLogger(__name__)

# Measured on the digits CNN / MLP of tests/passes/test_quantize.py (300 calibration images, 600
# held out): all three methods keep the float accuracy (98.5% / 98.0%, 100% top-1 agreement);
# logit RMS error minmax 0.0717 / 0.0604, percentile(99.99) 0.0707 / 0.0593, mse 0.0713 / 0.0589;
# max logit error minmax 0.25 / 0.21, percentile 0.41 / 0.37, mse 0.34 / 0.21. Min/max is the
# default: as accurate, the smallest worst case, deterministic and cheapest. At 8 bits MSE rarely
# clips (rounding error is small next to the cost of clipping a tail).
DEFAULT_CALIBRATION = "minmax"
FIXED_QPARAMS = {"softmax": (1 / 256, -128), "sigmoid": (1 / 256, -128), "tanh": (1 / 128, 0),
                 "log_softmax": (16 / 256, 127)}
SHARED_QPARAMS = {"reshape", "transpose", "max_pool", "avg_pool", "slice", "pad", "expand", "concat", "gather",
                  "resize"}
SOFTMAX_SPAN = 32.0
MAC_OPS = ("linear", "conv", "matmul", "conv_transpose")
DYNAMIC_OPS = ("linear", "conv", "matmul")    # MAC ops with dynamic-range kernels in the backends
SENTINEL_RANGE = 1e6    # no real activation reaches this; mask fills (-1e9, finfo.min) do
# Layers of one shared weight (an unrolled LSTM's steps) share quantization where their ranges'
# spans are within this factor: each keeps at least 7 of its 8 bits, and the steps' int32 biases
# and multipliers are stored once per group instead of once per step (`_tie_shared_layers`).
TIE_SPAN = 2.0
INT32_MAX = 2 ** 31 - 1


class QuantSpecError(InputError, ValueError):
    """A `--quant` spec or quantization config that cannot be understood."""


@dataclass(frozen=True)
class QuantConfig:
    """How to quantize.

    Attributes
    ----------
    mode : "int8" or "none"
    activations : "all" (full int8: activations calibrated), "weights_only" (int8 weights,
        float activations and biases; no calibration needed) or "dynamic" (int8 weights, layer
        inputs quantized at run time, integer matmuls; no calibration needed)
    calibration : "minmax", "percentile" or "mse" (see `calibrate.collect_ranges`)
    percentile : upper percentile for "percentile"
    skip : node names kept in float
    dynamic_per : for "dynamic": "tensor" (one scale per input tensor, onnxruntime) or "row" (one
        per row of a linear's input / per sample of a conv's, TFLite's hybrid kernels)
    fallback : for "all": what nodes in `skip` compute. "fp32": float weights and arithmetic;
        "dynamic": int8 weights and dynamic-range integer matmuls (float activations between
        them), which keeps most of full int8's speed where a sensitive activation stays float
    ranges : (node name, "minmax" | "percentile" | "mse") pairs: per-tensor range methods for
        those nodes' outputs, overriding `calibration` (chosen by measurement, see
        `mixed_precision.select_float_nodes`)
    bias_correction : shift each linear / conv bias by the mean output error of its quantized
        weight, ``-(W_q - W) @ E[x]`` with E[x] from the float graph on the calibration inputs
        (Nagel et al. 2019, "Data-Free Quantization", sec. 4.2, with measured means); needs
        calibration inputs. Layers without a bias are left as they are.
    """

    mode: str = "int8"
    activations: str = "all"
    calibration: str = DEFAULT_CALIBRATION
    percentile: float = 99.99
    skip: tuple[str, ...] = ()
    dynamic_per: str = "tensor"
    bias_correction: bool = False
    fallback: str = "fp32"
    ranges: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.mode not in ("int8", "none"):
            raise QuantSpecError(f"unknown quantization mode {self.mode!r}; use 'int8' or 'none'")
        if self.activations not in ("all", "weights_only", "dynamic"):
            raise QuantSpecError(f"unknown activation setting {self.activations!r}; "
                                 f"use 'all', 'weights_only' or 'dynamic'")
        if self.fallback not in ("fp32", "dynamic"):
            raise QuantSpecError(f"unknown fallback {self.fallback!r}; use 'fp32' or 'dynamic'")
        if self.dynamic_per not in ("tensor", "row"):
            raise QuantSpecError(f"unknown dynamic_per {self.dynamic_per!r}; use 'tensor' or 'row'")
        if self.calibration not in ("minmax", "percentile", "mse"):
            raise QuantSpecError(f"unknown calibration {self.calibration!r}; use minmax, percentile or mse")
        if not 50.0 < self.percentile <= 100.0:
            raise QuantSpecError(f"percentile {self.percentile} is outside (50, 100]")
        object.__setattr__(self, "skip", tuple(self.skip))
        object.__setattr__(self, "ranges", tuple((str(n), str(m)) for n, m in self.ranges))
        bad = [m for _, m in self.ranges if m not in ("minmax", "percentile", "mse")]
        if bad:
            raise QuantSpecError(f"unknown range method {bad[0]!r}; use minmax, percentile or mse")


def parse_quant_spec(spec: str) -> QuantConfig:
    """Parses the CLI form: ``none`` | ``int8[:OPTION...]``.

    Options: ``weights_only``, ``dynamic``, ``minmax``, ``mse``, ``percentile`` or ``percentile=P``;
    e.g. ``int8``, ``int8:weights_only``, ``int8:dynamic``, ``int8:percentile=99.9``.
    """
    parts = [p.strip() for p in spec.strip().lower().split(":")]
    usage = "expected 'none' or 'int8[:weights_only|dynamic|minmax|mse|percentile[=P]]'"
    if parts == ["none"]:
        return QuantConfig(mode="none")
    if parts[0] != "int8":
        raise QuantSpecError(f"bad --quant spec {spec!r}: {usage}")
    kw: dict = {}
    for opt in parts[1:]:
        name, _, value = opt.partition("=")
        if name in ("weights_only", "dynamic") and not value:
            kw["activations"] = name
        elif name in ("minmax", "mse") and not value:
            kw["calibration"] = name
        elif name == "percentile":
            kw["calibration"] = "percentile"
            if value:
                try:
                    kw["percentile"] = float(value)
                except ValueError:
                    raise QuantSpecError(f"bad --quant spec {spec!r}: {value!r} is not a number") from None
        else:
            raise QuantSpecError(f"bad --quant spec {spec!r}: unknown option {opt!r}; {usage}")
    try:
        return QuantConfig(**kw)
    except QuantSpecError as e:
        raise QuantSpecError(f"bad --quant spec {spec!r}: {e}") from None


# ------------------------------------------------------------------------------- numerics

def quantize_weight(w: np.ndarray, axis: int, min_scale: np.ndarray | None = None,
                    zero_scale: float | None = None) -> tuple[np.ndarray, QuantParams]:
    """Symmetric per-channel int8: ``scale_c = max|w_c| / 127``, ``q = round(w / scale)`` in [-127, 127].

    An all-zero channel's values are 0 whatever its scale; it gets `zero_scale` (the layer's
    ``s_out / s_in``: a requantization multiplier of 1), else the median scale of the other
    channels, else 1. A scale far from that makes the multiplier ``s_in * s_w / s_out`` one
    XNNPACK refuses ("failed to create XNNPACK runtime", met on timm's RepViT and MobileViT, whose
    zero-initialized last norms fold into all-zero convolutions).
    `min_scale` raises scales channel by channel (used to keep an int32 bias in range).
    """
    axis = axis % w.ndim
    other = tuple(d for d in range(w.ndim) if d != axis)
    amax = np.abs(w).max(axis=other).astype(np.float32) if other else np.abs(w).astype(np.float32)
    fill = np.float32(zero_scale if zero_scale else np.median(amax[amax > 0]) / 127 if np.any(amax > 0) else 1)
    scale = np.where(amax > 0, amax / np.float32(127), fill).astype(np.float32)
    if min_scale is not None:
        scale = np.maximum(scale, min_scale.astype(np.float32))
    qp = QuantParams(scale, np.zeros(scale.size, np.int32), axis, "int8")
    s, _ = qp.broadcast(w.ndim)
    q = np.clip(np.rint(w / s), -127, 127).astype(np.int8)
    return q, qp


def quantize_bias(b: np.ndarray, s_in: float, s_w: np.ndarray) -> tuple[np.ndarray, QuantParams]:
    """int32 bias with per-channel ``scale = s_in * s_w`` (float32 product), zero point 0."""
    scale = (np.float32(s_in) * s_w.astype(np.float32)).astype(np.float32)
    q = np.rint(b.astype(np.float64) / scale)
    if np.any(np.abs(q) > INT32_MAX):
        raise ValueError(f"bias does not fit int32 at scale {float(scale.min()):.3g}; raise the weight scale")
    return q.astype(np.int32), QuantParams(scale, np.zeros(scale.size, np.int32), 0, "int32")


def bias_shift(dw: np.ndarray, mean_x: np.ndarray, groups: int = 1) -> np.ndarray:
    """Mean output error of a weight error `dw` on inputs of mean `mean_x`: what bias correction
    subtracts from the bias.

    `dw` is [out, in] (linear) or [out, in / groups, *kernel] (conv, where zero padding at the
    borders is ignored: the interior sees every tap); `mean_x` is E[x] per input channel.
    """
    dw = dw.astype(np.float64).reshape(dw.shape[0], dw.shape[1], -1).sum(2)     # [out, in_g]
    c_out, in_g = dw.shape
    m = np.asarray(mean_x, np.float64).reshape(groups, in_g)                   # [groups, in_g]
    g_of_out = np.arange(c_out) // (c_out // groups)
    return (dw * m[g_of_out]).sum(1).astype(np.float32)


# -------------------------------------------------------------------------- graph helpers

def _float_const(v: Value | None) -> bool:
    return v is not None and v.is_const and v.quant is None and v.data.dtype.kind == "f"


def _weight_use(node: Node) -> tuple[int, int] | None:
    """(input index, channel axis) of `node`'s layer weight, if it is a float constant."""
    if node.op in MAC_OPS:
        i = 1
    elif node.op == "gather" and node.attrs.get("axis") == 0:
        i = 0
    else:
        return None
    w = node.input(i)
    if not _float_const(w) or w.data.ndim < 2 or (node.op == "gather" and w.data.ndim != 2):
        return None
    return i, (w.data.ndim - 1 if node.op == "matmul" else 1 if node.op == "conv_transpose" else 0)


def _is_embedding(node: Node) -> bool:
    return node.op == "gather" and _weight_use(node) is not None


class _Groups:
    """Union-find over activation values that must share quantization parameters."""

    def __init__(self):
        self.parent: dict[int, int] = {}
        self.fixed: dict[int, tuple[float, int]] = {}

    def find(self, a: int) -> int:
        self.parent.setdefault(a, a)
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int, allow_fixed: bool = True) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        fa, fb = self.fixed.get(ra), self.fixed.get(rb)
        if (fa and fb and fa != fb) or (not allow_fixed and (fa or fb)):
            return          # the backend requantizes between the two
        self.parent[rb] = ra
        if fb:
            self.fixed[ra] = fb


def _assign_activations(graph: Graph, ranges: dict[str, tuple[float, float]], skip: set[str]) -> int:
    """Sets `quant` on every quantizable float activation. Returns how many."""
    vals = [v for v in graph.inputs if v.dtype.startswith("float")]
    vals += [n.output for n in graph.nodes if n.name not in skip and n.output.dtype.startswith("float")]
    quantizable = {id(v): v for v in vals}
    groups = _Groups()
    for v in vals:
        groups.find(id(v))
        if v.producer is not None and v.producer.op in FIXED_QPARAMS:
            groups.fixed[id(v)] = FIXED_QPARAMS[v.producer.op]
    for node in graph.nodes:
        if node.op not in SHARED_QPARAMS or id(node.output) not in quantizable or _is_embedding(node):
            continue
        srcs = node.inputs if node.op == "concat" else node.inputs[:1]
        for s in srcs:
            if s is not None and id(s) in quantizable:
                groups.union(id(node.output), id(s), allow_fixed=node.op != "concat")
    _tie_shared_layers(graph, quantizable, groups, skip, ranges)
    narrowed = _fuse_clamps(graph, quantizable, groups)
    kept_float = 0
    members: dict[int, list[Value]] = {}
    for v in vals:
        members.setdefault(groups.find(id(v)), []).append(v)
    for root, vs in members.items():
        if root in groups.fixed:
            scale, zp = groups.fixed[root]
            qp = QuantParams(np.array([scale]), np.array([zp]), None, "int8")
        else:
            missing = [v.name for v in vs if v.name not in ranges]
            if missing:
                raise PassError(f"no calibration range for activation {missing[0]!r}; calibrate the same graph")
            own = [v for v in vs if id(v) not in narrowed] or vs
            lo = min(ranges[v.name][0] for v in own)
            hi = max(ranges[v.name][1] for v in own)
            if _feeds_only_softmax(vs, groups, root):
                lo = max(lo, hi - SOFTMAX_SPAN)
            if max(-lo, hi) > SENTINEL_RANGE:
                # an additive mask filled with finfo.min: int8 would need a scale of ~1e36,
                # which onnxruntime's integer Add requantizes into garbage (MiniLM cosine 0.14)
                log.info("quantize: %s stays float: its range [%.3g, %.3g] is a sentinel fill", vs[0].name, lo, hi)
                kept_float += len(vs)
                continue
            qp = activation_qparams(lo, hi)
        for v in vs:
            v.quant = qp
    return len(vals) - kept_float


def _tie_shared_layers(graph: Graph, quantizable: dict[int, Value], groups: _Groups, skip: set[str],
                       ranges: dict[str, tuple[float, float]]) -> None:
    """Layers reading one shared weight share their input and their output quantization, among
    those whose ranges are within `TIE_SPAN` of each other.

    An unrolled LSTM / GRU reads its recurrent weights once per time step; with each step's own
    activation ranges, every step needed its own int32 bias (scale s_in * s_w) and requantization
    multipliers (s_in * s_w / s_out), which the backends stored per step (a 20-step LSTM's C model:
    ~4 KB of them a step). With equal ranges those are equal and stored once. Ranges further apart
    than `TIE_SPAN` stay apart (a merged range would cost the narrower more than a bit).
    """
    def span(v: Value) -> float:
        lo, hi = ranges[v.name]
        return max(hi, 0.0) - min(lo, 0.0)

    for w in graph.consts.values():
        layers = [n for n, i in w.uses if n.name not in skip and not _is_embedding(n)
                  and (_weight_use(n) or (None,))[0] == i]
        if len(layers) < 2:
            continue
        for pick in (lambda n: n.inputs[0], lambda n: n.output):
            vs = [v for v in map(pick, layers) if v is not None and id(v) in quantizable and v.name in ranges]
            lead = None
            for v in sorted(vs, key=span, reverse=True):
                if lead is None or span(v) * TIE_SPAN < span(lead):
                    lead = v
                else:
                    groups.union(id(lead), id(v))


def _fuse_clamps(graph: Graph, quantizable: dict[int, Value], groups: _Groups) -> set[int]:
    """Gives a layer or sum feeding only a relu / clip the clamp's output parameters.

    The backends run the clamp fused into the producer's integer kernel (TFLite's fused
    activation, onnxruntime's QDQ fusion), whose output range is the clamp's: quantizing the
    pre-activation over its own wider range first (a conv before ReLU6 spans +-180 where ReLU6
    keeps [0, 6]) threw away most of the resolution (EfficientNet-Lite0: logit cosine 0.75).
    Returns the ids of the narrowed pre-activations (their ranges do not widen the group).
    """
    outputs = {id(v) for v in graph.outputs}
    narrowed = set()
    for node in graph.nodes:
        if node.op not in ("relu", "clip") or id(node.output) not in quantizable:
            continue
        pre = node.inputs[0]
        if (pre is None or id(pre) not in quantizable or pre.producer is None or len(pre.uses) != 1
                or id(pre) in outputs or pre.producer.op in SHARED_QPARAMS or pre.producer.op in FIXED_QPARAMS):
            continue
        groups.union(id(node.output), id(pre), allow_fixed=False)
        narrowed.add(id(pre))
    return narrowed


def _feeds_only_softmax(vs: list[Value], groups: _Groups, root: int) -> bool:
    """Every use of the group is a softmax, or a shared-qparams op staying inside the group."""
    uses = [(n, v) for v in vs for n, _ in v.uses]
    if not uses:
        return False
    return all(n.op in ("softmax", "log_softmax")
               or (n.op in SHARED_QPARAMS and groups.find(id(n.output)) == root) for n, _ in uses) \
        and any(n.op in ("softmax", "log_softmax") for n, _ in uses)


# ---------------------------------------------------------------------------------- pass

def _mark_arith(graph: Graph, activations: str, fallback: str = "fp32") -> dict[str, str]:
    """Sets ``node.meta["arith"]`` on every MAC node; returns {node name: arith}.

    With ``fallback="dynamic"`` a full-int8 graph's int8-weight layers whose input or output is
    float (kept float by `skip`, or fed by such a node) run dynamic-range int8 instead of fp32.
    """
    out = {}
    for node in graph.nodes:
        if node.op not in MAC_OPS:
            continue
        x, w = node.input(0), node.input(1)
        int8_w = w is not None and w.is_const and w.quant is not None and w.data.dtype == np.int8
        dyn = node.op in DYNAMIC_OPS
        if activations == "dynamic" and dyn and int8_w and not (x is not None and x.is_const):
            arith = "int8-dynamic"
        elif activations == "all" and x is not None and x.quant is not None and node.output.quant is not None \
                and (int8_w or (w is not None and not w.is_const and w.quant is not None)):
            arith = "int8"
        elif activations == "all" and fallback == "dynamic" and dyn and int8_w and x is not None and not x.is_const:
            arith = "int8-dynamic"
        else:
            arith = "fp32"
        node.meta["arith"] = out[node.name] = arith
    return out


# An embedding table whose rows lose at most this RMS share on average on one grid takes one grid.
TABLE_GRID_MAX_ERROR = 0.05


def _table_grid(table: np.ndarray) -> np.ndarray | None:
    """The per-row minimum scales that put an embedding table on one grid (the table's largest
    row scale, as onnxruntime and TFLite store tables), or None to keep one scale per row.

    A row is a vector in one space, not a channel with its own range: on one grid the values of
    small rows take few levels and the entropy coder few bits. Measured on MiniLM's 11.7M-entry
    word embedding: 4.8 bits a weight against 7.4 per row, the int8-weights bundle 20.87 -> 17.01
    MB (onnxruntime dynamic per-channel + zstd -19: 17.5 MB); the row error goes from 0.7 % to
    4.4 % RMS, the sentence embedding's cosine from 0.9996 to 0.9994 (64 held-out sentences). A
    table whose row norms spread wider (small rows would lose more than `TABLE_GRID_MAX_ERROR` on
    average) keeps its per-row scales: `--optimize size` can still choose one grid by measurement.
    Only where the looked-up rows stay float (int8 weights only, dynamic range): under full int8 they
    are requantized to the output's grid, and a coarse table grid makes rounding ties between the
    two grids common, which the runtimes break differently (TFLite half away from zero, the executor
    half to even): measured on the tiny transformer, 4 output steps apart instead of at most 2.
    """
    step = np.float32(np.abs(table).max() / 127)
    if step == 0:
        return None
    norms = np.linalg.norm(table, axis=1)
    live = norms > 0
    err = np.linalg.norm(np.clip(np.rint(table[live] / step), -127, 127) * step - table[live], axis=1) / norms[live]
    return np.full(table.shape[0], step, np.float32) if err.mean() <= TABLE_GRID_MAX_ERROR else None


class QuantizePass(Pass):
    """Float graph -> int8 weights (per channel), int32 biases, calibrated int8 activations.

    Invariant: every quantized weight dequantizes within scale/2 of the float weight; bias scales
    are exactly ``s_in * s_w``; the graph's structure and shapes are unchanged.

    Parameters
    ----------
    config : QuantConfig
    calibration : list of input tuples (numpy), each matching the graph inputs; needed when
        ``config.activations == "all"``.
    """

    name = "quantize"

    def __init__(self, config: QuantConfig, calibration: Sequence[Sequence[np.ndarray]] | None = None):
        self.config = config
        self.calibration = calibration

    def requires(self, graph: Graph) -> None:
        cfg = self.config
        if cfg.mode == "none":
            return
        names = {n.name for n in graph.nodes}
        unknown = [s for s in cfg.skip if s not in names] + [n for n, _ in cfg.ranges if n not in names]
        if unknown:
            raise PassError(f"quantize: skip / ranges list names unknown node {unknown[0]!r}; "
                            f"use node names from graph.dump()")
        for v in graph.consts.values():
            if v.quant is not None:
                raise PassError(f"quantize: graph {graph.name!r} is already quantized (constant {v.name} "
                                f"carries {v.quant.dtype} parameters); quantize once, as the last pass")
        if cfg.activations == "all" and not self.calibration:
            raise PassError("quantize: full int8 needs calibration inputs (--calib FILE); "
                            "or use --quant int8:weights_only")

    def call(self, graph: Graph) -> PassResult:
        cfg = self.config
        if cfg.mode == "none":
            return PassResult(graph, False)
        skip = set(cfg.skip)
        n_act = 0
        if cfg.activations == "all":
            try:
                by_node = dict(cfg.ranges)
                overrides = {n.output.name: by_node[n.name] for n in graph.nodes if n.name in by_node}
                ranges = collect_ranges(graph, self.calibration, cfg.calibration, cfg.percentile,
                                        overrides=overrides)
            except CalibrationError as e:
                raise PassError(f"quantize: {e}") from e
            n_act = _assign_activations(graph, ranges, skip)
        means = self._input_means(graph, skip) if cfg.bias_correction else {}
        # skipped nodes keep float weights, unless they fall back to dynamic-range int8
        weight_skip = set() if cfg.activations == "all" and cfg.fallback == "dynamic" else skip
        records = self._quantize_weights(graph, weight_skip, means)
        arith = _mark_arith(graph, cfg.activations, cfg.fallback)
        for r in records:
            r["arith"] = arith.get(r["node"], "fp32")
        graph.meta["quant"] = {"scheme": cfg.mode, "activations": cfg.activations,
                               "calibration": cfg.calibration if cfg.activations == "all" else None,
                               "quantized_activations": n_act,
                               "dynamic_per": cfg.dynamic_per if "int8-dynamic" in arith.values() else None}
        return PassResult(graph, bool(records) or n_act > 0, records)

    def _input_means(self, graph: Graph, skip: set[str]) -> dict[str, np.ndarray]:
        """E[x] per input channel of every linear / conv with a bias, by node name."""
        if not self.calibration:
            raise PassError("quantize: bias correction needs calibration inputs (--calib FILE)")
        axes, owner = {}, {}
        for node in graph.nodes:
            if node.op in ("linear", "conv") and node.name not in skip and _float_const(node.input(2)) \
                    and _weight_use(node) is not None and not node.input(0).is_const:
                axes[node.input(0).name] = 1 if node.op == "conv" else -1
                owner[node.name] = node.input(0).name
        try:
            means = channel_means(graph, self.calibration, axes)
        except CalibrationError as e:
            raise PassError(f"quantize: {e}") from e
        return {n: means[x] for n, x in owner.items()}

    def _quantize_weights(self, graph: Graph, skip: set[str], means: dict[str, np.ndarray] | None = None
                          ) -> list[dict]:
        records = []
        done: set[str] = set()
        for node in graph.nodes:
            use = _weight_use(node)
            if use is None or node.name in skip:
                continue
            i, axis = use
            w = node.inputs[i]
            if w.name in done:
                continue
            users = [(n, j) for n, j in w.uses]
            if any(n.name in skip or _weight_use(n) != (j, axis) for n, j in users):
                log.info("quantize: %s stays float: it is shared with a non-layer or skipped use", w.name)
                continue
            done.add(w.name)
            records.append(self._quantize_layer(graph, node, i, axis, single=len(users) == 1,
                                                mean_x=(means or {}).get(node.name)))
        return records

    @staticmethod
    def _quantize_layer(graph: Graph, node: Node, i: int, axis: int, single: bool,
                        mean_x: np.ndarray | None = None) -> dict:
        w = node.inputs[i]
        b = node.input(2) if node.op in ("linear", "conv", "conv_transpose") else None
        # conv_transpose with groups > 1: weight channel j (axis 1) serves output j of every group
        reps = node.attrs["groups"] if node.op == "conv_transpose" else 1
        x = node.inputs[0]
        s_in = x.quant if x is not None and x.quant is not None and not x.quant.per_channel else None
        quant_bias = single and s_in is not None and _float_const(b) and len(b.uses) == 1
        before = w.nbytes + (b.nbytes if b is not None else 0)
        min_scale = None
        if quant_bias:      # keep |b / (s_in * s_w)| within int32
            min_scale = np.abs(b.data).astype(np.float64) / (float(s_in.scale[0]) * INT32_MAX) * 1.0001
            min_scale = min_scale.reshape(reps, -1).max(0)
        s_out = node.output.quant
        zero_scale = (float(s_out.scale[0]) / float(s_in.scale[0])
                      if s_in is not None and s_out is not None and not s_out.per_channel else None)
        if node.op == "gather" and node.output.quant is None:   # rows stay float
            min_scale = _table_grid(w.data)
        q, qp = quantize_weight(w.data, axis, min_scale, zero_scale)
        shift = None
        if mean_x is not None and single and _float_const(b) and len(b.uses) == 1:
            shift = bias_shift(qp.dequantize(q) - w.data, mean_x, node.attrs.get("groups", 1))
            b.data = (b.data - shift).astype(b.data.dtype)
        w.data, w.quant, w.dtype = q, qp, "float32"
        rec = {"node": node.name, "op": node.op, "kind": "quantize", "bits": 8, "weight": w.name,
               "axis": axis, "scale_min": float(qp.scale.min()), "scale_max": float(qp.scale.max()),
               "scale_median": float(np.median(qp.scale)), "bias_bits": None,
               "bias_shift_max": None if shift is None else float(np.abs(shift).max())}
        if quant_bias:
            bq, bqp = quantize_bias(b.data, float(s_in.scale[0]), np.tile(qp.scale, reps))
            b.data, b.quant, b.dtype = bq, bqp, "float32"
            rec["bias_bits"] = 32
        rec["bytes_before"] = before
        rec["bytes_after"] = w.nbytes + 4 * qp.scale.size + (b.nbytes if b is not None else 0)
        return rec
