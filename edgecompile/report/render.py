"""The build report rendered: in the terminal (rich) and as ``report.html`` with its plots."""

from __future__ import annotations

import base64
import html
import io

import numpy as np

# -- terminal ----------------------------------------------------------------------------------

def _vs(lat: dict) -> str:
    s = lat.get("speedup") or 0
    return f"{s:.2f}× faster than" if s >= 1 else f"{1 / s:.2f}× slower than" if s > 0 else "vs"


def _output_figures(o: dict) -> str:
    """The figures that mean something for this output, in one line."""
    parts = []
    if o.get("top1_agreement") is not None:
        parts.append(f"top-1 agreement {o['top1_agreement']:.2%}")
        if o.get("top1_agreement_decided") is not None and o.get("decided_fraction", 1.0) < 1.0:
            parts.append(f"{o['top1_agreement_decided']:.2%} on the {o['decided_fraction']:.0%} decided samples")
    if o.get("accuracy_reference") is not None:
        parts.append(f"accuracy {o['accuracy_reference']:.2%} → {o['accuracy_bundle']:.2%}")
    if o.get("decision_agreement") is not None:
        parts.append(f"decision agreement {o['decision_agreement']:.2%} (positive "
                     f"{o['positive_rate_reference']:.1%} → {o['positive_rate_bundle']:.1%})")
    if o.get("mean_cosine") is not None:
        parts.append(f"cosine mean {o['mean_cosine']:.4f} min {o['min_cosine']:.4f}")
    if o.get("correlation") is not None:
        parts.append(f"correlation {o['correlation']:.4f}")
    if o.get("rel_rmse") is not None:
        parts.append(f"RMSE/std {o['rel_rmse']:.3g}")
    parts.append(f"max |err| {o['max_abs_error']:.3g}")
    return ", ".join(parts)


def _headline(fid: dict) -> tuple[str, str]:
    """(value, label) of the gate's deciding figure for the report's card."""
    c = next((c for c in fid["checks"] if not c["passed"]), fid["checks"][0] if fid["checks"] else None)
    if c is None:
        return "-", "no check"
    return f"{c['value']:.4f}", f"{c['output']}: {c['metric']} (measured, needs {c['threshold']:g})"


def _kb(n) -> str:
    return "-" if n is None else f"{n / 1024:,.1f} KB"


def render_terminal(report: dict, console) -> None:
    """Prints the per-layer table, totals, fidelity, latency and memory with rich."""
    from rich.table import Table

    t = Table(title=f"{report['model']} → {report['target']['name']} ({report['backend']})", show_lines=False)
    for col in ("layer", "op", "shape", "params", "MACs", "bytes before → after", "rank", "sparsity", "bits",
                "codec"):
        t.add_column(col, justify="left" if col in ("layer", "op", "shape", "codec") else "right")
    for r in report["layers"]:
        t.add_row(r["layer"], r["op"] + (f"/{r['method']}" if r["method"] else ""),
                  "×".join(map(str, r["weight_shape"])),
                  f"{r['params_before']:,} → {r['params_after']:,}", f"{r['macs_after']:,}",
                  f"{_kb(r['bytes_before'])} → {_kb(r['bytes_after'])}", str(r["rank"] or "-"),
                  "-" if r["sparsity"] is None else f"{r['sparsity']:.0%}", str(r["bits"]), r["codec"] or "-")
    console.print(t)
    tot, fid, mem = report["totals"], report["fidelity"], report["memory"]
    if report.get("chosen"):
        tried = ", ".join(f"{a['config']} ({'pass' if a['passed'] else 'fail'})" for a in report.get("attempts", []))
        console.print(f"[bold]chosen[/] {report['chosen']}; tried in the real runtime: {tried}")
    console.print(f"[bold]size[/]  fp32 ONNX {_kb(tot['fp32_onnx_bytes'])} → bundle {_kb(tot['bundle_bytes'])} "
                  f"(model {_kb(tot['model_file_bytes'])} + weights {_kb(tot['container_bytes'])}): "
                  f"[bold]{tot['compression_ratio']:.1f}× smaller[/]; params {tot['params_before']:,} → "
                  f"{tot['params_after']:,}; MACs {tot['macs_before']:,} → {tot['macs_after']:,}")
    console.print(f"[bold]fidelity[/] ({report['data']}, {fid['n_samples']} samples), every output by its kind:")
    for o in fid["outputs"]:
        console.print(f"  {o['name']} ({o['kind']}): {_output_figures(o)}")
    for c in fid["checks"]:
        mark = "[green]pass[/]" if c["passed"] else "[red]FAIL[/]"
        console.print(f"  gate {mark} {c['line']}")
    console.print(f"[bold]latency[/] {_latency_line(report)}")
    dev = report.get("device")
    if dev:
        console.print(f"[bold]device check[/] {dev.get('host_check')}")
        cs = dev.get("code_size")
        if cs:
            console.print("[bold]code size[/] " + _code_size_line(cs))
    runtime = (f"code {_kb(mem['code_bytes'])}, {mem['basis']}" if "code_bytes" in mem
               else f"runtime estimate {_kb(mem['runtime_flash_estimate'])}")
    console.print(f"[bold]memory[/] flash needed {_kb(mem['flash_needed'])} ({runtime}), RAM {_kb(mem['ram_needed'])} "
                  f"(arena {_kb(mem.get('arena_bytes'))}" + (f", of which the weight decode slot {_kb(mem['scratch_bytes'])}"
                                                             if mem.get("scratch_bytes") else "") + ")")
    for note in mem["notes"]:
        console.print(f"[yellow]warning:[/] {note}")
    verdict = report.get("verdict", {})
    if verdict.get("failures"):
        console.print("[red]verification below threshold:[/] " + "; ".join(verdict["failures"]))


