"""`edgecompile` command line: parses, calls one library function, renders. Nothing else.

Errors: every domain error derives from `errors.EdgecompileError` and carries its exit code; the
CLI maps that root alone to one ``error: <line>`` and the code (the table is in `errors` and the
README). Anything else is an internal error: one line ``internal error, please report: ...; log:
<file>`` with the traceback in the log file, exit 70. ``--debug`` shows tracebacks instead. A
reader of stdout that goes away (``edgecompile inspect B | head -1``) ends the run quietly with 141,
the status of a tool killed by SIGPIPE, as `cat` or `git` would.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import click

from .errors import EXIT_INTERNAL, EXIT_SIGPIPE, EdgecompileError, Interrupted, one_line


def _log_dir() -> Path:
    """Where internal-error tracebacks go: $EDGECOMPILE_LOG_DIR, else $XDG_CACHE_HOME/edgecompile,
    else ~/.cache/edgecompile, else the temp folder."""
    cache = os.environ.get("XDG_CACHE_HOME") or (Path.home() / ".cache" if Path.home().is_dir() else None)
    first = [Path(os.environ["EDGECOMPILE_LOG_DIR"])] if os.environ.get("EDGECOMPILE_LOG_DIR") else []
    for base in first + ([Path(cache) / "edgecompile"] if cache else []) + [Path(tempfile.gettempdir()) / "edgecompile"]:
        try:
            base.mkdir(parents=True, exist_ok=True)
            if os.access(base, os.W_OK):
                return base
        except OSError:
            continue
    return Path(tempfile.gettempdir())


def _write_log(exc: BaseException) -> Path | None:
    """Writes the traceback of `exc` (and the command line) to a new log file; its path, or None."""
    try:
        fd, name = tempfile.mkstemp(prefix=time.strftime("crash-%Y%m%d-%H%M%S-"), suffix=".log", dir=_log_dir())
        with os.fdopen(fd, "w") as f:
            f.write("edgecompile " + " ".join(sys.argv[1:]) + "\n\n")
            f.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        return Path(name)
    except OSError:
        return None


def _closed_pipes() -> list[int]:
    """Which of stdout (1) and stderr (2) are pipes whose reader has exited (poll says POLLERR):
    a `BrokenPipeError` from anything else (a pipe to a child process) stays an internal error."""
    import select

    if not hasattr(select, "poll"):
        return []
    poll = select.poll()
    for fd in (1, 2):
        poll.register(fd, select.POLLOUT)
    try:
        return [fd for fd, ev in poll.poll(0) if ev & select.POLLERR]
    except OSError:
        return []


def _quiet_exit(code: int, fds: list[int]) -> None:
    """Exits with `code`, `fds` pointed at /dev/null first: the interpreter flushes stdout at exit,
    and a flush into the closed pipe would print 'Exception ignored ... BrokenPipeError'."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for fd in fds:
        os.dup2(devnull, fd)
    sys.exit(code)


def _fail(msg: str, code: int, as_json: bool) -> None:
    try:
        if as_json:
            click.echo(json.dumps({"ok": False, "error": msg, "exit_code": code}))
        else:
            click.echo(f"error: {msg}", err=True)
    except BrokenPipeError:
        _quiet_exit(code, [1, 2])      # nobody reads the line; the status still says what happened
    sys.exit(code)


def _handle(exc: BaseException, debug: bool, as_json: bool) -> None:
    """Ends the process for an exception out of a command: one line and the kind's exit code."""
    closed = _closed_pipes() if isinstance(exc, BrokenPipeError) else []
    if closed:
        _quiet_exit(EXIT_SIGPIPE, closed)
    if debug:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    if isinstance(exc, KeyboardInterrupt):
        exc = Interrupted(getattr(exc, "signum", signal.SIGINT))
    if isinstance(exc, EdgecompileError) and exc.exit_code != EXIT_INTERNAL:
        _fail(exc.line, int(exc.exit_code), as_json)
    log_path = _write_log(exc)
    what = exc.line if isinstance(exc, EdgecompileError) else f"{type(exc).__name__}: {one_line(exc) or '(no message)'}"
    where = f"; log: {log_path}" if log_path else ""
    _fail(f"internal error, please report: {what}{where}", EXIT_INTERNAL, as_json)


