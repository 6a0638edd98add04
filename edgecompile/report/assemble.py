"""The build report as one dict (-> ``report.json``): per-layer rows, totals, memory, latency,
fidelity, the passes with their timings.

Figures are labelled by where they come from: "measured" (host latency, fidelity in the real
runtime, bytes on disk) or "estimate" (target latency from its roofline facts, MCU runtime size).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .. import __version__
from ..ir.analysis import activation_bytes, layer_figures, total_macs
from .render import render_html


def _layer_rows(original, graph, container_records, source_names=None) -> list[dict]:
    source_names = source_names or {}
    enc = {source_names.get(r.name, r.name): r for r in container_records}
    before = layer_figures(original)
    after = layer_figures(graph)
    # A weight read by several layers (an unrolled LSTM's steps) counts once, in the first layer
    # reading it; the others say whose it is.
    owner_before: dict[str, str] = {}
    owner_after: dict[str, str] = {}
    rows = []
    for name, b in before.items():
        a = after.get(name)
        shared = {owner_before[c] for c in b.consts if c in owner_before}
        params_b = b.params - sum(original.consts[c].data.size for c in b.consts if c in owner_before)
        owner_before.update({c: name for c in b.consts if c not in owner_before})
        own = [] if a is None else [c for c in a.consts if c not in owner_after]
        row = {"layer": name, "op": b.op, "weight_shape": list(b.weight_shape), "params_before": params_b,
               "params_after": 0 if a is None else a.params - sum(graph.consts[c].data.size for c in a.consts
                                                                  if c in owner_after),
               "macs_before": b.macs, "macs_after": a.macs if a else 0,
               "bytes_before": 4 * params_b, "bytes_after": 0, "method": "", "rank": None,
               "sparsity": None, "bits": 32, "codec": ""}
        if a is not None:
            shared |= {owner_after[c] for c in a.consts if c in owner_after}
            owner_after.update({c: name for c in own})
            row["bytes_after"] = int(sum(enc[c].encoded_size for c in own if c in enc))
            codecs = sorted({enc[c].codec for c in own if c in enc})
            row["codec"] = "+".join(codecs + [f"shared with {o}" for o in sorted(shared)])
            row["method"] = a.meta.get("method", "")
            row["rank"] = a.meta.get("rank")
            ws = [graph.consts[c] for c in a.consts if c in graph.consts]
            weights = [v for v in ws if v.data.ndim >= 2]
            if weights:
                nz = sum(int(np.count_nonzero(v.data)) for v in weights)
                total = sum(v.data.size for v in weights)
                row["sparsity"] = round(1 - nz / total, 4)
                # fewer levels where clustering or the per-layer search shared them
                row["bits"] = a.meta.get("clustered", 8) if all(v.quant is not None for v in weights) else 32
            if "pruned_channels" in a.meta:
                row["pruned_channels"] = a.meta["pruned_channels"]
        if shared:
            row["shared_with"] = sorted(shared)
        rows.append(row)
    return rows


def _target_estimate(graph, target) -> dict:
    """Roofline estimate pricing the arithmetic each layer really runs (`analysis.macs_by_arith`):
    weights-only int8 and float layers at fp32 peak; dynamic-range layers at int8 peak plus one
    fp32 pass over their inputs for the run-time quantization (counted as 1 MAC per input value)."""
    from ..ir.analysis import macs_by_arith

    by = macs_by_arith(graph)
    quantize_cost = sum(int(np.prod(n.inputs[0].shape)) for n in graph.nodes
                        if n.meta.get("arith") == "int8-dynamic" and n.inputs and n.inputs[0].shape)
    macs_int8 = by.get("int8", 0) + by.get("int8-dynamic", 0)
    macs_fp32 = by.get("fp32", 0) + quantize_cost
    seconds = target.estimate_latency_s(macs_fp32, macs_int8, graph.weight_bytes(), activation_bytes(graph))
    return {"target_ms_estimate": seconds * 1e3, "macs_int8": macs_int8, "macs_fp32": macs_fp32,
            "macs_by_arith": by,
            "basis": f"roofline from targets/{target.name}.toml: {target.peak_source}; "
                     f"efficiency {target.efficiency}; arithmetic per layer as the bundle runs it; "
                     "estimate, not measured"}


def _memory(graph, target, backend: str, model_bytes: bytes, container_bytes: int) -> dict:
    """Arena from the static memory plan (of the real .tflite tensors for TFLite, of the IR for ONNX),
    flash = model + weights + runtime (estimated for MCUs), RAM = arena + I/O."""
    from ..backends.memory_plan import deployment_figures, plan_graph, plan_tflite

    if backend == "tflite":
        from ..backends.tflite import tflite_op_table
        plan, kernels = plan_tflite(model_bytes), len(tflite_op_table(model_bytes))
    else:
        plan, kernels = plan_graph(graph), len({n.op for n in graph.nodes})
    fig = deployment_figures(model_bytes, plan, kernels, container_bytes)
    runtime = fig["runtime_bytes_estimate"] if target.kind == "mcu" else 0  # Linux: onnxruntime/LiteRT installed
    mem = {"model_file_bytes": len(model_bytes), "weights_bytes": container_bytes,
           "arena_bytes": plan.arena_bytes, "naive_activation_bytes": plan.naive_bytes, "io_bytes": plan.io_bytes,
           "runtime_flash_estimate": runtime, "flash_needed": len(model_bytes) + container_bytes + runtime,
           "ram_needed": plan.ram_bytes}
    mem["fits_flash"] = mem["flash_needed"] <= target.flash_bytes
    mem["fits_ram"] = mem["ram_needed"] <= target.ram_bytes
    notes = []
    if not mem["fits_flash"]:
        notes.append(f"does not fit {target.name}'s flash: needs {mem['flash_needed']:,} B of "
                     f"{target.flash_bytes:,} B")
    if not mem["fits_ram"]:
        notes.append(f"does not fit {target.name}'s RAM: needs {mem['ram_needed']:,} B of {target.ram_bytes:,} B")
    mem["notes"] = notes
    return mem


def make_report(*, model, target, backend, config, original, graph, container_records, emitted, stage,
                baseline_onnx_bytes, fidelity, latency, pass_records, finetune, timings, data_note,
                pass_timings=()) -> dict:
    """The report of one candidate bundle written in `stage` (the dict of ``report.json``).

    `config` is the build's configuration as a JSON-able dict, `pass_records` the passes'
    `LayerRecord`s, `pass_timings` the pipeline's `PassTiming`s, `timings` the build stages'
    seconds; the rest are the graphs before and after, what the backend emitted and the
    container held, and what was measured (fidelity, latency)."""
    stage = Path(stage)
    model_file = emitted.model_bytes   # exactly what was written to the bundle
    model_bytes = len(model_file)
    container_bytes = (stage / "weights.ecw").stat().st_size
    rows = _layer_rows(original, graph, container_records, emitted.source_names)
    totals = {
        "params_before": original.param_count(), "params_after": graph.param_count(),
        "macs_before": total_macs(original), "macs_after": total_macs(graph),
        "fp32_onnx_bytes": baseline_onnx_bytes, "model_file_bytes": model_bytes,
        "container_bytes": container_bytes, "bundle_bytes": model_bytes + container_bytes,
    }
    totals["compression_ratio"] = baseline_onnx_bytes / max(totals["bundle_bytes"], 1)
    # the rows of report.json; an array figure (none today) would bloat it, so none is kept
    clean = [{k: v for k, v in r.to_dict().items() if not isinstance(v, np.ndarray)} for r in pass_records]
    return {
        "edgecompile_version": __version__, "model": model, "backend": backend,
        "target": {k: getattr(target, k) for k in ("name", "description", "kind", "cpu", "cores", "clock_mhz",
                                                     "ram_kib", "flash_kib")},
        "config": dict(config), "data": data_note,
        "layers": rows, "totals": totals,
        "fidelity": fidelity.to_dict(),
        "latency": {**latency, **_target_estimate(graph, target)},
        "memory": _memory(graph, target, backend, model_file, container_bytes),
        "backend_ops": _backend_ops(backend, model_file, emitted),
        "container": [{"name": r.name, "source": (emitted.source_names or {}).get(r.name, r.name),
                       "codec": r.codec, "decoded_bytes": r.decoded_size,
                       "encoded_bytes": r.encoded_size} for r in container_records],
        "passes": clean, "finetune": finetune, "timings_s": timings,
        "pass_timings_s": [{"pass": p.name, "modified": p.modified, "seconds": p.seconds} for p in pass_timings],
    }


def _backend_ops(backend: str, model_file: bytes, emitted) -> list[dict]:
    if backend == "tflite":
        from ..backends.tflite import tflite_op_table
        return [{"op": o, "version": v, "count": c} for o, v, c in tflite_op_table(model_file)]
    return [{"op": o, "version": v} for o, v in emitted.ops]


def write_report(report: dict, out_dir: Path) -> None:
    out_dir = Path(out_dir)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, default=_json_default))
    (out_dir / "report.html").write_text(render_html(report))


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (tuple, set)):
        return list(o)
    return str(o)
