"""The command line as a hostile user meets it (issue 14): ~170 runs of the real `edgecompile`
CLI, each in its own process, with bad models, bad options, bad folders, a full disk, signals at
every stage, two builds into one ``--out``, and ``inspect`` on every kind of damaged bundle.

Run: ``.venv/bin/python bench/bench_cli_matrix.py [--only model,option,folder,signal,loop,concurrent,inspect]
[--loop 20] [--jobs 3] [--json]`` (about 30 minutes on 2 shared cores at load 10 with 3 jobs; the
tiny models keep every build to seconds).

Each case runs ``python hook.py STAGE DELAY MARKER edgecompile-args...``: `hook.py` (written into
the work folder) wraps one stage function of `edgecompile.build` (or `staging.replace`, with
every rename slowed by DELAY on each side) so that it writes MARKER and sleeps DELAY first, then
calls `edgecompile.cli.main` -- the real CLI, nothing else changed. A signal case waits for the
marker, then sends its signal. After a SIGKILL the *next* build into the same ``--out`` (a model
file that does not exist: it stops with exit 3 after its clean-up) must remove what the killed
build left and put a set-aside bundle back.

Checks, per case:

* ``traceback``: "Traceback" on stderr or stdout.
* ``wrong code``: the exit status is not the case's documented one (README, "Exit codes"); a
  hang past the timeout counts here too.
* ``lines``: more lines on stderr than the case allows (log records -- ``WARNING``/``INFO``
  lines -- not counted; one ``error:`` line for a failure, click's 3 for usage, none for success).
* ``bad json``: with ``--json``, stdout is not one object ``{"ok": false, ..., "exit_code": rc}``.
* ``partial``: after a failure ``--out`` is not byte-identical to before, or after a success (or
  a signal that came after the swap) it is not a bundle that `inspect_bundle` accepts.
* ``lost``: ``--out`` held a bundle before and holds none after (after the next build, for SIGKILL).
* ``stray``: ``.NAME.stage-*``, ``.NAME.old-*`` or ``.NAME.lock`` left beside ``--out``.

The ``loop`` group kills a build ``--loop`` times with SIGKILL at a random moment of the
replacement (each rename slowed by 0.25 s on each side) and counts lost bundles.

Full disk: when this process may mount (root), a 128 KiB tmpfs (a bundle takes ~370 KiB), a 512 KiB
one holding the bundle to replace, and a
read-only tmpfs, mounted in the work folder and unmounted at the end; always, a file-size limit
(``RLIMIT_FSIZE`` 16 KiB: writes past it fail with EFBIG, Python ignores SIGXFSZ). As a non-root
user a read-only folder is a ``chmod 555`` one (root writes there regardless, so it is skipped).

Measured 2026-12-05 (``--loop 20 --jobs 3``, 2 shared cores at load ~10, as root: tmpfs mounted):
259 runs (model 50, option 88, folder 17, signal 35, concurrent 2, inspect 47, loop 20), 0 in every
column, 0 internal-error logs; a ``--only loop`` rerun left the old bundle 11 times, the new one 9,
none 0. Before the fixes it found: ``--out`` with a name too long and a file-size limit (exit 70);
NaN in a BatchNorm buffer and a NaN ``--calib`` (exit 1, "cosine nan"); bfloat16, a pickled or
header-bomb ``--calib`` (exit 70); ``sys.exit(n)`` in a model file or factory (exit n); FNGD fine-
tuning an uncompressed model (zero gradients -> NaN weights); SIGTERM during the imports (killed, no
line).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from edgecompile.bundle.check import inspect_bundle  # noqa: E402
from edgecompile.container import encode_container, read_container  # noqa: E402
from edgecompile.errors import EXIT_CODES  # noqa: E402

FACTORIES = '''
import sys, torch
class M(torch.nn.Module):
    def __init__(self, n=8, m=6):
        super().__init__()
        self.fc = torch.nn.Linear(n, m)
    def forward(self, x):
        return self.fc(x)
class Branchy(torch.nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return x
class Nonzero(torch.nn.Module):
    def forward(self, x):
        return torch.nonzero(x > 0).float()
class ItemLoop(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)
    def forward(self, x):
        for _ in range(int(x.abs().sum().item()) % 3 + 1):
            x = self.fc(x)
        return x
class NoWeights(torch.nn.Module):
    def forward(self, x):
        return torch.relu(x) * 2 + 1
class Raises(torch.nn.Module):
    def forward(self, x):
        raise RuntimeError("boom in forward")
class BN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)
    def forward(self, x):
        return self.bn(self.conv(x))
class Fft(torch.nn.Module):
    def forward(self, x):
        return torch.fft.rfft(x).abs()
class ArgMax(M):
    def forward(self, x):
        return self.fc(x).argmax(-1)
class WithNone(M):
    def forward(self, x):
        return self.fc(x), None
class Dropout(M):
    def forward(self, x):
        return torch.nn.functional.dropout(self.fc(x), 0.5, self.training)
def _m(n=8):
    torch.manual_seed(0)
    return M(n).eval()
def good():
    return _m(), (torch.randn(1, 8),)
def good_batch4():
    return _m(), (torch.randn(4, 8),)
def wrong_shape():
    return _m(), (torch.randn(1, 5),)
def wrong_rank():
    return _m(), (torch.randn(8),)
def wrong_dtype():
    return _m(), (torch.randint(0, 3, (1, 8)),)
def bool_input():
    return _m(), (torch.ones(1, 8, dtype=torch.bool),)
def inf_weights():
    m = _m()
    with torch.no_grad():
        m.fc.weight[0, 0] = float("inf")
    return m, (torch.randn(1, 8),)
def nan_weights():
    m = _m()
    with torch.no_grad():
        m.fc.bias[1] = float("nan")
    return m, (torch.randn(1, 8),)
def nan_buffer():
    m = BN().eval()
    m.bn.running_var[0] = float("nan")
    return m, (torch.randn(1, 3, 8, 8),)
def nan_input():
    return _m(), (torch.full((1, 8), float("nan")),)
def half():
    return _m().half(), (torch.randn(1, 8).half(),)
def bfloat16():
    return _m().bfloat16(), (torch.randn(1, 8).bfloat16(),)
def double():
    return _m().double(), (torch.randn(1, 8).double(),)
def no_weights():
    return NoWeights().eval(), (torch.randn(1, 8),)
def data_dependent():
    return Branchy().eval(), (torch.randn(1, 8),)
def nonzero():
    return Nonzero().eval(), (torch.randn(1, 8),)
def item_loop():
    return ItemLoop().eval(), (torch.randn(1, 8),)
def forward_raises():
    return Raises().eval(), (torch.randn(1, 8),)
def unsupported_op():
    return Fft().eval(), (torch.randn(1, 8),)
def int_output():
    return ArgMax().eval(), (torch.randn(1, 8),)
def none_output():
    return WithNone().eval(), (torch.randn(1, 8),)
def train_mode():
    return Dropout().train(), (torch.randn(1, 8),)
def returns_string():
    return "a model"
def module_only():
    return _m()
def inputs_not_tensors():
    return _m(), ([1, 2, 3],)
def no_inputs():
    return _m(), ()
def factory_raises():
    raise RuntimeError("the factory broke")
def needs_argument(size):
    return _m(), (torch.randn(1, size),)
def bad_data_dict():
    return _m(), (torch.randn(1, 8),), {"calib": "nope"}
def bad_data_key():
    return _m(), (torch.randn(1, 8),), {"banana": 1}
def exits():
    sys.exit(5)
not_callable = 42
'''


# -- the cases -------------------------------------------------------------------------------------

@dataclass
class Case:
    """One run of the CLI. `argv` may use {w} (the work folder), {m} (the factories file), {out}."""

    group: str
    name: str
    argv: list[str]
    codes: tuple[int, ...]
    before: str = "none"              # --out before the run: "none" or "bundle" (an old, tagged one)
    out: str | None = None            # a fixed --out (else <case folder>/b); "{w}" allowed
    max_lines: int | None = None      # None: 0 for success, 3 for usage (2), else 1
    stage: str = "none"               # the stage the hook holds (see HOOK)
    delay: float = 0.0
    sig: int | None = None
    sig_after: float = 0.2            # seconds after the marker
    fsize: int | None = None          # RLIMIT_FSIZE for the run
    twice: bool = False               # two runs at once into one --out (the first held at verify)
    inspect_only: bool = False        # --out is the bundle `inspect` reads (not to be changed)
    restores: bool = False            # the run must put a set-aside bundle back into --out
    prepare: object = None            # fn(case_dir, out) -> None, before the snapshot
    result: dict = field(default_factory=dict)


QN = ["--quant", "none", "--optimize", "none"]     # the fastest build: no int8 search


def model_cases() -> list[Case]:
    c = [
        ("good (onnx, fast)", "{m}:good", QN, (0,)),
        ("good (defaults: int8 search)", "{m}:good", [], (0,)),
        ("good (tflite)", "{m}:good", ["--backend", "tflite", *QN], (0,)),
        ("good batch 4", "{m}:good_batch4", QN, (0,)),
        ("wrong shape", "{m}:wrong_shape", QN, (3,)),
        ("wrong rank", "{m}:wrong_rank", QN, (0, 3)),
        ("wrong dtype int64", "{m}:wrong_dtype", QN, (3,)),
        ("wrong dtype bool", "{m}:bool_input", QN, (3,)),
        ("inf weights", "{m}:inf_weights", QN, (3,)),
        ("NaN weights", "{m}:nan_weights", QN, (3,)),
        ("NaN buffer (BN running_var)", "{m}:nan_buffer", QN, (3,)),
        ("NaN example input", "{m}:nan_input", QN, (0, 3)),
        ("fp16 + int8", "{m}:half", ["--quant", "int8"], (3,)),
        ("fp16 defaults", "{m}:half", [], (0, 3)),
        ("fp16 no quant", "{m}:half", QN, (0, 3)),
        ("bfloat16", "{m}:bfloat16", QN, (0, 3)),
        ("float64", "{m}:double", QN, (0, 3)),
        ("no weights (fast)", "{m}:no_weights", QN, (0, 3)),
        ("no weights (defaults)", "{m}:no_weights", [], (0, 3)),
        ("data-dependent branch", "{m}:data_dependent", QN, (3,)),
        ("data-dependent shape", "{m}:nonzero", QN, (3,)),
        ("data-dependent loop (.item)", "{m}:item_loop", QN, (3,)),
        ("forward raises", "{m}:forward_raises", QN, (3,)),
        ("unsupported op (fft)", "{m}:unsupported_op", QN, (3,)),
        ("int64 output", "{m}:int_output", QN, (0, 3)),
        ("None among outputs", "{m}:none_output", QN, (0, 3)),
        ("train mode (dropout)", "{m}:train_mode", QN, (0, 3)),
        ("factory returns a string", "{m}:returns_string", QN, (3,)),
        ("factory returns a module only", "{m}:module_only", QN, (3,)),
        ("example inputs not tensors", "{m}:inputs_not_tensors", QN, (3,)),
        ("no example inputs", "{m}:no_inputs", QN, (3,)),
        ("factory raises", "{m}:factory_raises", QN, (3,)),
        ("factory needs an argument", "{m}:needs_argument", QN, (3,)),
        ("data dict malformed", "{m}:bad_data_dict", QN, (3,)),
        ("data dict unknown key", "{m}:bad_data_key", QN, (3,)),
        ("factory calls sys.exit(5)", "{m}:exits", QN, (3,)),
        ("missing attribute", "{m}:nope", QN, (3,)),
        ("attribute not callable", "{m}:not_callable", QN, (3,)),
        ("model file raises on import", "{w}/raises.py:model", QN, (3,)),
        ("model file exits on import", "{w}/exits.py:model", QN, (3,)),
        ("model file syntax error", "{w}/syntax.py:model", QN, (3,)),
        ("model file empty", "{w}/empty.py:model", QN, (3,)),
        ("model file missing", "{w}/missing.py:model", QN, (3,)),
        ("model file is a folder", "{w}:model", QN, (3,)),
        ("model file not Python", "{w}/calib.npz:model", QN, (3,)),
        ("spec without factory", "{m}", QN, (3,)),
        ("garbage .pt2", "{w}/garbage.pt2", QN, (3,)),
        ("module spec unknown", "no_such_pkg.mod:model", QN, (3,)),
        ("module attr wrong type", "json:dumps", QN, (3,)),
        ("c backend (stm32f746)", "{m}:good", ["--target", "stm32f746"], (0,)),
    ]
    return [Case("model", n, ["build", spec, *extra], codes) for n, spec, extra, codes in c]


def option_cases() -> list[Case]:
    g = "{m}:good"
    c = [
        ("unknown option", ["--bogus"], (2,)),
        ("option missing its value", ["--target"], (2,)),
        ("unknown command", None, (2,)),
        ("target unknown", ["--target", "esp32"], (3,)),
        ("target as a path", ["--target", "../pyproject"], (3,)),
        ("target empty", ["--target", ""], (3,)),
        ("target absolute path", ["--target", "/etc/passwd"], (3,)),
        ("target with .toml", ["--target", "rpi4.toml"], (3,)),
        ("backend unknown", ["--backend", "coreml"], (2,)),
        ("backend c with --quant none", ["--backend", "c", "--quant", "none"], (3,)),
        ("stream-weights garbled", ["--stream-weights", "some"], (2,)),
        ("rank garbled", ["--rank", "banana"], (3,)),
        ("rank energy 1.5", ["--rank", "energy:1.5"], (3,)),
        ("rank energy text", ["--rank", "energy:abc"], (3,)),
        ("rank fraction 0", ["--rank", "fraction:0"], (3,)),
        ("rank fraction 2", ["--rank", "fraction:2"], (3,)),
        ("rank fixed 0", ["--rank", "fixed:0"], (3,)),
        ("rank fixed -3", ["--rank", "fixed:-3"], (3,)),
        ("rank erank scale -1", ["--rank", "erank:-1"], (3,)),
        ("rank empty", ["--rank", ""], (3,)),
        ("prune 7", ["--prune", "magnitude:7"], (3,)),
        ("prune -0.1", ["--prune", "magnitude:-0.1"], (3,)),
        ("prune 1", ["--prune", "magnitude:1"], (3,)),
        ("prune channel 1.5", ["--prune", "channel:1.5"], (3,)),
        ("prune global text", ["--prune", "magnitude:global:abc"], (3,)),
        ("prune unknown kind", ["--prune", "random:0.5"], (3,)),
        ("quant int3", ["--quant", "int3"], (3,)),
        ("quant int8 mode unknown", ["--quant", "int8:bogus"], (3,)),
        ("quant percentile 200", ["--quant", "int8:percentile=200"], (3,)),
        ("quant percentile text", ["--quant", "int8:percentile=abc"], (3,)),
        ("quant empty", ["--quant", ""], (3,)),
        ("cluster-bits 0", ["--cluster-bits", "0"], (2,)),
        ("cluster-bits 7", ["--cluster-bits", "7"], (2,)),
        ("cluster-bits text", ["--cluster-bits", "four"], (2,)),
        ("budget-bytes 0", ["--budget-bytes", "0"], (3,)),
        ("budget-bytes -5", ["--budget-bytes", "-5"], (3,)),
        ("budget-bytes text", ["--budget-bytes", "lots"], (2,)),
        ("codec unknown", ["--codec", "lzma"], (3,)),
        ("codec empty", ["--codec", ""], (3,)),
        ("optimizer unknown", ["--optimizer", "lion"], (2,)),
        ("optimizer twa epochs 1", ["--finetune", "calib", "--optimizer", "twa", "--epochs", "1"], (3,)),
        ("epochs 0", ["--epochs", "0"], (3,)),
        ("epochs -1", ["--epochs", "-1"], (3,)),
        ("epochs text", ["--epochs", "three"], (2,)),
        ("optimize unknown", ["--optimize", "speed"], (2,)),
        ("task unknown", ["--task", "banana"], (3,)),
        ("task empty item", ["--task", "logits,,"], (0, 3)),
        ("task too many outputs", ["--task", "logits,logits,logits", *QN], (3,)),
        ("min-agreement 1.5", ["--min-agreement", "1.5"], (3,)),
        ("min-agreement -0.1", ["--min-agreement", "-0.1"], (3,)),
        ("min-agreement nan", ["--min-agreement", "nan"], (3,)),
        ("min-agreement inf", ["--min-agreement", "inf"], (3,)),
        ("min-agreement text", ["--min-agreement", "high"], (2,)),
        ("min-cosine 2", ["--min-cosine", "2"], (3,)),
        ("min-cosine -2", ["--min-cosine", "-2"], (3,)),
        ("min-correlation 1.1", ["--min-correlation", "1.1"], (3,)),
        ("min-correlation nan", ["--min-correlation", "nan"], (3,)),
        ("max-eval 0", ["--max-eval", "0"], (2,)),
        ("max-eval -1", ["--max-eval", "-1"], (2,)),
        ("max-accuracy-drop -1", ["--max-accuracy-drop", "-1"], (3,)),
        ("max-accuracy-drop 101", ["--max-accuracy-drop", "101"], (3,)),
        ("max-accuracy-drop nan", ["--max-accuracy-drop", "nan"], (3,)),
        ("impossible budget", ["--budget-bytes", "1", "--rank", "erank"], (3, 5)),
        ("json: bad option value", ["--epochs", "0", "--json"], (3,)),
        ("json: bad model", None, (3,)),
    ]
    cases = []
    for name, extra, codes in c:
        if name == "unknown command":
            argv = ["bulid", g]
        elif name == "json: bad model":
            argv = ["build", "{m}:wrong_shape", *QN, "--json"]
        else:
            argv = ["build", g, *extra]
        cases.append(Case("option", name, argv, codes))
    calib = [
        ("calib missing", "nope.npz", (3,)), ("calib not npz", "text.npz", (3,)), ("calib empty file", "empty.npz", (3,)),
        ("calib is a folder", "adir", (3,)), ("calib truncated npz", "truncated.npz", (3,)),
        ("calib wrong key name", "wrong_key.npz", (0, 3)), ("calib wrong sample shape", "wrong_shape.npz", (3,)),
        ("calib int64 values", "int64.npz", (0, 3)), ("calib NaN values", "nan.npz", (3,)),
        ("calib zero samples", "zero.npz", (3,)), ("calib one sample", "one.npz", (0,)),
        ("calib object array (pickle)", "object.npz", (3,)), ("calib labels of another length", "labels.npz", (3,)),
        ("calib 1-D array", "flat.npz", (3,)), ("calib .npy instead of .npz", "plain.npy", (0, 3)),
        ("calib zip of text", "zip.npz", (3,)), ("calib header claims 10^12 samples", "bomb.npz", (3,)),
        ("calib only labels", "only_labels.npz", (3,)), ("calib two arrays for one input", "two.npz", (0, 3)),
    ]
    for name, f, codes in calib:
        cases.append(Case("option", name, ["build", g, "--calib", "{w}/data/" + f, *QN], codes))
    for name, f, codes in (("finetune missing file", "nope.npz", (3,)), ("finetune not npz", "text.npz", (3,)),
                           ("finetune wrong shape", "wrong_shape.npz", (3,))):
        cases.append(Case("option", name, ["build", g, "--finetune", "{w}/data/" + f, *QN], codes))
    cases.append(Case("option", "finetune calib 1 epoch", ["build", g, "--finetune", "calib", "--epochs", "1",
                                                            "--calib", "{w}/data/good.npz", *QN], (0,)))
    return cases


def _make_data(d: Path) -> None:
    d.mkdir()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 8)).astype(np.float32)
    np.savez(d / "good.npz", x=x)
    (d / "text.npz").write_text("hello")
    (d / "empty.npz").write_bytes(b"")
    (d / "adir").mkdir()
    (d / "truncated.npz").write_bytes((d / "good.npz").read_bytes()[:300])
    np.savez(d / "wrong_key.npz", y=x)
    np.savez(d / "wrong_shape.npz", x=x[:, :5])
    np.savez(d / "int64.npz", x=(x * 3).astype(np.int64))
    np.savez(d / "nan.npz", x=np.where(x > 1, np.nan, x).astype(np.float32))
    np.savez(d / "zero.npz", x=x[:0])
    np.savez(d / "one.npz", x=x[:1])
    np.savez(d / "object.npz", x=np.array([{"a": 1}, 2], dtype=object))      # loading it needs pickle
    import zipfile

    np.savez(d / "labels.npz", x=x, labels=np.arange(7))
    np.savez(d / "flat.npz", x=x[:, 0])
    np.save(d / "plain.npy", x)
    with zipfile.ZipFile(d / "zip.npz", "w") as z:
        z.writestr("x.npy", "not an array")
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000, 8), }"
    header += b" " * (118 - len(header)) + b"\n"
    with zipfile.ZipFile(d / "bomb.npz", "w") as z:
        z.writestr("x.npy", b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + x.tobytes())
    np.savez(d / "only_labels.npz", labels=np.arange(40))
    np.savez(d / "two.npz", x=x, z=x)


def folder_cases(can_mount: bool, root: bool) -> list[Case]:
    g = ["build", "{m}:good", *QN]
    cases = [
        Case("folder", "--out an existing file", g, (3,), out="{w}/afile"),
        Case("folder", "--out under a file", g, (3,), out="{w}/afile/b"),
        Case("folder", "--out /dev/null/x", g, (3,), out="/dev/null/x"),
        Case("folder", "--out /dev/null", g, (3,), out="/dev/null"),
        Case("folder", "--out a non-bundle folder", g, (3,), out="{w}/notabundle"),
        Case("folder", "--out a folder of data files", g, (3,), out="{w}/data"),
        Case("folder", "--out /", g, (3,), out="/"),
        Case("folder", "--out a name too long", g, (3,), out="{w}/" + "x" * 300),
        Case("folder", "--out an empty folder", g, (0,), out="{w}/emptydir"),
        Case("folder", "--out an existing bundle (replace)", g, (0,), before="bundle"),
        Case("folder", "--out deep new path", g, (0,), out="{w}/deep/er/path/b"),
        Case("folder", "file-size limit 16 KiB (RLIMIT_FSIZE)", g, (3,), before="bundle", fsize=16 << 10),
        Case("folder", "stale leftovers of a killed build", ["build", "{w}/missing.py:model"], (3,), before="bundle",
             prepare=_plant_leftovers),
        Case("folder", "set-aside bundle, --out gone", ["build", "{w}/missing.py:model"], (3,), before="none",
             prepare=_plant_set_aside, restores=True),
    ]
    if can_mount:
        cases += [Case("folder", "--out on a read-only mount", g, (3,), out="{w}/ro/b"),
                  Case("folder", "full disk (128 KiB tmpfs)", g, (3,), out="{w}/full/b"),
                  Case("folder", "full disk, replacing a bundle", g, (3,), out="{w}/full2/b", prepare=_fill_to_full)]
    if not root:
        cases.append(Case("folder", "--out in a chmod 555 folder", g, (3,), out="{w}/ro555/b"))
    return cases


def _plant_leftovers(case_dir: Path, out: Path) -> None:
    """What a SIGKILLed build leaves: a staging folder and a set-aside old bundle of a dead pid."""
    dead = _dead_pid()
    (case_dir / f".{out.name}.stage-{dead}-abc").mkdir()
    (case_dir / f".{out.name}.stage-{dead}-abc" / "weights.ecw").write_bytes(b"half")
    shutil.copytree(out, case_dir / f".{out.name}.old-{dead}")


def _plant_set_aside(case_dir: Path, out: Path) -> None:
    """Killed between the two renames: the old bundle set aside, no --out. The next build puts it back."""
    old = case_dir / f".{out.name}.old-{_dead_pid()}"
    shutil.copytree(BASE["onnx"], old)
    (old / "TAG").write_text("old")


def _fill_to_full(case_dir: Path, out: Path) -> None:
    shutil.copytree(BASE["onnx"], out)      # ~370 KiB of a 512 KiB tmpfs: no room for a second bundle
    (out / "TAG").write_text("old")


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


STAGES = ["load", "import", "compress", "finetune", "search", "emit", "verify", "latency", "report", "swap"]


def signal_cases() -> list[Case]:
    cases = []
    argv = ["build", "{m}:good", *QN]
    for stage in ["startup", *STAGES]:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            extra = ["--finetune", "calib", "--epochs", "2"] if stage == "finetune" else []
            codes = {signal.SIGINT: (130,), signal.SIGTERM: (143,), signal.SIGKILL: (-9,)}[sig]
            delay = 0.4 if stage == "swap" else 4.0
            after = 0.3 if stage == "startup" else (0.5 if stage == "swap" else 0.2)
            cases.append(Case("signal", f"{signal.Signals(sig).name} at {stage}", [*argv, *extra], codes,
                              before="bundle", stage=stage, delay=delay, sig=sig, sig_after=after))
    # SIGINT during fine-tuning itself (the optimizer's loop, not its start), twice
    for i, after in enumerate((1.0, 2.5)):
        cases.append(Case("signal", f"SIGINT inside fine-tuning #{i + 1}",
                          [*argv, "--finetune", "calib", "--epochs", "300", "--optimizer", "fngd"], (130,),
                          before="bundle", stage="finetune-run", delay=0.0, sig=signal.SIGINT, sig_after=after))
    return cases


def loop_cases(n: int, seed: int = 0) -> list[Case]:
    rng = random.Random(seed)
    return [Case("loop", f"SIGKILL during replacement #{i + 1}", ["build", "{m}:good", *QN], (-9, 0),
                 before="bundle", stage="swap", delay=0.25, sig=signal.SIGKILL, sig_after=rng.uniform(0, 1.0))
            for i in range(n)]


def concurrent_cases() -> list[Case]:
    return [Case("concurrent", "two builds into one existing --out", ["build", "{m}:good", *QN], (0, 3),
                 before="bundle", twice=True),
            Case("concurrent", "two builds into one new --out", ["build", "{m}:good", *QN], (0, 3), twice=True)]


def _damage(kind: str):
    """fn(case_dir, out) that damages the copied bundle `out` one way."""
    def manifest(edit):
        def f(_d, out):
            m = json.loads((out / "manifest.json").read_text())
            (out / "manifest.json").write_text(json.dumps(edit(m)))
        return f

    def write(name, data):
        def f(_d, out):
            p = out / name
            p.unlink() if p.is_file() else None
            if data is None:
                return
            if data == "dir":
                p.mkdir()
            else:
                p.write_bytes(data(out / name) if callable(data) else data)
        return f

    def in_file(name, fn):
        def f(_d, out):
            b = bytearray((out / name).read_bytes())
            (out / name).write_bytes(bytes(fn(b)))
        return f

    def flip(b, at):
        b[at] ^= 0x5A
        return b

    def zstd_header(b):
        i = bytes(b).find(b"\x28\xb5\x2f\xfd")
        if i < 0:
            raise RuntimeError("no zstd frame in the container (the base bundle is built with --codec zstd)")
        b[i + 4] ^= 0xFF                       # the frame header descriptor
        return b

    def container(fn):
        def f(_d, out):
            r = read_container((out / "weights.ecw").read_bytes())
            (out / "weights.ecw").write_bytes(encode_container(fn(r.read_all()))[0])
        return f

    model = "model.tflite" if kind.startswith("tflite") else "model.onnx"
    kinds = {
        "manifest missing": write("manifest.json", None),
        "manifest empty": write("manifest.json", b""),
        "manifest not JSON": write("manifest.json", b"{backend: onnx"),
        "manifest not UTF-8": write("manifest.json", b'{"backend": "\xff\xfe"}'),
        "manifest a JSON list": write("manifest.json", b"[1, 2]"),
        "manifest is a folder": write("manifest.json", "dir"),
        "manifest deep nesting": write("manifest.json", b"[" * 100000),
        "manifest backend a number": manifest(lambda m: {**m, "backend": 5}),
        "manifest weights a number": manifest(lambda m: {**m, "weights": 7}),
        "manifest version 99": manifest(lambda m: {**m, **{k: 99 for k in m if "version" in k and k != "versions"}}),
        "manifest unknown backend": manifest(lambda m: {**m, "backend": "coreml"}),
        "manifest empty object": manifest(lambda m: {}),
        "manifest model path escapes": manifest(lambda m: {**m, "model": "../../../../etc/passwd"}),
        "manifest sha256 wrong": manifest(lambda m: {**m, "model_sha256": "0" * 64}),
        "model file missing": write(model, None),
        "model file empty": write(model, b""),
        "model file truncated": in_file(model, lambda b: b[: len(b) // 2]),
        "model file garbage": write(model, os.urandom(200)),
        "model file one byte changed": in_file(model, lambda b: flip(b, len(b) // 2)),
        "model file is a folder": write(model, "dir"),
        "weights missing": write("weights.ecw", None),
        "weights empty": write("weights.ecw", b""),
        "weights truncated": in_file("weights.ecw", lambda b: b[: len(b) - 7]),
        "weights bad magic": in_file("weights.ecw", lambda b: flip(b, 0)),
        "weights tensor count huge": in_file("weights.ecw", lambda b: b[:8] + b"\xff\xff\xff\x7f" + b[12:]),
        "weights payload byte changed": in_file("weights.ecw", lambda b: flip(b, len(b) - 3)),
        "weights zstd frame header": in_file("weights.ecw", zstd_header),
        "weights zero tensors": container(lambda t: {}),
        "weights a tensor missing": container(lambda t: dict(list(t.items())[1:])),
        "weights a tensor reshaped": container(lambda t: {k: (v.reshape(-1) if i == 0 else v)
                                                         for i, (k, v) in enumerate(t.items())}),
        "weights are a folder": write("weights.ecw", "dir"),
        "report not JSON": write("report.json", b"{"),
        "report a JSON list": write("report.json", b"[]"),
    }
    return kinds[kind.split(": ", 1)[-1]]


def inspect_cases() -> list[Case]:
    names = ["manifest missing", "manifest empty", "manifest not JSON", "manifest not UTF-8", "manifest a JSON list",
             "manifest is a folder", "manifest deep nesting", "manifest backend a number", "manifest weights a number",
             "manifest version 99", "manifest unknown backend", "manifest empty object", "manifest model path escapes",
             "manifest sha256 wrong", "model file missing", "model file empty", "model file truncated",
             "model file garbage", "model file one byte changed", "model file is a folder", "weights missing",
             "weights empty", "weights truncated", "weights bad magic", "weights tensor count huge",
             "weights payload byte changed", "weights zstd frame header", "weights zero tensors",
             "weights a tensor missing", "weights a tensor reshaped", "weights are a folder", "report not JSON",
             "report a JSON list"]
    cases = [Case("inspect", "good onnx bundle", ["inspect", "{out}"], (0,), before="onnx", inspect_only=True),
             Case("inspect", "good onnx bundle --json", ["inspect", "{out}", "--json"], (0,), before="onnx",
                  inspect_only=True),
             Case("inspect", "good tflite bundle", ["inspect", "{out}"], (0,), before="tflite", inspect_only=True),
             Case("inspect", "path does not exist", ["inspect", "{w}/nothing"], (2,), inspect_only=True),
             Case("inspect", "a file, not a folder", ["inspect", "{w}/afile"], (4,), inspect_only=True),
             Case("inspect", "an empty folder", ["inspect", "{w}/emptydir2"], (4,), inspect_only=True)]
    for n in names:
        cases.append(Case("inspect", n, ["inspect", "{out}"], (4,), before="onnx", inspect_only=True,
                          prepare=_damage(n)))
    for n in ("model file truncated", "model file empty", "model file garbage", "weights a tensor missing",
              "weights zero tensors", "manifest unknown backend"):
        cases.append(Case("inspect", "tflite: " + n, ["inspect", "{out}"], (4,), before="tflite", inspect_only=True,
                          prepare=_damage("tflite: " + n)))
    for n in ("manifest not UTF-8", "weights zstd frame header"):
        cases.append(Case("inspect", n + " --json", ["inspect", "{out}", "--json"], (4,), before="onnx",
                          inspect_only=True, prepare=_damage(n)))
    return cases


# -- running ---------------------------------------------------------------------------------------

HOOK = r'''
"""Holds one stage of the build (writes the marker, sleeps), then runs the real CLI."""
import pathlib, sys, time
stage, delay, marker = sys.argv[1], float(sys.argv[2]), pathlib.Path(sys.argv[3])
sys.argv = ["edgecompile", *sys.argv[4:]]
if stage == "startup":                   # the window of the command's own imports (torch: seconds)
    from edgecompile.cli import main
    marker.write_text(stage)
elif stage != "none":
    import importlib
    from edgecompile import build, staging, report
    recover = importlib.import_module("edgecompile.finetune.recover")   # the package re-exports the function
    names = {"load": (build, "load_model"), "import": (build, "import_graph"), "compress": (build, "_compress"),
             "finetune": (build, "_finetune"), "search": (build, "candidates"), "emit": (build, "_write_bundle"),
             "verify": (build, "verify_bundle"), "latency": (build, "_latency"), "report": (report, "write_report"),
             "swap": (staging, "replace"), "finetune-run": (recover, "recover")}
    mod, attr = names[stage]
    real = getattr(mod, attr)
    def held(*a, **k):
        marker.write_text(stage)
        if stage != "swap":
            time.sleep(delay)
            return real(*a, **k)
        rename = pathlib.Path.rename
        def slow(self, target):
            time.sleep(delay)
            r = rename(self, target)
            time.sleep(delay)
            return r
        pathlib.Path.rename = slow
        try:
            return real(*a, **k)
        finally:
            pathlib.Path.rename = rename
    setattr(mod, attr, held)
from edgecompile.cli import main
main()
'''

BASE: dict[str, Path] = {}
TRACEBACK = re.compile(r"Traceback \(most recent call last\)")


def _is_bundle(p: Path) -> bool:
    try:
        return (p / "manifest.json").is_file()
    except OSError:                           # a name too long, under a file
        return False


def _digest(p: Path) -> str | None:
    """A hash of everything under `p` (names, kinds, bytes); None if it does not exist."""
    try:
        if not p.exists() and not p.is_symlink():
            return None
    except OSError:
        return None
    if not p.is_dir():
        return "file:" + (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "other")
    h = hashlib.sha256()
    try:
        for q in sorted(p.rglob("*")):
            h.update(str(q.relative_to(p)).encode())
            h.update(q.read_bytes() if q.is_file() else b"/")
    except OSError:
        return "unreadable"
    return h.hexdigest()


def _complete(p: Path) -> bool:
    try:
        inspect_bundle(p)
        return True
    except Exception:
        return False


def _leftovers(out: Path) -> list[str]:
    try:
        entries = list(out.parent.iterdir())
    except OSError:
        return []
    pat = re.compile(rf"^\.{re.escape(out.name)}\.(stage-|old-|lock$)")
    return sorted(e.name for e in entries if pat.match(e.name))


def _error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith(("WARNING", "INFO"))]


def _spawn(case: Case, argv: list[str], stage: str, marker: Path, env: dict) -> subprocess.Popen:
    def limits():
        if case.fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (case.fsize, case.fsize))
    return subprocess.Popen([sys.executable, str(W / "hook.py"), stage, str(case.delay), str(marker), *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True, preexec_fn=limits,
                            cwd=W)


def run_case(i: int, case: Case, env: dict, timeout: float) -> dict:
    d = W / "cases" / f"{i:03d}"
    d.mkdir(parents=True)
    out = Path(case.out.format(w=W)) if case.out else d / "b"
    if case.before in ("bundle", "onnx", "tflite"):
        shutil.copytree(BASE["onnx" if case.before == "bundle" else case.before], out)
        if case.before == "bundle":
            (out / "TAG").write_text("old")
    if case.prepare is not None:
        case.prepare(d, out)
    had_bundle = _is_bundle(out) and not case.inspect_only
    before = _digest(out)
    fmt = {"w": str(W), "m": str(W / "m.py"), "out": str(out)}
    argv = [a.format(**fmt) for a in case.argv]
    if not case.inspect_only and "--out" not in argv:
        argv += ["--out", str(out)]
    marker = d / "marker"
    t0 = time.monotonic()
    if case.twice:                            # the first holds the lock (held at verify) when the second starts
        case.delay = case.delay or 10.0
        procs = [_spawn(case, argv, "verify", marker, env), None]
        while not marker.exists() and procs[0].poll() is None and time.monotonic() - t0 < timeout:
            time.sleep(0.05)
        procs[1] = _spawn(case, argv, "none", d / "marker2", env)
    else:
        procs = [_spawn(case, argv, case.stage, marker, env)]
    if case.sig is not None:
        while not marker.exists() and procs[0].poll() is None and time.monotonic() - t0 < timeout:
            time.sleep(0.02)
        time.sleep(case.sig_after)
        if procs[0].poll() is None:
            procs[0].send_signal(case.sig)
    results = []
    for p in procs:
        try:
            so, se = p.communicate(timeout=max(1.0, timeout - (time.monotonic() - t0)))
            results.append((p.returncode, so, se))
        except subprocess.TimeoutExpired:
            p.kill()
            so, se = p.communicate()
            results.append(("hang", so, se))
    seconds = time.monotonic() - t0
    cleanup = None
    if any(r[0] == -9 for r in results):      # the next build into the same --out cleans up
        nxt = subprocess.run([sys.executable, "-m", "edgecompile", "build", str(W / "missing.py") + ":model",
                              "--out", str(out)], capture_output=True, text=True, env=env, cwd=W)
        cleanup = nxt.returncode
    after = _digest(out)
    codes = tuple(sorted(r[0] for r in results if r[0] != "hang")) if case.twice else results[0][0]
    fail = Counter()
    notes = []
    for rc, so, se in results:
        if TRACEBACK.search(se) or TRACEBACK.search(so):
            fail["traceback"] += 1
            notes.append("traceback: " + se.strip().splitlines()[-1][:200] if se.strip() else "traceback")
        lines = _error_lines(se)
        limit = case.max_lines if case.max_lines is not None else (0 if rc in (0, -9) else 3 if rc == 2 else 1)
        if len(lines) > limit:
            fail["lines"] += 1
            notes.append(f"{len(lines)} lines: " + " | ".join(lines[:3])[:300])
        if "--json" in argv and rc not in (0, -9, "hang"):
            try:
                obj = json.loads(so)
                ok = obj.get("ok") is False and obj.get("exit_code") == rc
            except (json.JSONDecodeError, AttributeError):
                ok = False
            if not ok:
                fail["bad json"] += 1
                notes.append(f"--json stdout: {so[:200]!r}")
    wanted = (tuple(sorted(case.codes)) if case.twice else case.codes)
    if (codes != wanted) if case.twice else (codes not in wanted):
        fail["wrong code"] += 1
        err = _error_lines(results[0][2])
        notes.append(f"exit {codes}, want {wanted}: {(err[-1] if err else '')[:200]}")
    elif not case.twice and codes not in EXIT_CODES and codes != -9:
        fail["wrong code"] += 1
        notes.append(f"exit {codes} is not documented")
    if cleanup is not None and cleanup != 3:
        notes.append(f"the next build exited {cleanup}")
    ok_codes = [r[0] for r in results]
    new_ok = 0 in ok_codes or (case.stage == "swap" and after != before)
    if case.restores:
        if not (_complete(out) and (out / "TAG").is_file()):
            fail["lost"] += 1
            notes.append("the set-aside bundle was not put back")
    elif case.inspect_only or not new_ok:
        if after != before:
            if had_bundle and after is None:
                fail["lost"] += 1
                notes.append("the old bundle is gone")
            elif had_bundle and _is_bundle(out) and _complete(out) and case.sig is not None:
                pass                            # the signal fell after the swap: the new bundle is whole
            else:
                fail["partial"] += 1
                notes.append("--out changed by a failed run")
    elif not _complete(out):
        fail["partial" if after is not None else ("lost" if had_bundle else "partial")] += 1
        notes.append("--out is not a whole bundle after success")
    if had_bundle and after is None and not fail["lost"]:
        fail["lost"] += 1
        notes.append("the old bundle is gone")
    left = _leftovers(out)
    if left:
        fail["stray"] += 1
        notes.append("left beside --out: " + ", ".join(left))
    kept = None if not had_bundle else ("old" if (out / "TAG").is_file() else "new" if _complete(out) else "none")
    return {"group": case.group, "name": case.name, "exit": codes if not isinstance(codes, tuple) else list(codes),
            "seconds": round(seconds, 1), "failures": dict(fail), "notes": notes, "out_after": kept}


# -- the work folder -------------------------------------------------------------------------------

def _mount(path: Path, opts: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True).returncode == 0


def setup(env: dict, can_mount: bool) -> list[Path]:
    (W / "m.py").write_text(FACTORIES)
    (W / "raises.py").write_text("raise ImportError('this model file needs a package you do not have')\n")
    (W / "exits.py").write_text("import sys\nsys.exit(4)\n")
    (W / "syntax.py").write_text("def model(:\n")
    (W / "empty.py").write_text("")
    (W / "garbage.pt2").write_bytes(os.urandom(500))
    (W / "afile").write_text("not a folder")
    (W / "notabundle").mkdir()
    (W / "notabundle" / "thesis.tex").write_text("precious")
    (W / "emptydir").mkdir()
    (W / "emptydir2").mkdir()                 # for inspect (a build writes into emptydir)
    (W / "ro555").mkdir()
    (W / "ro555").chmod(0o555)
    _make_data(W / "data")
    shutil.copy(W / "data" / "good.npz", W / "calib.npz")
    W.joinpath("hook.py").write_text(HOOK)
    for name, extra in (("onnx", ["--codec", "zstd"]), ("tflite", ["--backend", "tflite"])):
        base = W / "base" / name
        r = subprocess.run([sys.executable, "-m", "edgecompile", "build", f"{W / 'm.py'}:good", *QN, *extra,
                            "--out", str(base)], capture_output=True, text=True, env=env, cwd=W)
        if r.returncode != 0:
            raise SystemExit(f"the base {name} bundle failed to build: {r.stderr}")
        BASE[name] = base
    mounts = []
    if can_mount:
        for sub, opts in (("ro", "ro,size=64k"), ("full", "size=128k"), ("full2", "size=512k")):
            if _mount(W / sub, opts):
                mounts.append(W / sub)
    return mounts


def _can_mount() -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    with tempfile.TemporaryDirectory() as t:
        if not _mount(Path(t), "size=4k"):
            return False
        subprocess.run(["umount", t], capture_output=True)
        return True


W = Path()


KINDS = ["traceback", "wrong code", "lines", "bad json", "partial", "lost", "stray"]


def run_matrix(keep_case=lambda case: True, loop: int = 20, timeout: float = 300.0, keep: bool = False,
               verbose: bool = True, jobs: int = 1) -> dict:
    """Runs the cases `keep_case` accepts in a new work folder, `jobs` at a time (each case has its
    own folders); the summary: counts per group (of cases with each failure kind), the failing
    rows, every row."""
    from concurrent.futures import ThreadPoolExecutor

    global W
    W = Path(tempfile.mkdtemp(prefix="cli-matrix-"))
    env = dict(os.environ, PYTHONPATH=str(ROOT), XDG_CACHE_HOME=str(W / "cache"))
    root = os.geteuid() == 0
    mounts = setup(env, _can_mount())
    rows = []
    try:
        cases = (model_cases() + option_cases() + folder_cases(bool(mounts), root) + signal_cases()
                 + concurrent_cases() + inspect_cases() + loop_cases(loop))
        cases = [c for c in cases if keep_case(c)]

        def one(i: int) -> dict:
            row = run_case(i, cases[i], env, timeout)
            if verbose:
                status = "ok" if not row["failures"] else "FAIL " + "; ".join(row["notes"])
                print(f"[{i + 1:3d}/{len(cases)}] {row['group']:10s} {row['name']:45s} exit {str(row['exit']):8s} "
                      f"{row['seconds']:5.1f}s {status}", file=sys.stderr, flush=True)
            return row

        with ThreadPoolExecutor(max(1, jobs)) as pool:
            rows = list(pool.map(one, range(len(cases))))
        crashes = sorted((W / "cache" / "edgecompile").glob("crash-*.log")) if (W / "cache").exists() else []
    finally:
        for m in mounts:
            subprocess.run(["umount", str(m)], capture_output=True)
        (W / "ro555").chmod(0o755)
        if not keep:
            shutil.rmtree(W, ignore_errors=True)
    by_group: dict[str, Counter] = {}
    for r in rows:
        g = by_group.setdefault(r["group"], Counter())
        g["cases"] += 1
        g.update({k: 1 for k in r["failures"]})
    total = sum(by_group.values(), Counter())
    return {"cases": len(rows), "mounted_tmpfs": bool(mounts), "root": root, "crash_logs": len(crashes),
            "work_folder": str(W) if keep else None, "groups": {g: dict(c) for g, c in by_group.items()},
            "total": dict(total), "failures": [r for r in rows if r["failures"]], "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="", help="comma-separated groups")
    ap.add_argument("--loop", type=int, default=20, help="SIGKILLs during replacement")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per case before it counts as a hang")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--jobs", type=int, default=1, help="cases run at a time")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    groups = set(filter(None, args.only.split(",")))
    summary = run_matrix(lambda c: not groups or c.group in groups, args.loop, args.timeout, args.keep, jobs=args.jobs)
    if args.json:
        print(json.dumps(summary, indent=1))
        return
    print(f"{'group':12s} {'cases':>5s} " + " ".join(f"{k:>10s}" for k in KINDS))
    for g, c in [*summary["groups"].items(), ("total", summary["total"])]:
        print(f"{g:12s} {c['cases']:5d} " + " ".join(f"{c.get(k, 0):10d}" for k in KINDS))
    loop = Counter(r["out_after"] for r in summary["rows"] if r["group"] == "loop")
    if loop:
        print(f"kills during replacement left --out holding: the old bundle {loop['old']}, the new one "
              f"{loop['new']}, none {loop['none']}")
    print(f"full disk: {'tmpfs + ' if summary['mounted_tmpfs'] else ''}RLIMIT_FSIZE; internal-error logs "
          f"written: {summary['crash_logs']}" + (f"; work folder {summary['work_folder']}" if args.keep else ""))
    for r in summary["failures"]:
        print(f"FAIL {r['group']}/{r['name']} (exit {r['exit']}): " + "; ".join(r["notes"]))


if __name__ == "__main__":
    main()
