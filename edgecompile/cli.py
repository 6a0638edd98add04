"""`edgecompile` command line: parses, calls one library function, renders. Nothing else.

Exit codes: 0 success; 1 the bundle failed verification (below the fidelity thresholds); 2 usage
error (click); 3 bad input (unknown target, model spec, data, unsupported op, impossible budget);
4 corrupt or truncated bundle/container; 5 the bundle does not fit the target's flash or RAM.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

EXIT_VERIFY, EXIT_INPUT, EXIT_CORRUPT = 1, 3, 4


def _input_errors() -> tuple[type[BaseException], ...]:
    """Domain errors that mean "your input is wrong": one line, exit code 3."""
    from .data_io import DataError
    from .ir import VerifyError
    from .modelspec import ModelSpecError
    from .passes.base import PassError
    from .targets import TargetError

    errors: list[type[BaseException]] = [DataError, ModelSpecError, PassError, TargetError, VerifyError]
    try:
        from .frontend import UnsupportedOpError
        errors.append(UnsupportedOpError)
    except ImportError:
        pass
    try:
        from .passes.lowrank.rank import BudgetError, RankSpecError
        errors += [BudgetError, RankSpecError]
    except ImportError:
        pass
    from .passes.prune import PruneSpecError
    from .passes.quantize import QuantSpecError
    from .passes.lowrank.factorize import LowRankConfigError
    errors += [PruneSpecError, QuantSpecError, LowRankConfigError]
    try:
        from .backends.tflite import TFLiteUnsupportedError
        errors.append(TFLiteUnsupportedError)
    except ImportError:
        pass
    try:
        from .backends.tflm import TflmUnsupported
        errors.append(TflmUnsupported)
    except ImportError:
        pass
    try:
        from .backends.onnx import OnnxEmitError
        errors.append(OnnxEmitError)
    except ImportError:
        pass
    return tuple(errors)


def _console():
    """A console wide enough for the per-layer table when output is piped (rich assumes 80)."""
    from rich.console import Console

    c = Console()
    return c if c.is_terminal else Console(width=160)


def _fail(msg: str, code: int, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"ok": False, "error": msg, "exit_code": code}))
    else:
        click.echo(f"error: {msg}", err=True)
    sys.exit(code)


@click.group()
@click.version_option(package_name="edgecompile")
@click.option("-v", "--verbose", is_flag=True, help="Log what each stage does.")
def main(verbose: bool) -> None:
    """edgecompile: compile a PyTorch model into a small, verified bundle for an edge board."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@main.command()
@click.argument("model", required=False)
@click.option("--target", "-t", default="rpi4", show_default=True, help="Board name (see `edgecompile targets`).")
@click.option("--out", "-o", type=click.Path(path_type=Path), default=None, help="Bundle folder [out/<model>-<target>].")
@click.option("--backend", type=click.Choice(["onnx", "tflite", "c"]), default=None,
              help="[the target's default] c: generated C inference (int8 kernels, weights streamed from the container)")
@click.option("--stream-weights", type=click.Choice(["auto", "all", "none"]), default="auto", show_default=True,
              help="--backend c: which weight tensors stay entropy-coded in flash and are decoded before their layer "
                   "on every run: all (smallest flash), none (fastest), auto (where decoding is cheap beside the "
                   "layer's arithmetic, plus what it takes to fit the board's flash).")
@click.option("--calib", type=click.Path(path_type=Path), default=None,
              help=".npz of inputs (named like the model inputs, or arr_0..) and optional labels.")
@click.option("--rank", default="none", show_default=True,
              help="Low-rank spec: erank[:scale] | energy:0.95 | fraction:0.25 | fixed:32 | none.")
@click.option("--prune", default="none", show_default=True,
              help="magnitude:0.5 | magnitude:global:0.6 | channel:0.25 | none.")
@click.option("--quant", default="auto", show_default=True,
              help="auto (int8 where the target has int8 kernels, else int8 weights computed in fp32) | "
                   "int8[:weights_only|minmax|mse|percentile[=P]] | none.")
@click.option("--cluster-bits", type=click.IntRange(1, 6), default=None,
              help="Share int8 weights: at most 2^N non-zero levels per layer, stored by the lut codec.")
@click.option("--budget-bytes", type=int, default=None, help="Global weight-byte budget for the rank search.")
@click.option("--codec", "codecs", multiple=True, help="Allowed codecs (repeatable) [all the target decodes].")
@click.option("--finetune", default=None, help="Recover accuracy: 'calib' or a .npz of training inputs(+labels).")
@click.option("--optimizer", type=click.Choice(["fngd", "adamw", "sgd", "kfac", "twa"]), default="fngd",
              show_default=True)
@click.option("--epochs", type=int, default=3, show_default=True)
@click.option("--optimize", type=click.Choice(["size", "balanced", "latency", "none"]), default="size",
              show_default=True,
              help="Per-layer compression chosen by measurement under the gate: size (sparsity + shared levels "
                   "down to 2 bits), balanced (>= 4 bits, <= 50% sparsity), latency / none (no search).")
@click.option("--task", default=None,
              help="What each output is, in output order: logits | embedding | probability | regression | "
                   "detection | state | auto, comma-separated (e.g. 'probability,state') [the factory's, else auto].")
