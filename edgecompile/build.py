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
from .analysis import total_macs
from .errors import EXIT_DOES_NOT_FIT, EXIT_VERIFICATION, DoesNotFitError, InputError, Interrupted, VerificationError
from .data_io import Samples, as_samples, load_samples, synthesize_samples
from .ir import Graph, verify
from .modelspec import LoadedModel, ModelSpecError, batch_first, load_model
from .targets import Target, load_target
from .choose import candidates, resolve_quant
from .fidelity import (
    Fidelity, FidelitySpecError, OutputSpec, Thresholds, checks_from, compare, parse_output_specs,
)
from .reference import bundle_outputs, reference_outputs

log = logging.getLogger(__name__)

Progress = Callable[[str, float], None]


class BuildError(InputError, RuntimeError):
    """The build cannot produce a bundle; the message is one line saying why and what to do.
    `exit_code` is the CLI's exit status for it (3: bad input)."""


class VerificationFailed(BuildError, VerificationError):
    """The bundle is below the fidelity gate (exit 1); its report is kept in ``<out>.failed/``."""

    exit_code = EXIT_VERIFICATION


class DoesNotFit(BuildError, DoesNotFitError):
    """The bundle does not fit the target's flash or RAM (exit 5); the report is in ``<out>.failed/``."""

    exit_code = EXIT_DOES_NOT_FIT


@dataclass(frozen=True)
class BuildConfig:
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
    optimizer: str = "fngd"
    epochs: int = 3
    thresholds: Thresholds = field(default_factory=Thresholds)
    task: str | None = None                 # output kinds, e.g. "logits" or "probability,state" (fidelity)
    allow_degraded: bool = False
    allow_oversize: bool = False            # keep a bundle that does not fit the target's flash / RAM
    max_eval_samples: int | None = None     # None: verify on the whole held-back set
    stream_weights: str = "auto"            # --backend c: auto | all | none (backends.c_model.emit_c)
    latency_repeats: int = 100
    seed: int = 0


@dataclass
class BuildResult:
    out_dir: Path
    report: dict
    fidelity: Fidelity | None
    degraded: bool
    written: bool = True                    # False on torchrun ranks other than 0


