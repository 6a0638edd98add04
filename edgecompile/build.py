"""`build()`: the one place the whole flow is spelled out.

    model spec ─load─▶ torch.export ─frontend─▶ IR ─fold, factorize, prune─▶ (fine-tune)
        ─choose (int8 mode by measurement, per-layer search; `choose.candidates`)─▶ candidate IRs
        ─backend─▶ model.onnx | model.tflite  +  weights.ecw  +  runtime/ (C sources)
        ─loader, real runtime─▶ the gate: every output vs the PyTorch model, by kind (`fidelity`)
        ─▶ the first candidate that passes ─▶ report (terminal, JSON, HTML)

Everything is written into a temporary folder beside `--out` and renamed into place only when
the build and its verification succeeded, so a failed build leaves nothing half-written.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from . import __version__, staging
from .ir.analysis import static_batch, total_macs
from .bundle.ship import ship
from .errors import (EXIT_DOES_NOT_FIT, EXIT_VERIFICATION, BuildError, DoesNotFitError, Interrupted,
                     VerificationError)
from .inputs.samples import Samples, load_samples, split_data
from .ir import Graph, verify
from .passes.base import LayerRecord
from .passes.pipeline import PipelineResult, baseline_passes, compress_passes, dump_graph, run_pipeline
from .inputs.model import (LoadedModel, ModelSpecError, batch_first, check_example_inputs, check_finite, first_line,
                           import_graph, load_model)
from .targets import Target, load_target
from .search.choose import candidates, resolve_quant
from .report.fidelity import (
    Fidelity, FidelitySpecError, OutputSpec, Thresholds, checks_from, compare, parse_output_specs,
)
from .inputs.reference import bundle_outputs, reference_outputs

log = logging.getLogger(__name__)

Progress = Callable[[str, float], None]


class VerificationFailed(BuildError, VerificationError):
    """The bundle is below the fidelity gate (exit 1); its report is kept in ``<out>.failed/``."""

    exit_code = EXIT_VERIFICATION


class DoesNotFit(BuildError, DoesNotFitError):
    """The bundle does not fit the target's flash or RAM (exit 5); the report is in ``<out>.failed/``."""

    exit_code = EXIT_DOES_NOT_FIT


@dataclass(frozen=True)
class BuildConfig:
    """Everything one build is asked to do: what the CLI's options say, as one frozen value.

    The defaults never run a lossy step that the fidelity gate does not measure: low rank and
    pruning are opt-in, ``quant="auto"`` chooses int8 by measurement and may fall back. The comment
    beside each field names the option's grammar (the parser that reads it). `build` resolves
    ``backend`` (the target's default) and ``quant`` (``auto``) before the model is loaded.
    """

    target: str = "rpi4"
    out: Path = Path("out")
    backend: str | None = None              # None: the target's default
    # Lossy steps never run by default unmeasured: factorizing pretrained weights without
    # fine-tuning breaks them (measured on a pretrained ImageNet CNN), so low rank is opt-in.
    rank: str = "none"                      # see passes.lowrank.rank.parse_rank_spec; e.g. "erank"
    prune: str = "none"                     # see passes.prune.parse_prune_spec
    quant: str = "auto"                     # auto | int8[:options] | none (see passes.quantize)
    cluster_bits: int | None = None         # share int8 weights: <= 2^bits non-zero levels (lut codec)
    budget_bytes: int | None = None         # global weight-byte budget met by the rank search
    optimize: str = "size"                  # per-layer search under the gate: size | balanced | latency | none
    quant_auto: bool = False                # set by the build: quant came from "auto" (may fall back)
    codecs: tuple[str, ...] | None = None   # None: every codec the target can decode
    calib: Path | None = None               # .npz of inputs (+ labels) for calibration and verification
    finetune: str | None = None             # "calib" or a .npz path: recover accuracy on this data
    optimizer: str = "auto"                 # fine-tuning optimizer; auto: by model kind (finetune.optimizers.AUTO)
    epochs: int = 3
    regularize: str | None = None           # "erank:λ" | "nuclear:λ": train dense with it, then factorize, recover
    thresholds: Thresholds = field(default_factory=Thresholds)
    task: str | None = None                 # output kinds, e.g. "logits" or "probability,state" (fidelity)
    allow_degraded: bool = False
    allow_oversize: bool = False            # keep a bundle that does not fit the target's flash / RAM
    max_eval_samples: int | None = None     # None: verify on the whole held-back set
    stream_weights: str = "auto"            # --backend c: auto | all | none (backends.c.model.emit_c)
    latency_repeats: int = 100
    seed: int = 0
    dump_ir: Path | None = None             # --dump-ir DIR: the graph's text dump after import and every pass


