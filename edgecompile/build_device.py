"""The device half of a build: ``--backend c`` bundles (generated C, its host check, code sizes,
emulated instruction counts, RAM and flash) and ``--backend tflite`` for microcontrollers (TFLite
Micro's op check, its arena and its kernels as the verifier). `build.build` calls these; they raise
`BuildError` with one line for the user."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import __version__
from .errors import BuildError
from .inputs.samples import Samples
from .ir import Graph
from .ir.analysis import static_batch
from .inputs.reference import _padded_batches
from .targets import Target

if TYPE_CHECKING:
    from .build import BuildConfig

__all__ = ["write_c_bundle", "c_device_checks", "c_memory", "tflm_checks", "tflm_memory", "TflmSession",
           "C_DEMO_BATCHES"]


#: Samples the generated C program embeds (model/main.c): what the host check and the emulated
#: profile run; a few batches keep QEMU time short.
C_DEMO_BATCHES = 4


def write_c_bundle(stage: Path, graph: Graph, target: Target, cfg: BuildConfig, evals: Samples) -> dict:
    """``--backend c``: generated ``model.c`` / ``model.h`` with the kernels and decoder sources in
    ``runtime/``, the weights (kernel layout) in ``weights.ecw`` and as a C array, a demo program on
    a few eval samples. The session is the numpy integer reference: the device's arithmetic."""
    from .backends.c.bundle import write_c_model
    from .backends.c.model import CBackendError, emit_c
    from .backends.c.ref.session import ReferenceSession, device_bytes

    codecs = tuple(c for c in (cfg.codecs or target.codecs) if c in target.codecs and c != "zstd") or ("raw",)
    try:
        mcu = target.kind == "mcu"
        # flash for the weights: the board's, less room for the code (runtime + model, ~16 KB -Os)
        cm = emit_c(graph, codecs=codecs, stream=cfg.stream_weights, ram_budget=target.ram_bytes if mcu else None,
                    flash_budget=target.flash_bytes - 32 * 1024 if mcu else None)
    except CBackendError as e:
        raise BuildError(str(e)) from None
    (stage / "weights.ecw").write_bytes(cm.container)
    session = ReferenceSession(graph, cm.calls)
    batch = static_batch(graph)
    demo = []
    for xs, _ in _padded_batches(tuple(a[: C_DEMO_BATCHES * batch] for a in evals), batch):
        demo.append(session.quantize_inputs(*xs))
    write_c_model(stage, cm, target.kind, target.name, target.triple, target.cpu,
                  [[device_bytes(v, x) for v, x in zip(graph.inputs, sample)] for sample in demo])
    io = lambda ds: [{k: d[k] for k in ("name", "shape", "scale", "zero_point", "layout")} for d in ds]  # noqa: E731
    manifest = {"format": "edgecompile-bundle", "version": 1, "backend": "c", "model": "runtime/model/model.c",
                "model_sha256": hashlib.sha256((stage / "runtime/model/model.c").read_bytes()).hexdigest(),
                "weights": "weights.ecw", "inputs": io(cm.inputs), "outputs": io(cm.outputs),
                "arena_bytes": cm.arena_bytes, "build": "runtime/build.sh", "target": target.name,
                "edgecompile_version": __version__}
    (stage / "manifest.json").write_text(json.dumps(manifest, separators=(",", ":")))  # compact: bytes count
    return {"emitted": cm.emitted(graph), "records": cm.records, "model_file": "runtime/model/model.c", "cmodel": cm,
            "session": session, "demo": demo}