def _latency_line(report: dict) -> str:
    """Host measurement for ONNX / TFLite bundles; for generated C the emulated instruction count
    (labelled), and always the roofline estimate."""
    lat, name = report["latency"], report["target"]["name"]
    est = f"{name} [italic]roofline estimate[/] {lat['target_ms_estimate']:.3f} ms"
    if lat.get("host_bundle_ms") is not None:
        return (f"host (measured, 1 thread): fp32 ONNX {lat['host_fp32_onnx_ms']:.3f} ms, bundle "
                f"{lat['host_bundle_ms']:.3f} ms ({_vs(lat)} fp32); {est}")
    if lat.get("emulated_instructions"):
        return (f"{name}: {lat['emulated_instructions']:,} [italic]emulated instructions[/] per inference "
                f"(≈ {lat['target_ms_emulated']:.3f} ms at {report['target']['clock_mhz']:g} MHz, 1 instruction per "
                f"cycle: an estimate); {est}")
    return f"not measured (no emulator for this target); {est}"


def _code_size_line(cs: dict) -> str:
    part = lambda p: cs[p]["text"] + cs[p]["rodata"] + cs[p]["data"]  # noqa: E731
    return (f"weights {_kb(part('weights'))}, model code + parameters {_kb(part('model'))}, runtime (kernels + "
            f"decoder) {_kb(part('runtime'))} ({cs['toolchain']} {cs['flags']}; demo main and libc apart)")


# -- HTML --------------------------------------------------------------------------------------

PLOT_MAX_LAYERS = 60   # the byte plot shows the heaviest layers (a tall PNG past ~1,700 rows fails)


def _plot_bytes(report: dict) -> str:
    """Weight bytes per layer before and after, on a log axis; a model without weights (nothing
    but activations, e.g. ``x * 2``) gets a figure saying so instead of an empty log axis."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report.get("layers") or [] if r.get("bytes_before") or r.get("bytes_after")]
    if not rows:
        fig, ax = plt.subplots(figsize=(8, 1.2))
        ax.axis("off")
        ax.text(0.5, 0.5, "No layer has weights: this model has nothing to compress (activations only).",
                ha="center", va="center")
        return _png(fig)
    title = "Weight bytes per layer, before → after"
    if len(rows) > PLOT_MAX_LAYERS:
        title += f" ({PLOT_MAX_LAYERS} largest of {len(rows)} layers)"
        keep = sorted(range(len(rows)), key=lambda i: -rows[i]["bytes_before"])[:PLOT_MAX_LAYERS]
        rows = [rows[i] for i in sorted(keep)]
    names = [r["layer"] for r in rows]
    y = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.5))
    # a log axis cannot show 0: a layer pruned away (or without fp32 bytes) is drawn at 1 byte
    ax.barh(y + 0.2, [max(r["bytes_before"], 1) for r in rows], 0.4, label="before (fp32)", color="#9aa5b1")
    ax.barh(y - 0.2, [max(r["bytes_after"], 1) for r in rows], 0.4, label="after (encoded)", color="#2f80ed")
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("bytes (log scale)")
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return _png(fig)


def _plot_finetune(report: dict) -> str | None:
    ft = report.get("finetune") or {}
    hist = ft.get("history")
    if not hist:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    t = np.cumsum([h.get("seconds", 0) for h in hist])
    ax.plot(t, [h["loss"] for h in hist], "o-", label="loss")
    ax.set_xlabel("wall time (s)")
    ax.set_ylabel("loss")
    if any(h.get("accuracy") is not None for h in hist):
        ax2 = ax.twinx()
        ax2.plot(t, [h.get("accuracy") for h in hist], "s--", color="C1", label="accuracy")
        ax2.set_ylabel("accuracy")
    ax.set_title(f"Fine-tuning ({ft.get('optimizer', '')})")
    fig.tight_layout()
    return _png(fig)


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


_CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#1f2933}
table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border-bottom:1px solid #e4e7eb;padding:4px 8px;
text-align:right}td:first-child,th:first-child,td:nth-child(2){text-align:left}th{background:#f5f7fa}
.cards{display:flex;gap:1em;flex-wrap:wrap}.card{background:#f5f7fa;border-radius:8px;padding:.8em 1.2em}
.card b{font-size:1.4em;display:block}.est{color:#7b8794;font-style:italic}.bad{color:#c62828}"""


