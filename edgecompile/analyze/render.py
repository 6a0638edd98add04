"""The analysis report in the terminal (rich tables), as JSON, and as an HTML page with plots
(normalized spectra, sensitivity curves per layer, accuracy of each rank rule at equal size)."""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from ..report.render import _CSS, _png
from .compare_ranks import RULES
from .sensitivity import FAMILIES


def render_terminal(rep: dict, console) -> None:
    from rich.table import Table

    console.print(f"[bold]{rep['model']}[/bold]: {rep['params']:,} parameters; sensitivities on "
                  f"{rep['calibration_samples']} calibration samples; data: {rep['data']}")
    t = Table(title="singular spectra (unfolded weights; Tucker-2 convs: output-channel mode)")
    for c in ("layer", "shape", "factorize", "full", "erank", "erank/full", "energy 95%", "energy 99%", "ℓ1 90%",
              "pays below"):
        t.add_column(c)
    for r in rep["layers"]:
        if "full_rank" not in r:
            t.add_row(r["layer"], "x".join(map(str, r["shape"])), f"no: {r['why']}", *[""] * 7)
            continue
        t.add_row(r["layer"], "x".join(map(str, r["shape"])), r["factorize"], str(r["full_rank"]), f"{r['erank']:.1f}",
                  f"{r['erank_ratio']:.2f}", str(r["energy95"]), str(r["energy99"]), str(r["l1_90"]),
                  str(r["max_useful_rank"] + 1))
    console.print(t)
    sens = rep.get("sensitivity")
    if sens:
        t = Table(title="sensitivity: gate score with this layer alone compressed (>= 0 passes) and est. bytes")
        for c in ("layer",) + FAMILIES:
            t.add_column(c)
        for name, opts in sens.items():
            cells = {fam: "\n".join(f"{o['setting'].split(':')[-1]:>6s} {o['score']:6.2f} {o['est_bytes']:>8,}"
                                    for o in opts if o["family"] == fam) for fam in FAMILIES}
            t.add_row(name, *(cells[f] for f in FAMILIES[:-1]), cells["rank"] or "not factorizable")
        console.print(t)
    rec = rep.get("recommendation")
    if rec:
        t = Table(title=f"recommended per layer (gate with margin {rec['margin']}; joint score {rec['joint_score']})")
        for c in ("layer", "setting", "est. bytes", "int8 bytes", "fp32 bytes", "why"):
            t.add_column(c)
        for r in rec["layers"]:
            t.add_row(r["layer"], r["setting"], f"{r['est_bytes']:,}", f"{r['int8_bytes']:,}", f"{r['fp32_bytes']:,}",
                      r["why"])
        t.add_row("total", "", f"{rec['est_bytes']:,}", f"{rec['int8_bytes']:,}", f"{rec['fp32_bytes']:,}",
                  f"{rec['fp32_bytes'] / max(rec['est_bytes'], 1):.1f}x smaller than fp32 (estimate)")
        console.print(t)
        tg = rec.get("target")
        if tg:
            console.print(f"{tg['name']}: {tg['flash_bytes']:,} bytes of flash; the recommended weights "
                          f"{'fit' if tg['weights_fit'] else 'do not fit'} (int8 alone "
                          f"{'fits' if tg['int8_fits'] else 'does not fit'}; code and runtime not counted)")
    rules = rep.get("rank_rules")
    if rules:
        t = Table(title="rank rules at equal size (factorizable layers, float, no fine-tuning)")
        for c in ("budget", "rule", "knob", "weights", "factorized", "gate score", "accuracy"):
            t.add_column(c)
        for r in rules:
            if "params" not in r:
                t.add_row(f"{r['budget']:.0%}", r["method"], "", "", "", "", r.get("note", ""))
                continue
            acc = "" if r.get("accuracy") is None else f"{r['accuracy']:.4f}"
            knob = "-" if r["knob"] is None else f"{r['knob']:g}"
            t.add_row(f"{r['budget']:.0%}", r["method"], knob, f"{r['params']:,} / {r['dense_params']:,}",
                      str(r["factorized"]), f"{r['score']:.2f}", acc)
        console.print(t)
        if rep.get("float_accuracy") is not None:
            console.print(f"float model accuracy: {rep['float_accuracy']:.4f}")
    idim = rep.get("intrinsic")
    if idim:
        console.print(_intrinsic_line(idim))


def _intrinsic_line(idim: dict) -> str:
    if idim.get("d_int") is None:
        return f"intrinsic dimension: {idim.get('note')} ({idim['seconds']:.0f} s)"
    return (f"intrinsic dimension d_int{round(100 * idim['config']['fraction'])} = {idim['d_int']} "
            f"(target accuracy {idim['target_accuracy']:.4f} = {idim['config']['fraction']:.0%} of "
            f"{idim['full_accuracy']:.4f}; {len(idim['runs'])} runs, {idim['seconds']:.0f} s on "
            f"{idim['runs'][-1]['device']}); description length <= {idim['description_bytes']:,} bytes "
            f"({idim['compression_vs_fp32']}x below the fp32 weights)")