@dataclass
class BuildResult:
    """What `build` returns: where the bundle is, its report (the dict of ``report.json``), the
    fidelity verdict, whether the bundle ships below the thresholds (``--allow-degraded``) and
    whether this process wrote it (False on torchrun ranks other than 0, which only train)."""

    out_dir: Path
    report: dict
    fidelity: Fidelity | None
    degraded: bool
    written: bool = True                    # False on torchrun ranks other than 0


def _launch() -> tuple[int, int]:
    """This process's rank and the world size under torchrun ((0, 1) when not launched by it)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


# -- stages ------------------------------------------------------------------------------------

def _check_half(graph: Graph, cfg: BuildConfig) -> None:
    """int8 quantization starts from float32: a float16/bfloat16 model is named with what to do."""
    half = sorted({str(np.asarray(c.data).dtype) for c in graph.consts.values()} & {"float16", "bfloat16"}
                  | {v.dtype for v in graph.inputs} & {"float16", "bfloat16"})
    if half and cfg.quant.startswith("int8"):
        raise BuildError(f"the model computes in {half[0]}; int8 quantization starts from float32: return "
                         "model.float() and float32 example inputs from the factory, or pass --quant none")


def _compress(graph: Graph, cfg: BuildConfig, bytes_per_param: float, dump_dir: Path | None,
              first_index: int = 1) -> PipelineResult:
    """Fold, clean up, factorize, prune: the target-independent passes (`passes.pipeline`)."""
    passes = compress_passes(rank=cfg.rank, budget_bytes=cfg.budget_bytes, bytes_per_param=bytes_per_param,
                             prune=cfg.prune)
    return run_pipeline(graph, passes, dump_dir=dump_dir, first_index=first_index)


def _finetune(graph: Graph, loaded: LoadedModel, cfg: BuildConfig, data: Samples, labels, progress,
              regularize: str | None = None) -> dict:
    """Recovers accuracy: trains the compressed graph (factorized structure kept, pruned weights
    held at zero, int8 weights fake-quantized with a straight-through gradient when quantizing)
    against labels, or by distillation from the original model, then writes the weights back."""
    from .finetune.data import FinetuneData
    from .finetune.recover import NonFiniteLossError, RecoverConfig, recover
    from .ir import TorchExecutor
    from .ir.rebatch import RebatchError, rebatch

    n = len(data[0])
    rank, world = _launch()  # torchrun: each rank runs bs / world rows
    local = max(1, min(64, n) // world)
    try:
        train_graph = rebatch(graph, local, check_inputs=[a[:local] for a in data])
    except RebatchError as e:
        log.warning("fine-tuning in the model's own batch size: %s", e)
        train_graph, local = graph.copy(), graph.inputs[0].shape[0]
    bs = local * world
    keep = (n // bs) * bs
    if keep == 0:
        raise BuildError(f"fine-tuning needs at least {bs} samples, got {n}")
    qat = 8 if cfg.quant.startswith("int8") else None
    student = TorchExecutor(train_graph, fake_quant=False, weight_fake_quant_bits=qat)
    masks = {}
    for const, mask in (graph.meta.get("sparsity_masks") or {}).items():
        pname = student.parameter_name(const)
        if pname is not None:
            masks[pname] = torch.as_tensor(np.asarray(mask, bool))
    ft = FinetuneData.from_arrays(tuple(a[:keep] for a in data), None if labels is None else labels[:keep])
    ckpt = cfg.out.parent / f".{cfg.out.name}.finetune"
    rc = RecoverConfig(optimizer=cfg.optimizer, epochs=cfg.epochs, batch_size=bs, seed=cfg.seed,
                       checkpoint_dir=str(ckpt), regularize=regularize,
                       twa_warmup_epochs=max(1, cfg.epochs // 2) if cfg.optimizer == "twa" else 1)
    t0 = time.perf_counter()
    try:
        result = recover(student, ft, rc, teacher=loaded.module, masks=masks,
                         progress=(lambda *a, **k: None), output_kinds=loaded.data.get("outputs"))
    except NonFiniteLossError as e:
        raise BuildError(f"fine-tuning diverged ({e}); try --optimizer adamw, fewer --epochs, or check the "
                         "data and weights for inf/NaN") from None
    student.write_back()
    for name, v in train_graph.consts.items():
        if name in graph.consts:
            graph.consts[name].data = v.data
    if rank == 0:  # rank 0 writes the checkpoints (recover)
        shutil.rmtree(ckpt, ignore_errors=True)
    return {"optimizer": result.optimizer, "epochs": len(result.epochs), "batch_size": bs, "regularize": regularize,
            "loss": result.loss_description,
            "qat_bits": qat, "seconds": round(time.perf_counter() - t0, 3), "device": result.device,
            "history": [{"epoch": e.epoch, "loss": e.loss, "accuracy": e.accuracy, "seconds": e.wall_s}
                        for e in result.epochs]}


def _write_bundle(stage: Path, graph: Graph, target: Target, backend: str, cfg: BuildConfig) -> dict:
    from .container import write_container

    from .backends.base import backend_for

    emitter = backend_for(backend)
    emitted = emitter.emit(graph, embed_weights=False)
    model_name = emitter.model_file
    (stage / model_name).write_bytes(emitted.model_bytes)
    codecs = tuple(c for c in (cfg.codecs or target.codecs) if c in target.codecs)
    if not codecs:
        raise BuildError(f"none of the codecs {list(cfg.codecs or [])} can be decoded on {target.name}; "
                         f"it supports {list(target.codecs)}")
    quant = {k: q for k, q in emitted.quant.items() if q is not None}
    records = write_container(stage / "weights.ecw", emitted.tensors, quant, codecs=codecs)
    io = lambda vs: [{"name": v.name, "shape": list(v.shape), "dtype": v.dtype} for v in vs]  # noqa: E731
    manifest = {"format": "edgecompile-bundle", "version": 1, "backend": backend, "model": model_name,
                "model_sha256": hashlib.sha256(emitted.model_bytes).hexdigest(),
                "weights": "weights.ecw", "inputs": io(graph.inputs), "outputs": io(graph.outputs),
                "target": target.name, "edgecompile_version": __version__}
    if emitted.dequantize_at_load:
        manifest["dequantize_at_load"] = list(emitted.dequantize_at_load)
    (stage / "manifest.json").write_text(json.dumps(manifest, separators=(",", ":")))  # compact: bytes count
    ship(stage / "python")
    from .backends.c.bundle import write_c_bundle
    write_c_bundle(stage, stage / "weights.ecw", target.kind, target.name, target.triple, target.cpu)
    return {"emitted": emitted, "records": records, "model_file": model_name}


def fp32_onnx(graph: Graph) -> bytes:
    """The baseline: the uncompressed model as a self-contained fp32 ONNX file, batch norms folded
    (what onnxruntime does itself at load, and what its quantization tools expect)."""
    from .backends.onnx import emit_onnx

    g = graph.copy()
    run_pipeline(g, baseline_passes())
    return emit_onnx(g, embed_weights=True).model_bytes


def output_specs(loaded: LoadedModel, cfg: BuildConfig, graph: Graph) -> tuple[OutputSpec, ...]:
    """The kind of each graph output: `--task` first, else the factory's ``data["outputs"]``."""
    try:
        return parse_output_specs(cfg.task if cfg.task else loaded.data.get("outputs"), len(graph.outputs))
    except FidelitySpecError as e:
        raise BuildError(f"{'--task' if cfg.task else 'the factory data[outputs]'}: {e}") from None


