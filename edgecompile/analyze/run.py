"""`analyze(model, config) -> dict`: what `edgecompile analyze` prints, writes as JSON and renders.

    model ─load, torch.export─▶ IR ─fold, clean up (the build's passes)─▶ float IR
        ─▶ per layer: spectra, effective / energy / ℓ1 ranks            (`spectrum`)
        ─▶ per layer and setting: the gate's score on calibration data  (`sensitivity`)
        ─▶ a recommended setting per layer under the gate               (`sensitivity.recommend`)
        ─▶ erank vs ℓ1 vs energy rank choice at equal size              (`compare_ranks`)
        ─▶ optionally the intrinsic dimension (needs training data)     (`intrinsic`)

The model, the data and the output kinds are read as the build reads them (`inputs.samples.split_data`,
`build.output_specs`), and the gate's thresholds are the build's (`fidelity.Thresholds`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..report.fidelity import Thresholds
from ..ir import TorchExecutor, verify
from ..inputs.model import LoadedModel, batch_first, load_model
from ..search.optimize import GateScore, OptimizeConfig, executor_outputs
from .compare_ranks import BUDGETS, compare_rules
from .sensitivity import Scorer, measure, option_rows, recommend
from .spectrum import find_layers, spectrum_row

log = logging.getLogger(__name__)


class AnalyzeError(InputError, ValueError):
    """An analyze option or input that cannot work (one line: what and how to fix it)."""


@dataclass(frozen=True)
class AnalyzeConfig:
    calib: Path | None = None           # .npz as for `build --calib` (80 % calibrate, 20 % held back)
    task: str | None = None             # output kinds, as `build --task`
    thresholds: Thresholds = field(default_factory=Thresholds)
    margin: float = OptimizeConfig.margin   # the recommendation keeps this share of each threshold's headroom
    min_params: int = 1024              # smaller layers are listed by the build but not analyzed
    max_samples: int = 256              # calibration samples the sensitivities are measured on
    budgets: tuple[float, ...] = BUDGETS
    target: str | None = None           # a board: the recommendation's bytes are checked against its flash
    sensitivity: bool = True
    intrinsic_dim: bool = False
    train: Path | None = None           # .npz of training inputs + labels for --intrinsic-dim
    intrinsic: object | None = None     # intrinsic.IntrinsicConfig (None: its defaults)
    seed: int = 0


def _load(model_spec) -> LoadedModel:
    loaded = model_spec if isinstance(model_spec, LoadedModel) else load_model(model_spec)
    return batch_first(loaded)


def _graph(loaded: LoadedModel, example: tuple | None = None):
    """The folded float graph, imported at the model's example inputs (or `example`)."""
    from ..inputs.model import check_example_inputs, import_graph
    from ..passes.fold import CleanupPass, FoldBatchNormPass

    if example is not None:
        loaded = LoadedModel(loaded.name, loaded.module, example, loaded.data, loaded.exported)
    try:
        graph = import_graph(loaded)
    except Exception:
        check_example_inputs(loaded)
        raise
    verify(graph)
    FoldBatchNormPass()(graph)
    CleanupPass()(graph)
    verify(graph)
    return graph


def _batched(graph, samples, loaded: LoadedModel):
    """The graph for batches of up to 64 (the executor then chunks): rebatched, else imported again
    at that batch (an eager module), else the graph itself."""
    from ..ir.rebatch import RebatchError, rebatch

    n = min(64, len(samples[0]))
    try:
        return rebatch(graph, n, check_inputs=[a[:n] for a in samples])
    except RebatchError as e:
        if loaded.module is not None and loaded.exported is None:
            try:
                return _graph(loaded, tuple(torch.from_numpy(np.ascontiguousarray(a[:n])) for a in samples))
            except Exception as e2:   # a model tied to its example batch: the graph as it is
                log.info("re-import at batch %d failed: %s", n, e2)
        log.info("analyzing in the model's own batch size: %s", e)
        return graph


def _accuracy(ex: TorchExecutor, x, labels) -> float | None:
    if labels is None:
        return None
    out = executor_outputs(ex, x)[0]
    if out.ndim != 2 or len(out) != len(labels):
        return None
    return float(np.mean(out.argmax(1) == np.asarray(labels)))


def _validate(cfg: AnalyzeConfig) -> None:
    """Every option checked before the model is loaded (one line each, as the build does)."""
    from ..inputs.samples import check_npz
    from ..targets import load_target

    if cfg.target is not None:
        load_target(cfg.target)
    if cfg.calib is not None:
        check_npz(Path(cfg.calib), "--calib")
    if cfg.train is not None:
        check_npz(Path(cfg.train), "--train")
    if cfg.train is not None and not cfg.intrinsic_dim:
        raise AnalyzeError("--train is the training data of --intrinsic-dim; add --intrinsic-dim or leave it out")


