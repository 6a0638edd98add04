"""Writing bundles safely (edgecompile.staging): the lock, stale staging folders, the atomic swap
under SIGKILL at any moment, modes from the umask, and SIGTERM/SIGINT during a real build."""

import json
import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgecompile import staging
from edgecompile.cli import main

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT))


def _bundle(path: Path, tag: str) -> Path:
    path.mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps({"format": "edgecompile-bundle", "tag": tag}))
    (path / "weights.ecw").write_bytes(tag.encode() * 1000)
    return path


def _tag(path: Path) -> str:
    return json.loads((path / "manifest.json").read_text())["tag"]


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_second_build_into_the_same_out_stops_with_one_line(tmp_path):
    out = tmp_path / "b"
    with staging.OutLock(out):
        with pytest.raises(staging.OutputError, match=rf"another edgecompile build \(pid {os.getpid()}\) is writing"):
            staging.OutLock(out).__enter__()
        res = CliRunner().invoke(main, ["build", "--out", str(out)])
        assert res.exit_code == 3 and res.stderr.startswith("error: another edgecompile build")
        assert res.stderr.count("\n") == 1
    assert not (tmp_path / ".b.lock").exists()       # removed on release
    with staging.OutLock(out):                        # and free again
        pass
    assert not out.exists()


def test_stale_leftovers_of_dead_builds_are_removed_and_a_lost_bundle_put_back(tmp_path):
    dead = _dead_pid()
    stage = tmp_path / f".b.stage-{dead}-abc123"
    stage.mkdir()
    (stage / "weights.ecw").write_bytes(b"half")
    _bundle(tmp_path / f".b.old-{dead}", "old")         # killed between the two renames: b is missing
    live = tmp_path / f".c.stage-{os.getpid()}-xyz"     # a build still running: kept
    live.mkdir()
    other = tmp_path / ".b.finetune"                    # fine-tuning checkpoints: not ours to touch
    other.mkdir()
    handled = staging.remove_stale(tmp_path / "b")
    assert sorted(p.name for p in handled) == sorted([stage.name, f".b.old-{dead}"])
    assert _tag(tmp_path / "b") == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["b", live.name, other.name])


def test_set_aside_bundle_is_removed_when_out_is_there(tmp_path):
    dead = _dead_pid()
    _bundle(tmp_path / "b", "new")
    _bundle(tmp_path / f".b.old-{dead}", "old")
    staging.remove_stale(tmp_path / "b")
    assert _tag(tmp_path / "b") == "new" and [p.name for p in tmp_path.iterdir()] == ["b"]


def test_replace_swaps_and_sets_modes_from_the_umask(tmp_path):
    old_mask = os.umask(0o022)
    try:
        out = _bundle(tmp_path / "b", "old")
        stage = staging.make_stage(out)
        assert f".b.stage-{os.getpid()}-" in stage.name
        (stage / "manifest.json").write_text(json.dumps({"tag": "new"}))
        (stage / "sub").mkdir(mode=0o700)
        (stage / "sub" / "run.sh").write_text("#!/bin/sh\n")
        (stage / "sub" / "run.sh").chmod(0o700)
        fd = os.open(stage / "weights.ecw", os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)
        staging.replace(stage, out)
    finally:
        os.umask(old_mask)
    assert _tag(out) == "new" and [p.name for p in tmp_path.iterdir()] == ["b"]
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(out) == 0o755 and mode(out / "sub") == 0o755
    assert mode(out / "weights.ecw") == 0o644 and mode(out / "manifest.json") == 0o644
    assert mode(out / "sub" / "run.sh") == 0o755