def write(rep: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "analysis.json").write_text(json.dumps(rep, indent=1, default=_default))
    (out / "analysis.html").write_text(render_html(rep))


def _default(o):
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    return str(o)


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_spectra(rep: dict) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in rep["layers"]:
        if "spectrum" in r:
            s = np.asarray(r["spectrum"])
            ax.plot(np.arange(1, s.size + 1) / r["full_rank"], s, label=f"{r['layer']} (erank {r['erank']:.0f}/"
                    f"{r['full_rank']})")
    ax.set_yscale("log")
    ax.set_xlabel("index / full rank")
    ax.set_ylabel("singular value / largest")
    ax.set_title("Singular spectra")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def plot_sensitivity(rep: dict) -> str:
    plt = _plt()
    sens = rep["sensitivity"]
    n = len(sens)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, (name, opts) in zip(axes.ravel(), sens.items()):
        for fam, mark in zip(FAMILIES, ("o-", "d-", "s-", "^-")):
            pts = sorted((o["est_bytes"], o["score"]) for o in opts if o["family"] == fam)
            if pts:
                ax.plot(*zip(*pts), mark, label=fam, ms=4)
        ax.axhline(0, color="#c62828", lw=0.8)
        ax.set_xscale("log")
        ax.set_ylim(max(-3, min(o["score"] for o in opts) - 0.1), 1.05)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("est. bytes", fontsize=8)
        ax.set_ylabel("gate score", fontsize=8)
        ax.legend(fontsize=7)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.suptitle("Sensitivity: one layer compressed at a time (score >= 0 passes the gate)")
    fig.tight_layout()
    return _png(fig)


def plot_rules(rep: dict) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    key = "accuracy" if any(r.get("accuracy") is not None for r in rep["rank_rules"]) else "score"
    for m in RULES:
        pts = sorted((r["params"], r[key]) for r in rep["rank_rules"] if r["method"] == m and "params" in r)
        if pts:
            ax.plot(*zip(*pts), "o-", label=m)
    if key == "accuracy" and rep.get("float_accuracy") is not None:
        ax.axhline(rep["float_accuracy"], color="gray", ls="--", label="float model")
    ax.set_xlabel("weights of the factorizable layers")
    ax.set_ylabel(key)
    ax.set_title("Rank rules at equal size (no fine-tuning)")
    ax.legend()
    fig.tight_layout()
    return _png(fig)


def _table(rows: list[dict], cols: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape('' if r.get(c) is None else str(r[c]))}</td>" for c in cols)
                   + "</tr>"
                   for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(rep: dict) -> str:
    parts = [f"<!doctype html><meta charset='utf-8'><title>analysis of {html.escape(rep['model'])}</title>"
             f"<style>{_CSS}</style><h1>Analysis of {html.escape(rep['model'])}</h1>",
             f"<p>{rep['params']:,} parameters; sensitivities measured on {rep['calibration_samples']} calibration "
             f"samples with the gate's checks; data: {html.escape(rep['data'])}.</p>",
             "<h2>Singular spectra</h2>",
             _table(rep["layers"], ["layer", "op", "shape", "factorize", "full_rank", "erank", "erank_ratio",
                                    "energy95", "energy99", "l1_90", "max_useful_rank"]),
             f"<img src='{plot_spectra(rep)}'>"]
    if rep.get("sensitivity"):
        parts += ["<h2>Sensitivity</h2>", f"<img src='{plot_sensitivity(rep)}'>"]
        rows = [dict(o, layer=name) for name, opts in rep["sensitivity"].items() for o in opts]
        parts.append(_table(rows, ["layer", "setting", "est_bytes", "params", "score"]))
    if rep.get("recommendation"):
        rec = rep["recommendation"]
        parts += [f"<h2>Recommended per layer</h2><p>joint gate score {rec['joint_score']} (margin {rec['margin']}); "
                  f"estimated {rec['est_bytes']:,} bytes vs {rec['int8_bytes']:,} int8 and {rec['fp32_bytes']:,} "
                  "fp32.</p>", _table(rec["layers"], ["layer", "setting", "est_bytes", "int8_bytes", "fp32_bytes",
                                                       "why"])]
    if rep.get("rank_rules"):
        parts += ["<h2>Rank rules at equal size</h2>", f"<img src='{plot_rules(rep)}'>",
                  _table(rep["rank_rules"], ["budget", "method", "knob", "params", "factorized", "score",
                                             "accuracy"])]
    if rep.get("intrinsic"):
        parts += ["<h2>Intrinsic dimension</h2>", f"<p>{html.escape(_intrinsic_line(rep['intrinsic']))}</p>",
                  _table(rep["intrinsic"]["runs"], ["d", "accuracy", "seconds", "device"])]
    return "\n".join(parts)