@click.option("--min-agreement", type=float, default=0.97, show_default=True,
              help="Top-1 agreement (logits) and decision agreement (probability) thresholds.")
@click.option("--min-cosine", type=float, default=0.97, show_default=True,
              help="Per-sample cosine threshold (embedding, state, auto outputs).")
@click.option("--min-correlation", type=float, default=0.97, show_default=True,
              help="Correlation-over-the-set threshold (probability, regression, detection, scalar outputs).")
@click.option("--max-eval", type=click.IntRange(1), default=None,
              help="Verify on at most N held-back samples [all of them].")
@click.option("--allow-oversize", is_flag=True, help="Keep a bundle that does not fit the target's flash or RAM.")
@click.option("--max-accuracy-drop", type=float, default=0.5, show_default=True,
              help="Allowed accuracy drop in points, for classifiers with labelled eval data.")
@click.option("--allow-degraded", is_flag=True, help="Keep a bundle that fails the fidelity thresholds.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (no progress bar).")
def build(model, target, out, backend, stream_weights, calib, rank, prune, quant, cluster_bits, budget_bytes, codecs, finetune,
          optimizer, epochs, optimize, task, min_agreement, min_cosine, min_correlation, max_eval, allow_oversize,
          max_accuracy_drop, allow_degraded, as_json):
    """Compile MODEL (file.py:factory, package.module:factory or a .pt2; default: the embedded digits CNN)."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from .build import BuildConfig, BuildError, build as run_build
    from .report import render_terminal
    from .fidelity import Thresholds

    name = "digits" if model is None else Path(model.split(":")[0]).stem.split(".")[-1]
    cfg = BuildConfig(target=target, out=out or Path("out") / f"{name}-{target}", backend=backend, rank=rank,
                      prune=prune, quant=quant, cluster_bits=cluster_bits, budget_bytes=budget_bytes,
                      codecs=tuple(codecs) or None,
                      calib=calib, finetune=finetune, optimizer=optimizer, epochs=epochs,
                      thresholds=Thresholds(min_top1_agreement=min_agreement, min_cosine=min_cosine,
                                            max_accuracy_drop=max_accuracy_drop / 100,
                                            min_decision_agreement=min_agreement, min_correlation=min_correlation),
                      task=task, optimize=optimize, max_eval_samples=max_eval, allow_oversize=allow_oversize,
                      allow_degraded=allow_degraded, stream_weights=stream_weights)
    console = Console(stderr=True)
    errors = _input_errors()
    try:
        from .container import ContainerError
    except ImportError:
        ContainerError = ()  # noqa: N806
    try:
        if as_json or not console.is_terminal:  # no bar in logs and pipes: it would leave stray lines
            result = run_build(model, cfg)
        else:
            with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console,
                          transient=True) as bar:
                task = bar.add_task("building", total=1.0)
                result = run_build(model, cfg, lambda stage, frac: bar.update(task, completed=frac,
                                                                             description=stage))
    except BuildError as e:
        _fail(str(e), e.exit_code, as_json)
    except ContainerError as e:
        _fail(str(e), EXIT_CORRUPT, as_json)
    except errors as e:
        _fail(str(e), EXIT_INPUT, as_json)
    if not result.written:
        return  # a torchrun rank other than 0: rank 0 prints the report
    if as_json:
        click.echo(json.dumps({"ok": True, "out": str(result.out_dir), "report": result.report}, default=str))
    else:
        render_terminal(result.report, _console())
        click.echo(f"bundle written to {result.out_dir}/ (report.html, report.json)")


@main.command()
@click.option("--json", "as_json", is_flag=True)
def targets(as_json):
    """List the target boards and their key facts."""
    from rich.console import Console
    from rich.table import Table

    from .targets import all_targets

    ts = all_targets()
    if as_json:
        click.echo(json.dumps([{k: getattr(t, k) for k in t.__dataclass_fields__} for t in ts], default=list))
        return
    table = Table(title="targets")
    for col in ("name", "kind", "cpu", "features", "cores × MHz", "RAM", "flash", "backend", "codecs"):
        table.add_column(col)
    for t in ts:
        table.add_row(t.name, t.kind, t.cpu, ",".join(t.features), f"{t.cores} × {t.clock_mhz:g}",
                      f"{t.ram_kib:,} KiB", f"{t.flash_kib:,} KiB", t.default_backend, ",".join(t.codecs))
    Console().print(table)


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def inspect(bundle, as_json):
    """Print the report of an existing BUNDLE and check its integrity (every tensor's CRC)."""
    from .bundle_inspect import BundleError, inspect_bundle
    from .report import render_terminal

    try:
        info = inspect_bundle(bundle)
    except BundleError as e:
        _fail(str(e), EXIT_CORRUPT if e.corrupt else EXIT_INPUT, as_json)
    if as_json:
        click.echo(json.dumps({"ok": True, **info}, default=str))
        return
    if info["report"] is not None:
        render_terminal(info["report"], _console())
    click.echo(f"integrity: {info['tensors']} tensors, {info['container_bytes']:,} bytes, all CRC-32 checks passed")


if __name__ == "__main__":
    main()
