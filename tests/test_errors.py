"""One error root with an exit code per kind (edgecompile.errors), and every kind of failure driven
through the CLI: the exit code, one ``error:`` line, no traceback, ``--out`` untouched."""

import importlib
import pkgutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import edgecompile
from edgecompile import errors
from edgecompile.cli import main
from edgecompile.errors import EXIT_CODES, KINDS, EdgecompileError

ROOT = Path(__file__).resolve().parents[1]

# Exceptions that are signals, not errors: raised by a signal handler and turned into
# `errors.Interrupted` by `build()` (a KeyboardInterrupt so that no `except Exception` swallows it).
NOT_ERRORS = {"edgecompile.staging.StopSignal"}


def _all_exception_classes() -> list[type]:
    """Every exception class defined in an edgecompile module (all modules imported)."""
    for mod in pkgutil.walk_packages(edgecompile.__path__, "edgecompile."):
        if mod.name.endswith("__main__"):
            continue
        importlib.import_module(mod.name)
    seen, todo = set(), [BaseException]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub not in seen:
                seen.add(sub)
                todo.append(sub)
    return sorted((c for c in seen if c.__module__.startswith("edgecompile.")),
                  key=lambda c: f"{c.__module__}.{c.__qualname__}")


def test_every_error_class_has_a_kind_and_a_documented_code():
    classes = _all_exception_classes()
    names = {f"{c.__module__}.{c.__qualname__}" for c in classes}
    # the ones issue 15 names, so that the walk is known to reach them
    for expected in ("edgecompile.frontend.errors.FrontendError", "edgecompile.backends.onnx.builder.OnnxEmitError",
                     "edgecompile.bundle.manifest.BundleError", "edgecompile.finetune.data.FinetuneDataError",
                     "edgecompile.finetune.recover.RecoverConfigError", "edgecompile.ir.verify.VerifyError",
                     "edgecompile.container.errors.ContainerError", "edgecompile.build.DoesNotFit"):
        assert expected in names
    assert len(classes) >= 40
    for cls in classes:
        name = f"{cls.__module__}.{cls.__qualname__}"
        if name in NOT_ERRORS or cls is EdgecompileError or cls in KINDS:
            continue
        assert issubclass(cls, EdgecompileError), f"{name} does not derive from EdgecompileError"
        kinds = [k for k in KINDS if issubclass(cls, k)]
        assert kinds, f"{name} derives from no kind ({', '.join(k.__name__ for k in KINDS)})"
        assert cls.exit_code in EXIT_CODES, f"{name}: exit code {cls.exit_code} is not documented"
        assert cls.exit_code in {k.exit_code for k in kinds}, f"{name}: exit code {cls.exit_code} is not its kind's"


def test_kinds_keep_their_builtin_bases_and_codes():
    from edgecompile.build import BuildError, DoesNotFit, VerificationFailed
    from edgecompile.container import ChecksumMismatch
    from edgecompile.frontend import UnsupportedOpError
    from edgecompile.ir import VerifyError
    from edgecompile.bundle import BackendRuntimeError, BundleError

    assert issubclass(UnsupportedOpError, ValueError) and UnsupportedOpError.exit_code == 3
    assert issubclass(BuildError, RuntimeError) and BuildError.exit_code == 3
    assert VerificationFailed.exit_code == 1 and issubclass(VerificationFailed, BuildError)
    assert DoesNotFit.exit_code == 5 and issubclass(DoesNotFit, BuildError)
    assert ChecksumMismatch.exit_code == 4 and issubclass(ChecksumMismatch, ValueError)
    assert BundleError.exit_code == 4
    assert VerifyError.exit_code == 70 and BackendRuntimeError.exit_code == 70   # compiler bugs
    assert errors.Interrupted(2).exit_code == 130 and errors.Interrupted(15).exit_code == 143


def test_readme_documents_every_exit_code():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("Exit codes"):]
    for code in EXIT_CODES:
        assert f"| {code} |" in table, f"exit code {code} missing from the README table"


def test_error_line_is_one_line():
    e = errors.InputError("a\n  b\tc")
    assert e.line == "a b c"
    assert errors.InputError("").line == "InputError"


# -- the CLI, one row per kind of failure ----------------------------------------------------------

