"""Compiling and running a generated C bundle (``runtime/`` of a ``--backend c`` build).

Three checks, each done when its tools are installed (scripts/install_toolchains.sh):

- `host_run`: the bundle's sources compiled for this machine with gcc, run on the samples that
  ``model/main.c`` embeds; the build compares every output byte with the numpy integer reference
  (a mismatch is a generator bug, not a model property).
- `code_sizes`: the sources cross-compiled for the target as its build.sh does (``-Os``) and linked;
  every symbol of the image is attributed to the object that defines it, so the report splits
  flash into weights (the container array), generated model (code + parameters) and runtime
  (kernels + decoder), as ST Edge AI's analyze report does, apart from the demo's own main/libc.
- `emulate`: a profiling build (``-DECM_PROFILE``) run under ``qemu-system-arm -icount shift=0``:
  one instruction is one nanosecond of virtual time, and the mps2 boards clock SysTick at 25 MHz,
  so one tick is `INSTRUCTIONS_PER_TICK` emulated instructions (calibrated with a loop of known
  length). Reported as *emulated instruction counts*; time at the target's clock assumes one
  instruction per cycle, an estimate labelled as such.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .bundle import MCU_CPUS, mcu_flags
from ...errors import InternalError

__all__ = ["ProgramRun", "parse_output", "host_run", "code_sizes", "emulate", "INSTRUCTIONS_PER_TICK", "qemu_machine",
           "DeviceToolError"]

INSTRUCTIONS_PER_TICK = 40
#: Cortex-M cores QEMU emulates on an mps2 board with our startup file and linker script. QEMU has
#: no Cortex-M0+ board with that memory map; ARMv6-M code is a subset of ARMv7-M, so an M0+ build
#: runs unchanged on the Cortex-M3 board (mps2-an385) and counts the M0+ program's instructions.
_QEMU_MACHINES = {"cortex-m4": "mps2-an386", "cortex-m7": "mps2-an500", "cortex-m3": "mps2-an385",
                  "cortex-m0plus": "mps2-an385"}


class DeviceToolError(InternalError, RuntimeError):
    """A compile or run of the generated program failed (the message has the tool's last lines)."""


@dataclass
class ProgramRun:
    outputs: dict[tuple[int, int], np.ndarray]   # (sample, output) -> int8 bytes as printed
    status: str                                   # "ECM_OK" or the failing status
    steps: list[int] = field(default_factory=list)  # profile ticks per step, summed over samples


def parse_output(stdout: str) -> ProgramRun:
    """What the generated demo program (`writer.demo_main`) printed."""
    run = ProgramRun({}, "no output")
    for line in stdout.splitlines():
        parts = line.split()
        if parts[:1] == ["y"] and len(parts) == 4:
            run.outputs[(int(parts[1]), int(parts[2]))] = np.frombuffer(bytes.fromhex(parts[3]), np.int8)
        elif parts[:1] == ["step"] and len(parts) == 3:
            run.steps.append(int(parts[2]))
        elif parts[:1] == ["done"] and len(parts) == 2:
            run.status = parts[1]
    return run


def _sh(argv: list[str], timeout: float, what: str) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise DeviceToolError(f"{what} ran past {timeout:.0f} s") from None
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        raise DeviceToolError(f"{what} failed: {' | '.join(tail)}")
    return p.stdout


def _sources(rt: Path) -> list[str]:
    return sorted(str(p) for p in (rt / "src").glob("*.c")) + [
        str(rt / "model" / f) for f in sorted(p.name for p in (rt / "model").glob("*.c"))]


def host_run(rt: Path, timeout: float = 120) -> ProgramRun | None:
    """The bundle's program built with the host gcc and run; None without gcc."""
    if not shutil.which("gcc"):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        exe = str(Path(tmp) / "model")
        _sh(["gcc", "-std=c99", "-O2", f"-I{rt / 'include'}", f"-I{rt / 'model'}", "-DECW_CRC_TABLE256",
             *_sources(rt), "-o", exe], timeout, "gcc (host build of the generated C)")
        return parse_output(_sh([exe], timeout, "the host build of the generated C"))


def _mcu_build(rt: Path, cpu: str, out: Path, profile: bool, opt: str, timeout: float) -> tuple[Path, list[Path]]:
    """Objects and the linked demo ELF for a Cortex-M `cpu`; (elf, objects)."""
    flags = ["-std=c99", opt, *mcu_flags(cpu).split(), "-ffunction-sections", "-fdata-sections",
             f"-I{rt / 'include'}", f"-I{rt / 'model'}"] + (["-DECM_PROFILE"] if profile else [])
    objs = []
    for src in _sources(rt) + [str(rt / "mcu" / "startup.c")]:
        obj = out / (Path(src).stem + ".o")
        _sh(["arm-none-eabi-gcc", *flags, "-c", src, "-o", str(obj)], timeout, f"arm-none-eabi-gcc {Path(src).name}")
        objs.append(obj)
    elf = out / "model.elf"
    _sh(["arm-none-eabi-gcc", *flags, *map(str, objs), "-T", str(rt / "mcu" / "mps2_an386.ld"), "--specs=nano.specs",
         "--specs=rdimon.specs", "-lrdimon", "-Wl,--gc-sections", "-o", str(elf)], timeout, "arm-none-eabi-gcc (link)")
    return elf, objs


def _symbols(path: Path) -> list[tuple[str, str, int]]:
    """(name, nm type letter, size) of the defined, sized symbols."""
    out = _sh(["arm-none-eabi-nm", "-S", "--defined-only", str(path)], 60, "arm-none-eabi-nm")
    rows = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4:
            rows.append((parts[3], parts[2], int(parts[1], 16)))
        elif len(parts) == 3 and not re.fullmatch(r"[0-9a-fA-F]+", parts[1]):
            rows.append((parts[2], parts[1], 0))
    return rows


def code_sizes(rt: Path, cpu: str, opt: str = "-Os", timeout: float = 300) -> dict | None:
    """Flash and RAM of the linked image, split by who defines each symbol:
    ``{"weights": {...}, "model": {...}, "runtime": {...}, "demo": {...}}``, each with ``text``
    (code), ``rodata`` (constants), ``data``, ``bss`` bytes; plus ``toolchain`` and ``flags``.
    None when arm-none-eabi-gcc is not installed or `cpu` is not a Cortex-M we build for."""
    if cpu not in MCU_CPUS or not shutil.which("arm-none-eabi-gcc"):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        elf, objs = _mcu_build(rt, cpu, Path(tmp), False, opt, timeout)
        # Who defines a symbol and its section kind come from the objects (the linker script
        # merges .rodata into the image's text segment); its size from the linked image, so that
        # what --gc-sections dropped does not count.
        col = {"T": "text", "R": "rodata", "D": "data", "B": "bss"}
        owner: dict[str, tuple[str, str]] = {}
        for obj in objs:
            part = ("weights" if obj.stem.endswith("_weights") else "runtime" if obj.stem.startswith(("ecm_", "ecw_"))
                    else "model" if (rt / "model" / (obj.stem + ".h")).exists() else "demo")
            for name, kind, _ in _symbols(obj):
                if kind.upper() in col:
                    owner.setdefault(name, (part, col[kind.upper()]))
        sizes = {p: {"text": 0, "rodata": 0, "data": 0, "bss": 0} for p in ("weights", "model", "runtime", "demo")}
        for name, kind, size in _symbols(elf):
            if kind.upper() in col:
                part, c = owner.get(name, ("demo", col[kind.upper()]))
                sizes[part][c] += size
        sizes["toolchain"] = "arm-none-eabi-gcc " + _sh(["arm-none-eabi-gcc", "-dumpversion"], 30, "gcc").strip()
        sizes["flags"] = f"{opt} {mcu_flags(cpu)}"
        return sizes


def qemu_machine(cpu: str) -> str | None:
    return _QEMU_MACHINES.get(cpu)


def emulate(rt: Path, cpu: str, opt: str = "-Os", timeout: float = 600) -> ProgramRun | None:
    """The profiling build run under ``qemu-system-arm -icount shift=0``; steps in emulated
    instructions (ticks x `INSTRUCTIONS_PER_TICK`), summed over the embedded samples. None when the
    toolchain or QEMU is missing or `cpu` has no emulated board."""
    machine = qemu_machine(cpu)
    if machine is None or not shutil.which("arm-none-eabi-gcc") or not shutil.which("qemu-system-arm"):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        elf, _ = _mcu_build(rt, cpu, Path(tmp), True, opt, timeout)
        run = parse_output(_sh(["qemu-system-arm", "-M", machine, "-icount", "shift=0", "-nographic", "-semihosting",
                          "-kernel", str(elf)], timeout, f"qemu-system-arm -M {machine}"))
    run.steps = [t * INSTRUCTIONS_PER_TICK for t in run.steps]
    return run
