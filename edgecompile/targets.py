"""Target boards: facts loaded from `targets/<name>.toml` into a frozen `Target`.

Targets are plain data (TVM's tag registry style); policy (what to quantize, which codec) lives in
`build.py`. Each file is validated on load: a missing or mistyped field is an error naming the
file and the field.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from .resources import project_dir
from .errors import InputError

TARGETS_DIR = project_dir("targets", "rpi4.toml")
KINDS = ("linux", "mcu")
BACKENDS = ("onnx", "tflite", "c")


class TargetError(InputError, ValueError):
    """Unknown target or an invalid target file."""


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    kind: str
    triple: str
    cpu: str
    features: tuple[str, ...]
    cores: int
    clock_mhz: float
    ram_kib: int
    flash_kib: int
    mem_bandwidth_gbps: float
    peak_macs_fp32: float
    peak_macs_int8: float
    peak_source: str
    efficiency: float
    default_backend: str
    codecs: tuple[str, ...]
    emulator: str
    int8_kernels: bool = True   # the board's runtime runs int8 ops faster than fp32 (see each TOML)
    l2_kib: int = 0

    @property
    def ram_bytes(self) -> int:
        return self.ram_kib * 1024

    @property
    def flash_bytes(self) -> int:
        return self.flash_kib * 1024

    def estimate_latency_s(self, macs_fp32: float, macs_int8: float, weight_bytes: int,
                           act_bytes: int) -> float:
        """Roofline estimate: max(compute time at `efficiency` of peak, bytes moved / bandwidth)."""
        compute = (macs_fp32 / self.peak_macs_fp32 + macs_int8 / self.peak_macs_int8) / self.efficiency
        memory = (weight_bytes + act_bytes) / (self.mem_bandwidth_gbps * 1e9)
        return max(compute, memory)


def _check(path: Path, raw: dict) -> Target:
    known = {f.name for f in fields(Target)}
    unknown = set(raw) - known
    if unknown:
        raise TargetError(f"{path}: unknown field(s) {sorted(unknown)}; known: {sorted(known)}")
    missing = [f.name for f in fields(Target) if f.name not in raw and f.name not in ("l2_kib", "int8_kernels")]
    if missing:
        raise TargetError(f"{path}: missing field(s) {missing}")
    for key in ("features", "codecs"):
        if not isinstance(raw[key], list) or not all(isinstance(x, str) for x in raw[key]):
            raise TargetError(f"{path}: {key} must be a list of strings")
        raw[key] = tuple(raw[key])
    for key in ("cores", "ram_kib", "flash_kib", "l2_kib"):
        if key in raw and (not isinstance(raw[key], int) or raw[key] < 0):
            raise TargetError(f"{path}: {key} must be a non-negative integer")
    for key in ("clock_mhz", "mem_bandwidth_gbps", "peak_macs_fp32", "peak_macs_int8", "efficiency"):
        if not isinstance(raw[key], (int, float)) or raw[key] <= 0:
            raise TargetError(f"{path}: {key} must be a positive number")
    if not isinstance(raw.get("int8_kernels", True), bool):
        raise TargetError(f"{path}: int8_kernels must be true or false")
    if raw["kind"] not in KINDS:
        raise TargetError(f"{path}: kind must be one of {KINDS}, got {raw['kind']!r}")
    if raw["default_backend"] not in BACKENDS:
        raise TargetError(f"{path}: default_backend must be one of {BACKENDS}")
    if raw["name"] != path.stem:
        raise TargetError(f"{path}: name {raw['name']!r} must match the file name")
    if raw["kind"] == "mcu" and "zstd" in raw["codecs"]:
        raise TargetError(f"{path}: zstd's decoder is too big for a microcontroller; use rans/lut")
    return Target(**raw)


def target_names(directory: Path = TARGETS_DIR) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.toml"))


def load_target(name: str, directory: Path = TARGETS_DIR) -> Target:
    """Loads `targets/<name>.toml`, or a board file given as a path ending in ``.toml``; anything
    else is an error listing the known names (a name is never read as a path)."""
    known = target_names(directory)
    if name in known:
        path = directory / f"{name}.toml"
    elif str(name).endswith(".toml") and Path(name).is_file():
        path = Path(name)
    else:
        raise TargetError(f"unknown target {name!r}; known targets: {', '.join(known)} "
                          "(or a path to a board's .toml file)")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise TargetError(f"{path}: not valid TOML: {e}") from e
    return _check(path, raw)


def all_targets(directory: Path = TARGETS_DIR) -> list[Target]:
    return [load_target(n, directory) for n in target_names(directory)]
