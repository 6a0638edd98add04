"""`build()`: the one place the whole flow is spelled out.

    model spec ─load─▶ torch.export ─frontend─▶ IR ─fold, factorize, prune─▶ (fine-tune) ─quantize─▶ IR
        ─backend─▶ model.onnx | model.tflite  +  weights.ecw  +  runtime/ (C sources)
        ─loader, real runtime─▶ fidelity vs the PyTorch model ─▶ report (terminal, JSON, HTML)

Everything is written into a temporary folder beside `--out` and renamed into place only when
the build and its verification succeeded, so a failed build leaves nothing half-written.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .analysis import total_macs
from .data_io import Samples, batches, load_samples, synthesize_samples
from .ir import Graph, verify
from .modelspec import LoadedModel, load_model
from .targets import Target, load_target
from .verify import Fidelity, Thresholds, compare

log = logging.getLogger(__name__)

Progress = Callable[[str, float], None]


class BuildError(RuntimeError):
    """The build cannot produce a bundle; the message is one line saying why and what to do."""


@dataclass(frozen=True)
class BuildConfig:
    target: str = "rpi4"
    out: Path = Path("out")
    backend: str | None = None              # None: the target's default
    rank: str = "erank"                     # see passes.lowrank.rank.parse_rank_spec; "none" to skip
    prune: str = "none"                     # see passes.prune.parse_prune_spec
    quant: str = "auto"                     # auto | int8[:options] | none (see passes.quantize)
    cluster_bits: int | None = None         # share int8 weights: <= 2^bits non-zero levels (lut codec)
    budget_bytes: int | None = None         # global weight-byte budget met by the rank search
    codecs: tuple[str, ...] | None = None   # None: every codec the target can decode
    calib: Path | None = None               # .npz of inputs (+ labels) for calibration and verification
    finetune: str | None = None             # "calib" or a .npz path: recover accuracy on this data
    optimizer: str = "fngd"
    epochs: int = 3
    thresholds: Thresholds = field(default_factory=Thresholds)
    allow_degraded: bool = False
    max_eval_samples: int = 512
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


def resolve_quant(spec: str, target: Target) -> str:
    """`auto`: full int8 where the target's runtime has int8 kernels, else int8 weights kept in
    storage and computed in fp32 (dequantized once at load: same size, no int8 speed penalty)."""
    if spec != "auto":
        return spec
    return "int8" if target.int8_kernels else "int8:weights_only"


def _quantize(graph: Graph, cfg: BuildConfig, calib: Samples, batch: int) -> list[dict]:
    from .passes.quantize import QuantizePass, parse_quant_spec

    qcfg = parse_quant_spec(cfg.quant)
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
        from .passes.cluster import ClusterConfig, WeightClusterPass
        records += [dict(r, **{"pass": "cluster"})
                    for r in WeightClusterPass(ClusterConfig(cfg.cluster_bits))(graph).records]
    return records


def _finetune(graph: Graph, loaded: LoadedModel, cfg: BuildConfig, data: Samples, labels, progress) -> dict:
    """Recovers accuracy: trains the compressed graph (factorized structure kept, pruned weights
    held at zero, int8 weights fake-quantized with a straight-through gradient when quantizing)
    against labels, or by distillation from the original model, then writes the weights back."""
    from .finetune.data import FinetuneData
    from .finetune.recover import RecoverConfig, recover
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
    result = recover(student, ft, rc, teacher=loaded.module, masks=masks,
                     progress=(lambda *a, **k: None), output_kinds=loaded.data.get("outputs"))
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
                "weights": "weights.ecw", "inputs": io(graph.inputs), "outputs": io(graph.outputs),
                "target": target.name, "edgecompile_version": __version__}
    if getattr(emitted, "dequantize_at_load", ()):
        manifest["dequantize_at_load"] = list(emitted.dequantize_at_load)
    (stage / "manifest.json").write_text(json.dumps(manifest, indent=2))
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
    for name in ("loader.py", "tflite_loader.py", "session_base.py"):
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


def _first_output(y) -> torch.Tensor:
    y = y[0] if isinstance(y, (tuple, list)) else getattr(y, "logits", y)
    if not isinstance(y, torch.Tensor):  # e.g. a transformers ModelOutput without logits
        y = next(v for v in y.values() if isinstance(v, torch.Tensor))
    return y


def _reference_outputs(loaded: LoadedModel, samples: Samples, batch: int) -> np.ndarray:
    """The PyTorch model's outputs: in chunks of 64 samples when the model takes any batch size
    (eager models usually do), else in the graph's static batch size."""
    n = (len(samples[0]) // batch) * batch
    with torch.no_grad():
        try:
            outs = [_first_output(loaded.module(*[torch.from_numpy(a[i:min(i + 64, n)]) for a in samples])).numpy()
                    for i in range(0, n, 64)]
            return np.concatenate(outs)
        except Exception:  # a model tied to its example batch size
            log.debug("reference model rejects other batch sizes; running batch %d", batch)
        return np.concatenate([_first_output(loaded.module(*[torch.from_numpy(x) for x in xs])).numpy()
                               for xs in batches(samples, batch)])


def _bundle_outputs(session, samples: Samples, batch: int) -> np.ndarray:
    return np.concatenate([session.run(*xs)[0] for xs in batches(samples, batch)])


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
        with threadpool_limits(limits=1, user_api="blas"):
            return _build(model_spec, cfg, progress)
    finally:
        torch.set_num_threads(threads)


def _build(model_spec, cfg: BuildConfig, progress: Progress | None) -> BuildResult:
    from .report import make_report, write_report

    progress = progress or (lambda stage, frac: None)
    timings: dict[str, float] = {}
    t_start = time.perf_counter()

    def stage_done(name: str, frac: float, t0: float) -> float:
        timings[name] = round(time.perf_counter() - t0, 3)
        progress(name, frac)
        return time.perf_counter()

    target = load_target(cfg.target)
    cfg = replace(cfg, quant=resolve_quant(cfg.quant, target))
    backend = cfg.backend or target.default_backend
    if backend not in ("onnx", "tflite"):
        raise BuildError(f"unknown backend {backend!r}; use onnx or tflite")
    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()) and not (out / "manifest.json").exists():
        raise BuildError(f"{out} exists and is not an edgecompile bundle; choose another --out")
    rank, _ = _launch()
    if rank != 0 and not cfg.finetune:
        return BuildResult(out, {}, None, degraded=False, written=False)  # nothing to share out
    t = time.perf_counter()
    loaded = model_spec if isinstance(model_spec, LoadedModel) else load_model(model_spec)
    torch.manual_seed(cfg.seed)
    t = stage_done("load model", 0.05, t)

    graph = _import(loaded)
    verify(graph)
    original = graph.copy()
    if total_macs(graph) < 50_000_000:
        # Small graphs run faster on one thread: OpenMP spin-waits cost more than they save, and far
        # more when another process holds the other core (measured: 35 s -> 2 s for the digits build).
        torch.set_num_threads(1)
    t = stage_done("import (torch.export)", 0.15, t)

    batch = int(graph.inputs[0].shape[0]) if graph.inputs and graph.inputs[0].shape else 1
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

    pass_records += _quantize(graph, cfg, calib, batch)
    verify(graph)
    t = stage_done("quantize (calibrate)", 0.6, t)

    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        written = _write_bundle(stage, graph, target, backend, cfg)
        t = stage_done(f"emit {backend} + container", 0.7, t)

        from .loader import load_bundle
        session = load_bundle(stage, threads=1)
        ref = _reference_outputs(loaded, evals, batch)
        got = _bundle_outputs(session, evals, batch)
        fidelity = compare(ref, got, labels)
        t = stage_done(f"verify in {'onnxruntime' if backend == 'onnx' else 'LiteRT'}", 0.85, t)

        baseline = fp32_onnx(original)
        example = [x.numpy() for x in loaded.example_inputs]
        latency = _latency(stage, baseline, session, example, cfg.latency_repeats)
        t = stage_done("measure latency", 0.95, t)

        timings["total"] = round(time.perf_counter() - t_start, 3)
        report = make_report(
            model=loaded.name, target=target, backend=backend, config=cfg, original=original, graph=graph,
            container_records=written["records"], emitted=written["emitted"], stage=stage,
            baseline_onnx_bytes=len(baseline), fidelity=fidelity, latency=latency, pass_records=pass_records,
            finetune=finetune_info, timings=timings, data_note=data_note)
        failures = fidelity.failures(cfg.thresholds)
        report["verdict"] = {"passed": not failures, "failures": failures, "allow_degraded": cfg.allow_degraded}
        write_report(report, stage)
        if failures and not cfg.allow_degraded:
            raise BuildError("verification failed: " + "; ".join(failures)
                             + " (relax compression, add --finetune, or pass --allow-degraded)")
        if out.exists():
            shutil.rmtree(out)
        stage.rename(out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    progress("done", 1.0)
    return BuildResult(out, report, fidelity, degraded=bool(failures))


def _data(loaded: LoadedModel, cfg: BuildConfig, graph: Graph) -> tuple[Samples, Samples, np.ndarray | None, str]:
    """Calibration and held-back evaluation samples: --calib file, the factory's data, or synthetic."""
    cap = _eval_cap(cfg, total_macs(graph) // max(graph.inputs[0].shape[0], 1))
    if cfg.calib is not None:
        samples, labels = load_samples(Path(cfg.calib), graph)
        n = len(samples[0])
        cut = max(1, int(0.8 * n)) if n > 1 else 1
        calib = tuple(a[:cut] for a in samples)
        evals = tuple(a[cut:] for a in samples) if n > 1 else calib
        lab = labels[cut:] if labels is not None and n > 1 else None
        return calib, _limit(evals, cap), _limit_labels(lab, cap), f"held-back 20% of {cfg.calib}"
    if "calib" in loaded.data:
        calib = loaded.data["calib"]
        evals = loaded.data.get("eval", calib)
        return calib, _limit(evals, cap), _limit_labels(loaded.data.get("labels"), cap), \
            "the model factory's held-back evaluation data"
    samples = synthesize_samples(graph, 128, seed=cfg.seed)
    log.warning("no calibration data given (--calib); using random inputs, fidelity figures are weak")
    return samples, _limit(samples, cap), None, "random inputs (no --calib given)"


def _eval_cap(cfg: BuildConfig, macs_per_sample: int) -> int:
    """Held-back samples to verify on: `max_eval_samples`, fewer for big models (~4e10 MACs of
    verification, at least 32 samples: a 20M-parameter encoder verifies on 32, the digits CNN on 512)."""
    return int(min(cfg.max_eval_samples, max(32, 4e10 // max(macs_per_sample, 1))))


def _limit(s: Samples, cap: int) -> Samples:
    return tuple(a[:cap] for a in s)


def _limit_labels(labels, cap: int):
    return None if labels is None else np.asarray(labels)[:cap]


def config_dict(cfg: BuildConfig) -> dict:
    d = asdict(cfg)
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}