def _latency_html(report: dict) -> str:
    lat = report["latency"]
    if lat.get("host_bundle_ms") is not None:
        return (f"Host, measured (median of {lat['repeats']}, 1 thread): fp32 ONNX {lat['host_fp32_onnx_ms']:.3f} ms, "
                f"bundle {lat['host_bundle_ms']:.3f} ms.")
    emu = (report.get("device") or {}).get("emulated")
    if isinstance(emu, dict):
        return html.escape(f"{emu['instructions_per_inference']:,} emulated instructions per inference "
                           f"(≈ {emu['ms_at_clock']:.3f} ms at {emu['clock_mhz']:g} MHz). {emu['basis']}.")
    return "Not measured on the host (generated C; no emulator for this target)."


def _device_html(report: dict) -> str:
    """Generated C: the host check, code sizes, per-layer emulated instruction counts."""
    dev = report.get("device")
    if not dev:
        return ""
    e = html.escape
    out = f"<h2>Device</h2><p>{e(str(dev.get('host_check')))}</p>"
    cs = dev.get("code_size")
    if cs:
        rows = "".join(f"<tr><td>{p}</td>" + "".join(f"<td>{cs[p][k]:,}</td>" for k in ("text", "rodata", "data", "bss"))
                       + "</tr>" for p in ("weights", "model", "runtime", "demo"))
        out += (f"<p>Code size ({e(cs['toolchain'])}, {e(cs['flags'])}), bytes:</p><table><tr><th>part</th><th>.text"
                f"</th><th>.rodata</th><th>.data</th><th>.bss</th></tr>{rows}</table>")
    emu = dev.get("emulated")
    if isinstance(emu, str):
        out += f"<p>Emulation {e(emu)}.</p>"
    elif emu:
        rows = "".join(f"<tr><td>{r['step']}</td><td>{e(r['layer'])}</td><td>{e(r['kernel'])}</td>"
                       f"<td>{r['instructions']:,}</td><td>{r['macs']:,}</td><td>{'yes' if r['streamed'] else ''}</td></tr>"
                       for r in emu["per_layer"])
        out += ("<p class=est>Emulated instruction count per layer (not cycles):</p><table><tr><th>step</th><th>layer"
                f"</th><th>kernel</th><th>instructions</th><th>MACs</th><th>weights streamed</th></tr>{rows}</table>")
    return out


