"""A real build of a trained model run by the bundle's own C on emulated devices: rpi4 (aarch64
Linux, qemu-aarch64) decodes every tensor of its container bit-exact (compared with the Python
reader of the same ``weights.ecw``); nrf52840 (Cortex-M4F, qemu-system-arm -M mps2-an386) runs the
generated model itself, weights streamed from the container, with the same output bytes as the
host build that the build checked against the integer reference. Each program is compiled the way
a user would, from the bundle's ``runtime/build.sh``."""
from __future__ import annotations

import os
import shutil
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest

from ecw_harness import RUNTIME, expected_lines, have, run
from edgecompile.container import read_container

#: rpi4's libzstd is the board's; this machine has no arm64 libzstd, so the emulated build is
#: ZSTD=0 and the test bundle keeps to the codecs it can decode (raw, rans, lut).
RPI4_CODECS = ("raw", "rans", "lut")


def _build(target: str, out: Path, **kw):
    import torch

    from edgecompile.build import BuildConfig, build

    torch.set_num_threads(1)
    # None: the embedded digits CNN, trained by edgecompile itself; pruned so rANS has zeros to code
    # the whole eval set (360 images): at 128 one changed decision is 0.78 points, above the gate's 0.5
    return build(None, BuildConfig(target=target, out=out, prune="magnitude:global:0.7", latency_repeats=1, **kw))


def _reference(bundle: Path) -> dict[str, np.ndarray]:
    reader = read_container(bundle / "weights.ecw")
    return {name: reader.read(name) for name in reader.names}


@pytest.fixture(scope="module")
def rpi4_bundle(tmp_path_factory) -> Path:
    res = _build("rpi4", tmp_path_factory.mktemp("rpi4") / "bundle", codecs=RPI4_CODECS)
    return res.out_dir


@pytest.fixture(scope="module")
def m4_bundle(tmp_path_factory) -> Path:
    return _build("nrf52840", tmp_path_factory.mktemp("nrf52840") / "bundle", stream_weights="all").out_dir


def _sh(script: Path, **env: str) -> None:
    p = subprocess.run(["sh", str(script)], capture_output=True, text=True, timeout=300, env={**os.environ, **env})
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.skipif(not have("aarch64-linux-gnu-gcc", "qemu-aarch64"), reason="scripts/install_toolchains.sh")
def test_rpi4_bundle_decodes_bit_exact_under_qemu(rpi4_bundle, tmp_path):
    ref = _reference(rpi4_bundle)
    codecs = {r.name: r.codec for r in read_container(rpi4_bundle / "weights.ecw").records}
    assert set(codecs.values()) <= set(RPI4_CODECS) and "rans" in codecs.values()
    _sh(rpi4_bundle / "runtime" / "build.sh", ZSTD="0", LDFLAGS="-static")  # the board's script, cross CC
    tool = rpi4_bundle / "runtime" / "build" / "ecw_tool"
    for mode in ("--ref", "--fast"):  # reference decoder, then the scalar fast path (no SIMD on ARM)
        outdir = tmp_path / mode.strip("-")
        outdir.mkdir()
        argv = ["qemu-aarch64", "-cpu", "cortex-a72", str(tool), *([mode] if mode == "--ref" else []),
                str(rpi4_bundle / "weights.ecw"), str(outdir)]
        rc, lines = run(argv)
        assert rc == 0, lines
        assert lines == expected_lines(ref)
        for i, (name, arr) in enumerate(ref.items()):
            assert (outdir / f"{i}.bin").read_bytes() == arr.tobytes(), name


@pytest.mark.skipif(not have("gcc") or not Path("/usr/include/zstd.h").exists(), reason="gcc, libzstd-dev")
def test_rpi4_bundle_script_builds_natively_with_zstd(rpi4_bundle, tmp_path):
    """The same script as on the board (CC=gcc, ZSTD=1 links libzstd), here on the host."""
    shutil.copytree(rpi4_bundle / "runtime", tmp_path / "runtime")
    _sh(tmp_path / "runtime" / "build.sh", CC="gcc", AR="ar")
    rc, lines = run([str(tmp_path / "runtime" / "build" / "ecw_tool"), str(rpi4_bundle / "weights.ecw")])
    assert rc == 0 and lines == expected_lines(_reference(rpi4_bundle))