FACTORIES = '''
import pathlib, time, torch
HERE = pathlib.Path(__file__).parent
(HERE / "imported").write_text("yes")        # tells the test the model file was loaded

class M(torch.nn.Module):
    def __init__(self, n=8):
        super().__init__()
        self.fc = torch.nn.Linear(n, 6)
    def forward(self, x):
        return self.fc(x)

class Branchy(torch.nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return x

def good():
    torch.manual_seed(0)
    return M().eval(), (torch.randn(1, 8),)

def wrong_shape():
    return M().eval(), (torch.randn(1, 5),)

def wrong_dtype():
    return M().eval(), (torch.randint(0, 3, (1, 8)),)

def inf_weights():
    m = M().eval()
    with torch.no_grad():
        m.fc.weight[0, 0] = float("inf")
    return m, (torch.randn(1, 8),)

def data_dependent():
    return Branchy().eval(), (torch.randn(1, 8),)

def broken_metric():
    torch.manual_seed(0)
    return M().eval(), (torch.randn(1, 8),), {"metric": lambda ref, got: 1 / 0}

def half():
    return M().eval().half(), (torch.randn(1, 8).half(),)

def nan_buffer():
    m = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.BatchNorm1d(4)).eval()
    m[1].running_var[0] = float("nan")
    return m, (torch.randn(1, 8),)

def bfloat16():
    return M().eval().bfloat16(), (torch.randn(1, 8).bfloat16(),)

def exits():
    import sys
    sys.exit(5)

def pipe_metric():
    torch.manual_seed(0)
    return M().eval(), (torch.randn(1, 8),), {"metric": lambda ref, got: _epipe()}

def _epipe():
    raise BrokenPipeError(32, "Broken pipe")     # a pipe of the model's own, not the CLI's stdout

def big():
    torch.manual_seed(0)
    return M(300_000).eval(), (torch.randn(1, 300_000),)
'''


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    (d / "m.py").write_text(FACTORIES)
    calib = np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32)
    np.savez(d / "calib.npz", x=calib)
    np.savez(d / "one.npz", x=calib[:1])
    (d / "notnpz.npz").write_text("hello")
    np.savez(d / "nan.npz", x=np.where(calib > 1, np.nan, calib))
    np.savez(d / "object.npz", x=np.array([{"a": 1}, 2], dtype=object))
    (d / "afile").write_text("not a folder")
    return d


def _cli(args, out: Path | None):
    runner = CliRunner()
    res = runner.invoke(main, [*args, *(["--out", str(out)] if out is not None else [])], catch_exceptions=False)
    return res.exit_code, res.stderr, res.stdout


def _error_lines(stderr: str) -> list[str]:
    """stderr without log records (``WARNING name: ...``): what the user reads as the error."""
    return [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith(("WARNING ", "INFO "))]


# (id, args, exit code, needle in the line, whether the model file may be imported)
BEFORE_LOADING = [
    ("usage", ["build", "{m}:good", "--bogus"], 2, "No such option", False),
    ("unknown target", ["build", "{m}:good", "--target", "esp32"], 3, "unknown target 'esp32'", False),
    ("target as a path", ["build", "{m}:good", "--target", "../pyproject"], 3, "unknown target '../pyproject'", False),
    ("epochs 0", ["build", "{m}:good", "--epochs", "0"], 3, "--epochs 0", False),
    ("epochs -1", ["build", "{m}:good", "--epochs", "-1"], 3, "--epochs -1", False),
    ("twa one epoch", ["build", "{m}:good", "--finetune", "calib", "--optimizer", "twa", "--epochs", "1"], 3,
     "--optimizer twa needs --epochs 2", False),
    ("min-agreement", ["build", "{m}:good", "--min-agreement", "1.5"], 3, "--min-agreement 1.5 is outside", False),
    ("prune", ["build", "{m}:good", "--prune", "magnitude:7"], 3, "prune", False),
    ("rank", ["build", "{m}:good", "--rank", "banana"], 3, "rank", False),
    ("quant", ["build", "{m}:good", "--quant", "int3"], 3, "int3", False),
    ("calib missing", ["build", "{m}:good", "--calib", "{d}/nope.npz"], 3, "no such file", False),
    ("calib not npz", ["build", "{m}:good", "--calib", "{d}/notnpz.npz"], 3, "not a readable .npz", False),
    ("codec", ["build", "{m}:good", "--codec", "lzma"], 3, "unknown codec", False),
    ("calib NaN", ["build", "{m}:good", "--calib", "{d}/nan.npz"], 3, "array 'x' holds inf or NaN", False),
    ("calib pickle", ["build", "{m}:good", "--calib", "{d}/object.npz"], 3, "Object arrays cannot be loaded", False),
]