def verify_bundle(session, loaded: LoadedModel, graph: Graph, evals: Samples, ref: list[np.ndarray], labels,
                  specs, cfg: BuildConfig, note: str = "") -> Fidelity:
    """Runs the held-back samples through the bundle's real runtime and judges every output by
    its kind against `ref`, the PyTorch model's outputs on them (`fidelity.compare`)."""
    batch = static_batch(graph)
    got = bundle_outputs(session, evals, batch)
    if len(ref) != len(got):
        raise BuildError(f"the model returns {len(ref)} tensors but the compiled graph has {len(got)} outputs; "
                         "return tensors only (no None or Python numbers)")
    try:
        fid = compare(ref, got, specs, cfg.thresholds, labels, names=[v.name for v in graph.outputs],
                      metric=loaded.data.get("metric"), note=note)
        stream = loaded.data.get("stream_metric")
        if stream is not None:       # the factory drives the bundle itself (e.g. on its own state)
            fid = replace(fid, checks=fid.checks + tuple(checks_from(stream(session.run), "stream_metric")))
        return fid
    except FidelitySpecError as e:
        raise BuildError(str(e)) from None
    except ValueError as e:
        raise BuildError(f"verification cannot compare outputs: {e}") from None


def _latency(stage: Path, baseline_bytes: bytes, session, example: list[np.ndarray], repeats: int) -> dict:
    """Median host latency of the fp32 ONNX export vs the compiled bundle: same process, runs
    interleaved, both called through the same session wrapper (its input checks cost ~1 us, a few
    percent of a small model)."""
    import onnxruntime as ort

    from .bundle.onnx_session import BundleSession

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    base = BundleSession(ort.InferenceSession(baseline_bytes, so, providers=["CPUExecutionProvider"]), {},
                         Path("fp32-baseline"))
    t_base, t_new = [], []
    for _ in range(5):
        base.run(*example)
        session.run(*example)
    for _ in range(repeats):
        t0 = time.perf_counter()
        base.run(*example)
        t1 = time.perf_counter()
        session.run(*example)
        t2 = time.perf_counter()
        t_base.append(t1 - t0)
        t_new.append(t2 - t1)
    b, n = float(np.median(t_base)), float(np.median(t_new))
    return {"host_fp32_onnx_ms": b * 1e3, "host_bundle_ms": n * 1e3, "speedup": b / n if n > 0 else None,
            "repeats": repeats, "threads": 1, "note": "measured on this host, onnxruntime/LiteRT, 1 thread"}