def test_failed_rename_puts_the_old_bundle_back(tmp_path, monkeypatch):
    out = _bundle(tmp_path / "b", "old")
    stage = staging.make_stage(out)
    real = Path.rename

    def rename(self, target):
        if self == stage:
            raise OSError(28, "No space left on device")
        return real(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(OSError):
        staging.replace(stage, out)
    assert _tag(out) == "old"


CHILD = """
import sys, time
from pathlib import Path
from edgecompile import staging
out, delay = Path(sys.argv[1]), float(sys.argv[2])
stage = staging.make_stage(out)
(stage / "manifest.json").write_text('{"format": "edgecompile-bundle", "tag": "new"}')
(stage / "weights.ecw").write_bytes(b"new" * 1000)
real = Path.rename
def slow(self, target):
    time.sleep(delay)
    r = real(self, target)
    time.sleep(delay)
    return r
Path.rename = slow
print("ready", flush=True)
with staging.interrupts():
    staging.replace(stage, out)
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_kill_during_replacement_never_loses_the_bundle(tmp_path, sig):
    """A child swaps a bundle in with a delay around each rename; it is killed at a random moment
    (20 times); `remove_stale`, as the next build runs it, always leaves a whole old or new bundle.
    SIGTERM, handled, waits until both renames are done (the build's `interrupts()`)."""
    rng = random.Random(0)
    seen = set()
    for i in range(20):
        parent = tmp_path / str(i)
        out = _bundle(parent / "b", "old")
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(out), "0.03"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                 env=ENV, text=True)
        assert child.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0, 0.15))
        child.send_signal(sig)
        child.wait(timeout=30)
        staging.remove_stale(out)
        tag = _tag(out)
        assert tag in ("old", "new")
        assert (out / "weights.ecw").read_bytes() == tag.encode() * 1000
        assert [p.name for p in parent.iterdir()] == ["b"], list(parent.iterdir())
        seen.add(tag)
    if sig == signal.SIGKILL:
        assert seen == {"old", "new"}                # the kills fell on both sides of the swap
    else:                                            # SIGTERM waits for the swap to finish
        assert seen == {"new"}


SLOW_METRIC = '''
import pathlib, time, torch
class M(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 6)
    def forward(self, x):
        return self.fc(x)
def metric(ref, got):
    (pathlib.Path(__file__).parent / "verifying").write_text("yes")
    time.sleep(120)
def model():
    torch.manual_seed(0)
    return M().eval(), (torch.randn(1, 8),), {"metric": metric}
'''


def _interrupt_build(tmp_path: Path, sig: int) -> tuple[subprocess.CompletedProcess, Path]:
    (tmp_path / "m.py").write_text(SLOW_METRIC)
    out = _bundle(tmp_path / "b", "old")
    p = subprocess.Popen([sys.executable, "-m", "edgecompile", "build", f"{tmp_path / 'm.py'}:model", "--out",
                          str(out), "--quant", "none", "--optimize", "none"], env=ENV, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (tmp_path / "verifying").exists():
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()
        time.sleep(0.1)
    assert [q for q in tmp_path.iterdir() if q.name.startswith(".b.stage-")]   # the build is writing
    p.send_signal(sig)
    stdout, stderr = p.communicate(timeout=60)
    return subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr), out


def test_sigterm_during_verification_stops_cleanly(tmp_path):
    r, out = _interrupt_build(tmp_path, signal.SIGTERM)
    assert r.returncode == 143, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if not ln.startswith(("WARNING ", "INFO "))]
    assert lines == [f"error: interrupted by SIGTERM; the build stopped and removed its staging folder; {out} is "
                     "as it was"]
    assert _tag(out) == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "m.py", "verifying"]


@pytest.mark.slow
def test_sigint_during_verification_stops_cleanly(tmp_path):
    r, out = _interrupt_build(tmp_path, signal.SIGINT)
    assert r.returncode == 130, r.stderr
    assert "interrupted by SIGINT" in r.stderr and "Traceback" not in r.stderr
    assert _tag(out) == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "m.py", "verifying"]


def test_signal_during_the_swap_waits_and_says_the_bundle_is_in(tmp_path):
    out = _bundle(tmp_path / "b", "old")
    stage = staging.make_stage(out)
    (stage / "manifest.json").write_text(json.dumps({"tag": "new"}))
    real = Path.rename

    def rename(self, target):             # SIGTERM arrives between the two renames
        r = real(self, target)
        if self == out:
            os.kill(os.getpid(), signal.SIGTERM)
        return r

    with staging.interrupts() as stop:
        Path.rename = rename
        try:
            with pytest.raises(staging.StopSignal) as e:
                staging.replace(stage, out)
        finally:
            Path.rename = real
    assert stop.signum == signal.SIGTERM and e.value.finished == f"the new bundle was already in {out}"
    assert _tag(out) == "new" and [p.name for p in tmp_path.iterdir()] == ["b"]


def test_a_swallowed_signal_still_stops_at_the_next_stage(tmp_path):
    with staging.interrupts() as stop:
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
        except KeyboardInterrupt:
            pass                              # a library that catches everything
        with pytest.raises(staging.StopSignal):
            staging.check_stop()
    assert stop.signum == signal.SIGINT
    staging.check_stop()                      # outside: nothing pending