def _launch() -> tuple[int, int]:
    """This process's rank and the world size under torchrun ((0, 1) when not launched by it)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


# -- stages ------------------------------------------------------------------------------------

def _import(loaded: LoadedModel) -> Graph:
    from .frontend import import_exported_program, import_model

    if loaded.exported is not None:
        return import_exported_program(loaded.exported)
    return import_model(loaded.module, loaded.example_inputs, name=loaded.name)


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _check_example_inputs(loaded: LoadedModel) -> None:
    """After a failed import: runs the model once on its example inputs, so that a wrong shape or
    dtype is named as such (one line), not as whatever torch.export made of it."""
    if loaded.module is None:
        return
    try:
        with torch.no_grad():
            loaded.module(*loaded.example_inputs)
    except Exception as e:   # whatever forward() raises on these inputs
        given = ", ".join(f"{tuple(x.shape)} {str(x.dtype).replace('torch.', '')}" if isinstance(x, torch.Tensor)
                          else type(x).__name__ for x in loaded.example_inputs)
        raise ModelSpecError(f"{loaded.name} fails on its example inputs ({given}): {_first_line(e)}; give "
                             "example inputs of the shapes and dtypes its forward() expects") from None


def _check_finite(loaded: LoadedModel) -> None:
    """Parameters holding inf or NaN, or buffers holding NaN (a BatchNorm's running variance), make
    every output comparison meaningless: name them and stop. (Buffers may be infinite on purpose,
    e.g. a -inf attention mask; NaN never is.) Also a dtype the IR lacks (bfloat16), named here
    rather than deep in the import."""
    from .ir.torch_ops import NUMPY_DTYPES

    if loaded.module is None:
        return
    tensors = [*loaded.example_inputs, *loaded.module.parameters(), *loaded.module.buffers()]
    odd = sorted({str(t.dtype).replace("torch.", "") for t in tensors
                  if isinstance(t, torch.Tensor) and t.dtype not in NUMPY_DTYPES})
    if odd:
        raise BuildError(f"the model or its example inputs use {', '.join(odd)}, which edgecompile does not "
                         "import; return model.float() and float32 example inputs from the factory")
    bad = [name for name, p in loaded.module.named_parameters()
           if p.is_floating_point() and not bool(torch.isfinite(p.detach()).all())]
    bad += [name for name, b in loaded.module.named_buffers() if b.is_floating_point() and bool(b.isnan().any())]
    if bad:
        raise BuildError(f"weights {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''} hold inf or NaN "
                         f"({len(bad)} tensors); fix the checkpoint (e.g. reload it, or torch.nan_to_num the "
                         "weights) before compiling")


def _check_half(graph: Graph, cfg: BuildConfig) -> None:
    """int8 quantization starts from float32: a float16/bfloat16 model is named with what to do."""
    half = sorted({str(np.asarray(c.data).dtype) for c in graph.consts.values()} & {"float16", "bfloat16"}
                  | {v.dtype for v in graph.inputs} & {"float16", "bfloat16"})
    if half and cfg.quant.startswith("int8"):
        raise BuildError(f"the model computes in {half[0]}; int8 quantization starts from float32: return "
                         "model.float() and float32 example inputs from the factory, or pass --quant none")


def _compress(graph: Graph, cfg: BuildConfig, bytes_per_param: float) -> list[dict]:
    """Fold, clean up, factorize, prune: the target-independent compression passes, in order."""
    from .passes.fold import CleanupPass, FoldBatchNormPass
    from .passes.lowrank.factorize import LowRankConfig, LowRankPass
    from .passes.lowrank.rank import parse_rank_spec
    from .passes.prune import make_prune_pass, parse_prune_spec

    passes = [FoldBatchNormPass(), CleanupPass()]
    if cfg.budget_bytes is not None or cfg.rank != "none":
        passes.append(LowRankPass(LowRankConfig(
            rank=parse_rank_spec(cfg.rank if cfg.rank != "none" else "erank"),
            budget_bytes=cfg.budget_bytes, bytes_per_param=bytes_per_param)))
    prune = make_prune_pass(parse_prune_spec(cfg.prune))
    if prune is not None:
        passes.append(prune)
    records = []
    for p in passes:
        res = p(graph)
        records += [dict(r, **{"pass": p.name}) for r in res.records]
    return records


def _finetune(graph: Graph, loaded: LoadedModel, cfg: BuildConfig, data: Samples, labels, progress) -> dict:
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
                       checkpoint_dir=str(ckpt),
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
    return {"optimizer": result.optimizer, "epochs": len(result.epochs), "batch_size": bs,
            "loss": result.loss_description,
            "qat_bits": qat, "seconds": round(time.perf_counter() - t0, 3), "device": result.device,
            "history": [{"epoch": e.epoch, "loss": e.loss, "accuracy": e.accuracy, "seconds": e.wall_s}
                        for e in result.epochs]}


def _emit(graph: Graph, backend: str, embed: bool):
    if backend == "onnx":
        from .backends.onnx import emit_onnx
        return emit_onnx(graph, embed_weights=embed, minify=not embed)
    from .backends.tflite import emit_tflite
    return emit_tflite(graph, embed_weights=embed)


def _write_bundle(stage: Path, graph: Graph, target: Target, backend: str, cfg: BuildConfig) -> dict:
    from .container import write_container

    emitted = _emit(graph, backend, embed=False)
    model_name = "model.onnx" if backend == "onnx" else "model.tflite"
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
    if getattr(emitted, "dequantize_at_load", ()):
        manifest["dequantize_at_load"] = list(emitted.dequantize_at_load)
    (stage / "manifest.json").write_text(json.dumps(manifest, separators=(",", ":")))  # compact: bytes count
    _copy_loader(stage)
    from .backends.c_bundle import write_c_bundle
    write_c_bundle(stage, stage / "weights.ecw", target.kind, target.name, target.triple, target.cpu)
    return {"emitted": emitted, "records": records, "model_file": model_name}


def _copy_loader(stage: Path) -> None:
    """Ships the torch-free loader and container reader so the bundle runs on a board without edgecompile."""
    pkg = Path(__file__).resolve().parent
    dst = stage / "python" / "edgecompile"
    (dst / "container").mkdir(parents=True)
    (dst / "__init__.py").write_text(f'__version__ = "{__version__}"\n')
    for f in (pkg / "container").glob("*.py"):
        shutil.copy2(f, dst / "container" / f.name)
    for name in ("errors.py", "loader.py", "tflite_loader.py", "session_base.py"):
        if (pkg / name).exists():
            shutil.copy2(pkg / name, dst / name)


def fp32_onnx(graph: Graph) -> bytes:
    """The baseline: the uncompressed model as a self-contained fp32 ONNX file, batch norms folded
    (what onnxruntime does itself at load, and what its quantization tools expect)."""
    from .backends.onnx import emit_onnx
    from .passes.fold import CleanupPass, FoldBatchNormPass

    g = graph.copy()
    FoldBatchNormPass()(g)
    CleanupPass()(g)
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
    batch = int(graph.inputs[0].shape[0]) if graph.inputs and graph.inputs[0].shape else 1
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

    from .loader import BundleSession

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
    from .data_io import check_npz
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
    if cfg.optimizer == "twa" and cfg.epochs < 2:
        raise BuildError(f"--optimizer twa needs --epochs 2 or more (a normal phase, then subspace training); "
                         f"got {cfg.epochs}")
    RecoverConfig(optimizer=cfg.optimizer, epochs=cfg.epochs, twa_warmup_epochs=max(1, cfg.epochs // 2))


def _build(model_spec, cfg: BuildConfig, progress: Progress | None) -> BuildResult:
    progress = progress or (lambda stage, frac: None)
    timings: dict[str, float] = {}
    t_start = time.perf_counter()

    def stage_done(name: str, frac: float, t0: float) -> float:
        timings[name] = round(time.perf_counter() - t0, 3)
        staging.check_stop()            # a signal whose exception a library swallowed stops here
        progress(name, frac)
        return time.perf_counter()

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
    out = Path(cfg.out)
    rank, _ = _launch()
    if rank != 0 and not cfg.finetune:
        return BuildResult(out, {}, None, degraded=False, written=False)  # nothing to share out
    if rank != 0:
        return _build_model(model_spec, cfg, target, progress, timings, stage_done, t_start)
    staging.check_out(out)
    with staging.OutLock(out):
        staging.remove_stale(out)
        try:
            return _build_model(model_spec, cfg, target, progress, timings, stage_done, t_start)
        except OSError as e:
            where = e.filename2 or e.filename      # a copy's error names its source first
            ours = where is not None and Path(os.path.abspath(where)).is_relative_to(out.parent.absolute())
            if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG) or (ours and e.errno in (errno.EACCES, errno.EPERM)):
                what = "raise the file-size limit (ulimit -f)" if e.errno == errno.EFBIG else "free space"
                raise staging.OutputError(f"cannot write the bundle: {e.strerror} ({where or out.parent}); "
                                          f"{what} or choose another --out") from None
            raise


def _build_model(model_spec, cfg: BuildConfig, target: Target, progress: Progress, timings: dict,
                 stage_done, t_start: float) -> BuildResult:
    """`_build` from loading the model on: import, compress, fine-tune, the candidates' bundles."""
    from .report import make_report, write_report

    out = Path(cfg.out)
    backend = cfg.backend
    rank, _ = _launch()
    t = time.perf_counter()
    loaded = model_spec if isinstance(model_spec, LoadedModel) else load_model(model_spec)
    loaded = batch_first(loaded)
    _check_finite(loaded)
    torch.manual_seed(cfg.seed)
    t = stage_done("load model", 0.05, t)

    try:
        graph = _import(loaded)
    except Exception:
        _check_example_inputs(loaded)   # wrong shapes or dtypes: named as such, not as an export failure
        raise
    verify(graph)
    _check_half(graph, cfg)
    original = graph.copy()
    if total_macs(graph) < 50_000_000:
        # Small graphs run faster on one thread: OpenMP spin-waits cost more than they save, and far
        # more when another process holds the other core (measured: 35 s -> 2 s for the digits build).
        torch.set_num_threads(1)
    t = stage_done("import (torch.export)", 0.15, t)

    batch = int(graph.inputs[0].shape[0]) if graph.inputs and graph.inputs[0].shape else 1
    specs = output_specs(loaded, cfg, graph)
    calib, evals, labels, data_note = _data(loaded, cfg, graph)
    quantized = cfg.quant.startswith("int8")
    pass_records = _compress(graph, cfg, bytes_per_param=1.0 if quantized else 4.0)
    t = stage_done("compress (fold, factorize, prune)", 0.35, t)

    finetune_info = None
    if cfg.finetune:
        if cfg.finetune == "calib":
            ft_data, ft_labels = calib, None
        else:
            ft_data, ft_labels = load_samples(Path(cfg.finetune), graph)
        finetune_info = _finetune(graph, loaded, cfg, ft_data, ft_labels, progress)
        t = stage_done("fine-tune", 0.5, t)
    if rank != 0:
        # Under torchrun every rank trains its slice of each global batch (DDP keeps the weights
        # equal); rank 0 alone quantizes, writes, verifies and reports.
        return BuildResult(out, {}, None, degraded=False, written=False)

    from . import build_device as bd      # the device half (generated C, TFLite Micro); imports this module
    from .loader import load_bundle

    try:
        ref = reference_outputs(loaded, evals, batch)   # once: every candidate is judged against it
    except Exception as e:   # the model's own forward() on the data: the user's to fix, in one line
        given = ", ".join(f"{a.dtype}{list(a.shape[1:])}" for a in evals)
        raise ModelSpecError(f"{loaded.name} fails on its {data_note} ({given} per sample): {_first_line(e)}; "
                             "give example inputs of the shapes and dtypes its forward() expects") from None
    attempts: list[dict] = []
    for label, cand, records, search in candidates(graph, loaded, cfg, calib, batch, specs, data_note, labels,
                                                   target.kind == "mcu", progress, time.perf_counter() - t_start):
        t = stage_done(f"quantize + search ({label})", 0.6, t)
        stage = staging.make_stage(out)
        try:
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
                model=loaded.name, target=target, backend=backend, config=cfg, original=original, graph=cand,
                container_records=written["records"], emitted=written["emitted"], stage=stage,
                baseline_onnx_bytes=len(baseline), fidelity=fidelity, latency=latency,
                pass_records=pass_records + records, finetune=finetune_info, timings=timings, data_note=data_note)
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
                    f"pass --allow-degraded; report in {_failed_dir(out)}/report.html)")
            if oversize and not cfg.allow_oversize:
                raise DoesNotFit("; ".join(oversize) + " (try --cluster-bits 4, --prune magnitude:global:0.5, a "
                                 f"larger board, or --allow-oversize; report in {_failed_dir(out)}/report.html)")
            staging.replace(stage, out)
            shutil.rmtree(_failed_dir(out), ignore_errors=True)
            break
        except BaseException as e:
            if isinstance(e, (VerificationFailed, DoesNotFit)):
                _keep_failed(stage, out)
            shutil.rmtree(stage, ignore_errors=True)
            raise
    progress("done", 1.0)
    return BuildResult(out, report, fidelity, degraded=bool(failures))


