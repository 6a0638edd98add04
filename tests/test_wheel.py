"""A wheel (not the editable checkout) carries targets/ and runtime/ and finds them once installed."""
from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_PROBE = """
from edgecompile import targets
from edgecompile.backends.c.bundle import runtime_dir, RUNTIME_FILES, MCU_FILES
import edgecompile
assert "site-packages" in edgecompile.__file__, edgecompile.__file__
assert [t.name for t in targets.all_targets()] == {names!r}, targets.all_targets()
root = runtime_dir()
missing = [f for f in RUNTIME_FILES + MCU_FILES if not (root / f).is_file()]
assert not missing, missing
print(root)
"""


@pytest.mark.slow  # ~10 s: builds a wheel and a venv
def test_installed_wheel_finds_targets_and_runtime(tmp_path):
    src = tmp_path / "src"  # a copy: building writes build/ and *.egg-info beside the sources
    skip = shutil.ignore_patterns("__pycache__", "build", "*.egg-info", "fuzz", "golden")
    for name in ("edgecompile", "targets", "runtime"):
        shutil.copytree(ROOT / name, src / name, ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    str(src), "-w", str(tmp_path / "dist")], check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("edgecompile-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # --ignore-installed: without it pip uninstalls this environment's editable edgecompile first
    # (--prefix does not isolate the uninstall), leaving .venv without its `edgecompile` command
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--ignore-installed", "-q", "--prefix",
                    str(venv), str(wheel)], check=True, capture_output=True)
    names = sorted(p.stem for p in (ROOT / "targets").glob("*.toml"))
    # The dependencies (torch, numpy, ...) come from this environment's site-packages, put after
    # the fresh venv's, which holds the wheel (this environment's editable finder is not loaded).
    env = {"PYTHONPATH": f"{site}:{sysconfig.get_path('purelib')}", "PATH": "/usr/bin:/bin"}
    run = subprocess.run([py, "-c", _PROBE.format(names=names)], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().startswith(str(venv)), run.stdout