def analyze(model_spec, cfg: AnalyzeConfig, progress: Callable[[str, float], None] | None = None) -> dict:
    """The analysis report of a model (see the module docstring). `model_spec` as for `build`."""
    from threadpoolctl import threadpool_limits

    from ..build import BuildConfig, output_specs
    from ..inputs.samples import split_data

    progress = progress or (lambda stage, frac: None)
    t0 = time.perf_counter()
    _validate(cfg)
    threads = torch.get_num_threads()
    with threadpool_limits(limits=1, user_api="blas"):
        try:
            loaded = _load(model_spec)
            graph = _graph(loaded)
            torch.set_num_threads(1)          # small graphs: see build._build_model
            bcfg = BuildConfig(calib=cfg.calib, task=cfg.task, thresholds=cfg.thresholds, seed=cfg.seed)
            specs = output_specs(loaded, bcfg, graph)
            calib, evals, labels, note = split_data(loaded, graph, calib_path=bcfg.calib,
                                                    max_eval=bcfg.max_eval_samples, seed=bcfg.seed)
            return _analyze(loaded, graph, cfg, specs, calib, evals, labels, note, progress, t0)
        finally:
            torch.set_num_threads(threads)


def _analyze(loaded, graph, cfg, specs, calib, evals, labels, note, progress, t0) -> dict:
    samples = tuple(a[-cfg.max_samples:] for a in calib)
    timings = {"load + import + fold": round(time.perf_counter() - t0, 2)}
    layers = find_layers(graph, cfg.min_params)
    if not layers:
        raise AnalyzeError(f"{loaded.name} has no layer weight of at least {cfg.min_params} values to analyze")
    report: dict = {"model": loaded.name, "params": int(graph.param_count()), "data": note,
                    "calibration_samples": int(len(samples[0])), "thresholds": cfg.thresholds.__dict__,
                    "output_kinds": [s.kind for s in specs]}
    report["layers"] = [spectrum_row(lay) for lay in layers]
    t = time.perf_counter()
    timings["spectra"] = round(t - t0 - timings["load + import + fold"], 2)
    progress("spectra", 0.1)
    g = _batched(graph, samples, loaded)
    weights = {lay.const: np.asarray(g.consts[lay.const].data).copy() for lay in layers}
    labelled = labels is not None
    gate = GateScore(specs, cfg.thresholds, 0.0)          # solo sensitivities: the gate's own thresholds
    scorer = Scorer(g, samples, gate, specs, cfg.thresholds)
    if cfg.sensitivity:
        base, _ = scorer.score()
        measured = measure(layers, weights, scorer, lambda s, f: progress(s, 0.1 + 0.6 * f))
        report["sensitivity"] = option_rows(measured)
        # the recommendation keeps a margin, as --optimize does (the eval set decides in a build)
        scorer.gate = GateScore(specs, cfg.thresholds, cfg.margin, labelled=labelled)
        report["recommendation"] = rec = dict(recommend(layers, weights, measured, scorer, base), margin=cfg.margin)
        if cfg.target is not None:
            from ..targets import load_target

            tg = load_target(cfg.target)
            rec["target"] = {"name": tg.name, "flash_bytes": tg.flash_kib * 1024,
                             "weights_fit": rec["est_bytes"] <= tg.flash_kib * 1024,
                             "int8_fits": rec["int8_bytes"] <= tg.flash_kib * 1024}
        scorer.gate = gate
        timings["sensitivity + recommendation"] = round(time.perf_counter() - t, 2)
        report["sensitivity_evaluations"] = scorer.evals
    t = time.perf_counter()
    progress("rank rules at equal size", 0.75)
    ev = _batched(graph, evals, loaded)
    ev_ex = TorchExecutor(ev, fake_quant=False).eval()
    ev_x = [torch.as_tensor(a) for a in evals]

    def evaluate(new: dict[str, np.ndarray]) -> dict:
        for const, w in new.items():
            scorer.set(const, w)
            with torch.no_grad():
                ev_ex.const_tensor(const).copy_(torch.from_numpy(np.ascontiguousarray(w, np.float32)))
        s, _ = scorer.score()
        out = {"score": round(float(s), 4), "accuracy": _accuracy(ev_ex, ev_x, labels)}
        for const, w in weights.items():
            scorer.set(const, w)
            with torch.no_grad():
                ev_ex.const_tensor(const).copy_(torch.from_numpy(w))
        return out

    report["float_accuracy"] = _accuracy(ev_ex, ev_x, labels)
    report["rank_rules"] = compare_rules(layers, weights, evaluate, cfg.budgets)
    timings["rank rules"] = round(time.perf_counter() - t, 2)
    if cfg.intrinsic_dim:
        from .intrinsic import IntrinsicConfig, intrinsic_dimension, training_data

        progress("intrinsic dimension", 0.85)
        t = time.perf_counter()
        train = training_data(loaded, cfg.train, graph)
        icfg = cfg.intrinsic or IntrinsicConfig(seed=cfg.seed)
        ev_data = (evals, labels) if labels is not None else None
        report["intrinsic"] = intrinsic_dimension(loaded.module, train, ev_data, icfg)
        timings["intrinsic dimension"] = round(time.perf_counter() - t, 2)
    timings["total"] = round(time.perf_counter() - t0, 2)
    report["timings"] = timings
    progress("done", 1.0)
    return report

