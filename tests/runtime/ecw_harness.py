"""Helpers shared by the runtime tests: build the C tool/demo and run them on containers."""
from __future__ import annotations

import shutil
import subprocess
import zlib
from pathlib import Path

import numpy as np

RUNTIME = Path(__file__).resolve().parents[2] / "runtime"


def have(*tools: str) -> bool:
    return all(shutil.which(t) for t in tools)


def make(target: str, build: Path, *extra: str) -> None:
    subprocess.run(["make", "-s", "-C", str(RUNTIME), target, f"BUILD={build}", *extra], check=True,
                   capture_output=True, text=True)


def fnv1a64(b: bytes) -> int:
    a = np.frombuffer(b, np.uint8)
    h = 1469598103934665603
    # vectorizing FNV is not possible (sequential); these are small test tensors
    for byte in a.tolist():
        h = ((h ^ byte) * 1099511628211) & (2**64 - 1)
    return h


def expected_lines(tensors: dict[str, np.ndarray], status: dict[str, str] | None = None) -> list[str]:
    """The lines ecw_tool / ecw_demo print for these reference tensors."""
    status = status or {}
    lines = ["open ECW_OK"]
    for i, (name, arr) in enumerate(tensors.items()):
        b = np.ascontiguousarray(arr).tobytes()
        lines.append(f"{i} {name} {status.get(name, 'ECW_OK')} {zlib.crc32(b):08x} {fnv1a64(b):016x}")
    return lines


def run(argv: list[str], timeout: int = 120) -> tuple[int, list[str]]:
    """Run a command; its exit status and stdout lines."""
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout.splitlines()