# -- the flow ----------------------------------------------------------------------------------

def build(model_spec: str | LoadedModel | None, cfg: BuildConfig, progress: Progress | None = None) -> BuildResult:
    """Compiles a model for `cfg.target` into `cfg.out`; see the module docstring.

    `model_spec` is a spec string (see `modelspec`), None for the embedded default, or an already
    loaded model (`LoadedModel(name, module, example_inputs, data)`) for library use.
    """
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    try:
        # numpy's BLAS on one thread: its spin-waiting threads fight torch's OpenMP pool on small
        # machines (measured on 2 cores: 37 eigh of 384x384 took 49 s instead of ~1 s).
        with staging.interrupts() as stop, threadpool_limits(limits=1, user_api="blas"):
            try:
                return _build(model_spec, cfg, progress)
            except BaseException as e:   # the stage is gone by now (_build_model removes it)
                if isinstance(e, KeyboardInterrupt) or stop.signum is not None:   # SIGINT / SIGTERM
                    signum = stop.signum or getattr(e, "signum", signal.SIGINT)
                    raise Interrupted(signum, getattr(e, "finished", "") or "the build stopped and removed its "
                                      f"staging folder; {cfg.out} is as it was") from None
                raise
    finally:
        torch.set_num_threads(threads)


def validate(cfg: BuildConfig, target: Target) -> None:
    """Checks every option of `cfg` before any model is loaded (a spec, a file, a threshold, a
    combination); raises the option's own error, one line naming it and what to do."""
    from .inputs.samples import check_npz
    from .finetune.recover import RecoverConfig
    from .passes.lowrank.rank import parse_rank_spec
    from .passes.prune import parse_prune_spec
    from .passes.quantize import parse_quant_spec

    if cfg.rank != "none":
        parse_rank_spec(cfg.rank)
    if cfg.budget_bytes is not None and cfg.budget_bytes <= 0:
        raise BuildError(f"--budget-bytes {cfg.budget_bytes}: give a positive number of bytes")
    parse_prune_spec(cfg.prune)
    parse_quant_spec(cfg.quant)
    if cfg.codecs:
        from .container.format import CODECS
        unknown = [c for c in cfg.codecs if c not in CODECS.values()]
        if unknown:
            raise BuildError(f"--codec {', '.join(unknown)}: unknown codec; use {', '.join(CODECS.values())}")
    th = cfg.thresholds
    for flag, value, lo in (("--min-agreement", th.min_top1_agreement, 0.0),
                            ("--min-agreement", th.min_decision_agreement, 0.0),
                            ("--min-cosine", th.min_cosine, -1.0), ("--min-correlation", th.min_correlation, -1.0),
                            ("--max-accuracy-drop", th.max_accuracy_drop * 100, 0.0)):
        hi = 100.0 if flag == "--max-accuracy-drop" else 1.0
        if not lo <= value <= hi:
            raise BuildError(f"{flag} {value:g} is outside [{lo:g}, {hi:g}]")
    if cfg.task:
        try:
            parse_output_specs(cfg.task, len([t for t in cfg.task.split(",") if t.strip()]))
        except FidelitySpecError as e:
            raise BuildError(f"--task: {e}") from None
    if cfg.calib is not None:
        check_npz(Path(cfg.calib), "--calib")
    if cfg.finetune not in (None, "calib"):
        check_npz(Path(cfg.finetune), "--finetune")
    if cfg.epochs < 1:
        raise BuildError(f"--epochs {cfg.epochs}: give at least 1 epoch")
    if cfg.regularize is not None:
        from .finetune.regularize import parse_regularizer
        if parse_regularizer(cfg.regularize) is not None and not cfg.finetune:
            raise BuildError(f"--regularize {cfg.regularize} trains the model: give --finetune calib or a .npz")
    if cfg.optimizer == "twa" and cfg.epochs < 2:
        raise BuildError(f"--optimizer twa needs --epochs 2 or more (a normal phase, then subspace training); "
                         f"got {cfg.epochs}")
    RecoverConfig(optimizer=cfg.optimizer, epochs=cfg.epochs, twa_warmup_epochs=max(1, cfg.epochs // 2))


class _StageClock:
    """Times the build's stages for the report (``timings_s``), reports progress, and is where a
    signal whose exception a library swallowed stops the build."""

    def __init__(self, progress: Progress):
        self.progress, self.timings = progress, {}
        self.start = time.perf_counter()

    def __call__(self, name: str, frac: float, t0: float) -> float:
        """Records stage `name` as begun at `t0`; returns the time the next stage begins."""
        self.timings[name] = round(time.perf_counter() - t0, 3)
        staging.check_stop()
        self.progress(name, frac)
        return time.perf_counter()


def _resolve(cfg: BuildConfig) -> tuple[BuildConfig, Target]:
    """The configuration with the target's defaults filled in (quant ``auto``, the backend), checked."""
    target = load_target(cfg.target)
    cfg = replace(cfg, quant=resolve_quant(cfg.quant, target), quant_auto=cfg.quant == "auto")
    backend = cfg.backend or target.default_backend
    if backend not in ("onnx", "tflite", "c"):
        raise BuildError(f"unknown backend {backend!r}; use onnx, tflite or c")
    if backend == "c":
        # Generated C runs full int8 only (the ecm_ kernels): no fallback to float activations.
        from .passes.quantize import parse_quant_spec
        if parse_quant_spec(cfg.quant).mode != "int8":
            raise BuildError(f"--backend c runs full int8; --quant {cfg.quant} needs --backend onnx or tflite")
        cfg = replace(cfg, quant_auto=False)
    cfg = replace(cfg, backend=backend)
    validate(cfg, target)
    return cfg, target


def _build(model_spec, cfg: BuildConfig, progress: Progress | None) -> BuildResult:
    """`build` for one process: resolve the configuration, take the ``--out`` lock, build."""
    cfg, target = _resolve(cfg)
    clock = _StageClock(progress or (lambda stage, frac: None))
    out = Path(cfg.out)
    rank, _ = _launch()
    if rank != 0 and not cfg.finetune:
        return BuildResult(out, {}, None, degraded=False, written=False)  # nothing to share out
    if rank != 0:
        return _build_model(model_spec, cfg, target, clock)
    staging.check_out(out)
    with staging.OutLock(out):
        staging.remove_stale(out)
        try:
            return _build_model(model_spec, cfg, target, clock)
        except OSError as e:
            where = e.filename2 or e.filename      # a copy's error names its source first
            ours = where is not None and Path(os.path.abspath(where)).is_relative_to(out.parent.absolute())
            if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG) or (ours and e.errno in (errno.EACCES, errno.EPERM)):
                what = "raise the file-size limit (ulimit -f)" if e.errno == errno.EFBIG else "free space"
                raise staging.OutputError(f"cannot write the bundle: {e.strerror} ({where or out.parent}); "
                                          f"{what} or choose another --out") from None
            raise


def _build_model(model_spec, cfg: BuildConfig, target: Target, clock: _StageClock) -> BuildResult:
    """`_build` from loading the model on: import, compress, fine-tune, the candidates' bundles."""
    progress, timings, stage_done, t_start = clock.progress, clock.timings, clock, clock.start
    from .report import make_report, write_report

    out = Path(cfg.out)
    backend = cfg.backend
    rank, _ = _launch()
    t = time.perf_counter()
    loaded = model_spec if isinstance(model_spec, LoadedModel) else load_model(model_spec)
    loaded = batch_first(loaded)
    check_finite(loaded)
    torch.manual_seed(cfg.seed)
    t = stage_done("load model", 0.05, t)

    try:
        graph = import_graph(loaded)
    except Exception:
        check_example_inputs(loaded)   # wrong shapes or dtypes: named as such, not as an export failure
        raise
    verify(graph)
    dump_dir = cfg.dump_ir if rank == 0 else None
    dump_graph(graph, dump_dir, 0, "import")
    _check_half(graph, cfg)
    original = graph.copy()
    if total_macs(graph) < 50_000_000:
        # Small graphs run faster on one thread: OpenMP spin-waits cost more than they save, and far
        # more when another process holds the other core (measured: 35 s -> 2 s for the digits build).
        torch.set_num_threads(1)
    t = stage_done("import (torch.export)", 0.15, t)

    batch = static_batch(graph)
    specs = output_specs(loaded, cfg, graph)
    calib, evals, labels, data_note = split_data(loaded, graph, calib_path=cfg.calib,
                                                  max_eval=cfg.max_eval_samples, seed=cfg.seed)
    quantized = cfg.quant.startswith("int8")
    finetune_info, regularized, pre = None, None, None
    if cfg.finetune:
        ft_data, ft_labels = (calib, None) if cfg.finetune == "calib" else load_samples(Path(cfg.finetune), graph)
    if cfg.regularize and cfg.regularize.strip().lower() != "none":
        # compression-aware training: fold, train the dense model with the low-rank penalty, then
        # factorize (the passes below) and recover (the fine-tuning after them)
        pre = _compress(graph, replace(cfg, rank="none", budget_bytes=None, prune="none"), 4.0, dump_dir)
        regularized = _finetune(graph, loaded, cfg, ft_data, ft_labels, progress, regularize=cfg.regularize)
        t = stage_done("compression-aware training", 0.3, t)
    compressed = _compress(graph, cfg, 1.0 if quantized else 4.0, dump_dir, first_index=1 + len(pre.timings if pre else ()))
    if pre is not None:
        compressed.records[:0], compressed.timings[:0] = pre.records, pre.timings
    n_dumped = 1 + len(compressed.timings)
    t = stage_done("compress (fold, factorize, prune)", 0.35, t)

    if cfg.finetune:
        finetune_info = _finetune(graph, loaded, cfg, ft_data, ft_labels, progress)
        dump_graph(graph, dump_dir, n_dumped, "finetune")
        n_dumped += 1
        if regularized is not None:
            finetune_info["regularized_training"] = regularized
        t = stage_done("fine-tune", 0.5, t)
    if rank != 0:
        # Under torchrun every rank trains its slice of each global batch (DDP keeps the weights
        # equal); rank 0 alone quantizes, writes, verifies and reports.
        return BuildResult(out, {}, None, degraded=False, written=False)

    from . import build_device as bd      # the device half (generated C, TFLite Micro); imports this module
    from .bundle import load_bundle

    try:
        ref = reference_outputs(loaded, evals, batch)   # once: every candidate is judged against it
    except Exception as e:   # the model's own forward() on the data: the user's to fix, in one line
        given = ", ".join(f"{a.dtype}{list(a.shape[1:])}" for a in evals)
        raise ModelSpecError(f"{loaded.name} fails on its {data_note} ({given} per sample): {first_line(e)}; "
                             "give example inputs of the shapes and dtypes its forward() expects") from None
    attempts: list[dict] = []
    for label, cand, records, search in candidates(graph, loaded, cfg, calib, batch, specs, data_note, labels,
                                                   target.kind == "mcu", progress, n_eval=len(evals[0])):
        t = stage_done(f"quantize + search ({label})", 0.6, t)
        dump_graph(cand, dump_dir, n_dumped, f"candidate {label}")   # after quantize, cluster, the search
        n_dumped += 1
        # the gate's refusals keep their reports in <out>.failed/; any exception removes the stage
        with staging.candidate_stage(out, keep_reports_on=(VerificationFailed, DoesNotFit)) as stage:
            if backend == "c":
                written = bd.write_c_bundle(stage, cand, target, cfg, evals)
                session = written["session"]
                t = stage_done("emit C + container", 0.7, t)
                fidelity = verify_bundle(session, loaded, cand, evals, ref, labels, specs, cfg, note=data_note)
                t = stage_done("verify (integer reference: the device's arithmetic)", 0.85, t)
            else:
                written = _write_bundle(stage, cand, target, backend, cfg)
                t = stage_done(f"emit {backend} + container", 0.7, t)
                # an emitted model the runtime rejects is our bug: BackendRuntimeError (an internal
                # error, exit 70) names the op and the layer
                session = load_bundle(stage, threads=1, node_map=written["emitted"].node_map)
                if backend == "tflite" and target.kind == "mcu":
                    # the board runs TFLite Micro: its kernels decide what runs and what it computes
                    host_session = session
                    session, tflm_arena = bd.tflm_checks(written)
                fidelity = verify_bundle(session, loaded, cand, evals, ref, labels, specs, cfg, note=data_note)
                if backend == "tflite" and target.kind == "mcu":
                    session = host_session          # host latency below: LiteRT, labelled so
                verifier = ("onnxruntime" if backend == "onnx" else
                            "TFLite Micro (reference kernels)" if target.kind == "mcu" else "LiteRT")
                t = stage_done(f"verify in {verifier}", 0.85, t)
            failures = fidelity.failures()
            attempts.append({"config": label, "passed": not failures, "failures": failures,
                             "container_bytes": (stage / "weights.ecw").stat().st_size})
            if failures and search.get("more"):   # --allow-degraded keeps a failing bundle only at the end
                log.info("%s failed the gate (%s); trying the next, less lossy configuration", label, failures)
                shutil.rmtree(stage, ignore_errors=True)
                continue

            baseline = fp32_onnx(original)
            device = None
            if backend == "c":
                device = bd.c_device_checks(stage, written, target)
                emu = device.get("emulated") if isinstance(device.get("emulated"), dict) else {}
                latency = {"host_fp32_onnx_ms": None, "host_bundle_ms": None, "speedup": None, "repeats": 0,
                           "emulated_instructions": emu.get("instructions_per_inference"),
                           "target_ms_emulated": emu.get("ms_at_clock")}
                t = stage_done("compile and run the generated C", 0.95, t)
            else:
                example = [x.numpy() for x in loaded.example_inputs]
                latency = _latency(stage, baseline, session, example, cfg.latency_repeats)
                t = stage_done("measure latency", 0.95, t)

            timings["total"] = round(time.perf_counter() - t_start, 3)
            report = make_report(
                model=loaded.name, target=target, backend=backend, config=config_dict(cfg), original=original, graph=cand,
                container_records=written["records"], emitted=written["emitted"], stage=stage,
                baseline_onnx_bytes=len(baseline), fidelity=fidelity, latency=latency,
                pass_records=compressed.records + [LayerRecord.of(r) for r in records],
                pass_timings=compressed.timings, finetune=finetune_info, timings=timings, data_note=data_note)
            if device is not None:
                report["device"] = device
                report["memory"] = bd.c_memory(written["cmodel"], device, target)
            elif backend == "tflite" and target.kind == "mcu":
                report["memory"] = bd.tflm_memory(report["memory"], tflm_arena, written, target)
            report["chosen"] = label          # the configuration shipped (quant mode, search plan)
            report["search"] = {k: v for k, v in search.items() if k != "more"}
            report["attempts"] = attempts
            oversize = [n for n in report["memory"]["notes"] if n.startswith("does not fit")]
            report["verdict"] = {"passed": not failures and not oversize, "failures": failures,
                                 "oversize": oversize, "allow_degraded": cfg.allow_degraded,
                                 "allow_oversize": cfg.allow_oversize}
            write_report(report, stage)
            if failures and not cfg.allow_degraded:
                raise VerificationFailed(
                    "verification failed: " + "; ".join(failures) + " (relax compression, add --finetune, or "
                    f"pass --allow-degraded; report in {staging.failed_dir(out)}/report.html)")
            if oversize and not cfg.allow_oversize:
                raise DoesNotFit("; ".join(oversize) + " (try --cluster-bits 4, --prune magnitude:global:0.5, a "
                                 f"larger board, or --allow-oversize; report in {staging.failed_dir(out)}/report.html)")
            staging.replace(stage, out)
            shutil.rmtree(staging.failed_dir(out), ignore_errors=True)
            break
    progress("done", 1.0)
    return BuildResult(out, report, fidelity, degraded=bool(failures))


def config_dict(cfg: BuildConfig) -> dict:
    d = asdict(cfg)
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}