@pytest.mark.skipif(not have("arm-none-eabi-gcc", "qemu-system-arm"), reason="scripts/install_toolchains.sh")
def test_cortex_m4_bundle_runs_the_model_under_qemu(m4_bundle):
    """The default nrf52840 bundle (generated C, every tensor streamed) built by its build.sh and run
    under QEMU: the same output bytes as the host build of the same sources."""
    from edgecompile.backends.c import device as c_device

    assert {"rans", "lut"} & {r.codec for r in read_container(m4_bundle / "weights.ecw").records}
    rt = m4_bundle / "runtime"
    _sh(rt / "build.sh")
    rc, lines = run(["qemu-system-arm", "-M", "mps2-an386", "-nographic", "-semihosting", "-kernel",
                     str(rt / "build" / "model.elf")], timeout=120)
    host = c_device.host_run(rt)
    assert rc == 0 and lines[-1] == "done ECM_OK", lines[-3:]
    got = [ln for ln in lines if ln.startswith("y ")]
    assert len(got) == len(host.outputs) >= 4
    for ln in got:
        _, s, k, hexed = ln.split()
        assert bytes.fromhex(hexed) == host.outputs[(int(s), int(k))].tobytes()


def test_c_bundle_reports_bad_targets(tmp_path):
    from edgecompile.backends.c import bundle as c_bundle

    with pytest.raises(c_bundle.CBundleError, match="unknown kind"):
        c_bundle.write_c_bundle(tmp_path, tmp_path / "x.ecw", "gpu", "x", "", "")
    with pytest.raises(c_bundle.CBundleError, match="unknown MCU cpu"):
        c_bundle._mcu_script("cortex-z9")
    assert c_bundle.runtime_dir() == RUNTIME


def _golden_on_device(argv: list[str]) -> None:
    """The golden vectors (every codec, a class map, knot tables, 1..32 lanes) decoded by a device
    build: every line as on the host except the zstd tensor, which these builds leave out."""
    want = (RUNTIME / "tests" / "golden" / "golden.expected").read_text().splitlines()
    rc, lines = run(argv, timeout=180)
    zstd = [i for i, ln in enumerate(want) if ln.split()[1:2] == ["embed"]]
    assert zstd and "ECW_E_CODEC_UNAVAILABLE" in lines[zstd[0]], lines
    assert [ln for i, ln in enumerate(lines[: len(want)]) if i not in zstd] == [
        ln for i, ln in enumerate(want) if i not in zstd]


@pytest.mark.skipif(not have("aarch64-linux-gnu-gcc", "qemu-aarch64"), reason="scripts/install_toolchains.sh")
def test_golden_vectors_decode_under_qemu_aarch64(tmp_path):
    subprocess.run(["make", "-s", "-C", str(RUNTIME), "aarch64", f"BUILD={tmp_path}"], check=True, capture_output=True)
    tool = ["qemu-aarch64", "-cpu", "cortex-a72", str(tmp_path / "aarch64" / "ecw_tool")]
    golden = str(RUNTIME / "tests" / "golden" / "golden.ecw")
    for mode in ([], ["--ref"]):
        _golden_on_device([*tool, *mode, golden])
    # the CRC32 instructions of the Cortex-A72 build, every length 400..600 and offset 0..200
    data = np.random.default_rng(8).integers(0, 256, 600, dtype=np.uint8).tobytes()
    (tmp_path / "crc.bin").write_bytes(data)
    assert run([*tool, "--crc32", str(tmp_path / "crc.bin")]) == (0, [f"{zlib.crc32(data[k:]):08x}" for k in range(201)])


@pytest.mark.skipif(not have("arm-none-eabi-gcc", "qemu-system-arm"), reason="scripts/install_toolchains.sh")
def test_golden_vectors_decode_under_qemu_cortex_m4(tmp_path):
    from edgecompile.backends.c.bundle import container_to_c

    container_to_c((RUNTIME / "tests" / "golden" / "golden.ecw").read_bytes(), tmp_path / "w")
    subprocess.run(["make", "-s", "-C", str(RUNTIME), "cortex-m4", f"BUILD={tmp_path}", f"WEIGHTS_DIR={tmp_path / 'w'}"],
                   check=True, capture_output=True)
    _golden_on_device(["qemu-system-arm", "-M", "mps2-an386", "-nographic", "-semihosting", "-kernel",
                       str(tmp_path / "m4" / "demo.elf")])