def _on_sigterm(signum, _frame) -> None:
    """SIGTERM as SIGINT: a `KeyboardInterrupt` that `_handle` turns into one line and exit 143
    (Python's default would end the process with no word)."""
    exc = KeyboardInterrupt()
    exc.signum = signum
    raise exc


class _Group(click.Group):
    """The command group: every exception out of a command ends as one line and its exit code."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["edgecompile.argv"] = list(args)     # for --json when a subcommand fails
        try:
            return super().parse_args(ctx, args)      # --help and --version print here
        except BrokenPipeError:
            closed = _closed_pipes()
            if closed:
                _quiet_exit(EXIT_SIGPIPE, closed)
            raise

    def invoke(self, ctx: click.Context):
        argv = ctx.meta.get("edgecompile.argv", [])
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit):
            raise
        except BaseException as e:   # KeyboardInterrupt included: exit 130, not click's "Aborted!" 1
            _handle(e, bool(ctx.params.get("debug")), "--json" in argv)


def _console(stderr: bool = False):
    """A console wide enough for the per-layer table when output is piped (rich assumes 80), that
    leaves a closed pipe to `_handle` (rich's own handler exits 1, our "verification failed")."""
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            self.quiet = True
            raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))

    c = _Console(stderr=stderr)
    return c if c.is_terminal or stderr else _Console(width=160)


@click.group(cls=_Group)
@click.version_option(package_name="edgecompile")
@click.option("-v", "--verbose", is_flag=True, help="Log what each stage does.")
@click.option("--debug", is_flag=True, help="Show the Python traceback of any error (internal or not).")
def main(verbose: bool, debug: bool) -> None:
    """edgecompile: compile a PyTorch model into a small, verified bundle for an edge board."""
    if threading.current_thread() is threading.main_thread():   # signal.signal works there only
        # before the slow imports (a build installs its own); put back when the command ends
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
        click.get_current_context().call_on_close(lambda: signal.signal(signal.SIGTERM, previous))
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
@click.option("--optimizer", type=click.Choice(["auto", "fngd", "adamw", "sgd", "kfac", "twa"]), default="auto",
              show_default=True)