@pytest.mark.parametrize("case", BEFORE_LOADING, ids=[c[0] for c in BEFORE_LOADING])
def test_options_are_checked_before_the_model_is_loaded(case, models, tmp_path):
    _, args, code, needle, _ = case
    (models / "imported").unlink(missing_ok=True)
    out = tmp_path / "out"
    got, err, _ = _cli([a.format(m=models / "m.py", d=models) for a in args], out)
    assert got == code, err
    assert "Traceback" not in err and needle in err, err
    if code != 2:                  # click's usage error has its own three lines
        assert len(_error_lines(err)) == 1, err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name != "out"]
    assert not (models / "imported").exists(), "the model was loaded before the options were checked"


def test_bad_out_is_refused_before_the_model_is_loaded(models, tmp_path):
    (models / "imported").unlink(missing_ok=True)
    for out, needle in ((models / "afile", "is an existing file"), (Path("/dev/null/x"), "/dev/null is not a folder")):
        code, err, _ = _cli(["build", f"{models / 'm.py'}:good"], out)
        assert code == 3 and len(_error_lines(err)) == 1 and needle in err, err
    assert (models / "afile").read_text() == "not a folder"
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        import os
        if os.access(ro, os.W_OK):
            pytest.skip("running as root: a read-only folder is writable")
        code, err, _ = _cli(["build", f"{models / 'm.py'}:good"], ro / "b")
        assert code == 3 and "not writable" in err and len(_error_lines(err)) == 1
    finally:
        ro.chmod(0o755)
        assert not (models / "imported").exists()


MODEL_FAILURES = [
    ("wrong shape", "wrong_shape", [], 3, "fails on its example inputs ((1, 5) float32)"),
    ("wrong dtype", "wrong_dtype", [], 3, "(int64[8] per sample): mat1 and mat2 must have the same dtype"),
    ("inf weights", "inf_weights", [], 3, "hold inf or NaN"),
    ("torch.export", "data_dependent", [], 3, "torch.export failed for Branchy"),
    ("NaN buffer", "nan_buffer", [], 3, "weights 1.running_var hold inf or NaN"),
    ("bfloat16", "bfloat16", [], 3, "use bfloat16, which edgecompile does not import"),
    ("sys.exit in the factory", "exits", [], 3, "raised SystemExit: 5"),
    ("float16 and int8", "half", ["--quant", "int8"], 3, "computes in float16; int8 quantization starts from float32"),
    ("verification", "good", ["--calib", "{d}/calib.npz", "--quant", "int8", "--optimize", "none",
                              "--prune", "magnitude:0.9", "--min-cosine", "0.9999", "--task", "embedding"], 1,
     "verification failed"),
    ("internal", "broken_metric", ["--calib", "{d}/calib.npz", "--quant", "none", "--optimize", "none"], 70,
     "internal error, please report: ZeroDivisionError"),
]


@pytest.mark.parametrize("case", MODEL_FAILURES, ids=[c[0] for c in MODEL_FAILURES])
def test_model_failures_end_in_one_line(case, models, tmp_path):
    _, factory, extra, code, needle = case
    out = tmp_path / "out"
    got, err, _ = _cli(["build", f"{models / 'm.py'}:{factory}", *[a.format(d=models) for a in extra]], out)
    assert got == code, err
    lines = _error_lines(err)
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert needle in lines[0]
    assert not out.exists()
    left = sorted(p.name for p in tmp_path.iterdir() if p.name != "out")
    assert left in ([], ["out.failed"]), left
    if code == 70:
        log = Path(lines[0].rsplit("log: ", 1)[1])
        assert "ZeroDivisionError" in log.read_text() and "Traceback" in log.read_text()


def test_debug_shows_the_traceback(models, tmp_path):
    code, err, _ = _cli(["--debug", "build", f"{models / 'm.py'}:wrong_shape"], tmp_path / "o")
    assert code == 3 and "Traceback" in err and err.rstrip().splitlines()[-1].startswith("error: ")