def c_device_checks(stage: Path, written: dict, target: Target) -> dict:
    """The generated C compiled and run (see `backends.c.device`): on the host, bit for bit the
    integer reference on the demo samples (else a BuildError: our bug); for a microcontroller, code
    sizes from the cross toolchain and per-layer emulated instruction counts under QEMU."""
    from .backends.c import device as c_device
    from .backends.c.ref.graph import _nhwc

    cm, session, demo = written["cmodel"], written["session"], written["demo"]
    rt = stage / "runtime"
    info: dict = {"samples": len(demo)}
    try:
        host = c_device.host_run(rt)
        if host is None:
            info["host_check"] = "skipped: gcc not installed"
        else:
            for s, sample in enumerate(demo):
                for k, ref in enumerate(session.run_int8(*sample)):
                    got = host.outputs.get((s, k))
                    if host.status != "ECM_OK" or got is None or not np.array_equal(got, _nhwc(ref).reshape(-1)):
                        raise BuildError(f"the generated C differs from the integer reference (sample {s}, output {k}, "
                                         f"status {host.status}): an edgecompile bug; try --backend tflite and report it")
            info["host_check"] = f"bit-exact with the integer reference on {len(demo)} samples (gcc, host)"
        if target.kind != "mcu":
            return info
        info["code_size"] = c_device.code_sizes(rt, target.cpu)
        mem = c_memory(cm, info, target)
        if not (mem["fits_flash"] and mem["fits_ram"]):
            # not worth minutes of emulation: the build stops on its size (or ships it under
            # --allow-oversize, without instruction counts)
            info["emulated"] = "skipped: the bundle does not fit the board"
            return info
        emu = c_device.emulate(rt, target.cpu)
    except c_device.DeviceToolError as e:
        raise BuildError(f"the generated C did not build or run: {e}") from None
    if emu is None:
        info["emulated"] = None
    elif emu.status == "ECM_OK" and emu.steps:
        info["emulated"] = _emulated(emu.steps, len(demo), cm, target)
    return info


def _emulated(steps: list[int], samples: int, cm, target: Target) -> dict:
    """Per-inference emulated instruction counts (summed over the demo samples by the program)."""
    from .backends.c import device as c_device

    per = [int(round(v / max(samples, 1))) for v in steps]
    total = sum(per)
    machine = c_device.qemu_machine(target.cpu)
    return {"instructions_per_inference": total, "ms_at_clock": total / (target.clock_mhz * 1e3),
            "clock_mhz": target.clock_mhz, "machine": machine,
            "per_layer": [{"step": layer.index, "layer": layer.node, "kernel": layer.kernel,
                           "instructions": per[layer.index], "macs": layer.macs, "streamed": layer.streamed}
                          for layer in cm.layers],
            "basis": f"emulated instruction count: qemu-system-arm -M {machine} -icount shift=0, SysTick ticks x "
                     f"{c_device.INSTRUCTIONS_PER_TICK}; ms at {target.clock_mhz:g} MHz assumes one instruction per "
                     "cycle (an estimate)"}


def c_memory(cm, device: dict, target: Target) -> dict:
    """RAM = arena (activations + the streaming slot + decoder state) + I/O, from the generated C's
    static sizes; flash = container + model code + runtime code, measured by the cross toolchain
    when installed (else the container + an estimate)."""
    sizes = device.get("code_size")
    if sizes:
        code = sum(sizes[p][k] for p in ("model", "runtime") for k in ("text", "rodata", "data"))
        statics = sum(sizes[p]["bss"] + sizes[p]["data"] for p in ("model", "runtime"))
        basis = f"measured: {sizes['toolchain']} {sizes['flags']}"
    else:
        code, statics, basis = 16 * 1024 + 64 * len(cm.layers), 0, "code size estimated (no arm-none-eabi-gcc)"
    mem = {"model_file_bytes": len(cm.files[f"{cm.prefix}.c"]), "weights_bytes": len(cm.container),
           "arena_bytes": cm.arena_bytes, "scratch_bytes": cm.scratch_bytes, "io_bytes": cm.io_bytes,
           "naive_activation_bytes": None, "streamed_weight_bytes": cm.streamed_bytes,
           "runtime_flash_estimate": code, "code_bytes": code,
           "flash_needed": len(cm.container) + code, "ram_needed": cm.ram_bytes + statics, "basis": basis}
    mem["fits_flash"] = mem["flash_needed"] <= target.flash_bytes
    mem["fits_ram"] = mem["ram_needed"] <= target.ram_bytes
    notes = []
    if not mem["fits_flash"]:
        notes.append(f"does not fit {target.name}'s flash: needs {mem['flash_needed']:,} B of {target.flash_bytes:,} B")
    if not mem["fits_ram"]:
        notes.append(f"does not fit {target.name}'s RAM: needs {mem['ram_needed']:,} B of {target.ram_bytes:,} B, "
                     f"{mem['ram_needed'] - target.ram_bytes:,} B too many (arena {cm.arena_bytes:,} B, peak at layer "
                     f"{cm.peak_layer}: {cm.peak_live_bytes:,} B alive together; streaming already gave way to RAM)")
    mem["notes"] = notes
    return mem


