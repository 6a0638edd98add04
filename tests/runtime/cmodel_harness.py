"""Build a generated C model (`edgecompile.backends.c.model`) with the bundle's own ``build.sh``
and run it on the host or an emulated device; parse what its ``main.c`` prints."""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ecw_harness import have
from edgecompile.backends.c.bundle import write_c_model
from edgecompile.backends.c.device import parse_output

#: device -> (target kind, triple, cpu, tools it needs, command running the program)
DEVICES = {
    "host": ("linux", "", "", ("gcc",), lambda d: [str(d / "build" / "model")]),
    "m4": ("mcu", "arm-none-eabi", "cortex-m4", ("arm-none-eabi-gcc", "qemu-system-arm"),
           lambda d: ["qemu-system-arm", "-M", "mps2-an386", "-nographic", "-semihosting", "-kernel",
                      str(d / "build" / "model.elf")]),
    "m7": ("mcu", "arm-none-eabi", "cortex-m7", ("arm-none-eabi-gcc", "qemu-system-arm"),
           lambda d: ["qemu-system-arm", "-M", "mps2-an500", "-nographic", "-semihosting", "-kernel",
                      str(d / "build" / "model.elf")]),
    # ARMv6-M (Cortex-M0+, rp2040) code on QEMU's Cortex-M3 board: no M0+ board has the mps2 map
    "m0plus": ("mcu", "arm-none-eabi", "cortex-m0plus", ("arm-none-eabi-gcc", "qemu-system-arm"),
               lambda d: ["qemu-system-arm", "-M", "mps2-an385", "-nographic", "-semihosting", "-kernel",
                          str(d / "build" / "model.elf")]),
    "aarch64": ("linux", "aarch64-linux-gnu", "cortex-a72", ("aarch64-linux-gnu-gcc", "qemu-aarch64"),
                lambda d: ["qemu-aarch64", "-cpu", "cortex-a72", str(d / "build" / "model")]),
}


def device_available(device: str) -> bool:
    return have(*DEVICES[device][3])


@dataclass
class Run:
    outputs: dict[tuple[int, int], np.ndarray]   # (sample, output) -> int8 bytes
    status: str
    steps: list[int]                              # profile ticks per step (profiling builds)
    build_log: str


def build_and_run(cm, samples, device: str, work: Path, profile: bool = False, opt: str | None = None,
                  timeout: int = 300) -> Run:
    kind, triple, cpu, _, command = DEVICES[device]
    write_c_model(work, cm, kind, device, triple, cpu, samples)
    rt = work / "runtime"
    env = dict(os.environ, PROFILE="1" if profile else "0")
    if opt:
        env["OPT"] = opt
    if device == "aarch64":
        env["LDFLAGS"] = "-static"
    b = subprocess.run(["sh", str(rt / "build.sh")], env=env, capture_output=True, text=True, timeout=timeout)
    assert b.returncode == 0, b.stderr[-3000:]
    argv = command(rt)
    if profile and argv[0] == "qemu-system-arm":
        argv[1:1] = ["-icount", "shift=0"]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    got = parse_output(p.stdout)
    return Run(got.outputs, got.status, got.steps, b.stdout)


def digits_graph(n_calib: int):
    """(graph, data) of the embedded digits CNN imported, folded and quantized on every second of
    its first `n_calib` calibration images."""
    import torch

    from edgecompile.data.digits import model
    from edgecompile.frontend.torch_export import import_model
    from edgecompile.passes.fold import CleanupPass, FoldBatchNormPass
    from edgecompile.passes.quantize import QuantConfig, QuantizePass

    torch.set_num_threads(1)
    net, example, data = model()
    g = import_model(net, example)
    FoldBatchNormPass()(g)
    CleanupPass()(g)
    calib = data["calib"][0]
    QuantizePass(QuantConfig(), [(calib[i: i + 1],) for i in range(0, n_calib, 2)])(g)
    return g, data