def _failed_dir(out: Path) -> Path:
    return out.with_name(out.name + ".failed")


def _keep_failed(stage: Path, out: Path) -> None:
    """A failed build's reports go to ``<out>.failed/`` (replacing an older one), so the user
    can see why; the bundle files are not kept, so nothing there can be mistaken for a bundle."""
    failed = _failed_dir(out)
    shutil.rmtree(failed, ignore_errors=True)
    failed.mkdir(parents=True, exist_ok=True)
    for name in ("report.json", "report.html"):
        if (stage / name).exists():
            shutil.copy2(stage / name, failed / name)


def _data(loaded: LoadedModel, cfg: BuildConfig, graph: Graph) -> tuple[Samples, Samples, np.ndarray | None, str]:
    """Calibration and held-back evaluation samples: --calib file, the factory's data, or synthetic.
    The user's eval set is used whole unless `max_eval_samples` caps it (the note says so)."""
    if cfg.calib is not None:
        samples, labels = load_samples(Path(cfg.calib), graph)
        n = len(samples[0])
        cut = max(1, int(0.8 * n)) if n > 1 else 1
        calib = tuple(a[:cut] for a in samples)
        evals = tuple(a[cut:] for a in samples) if n > 1 else calib
        lab = labels[cut:] if labels is not None and n > 1 else None
        note = (f"held-back 20% of {cfg.calib}" if n > 1 else
                f"the one sample of {cfg.calib}, also used for calibration (not held back: give more samples)")
    elif "calib" in loaded.data:
        calib = as_samples(graph, loaded.data["calib"], "the factory's data['calib']")
        evals = as_samples(graph, loaded.data.get("eval", calib), "the factory's data['eval']")
        lab, note = loaded.data.get("labels"), "the factory's held-back evaluation data"
    else:
        calib = synthesize_samples(graph, 128, seed=cfg.seed)
        log.warning("no calibration data given (--calib); using random inputs, fidelity figures are weak")
        # Our own random inputs: ~4e10 MACs of verification (at least 32 samples) is plenty.
        macs = total_macs(graph) // max(graph.inputs[0].shape[0], 1) if graph.inputs else 0
        cap = int(min(128, max(32, 4e10 // max(macs, 1))))
        return calib, _limit(calib, cap), None, f"{cap} random inputs (no --calib given)"
    n_eval = len(evals[0])
    if cfg.max_eval_samples is not None and n_eval > cfg.max_eval_samples:
        note += f" (capped by --max-eval at {cfg.max_eval_samples} of {n_eval} samples)"
        evals, lab = _limit(evals, cfg.max_eval_samples), _limit_labels(lab, cfg.max_eval_samples)
    if lab is not None and len(lab) < len(evals[0]):
        raise BuildError(f"{len(lab)} labels for {len(evals[0])} evaluation samples; give one label per sample")
    return calib, evals, None if lab is None else np.asarray(lab), note


def _limit(s: Samples, cap: int) -> Samples:
    return tuple(a[:cap] for a in s)


def _limit_labels(labels, cap: int):
    return None if labels is None else np.asarray(labels)[:cap]


def config_dict(cfg: BuildConfig) -> dict:
    d = asdict(cfg)
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}