class TflmSession:
    """A microcontroller's arithmetic for ``--backend tflite``: TFLite Micro's reference kernels run
    the full model (weights filled back in), so the report's fidelity is what the board computes."""

    def __init__(self, model_bytes: bytes, node_map):
        self.model_bytes, self.node_map = model_bytes, node_map

    def run(self, *xs: np.ndarray) -> list[np.ndarray]:
        from .backends.tflite import tflm

        try:
            return tflm.run(self.model_bytes, list(xs), self.node_map)
        except tflm.TflmError as e:
            raise BuildError(f"TFLite Micro failed running the model: {e}") from None


def tflm_checks(written: dict) -> tuple[TflmSession, dict]:
    """``--backend tflite`` for a microcontroller: every op checked against TFLite Micro's kernels
    (a one-line error naming the op and layer when TFLM lacks it), the session that verifies on TFLM,
    and TFLM's measured arena."""
    try:
        from .backends.tflite import tflm
    except ImportError:
        raise BuildError("--backend tflite for a microcontroller is checked with TFLite Micro, which is not installed: "
                         "pip install tflite-micro==0.dev20261023182759 (the dev extra), or use --backend c") from None
    from .bundle.tflite_model import fill_weights

    em = written["emitted"]
    full = fill_weights(em.model_bytes, em.tensors)
    try:
        tflm.check_ops(full, em.node_map)
        arena = tflm.arena_figures(full)
    except tflm.TflmUnsupported as e:
        raise BuildError(str(e)) from None
    except tflm.TflmError as e:
        raise BuildError(f"TFLite Micro cannot load the model: {e}; try --backend c") from None
    return TflmSession(full, em.node_map), arena


def tflm_memory(mem: dict, arena: dict, written: dict, target: Target) -> dict:
    """RAM for TFLite Micro: its measured arena (persistent + non-persistent, I/O inside) plus the
    decoded weights, which TFLM reads from the flatbuffer and the loader must rebuild in RAM (or
    flash the full .tflite: the flash figure then grows by the same amount instead)."""
    decoded = sum(r.decoded_size for r in written["records"])
    mem = dict(mem, tflm_arena=arena, decoded_weights_bytes=decoded, arena_bytes=arena["total_bytes"],
               ram_needed=arena["total_bytes"] + decoded,
               ram_basis=f"{arena['basis']} + decoded weights ({decoded:,} B)")
    mem["fits_ram"] = mem["ram_needed"] <= target.ram_bytes
    mem["notes"] = [n for n in mem["notes"] if "RAM" not in n]
    if not mem["fits_ram"]:
        mem["notes"].append(f"does not fit {target.name}'s RAM: needs {mem['ram_needed']:,} B of {target.ram_bytes:,} B "
                            f"(TFLite Micro arena {arena['total_bytes']:,} B + decoded weights {decoded:,} B; "
                            "--backend c streams weights from flash instead)")
    return mem