def render_html(report: dict) -> str:
    e = html.escape
    tot, fid, lat, mem = report["totals"], report["fidelity"], report["latency"], report["memory"]
    cards = [("bundle size", _kb(tot["bundle_bytes"]), f"{tot['compression_ratio']:.1f}× smaller than fp32 ONNX"),
             ("fidelity", *_headline(fid)),
             (("host latency", f"{lat['host_bundle_ms']:.3f} ms", f"{_vs(lat)} fp32 ONNX (measured)")
              if lat.get("host_bundle_ms") is not None else
              ("emulated instructions", f"{lat['emulated_instructions']:,}" if lat.get("emulated_instructions") else "-",
               f"per inference under QEMU (≈ {lat['target_ms_emulated']:.3f} ms at the target clock: estimate)"
               if lat.get("emulated_instructions") else "no emulator for this target")),
             (f"{report['target']['name']} latency", f"{lat['target_ms_estimate']:.3f} ms", "estimate")]
    rows = "".join(
        "<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in (
            r["layer"], r["op"] + (f"/{r['method']}" if r["method"] else ""), "×".join(map(str, r["weight_shape"])),
            f"{r['params_before']:,} → {r['params_after']:,}", f"{r['macs_before']:,} → {r['macs_after']:,}",
            f"{_kb(r['bytes_before'])} → {_kb(r['bytes_after'])}", r["rank"] or "-",
            "-" if r["sparsity"] is None else f"{r['sparsity']:.0%}", r["bits"], r["codec"] or "-")) + "</tr>"
        for r in report["layers"])
    ops = "".join(f"<tr><td>{e(o['op'])}</td><td>{o['version']}</td><td>{o.get('count', '')}</td></tr>"
                  for o in report["backend_ops"])
    ft_plot = _plot_finetune(report)
    notes = "".join(f"<p class=bad>{e(n)}</p>" for n in mem["notes"])
    failures = report.get("verdict", {}).get("failures") or []
    verdict = "".join(f"<p class=bad>verification below threshold: {e(f)}</p>" for f in failures)
    fid_rows = "".join(f"<tr><td>{e(o['name'])}</td><td>{e(o['kind'])}</td><td>{e(_output_figures(o))}</td></tr>"
                       for o in fid["outputs"])
    check_rows = "".join(f"<tr><td>{e(c['line'])}</td><td class={'' if c['passed'] else 'bad'}>"
                         f"{'pass' if c['passed'] else 'FAIL'}</td></tr>" for c in fid["checks"])
    acc = ""
    if fid["accuracy_reference"] is not None:
        acc = f"<p>Accuracy: {fid['accuracy_reference']:.2%} (PyTorch) → {fid['accuracy_bundle']:.2%} (bundle)</p>"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>edgecompile report: {e(report['model'])}</title>
<style>{_CSS}</style></head><body>
<h1>{e(report['model'])} → {e(report['target']['name'])} <small>({e(report['backend'])})</small></h1>
<p>{e(report['target']['description'])}; edgecompile {e(report['edgecompile_version'])}</p>{verdict}{notes}
<div class=cards>{''.join(f'<div class=card>{e(a)}<b>{e(b)}</b><span class="{"est" if "estimate" in c else ""}">{e(c)}</span></div>' for a, b, c in cards)}</div>
<h2>Per layer</h2><table><tr><th>layer</th><th>op</th><th>weight</th><th>params</th><th>MACs</th><th>bytes</th>
<th>rank</th><th>sparsity</th><th>bits</th><th>codec</th></tr>{rows}</table>
<img alt="bytes per layer" src="{_plot_bytes(report)}">
<h2>Totals</h2><p>fp32 ONNX {_kb(tot['fp32_onnx_bytes'])} → model {_kb(tot['model_file_bytes'])} + weights
{_kb(tot['container_bytes'])}; parameters {tot['params_before']:,} → {tot['params_after']:,};
MACs {tot['macs_before']:,} → {tot['macs_after']:,}.</p>
<h2>Fidelity (measured in the real runtime)</h2><p>{e(report['data'])}: {fid['n_samples']} samples; every
output judged by its kind.</p><table><tr><th>output</th><th>kind</th><th>figures</th></tr>{fid_rows}</table>
<table><tr><th>gate check</th><th>result</th></tr>{check_rows}</table>{acc}
<h2>Latency</h2><p>{_latency_html(report)} <span class=est>{e(report['target']['name'])} estimate:
{lat['target_ms_estimate']:.3f} ms ({e(lat['basis'])}).</span></p>
<h2>Memory</h2><p>Flash needed {_kb(mem['flash_needed'])} (<span class=est>runtime estimate
{_kb(mem['runtime_flash_estimate'])}</span>); RAM {_kb(mem['ram_needed'])} (arena {_kb(mem.get('arena_bytes'))},
all activations {_kb(mem.get('naive_activation_bytes'))}).</p>
{_device_html(report)}
<h2>Backend ops</h2><table><tr><th>op</th><th>version</th><th>count</th></tr>{ops}</table>
{f'<h2>Fine-tuning</h2><img alt="fine-tuning curve" src="{ft_plot}">' if ft_plot else ''}
<h2>Build timings</h2><p>{e(', '.join(f'{k} {v:.2f} s' for k, v in report['timings_s'].items()))}</p>
</body></html>"""