def test_json_failure_is_one_object(models, tmp_path):
    import json

    code, _, out = _cli(["build", f"{models / 'm.py'}:good", "--epochs", "0", "--json"], tmp_path / "o")
    assert code == 3 and json.loads(out) == {"ok": False, "error": "--epochs 0: give at least 1 epoch",
                                             "exit_code": 3}


def test_does_not_fit(models, tmp_path):
    out = tmp_path / "out"
    code, err, _ = _cli(["build", f"{models / 'm.py'}:big", "--target", "nrf52840", "--backend", "onnx", "--quant",
                         "none", "--optimize", "none", "--max-eval", "2"], out)
    assert code == 5, err
    lines = _error_lines(err)
    assert len(lines) == 1 and "does not fit" in lines[0], err
    assert not out.exists() and (tmp_path / "out.failed" / "report.json").is_file()


def test_full_disk_is_one_line_and_leaves_nothing(models, tmp_path, monkeypatch):
    """The disk filling up while the bundle is written (simulated at the writer): exit 3, one line,
    the staging folder removed, --out untouched."""
    import errno

    import edgecompile.build as build_module

    def full(stage, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(stage / "weights.ecw"))

    monkeypatch.setattr(build_module, "_write_bundle", full)
    out = tmp_path / "out"
    code, err, _ = _cli(["build", f"{models / 'm.py'}:good", "--calib", str(models / "calib.npz"), "--quant", "none",
                         "--optimize", "none"], out)
    assert code == 3, err
    lines = _error_lines(err)
    assert len(lines) == 1 and "cannot write the bundle: No space left on device" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_one_calibration_sample_is_not_called_held_back(models):
    from edgecompile.inputs.model import LoadedModel
    from edgecompile.inputs.samples import split_data
    from edgecompile.ir import Graph, infer_shapes

    g = Graph("g")
    x = g.add_input("x", (1, 8))
    g.outputs = [g.add_node("relu", [x], name="act").output]
    infer_shapes(g)
    loaded = LoadedModel("g", None, (), {})
    _, evals, _, note = split_data(loaded, g, calib_path=models / "one.npz", max_eval=None)
    assert len(evals[0]) == 1 and "held-back" not in note and "also used for calibration" in note
    _, evals, _, note = split_data(loaded, g, calib_path=models / "calib.npz", max_eval=None)
    assert len(evals[0]) == 8 and note.startswith("held-back 20%")


def _closed_stdout(args: list[str], close_stderr: bool = False) -> tuple[int, str]:
    """Runs the CLI with a stdout pipe whose reader is gone before anything is written (as after
    ``| head -1``); the exit status and stderr."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, "-m", "edgecompile", *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env)
    p.stdout.close()
    if close_stderr:
        p.stderr.close()
        return p.wait(timeout=120), ""
    err = p.stderr.read().decode()
    return p.wait(timeout=120), err


def test_a_closed_stdout_ends_quietly_with_141(models, tmp_path):
    """`inspect B | head -1`, `build --json | head -c 10`: exit 141 (as if killed by SIGPIPE), no
    message, no crash log; the bundle a build finished is in --out."""
    from edgecompile.cli import _log_dir

    logs = set(_log_dir().glob("crash-*.log"))
    out = tmp_path / "b"
    args = ["build", f"{models / 'm.py'}:good", "--quant", "none", "--optimize", "none", "--out", str(out)]
    for argv in (args + ["--json"], ["inspect", str(out)], ["inspect", str(out), "--json"], ["targets"], ["--help"]):
        code, err = _closed_stdout(argv)
        assert code == 141, (argv, err)
        assert "Traceback" not in err and "error" not in err and "Exception ignored" not in err, (argv, err)
    assert (out / "manifest.json").is_file()
    # a failure whose line nobody can read still ends with its own code
    assert _closed_stdout(["build", f"{models / 'm.py'}:good", "--epochs", "0"], close_stderr=True)[0] == 3
    assert set(_log_dir().glob("crash-*.log")) == logs


def test_a_broken_pipe_of_the_model_is_an_internal_error(models, tmp_path):
    code, err, _ = _cli(["build", f"{models / 'm.py'}:pipe_metric", "--quant", "none", "--optimize", "none"],
                        tmp_path / "o")
    assert code == 70 and "internal error, please report: BrokenPipeError" in err, err