@click.option("--epochs", type=int, default=3, show_default=True)
@click.option("--regularize", default=None,
              help="Compression-aware training: erank:λ | nuclear:λ. With --finetune, trains the dense model with a "
                   "low-rank penalty first, then factorizes (--rank / --budget-bytes) and recovers.")
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
@click.option("--dump-ir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Write the IR's text dump after import and after every pass into this folder (NN-<pass>.txt).")
def build(model, target, out, backend, stream_weights, calib, rank, prune, quant, cluster_bits, budget_bytes, codecs, finetune,
          optimizer, epochs, regularize, optimize, task, min_agreement, min_cosine, min_correlation, max_eval,
          allow_oversize, max_accuracy_drop, allow_degraded, as_json, dump_ir):
    """Compile MODEL (file.py:factory, package.module:factory or a .pt2; default: the embedded digits CNN)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from .build import BuildConfig, build as run_build
    if not logging.getLogger().isEnabledFor(logging.INFO):
        # torch.export logs its failures itself (tens of lines); ours is one line (--verbose shows them)
        logging.getLogger("torch").setLevel(logging.CRITICAL)
    from .report import render_terminal
    from .report.fidelity import Thresholds

    name = "digits" if model is None else Path(model.split(":")[0]).stem.split(".")[-1]
    cfg = BuildConfig(target=target, out=out or Path("out") / f"{name}-{target}", backend=backend, rank=rank,
                      prune=prune, quant=quant, cluster_bits=cluster_bits, budget_bytes=budget_bytes,
                      codecs=tuple(codecs) or None,
                      calib=calib, finetune=finetune, optimizer=optimizer, epochs=epochs, regularize=regularize,
                      thresholds=Thresholds(min_top1_agreement=min_agreement, min_cosine=min_cosine,
                                            max_accuracy_drop=max_accuracy_drop / 100,
                                            min_decision_agreement=min_agreement, min_correlation=min_correlation),
                      task=task, optimize=optimize, max_eval_samples=max_eval, allow_oversize=allow_oversize,
                      allow_degraded=allow_degraded, stream_weights=stream_weights, dump_ir=dump_ir)
    console = _console(stderr=True)
    if as_json or not console.is_terminal:  # no bar in logs and pipes: it would leave stray lines
        result = run_build(model, cfg)
    else:
        with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console,
                      transient=True) as bar:
            task = bar.add_task("building", total=1.0)
            result = run_build(model, cfg, lambda stage, frac: bar.update(task, completed=frac,
                                                                         description=stage))
    if not result.written:
        return  # a torchrun rank other than 0: rank 0 prints the report
    if as_json:
        click.echo(json.dumps({"ok": True, "out": str(result.out_dir), "report": result.report}, default=str))
    else:
        render_terminal(result.report, _console())
        click.echo(f"bundle written to {result.out_dir}/ (report.html, report.json)")


@main.command()
@click.argument("model", required=False)
@click.option("--calib", type=click.Path(path_type=Path), default=None,
              help=".npz of inputs (+ labels), as for build: sensitivities on the calibration part.")
@click.option("--out", "-o", type=click.Path(path_type=Path), default=None,
              help="Folder for analysis.json and analysis.html [out/<model>-analysis].")
@click.option("--task", default=None, help="What each output is, as for build (e.g. logits).")
@click.option("--target", "-t", default=None, help="A board: check the recommended weights against its flash.")
@click.option("--min-agreement", type=float, default=0.97, show_default=True)
@click.option("--min-cosine", type=float, default=0.97, show_default=True)
@click.option("--min-correlation", type=float, default=0.97, show_default=True)
@click.option("--intrinsic-dim", is_flag=True,
              help="Also measure the intrinsic dimension (subspace training; needs labelled training data).")
@click.option("--train", type=click.Path(path_type=Path), default=None,
              help="--intrinsic-dim: .npz of training inputs and labels [the factory's data['train']].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the analysis as JSON.")
def analyze(model, calib, out, task, target, min_agreement, min_cosine, min_correlation, intrinsic_dim, train, seed, as_json):
    """Per-layer spectra, sensitivity to every compression the passes offer, a recommended compression
    per layer, rank rules compared at equal size, and (--intrinsic-dim) the intrinsic dimension."""
    from .analyze import AnalyzeConfig, analyze as run_analyze
    from .analyze.render import render_terminal, write
    from .report.fidelity import Thresholds

    name = "digits" if model is None else Path(model.split(":")[0]).stem.split(".")[-1]
    cfg = AnalyzeConfig(calib=calib, task=task, target=target, intrinsic_dim=intrinsic_dim, train=train, seed=seed,
                        thresholds=Thresholds(min_top1_agreement=min_agreement, min_cosine=min_cosine,
                                              min_decision_agreement=min_agreement, min_correlation=min_correlation))
    rep = run_analyze(model, cfg)
    out = out or Path("out") / f"{name}-analysis"
    write(rep, out)
    if as_json:
        click.echo(json.dumps({"ok": True, "out": str(out), "analysis": rep}, default=str))
    else:
        render_terminal(rep, _console())
        click.echo(f"analysis written to {out}/ (analysis.html, analysis.json)")


@main.command()
@click.option("--json", "as_json", is_flag=True)
def targets(as_json):
    """List the target boards and their key facts."""
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
    _console().print(table)


@main.command()
@click.argument("bundle", type=click.Path(exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def inspect(bundle, as_json):
    """Print the report of an existing BUNDLE and check it: manifest, every tensor's CRC, and the model
    file loaded by its runtime with the container's weights."""
    from .bundle.check import inspect_bundle
    from .report import render_terminal

    info = inspect_bundle(bundle)
    if as_json:
        click.echo(json.dumps({"ok": True, **info}, default=str))
        return
    if info["report"] is not None:
        render_terminal(info["report"], _console())
    click.echo(f"integrity: {info['tensors']} tensors, {info['container_bytes']:,} bytes, all CRC-32 checks passed; "
               f"{info['manifest']['model']} loads in its runtime")


if __name__ == "__main__":
    main()
