"""The compression the compiler chooses: the int8 mode by measurement, then the per-layer search.

`candidates()` yields the configurations the build tries in the real runtime, most compressed
first; see its docstring for the order and why each one follows the last.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from ..ir.analysis import macs_per_sample, total_macs
from ..inputs.samples import Samples, batches
from ..ir import Graph, verify
from ..inputs.model import LoadedModel
from ..inputs.reference import reference_outputs
from ..targets import Target

if TYPE_CHECKING:
    from ..build import BuildConfig

log = logging.getLogger(__name__)

# The per-layer search's measurement budget, in multiply-accumulates: this many times a plain
# build's forward work (calibration + evaluation samples through the model), at least the minimum
# (small models: every cost is measured). Calibrated on MiniLM (--quick data, 2 cores): ~95 solo
# measurements (~100), the searched build ~3x a plain one (issue 11 asks for at most 5x).
SEARCH_WORK = 12.0
MIN_SEARCH_WORK = 2e11


def resolve_quant(spec: str, target: Target) -> str:
    """`auto`: full int8 where the target's runtime has int8 kernels, else int8 weights kept in
    storage and computed in fp32 (dequantized once at load: same size, no int8 speed penalty)."""
    if spec != "auto":
        return spec
    return "int8" if target.int8_kernels else "int8:weights_only"


def quantize(graph: Graph, cfg: BuildConfig, calib: Samples, batch: int, skip: tuple[str, ...] = (),
              ranges: tuple = (), real_data: bool = False) -> list[dict]:
    """Quantizes `graph` in place per `cfg.quant` (plus `skip`: nodes kept float, `ranges`: per-tensor
    range methods chosen by mixed precision). With real calibration data, biases are corrected for
    the mean output error of their quantized weights (measured on pretrained models: EfficientNet-
    Lite0 full int8 logit cosine 0.981 -> 0.995, weights-only 0.989 -> 0.998; MiniLM unchanged)."""
    from ..passes.quantize import QuantizePass, parse_quant_spec

    qcfg = parse_quant_spec(cfg.quant)
    if real_data and qcfg.mode == "int8":
        qcfg = replace(qcfg, bias_correction=True)
    if ranges:
        qcfg = replace(qcfg, ranges=tuple(qcfg.ranges) + tuple(ranges))
    if qcfg.activations == "dynamic" and cfg.backend == "tflite":
        qcfg = replace(qcfg, dynamic_per="row")      # TFLite's hybrid kernels scale each input row
    if skip:
        qcfg = replace(qcfg, skip=tuple(qcfg.skip) + tuple(skip))
    if qcfg.mode == "none":
        return []
    # Ranges settle within a few dozen samples; cap the calibration work at ~2e10 MACs so a
    # 20M-parameter encoder calibrates in seconds (16 samples) while small CNNs use 128.
    per_batch = max(total_macs(graph), 1)
    limit = int(min(max(1, 128 // batch), max(4, 2e10 // per_batch)))
    inputs = list(batches(calib, batch, limit=limit))
    res = QuantizePass(qcfg, inputs)(graph)
    records = [dict(r, **{"pass": "quantize"}) for r in res.records]
    if cfg.cluster_bits:
        from ..passes.cluster import ClusterConfig, WeightClusterPass
        records += [dict(r, **{"pass": "cluster"})
                    for r in WeightClusterPass(ClusterConfig(cfg.cluster_bits))(graph).records]
    return records


def _search_samples(calib: Samples, graph: Graph, specs) -> Samples:
    """The last calibration samples for measuring candidates (the gate's eval set stays untouched):
    as many as ~4e9 MACs a forward pass allows, 16 to 256; at least 64 when an output is judged by
    decisions (logits, probabilities: with 16 samples one changed decision is 6 % agreement)."""
    macs = macs_per_sample(graph)
    discrete = any(s.kind in ("logits", "probability") for s in specs)
    k = int(min(256, max(64 if discrete else 16, 4e9 // max(macs, 1))))
    return tuple(a[-k:] for a in calib)


def _searched(graph: Graph, label: str, records: list[dict], plans: list[dict], info: dict, goal: str):
    """The candidates of a per-layer search's plans, most compressed first."""
    from .optimize import apply_plan

    for i, plan in enumerate(plans):
        cand = graph.copy()
        apply_plan(cand, plan)
        verify(cand)
        summary = {k: v for k, v in plan.items() if k not in ("weights", "layers")}
        yield (f"{label} + per-layer search ({goal}, plan {i + 1} of {len(plans)})", cand,
               records + [dict(r, **{"pass": "optimize"}) for r in plan["layers"]],
               dict(info, plan=summary, more=True))


def _gram_samples(calib: Samples, search: Samples, cap: int = 128) -> Samples:
    """Calibration samples for the layer input statistics of error-compensated rounding: those not
    in the search set (so the search measures rounding on data it was not fitted to), at most
    `cap`; the search samples themselves when the calibration set has no others."""
    n, k = len(calib[0]), len(search[0])
    rest = tuple(a[:n - k][-cap:] for a in calib)
    return rest if n > k else search


def _weights_only(float_graph: Graph, cfg: BuildConfig, calib: Samples, batch: int, real_data: bool):
    """A copy of the float graph with int8 weights and float activations: the least lossy int8."""
    g = float_graph.copy()
    return g, quantize(g, replace(cfg, quant="int8:weights_only"), calib, batch, real_data=real_data)


def _fallback_int8(float_graph: Graph, cfg: BuildConfig, calib: Samples, batch: int, samples: Samples,
                   score, plain_gate, mcu: bool, progress, info: dict) -> tuple[Graph, list[dict], str]:
    """Full int8 failed on the search samples: the first of dynamic-range int8, mixed precision
    and int8 weights that passes (graph, pass records, label); `info` records what was tried.

    Dynamic range goes first where the runtime has hybrid kernels and the work is in matmuls (one
    measurement; it holds transformers as onnxruntime's quantize_dynamic does). Never for
    conv-heavy models (onnxruntime's ConvInteger runs ~11x slower than fp32, measured on
    EfficientNet-Lite0) nor on microcontrollers (TFLite Micro has no hybrid kernels)."""
    from ..ir.analysis import node_macs
    from ..passes.mixed_precision import select_float_nodes

    def dynamic():
        g = float_graph.copy()
        return g, quantize(g, replace(cfg, quant="int8:dynamic"), calib, batch, real_data=True), "int8:dynamic"

    def mixed():
        progress("mixed precision: measuring int8 sensitivity", 0.62)
        few = tuple(a[-max(batch, 64 // batch * batch):] for a in samples)  # each measurement runs them all
        skip, mp = select_float_nodes(float_graph, list(batches(few, batch)), score_fn=plain_gate, min_score=0.0)
        g = float_graph.copy()
        chosen = next((r.get("ranges") for r in mp if r.get("node") is None), None) or ()
        recs = quantize(g, cfg, calib, batch, skip=skip, ranges=tuple(chosen), real_data=True)
        recs += [dict(r, **{"pass": "mixed precision"}) for r in mp if r.get("node")]
        info["float_activations"] = list(skip)
        return g, recs, f"int8 ({len(skip)} activations float)"

    conv_macs = sum(node_macs(n) for n in float_graph.nodes if n.op == "conv")
    conv_heavy = conv_macs > 0.5 * max(total_macs(float_graph), 1)
    info["int8_fallbacks"] = tried = []
    for step in ((mixed,) if mcu or conv_heavy else (dynamic, mixed)):
        g, recs, label = step()
        verify(g)
        tried.append({"config": label, "score": round(score(g), 4)})
        if tried[-1]["score"] >= 0:
            return g, recs, label
    g, recs = _weights_only(float_graph, cfg, calib, batch, True)
    return g, recs, "int8:weights_only"


def candidates(graph: Graph, loaded: LoadedModel, cfg: BuildConfig, calib: Samples, batch: int, specs,
               data_note: str, labels, mcu: bool, progress, n_eval: int = 0):
    """The configurations to try, most compressed first: (label, graph, pass records, search info).

    With real calibration data, the int8 mode is chosen by measurement before anything is written:
    full int8 is scored with the gate's own checks on held-out calibration samples (IR executor,
    fake quantization); under ``--quant auto``, if it fails while the float compressed model
    holds, `_fallback_int8` picks dynamic range, mixed precision or int8 weights. The per-layer
    search (`optimize`) then runs on top. The build ships the first candidate that passes the gate
    in the real runtime; each later one is less lossy (milder search plans, no search, int8
    weights only), so a model that int8 weights can hold always gets a bundle. `search["more"]`
    says whether another candidate follows."""
    from ..ir import TorchExecutor
    from .optimize import GateScore, OptimizeConfig, executor_outputs, optimize_weights

    float_graph = graph.copy()
    real_data = "random inputs" not in data_note
    records = quantize(graph, cfg, calib, batch, real_data=real_data)
    verify(graph)
    label = cfg.quant
    opt = OptimizeConfig(cfg.optimize)
    info: dict = {"goal": cfg.optimize}
    metric, labelled = loaded.data.get("metric"), labels is not None
    gate = GateScore(specs, cfg.thresholds, opt.margin, labelled=labelled, metric=metric)
    samples = ref = None
    if real_data and cfg.quant.startswith("int8"):
        samples = _search_samples(calib, graph, specs)
        ref = reference_outputs(loaded, samples, batch)
        x = [torch.as_tensor(a) for a in samples]
        # The int8 mode is chosen against the gate's own thresholds (the real gate decides after);
        # the search below keeps a margin, since it spends what headroom there is.
        plain_gate = GateScore(specs, cfg.thresholds, 0.0, labelled=labelled, metric=metric)

        def score(g: Graph) -> float:
            return plain_gate(ref, executor_outputs(TorchExecutor(g, fake_quant=True).eval(), x))

        info["int8_score"] = s = round(score(graph), 4)
        if s < 0 and cfg.quant_auto and cfg.quant == "int8":
            # Only worth trying if the float model after pruning / factorization holds the gate:
            # otherwise no int8 mode can, and the real gate decides (or --finetune recovers).
            info["float_score"] = round(score(float_graph), 4)
            if info["float_score"] >= 0:
                graph, records, label = _fallback_int8(float_graph, cfg, calib, batch, samples, score, plain_gate,
                                                       mcu, progress, info)
                info["note"] = f"full int8 fails the gate on the calibration samples (score {s}); chose {label}"
    # int8 weights last, unless the float model after pruning / factorization already fails the gate
    # (then no int8 mode can pass; the real gate decides, --finetune may recover)
    weights_only_next = (cfg.quant_auto and label != "int8:weights_only" and cfg.quant.startswith("int8")
                         and info.get("float_score", 0.0) >= 0)
    wo_built = None
    if samples is not None and not cfg.cluster_bits and opt.ladder:
        # The solo phase may spend SEARCH_WORK times the forward work of a plain build (calibration
        # and verification passes: the model's MACs per sample times the calibration and evaluation
        # samples), at least MIN_SEARCH_WORK; the joint phase adds ~10 evaluations. In MACs, not
        # seconds, so that the result does not depend on the machine's load (`optimize`).
        opt = replace(opt, work=max(MIN_SEARCH_WORK, SEARCH_WORK * macs_per_sample(graph) * (len(calib[0]) + n_eval)))
        # For the smallest bundle the weights may be searched under float activations instead:
        # int8 activations spend headroom the weights could use. Where they spent more than half
        # of it (scores on the search samples), only the weights-only graph is searched (measured
        # at the goal thresholds: MiniLM 16.5 MB as searched dynamic int8, 12.1 MB searched
        # weights-only); where the int8 graph's search finds nothing, the weights-only one is
        # searched after it (MTCNN O-net: 387 KB as mixed-precision int8 -> 130 KB).
        first, second = (graph, label, records), None
        if opt.goal == "size" and label != "int8:weights_only" and weights_only_next:
            wo_built = wo, wo_records = _weights_only(float_graph, cfg, calib, batch, real_data)
            info["weights_only_score"] = w_s = round(score(wo), 4)
            cur = info["int8_fallbacks"][-1]["score"] if "int8_fallbacks" in info else info["int8_score"]
            second = (wo, "int8:weights_only", wo_records)
            if w_s > 2 * max(cur, 0.0):
                first, second = second, None
        info["searched"] = first[1]
        res = optimize_weights(first[0], samples, ref, gate, opt,
                               progress=lambda f: progress("search per-layer compression", 0.65 + 0.1 * f),
                               gram_samples=_gram_samples(calib, samples))
        plans = res.pop("plans")
        info.update(res)
        yield from _searched(*first, plans, info, cfg.optimize)
        if not plans and second is not None:
            res_wo = optimize_weights(second[0], samples, ref, gate, opt,
                                      progress=lambda f: progress("search per-layer compression", 0.75 + 0.05 * f),
                                      gram_samples=_gram_samples(calib, samples))
            info["weights_only_search"] = {k: v for k, v in res_wo.items() if k != "plans"}
            yield from _searched(*second, res_wo["plans"], info, cfg.optimize)
        why = ("no searched plan passed the gate in the real runtime" if plans else
               res.get("note", "no combination of per-layer settings passed the gate on the search samples"))
        yield label, graph, records, dict(info, note=f"shipped without the search: {why}", more=weights_only_next)
    else:
        why = ("--cluster-bits given" if cfg.cluster_bits else "not quantized" if not cfg.quant.startswith("int8")
               else f"--optimize {cfg.optimize}" if not opt.ladder else "no calibration data")
        yield label, graph, records, dict(info, note=f"no per-layer search: {why}", more=weights_only_next)
    if weights_only_next:
        # the search above left its weights-only graph unchanged (plans apply to copies)
        wo, wo_records = wo_built or _weights_only(float_graph, cfg, calib, batch, real_data)
        yield "int8:weights_only", wo, wo_records, {
            "note": "the int8 bundle failed the gate in the real runtime; int8 weights with float activations",
            "more": False}
