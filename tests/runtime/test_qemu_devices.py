"""A trained model's container decoded bit-exact by the C runtime on emulated devices:
rpi4 (aarch64 Linux, qemu-aarch64) and a Cortex-M4F board (qemu-system-arm -M mps2-an386)."""
from __future__ import annotations

from pathlib import Path

import pytest

from ecw_harness import RUNTIME, expected_lines, have, make, run
from edgecompile.backends.c_bundle import write_c_bundle
from edgecompile.container import write_container
from trained import digits_mlp_int8


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    tensors, quant, acc = digits_mlp_int8()
    assert acc > 0.9
    path = tmp_path_factory.mktemp("digits") / "weights.ecw"
    records = write_container(path, tensors, quant, codecs=("raw", "rans", "lut"))
    assert records[0].name == "fc0.weight" and records[0].codec == "rans"
    return path, tensors


@pytest.mark.skipif(not have("aarch64-linux-gnu-gcc", "qemu-aarch64"), reason="scripts/install_toolchains.sh")
def test_rpi4_aarch64_bundle_decodes_bit_exact(digits, tmp_path):
    path, tensors = digits
    files = write_c_bundle(tmp_path, path, "linux", "rpi4", "aarch64-linux-gnu", "cortex-a72")
    assert (tmp_path / "runtime" / "build.sh") in files
    make("aarch64", tmp_path / "build")
    for ref in (["--ref"], []):
        outdir = tmp_path / f"out{len(ref)}"
        outdir.mkdir()
        rc, lines = run(["qemu-aarch64", "-cpu", "cortex-a72", str(tmp_path / "build/aarch64/ecw_tool"), *ref,
                         str(path), str(outdir)])
        assert rc == 0 and lines == expected_lines(tensors)
        for i, arr in enumerate(tensors.values()):
            assert (outdir / f"{i}.bin").read_bytes() == arr.tobytes()


@pytest.mark.skipif(not have("arm-none-eabi-gcc", "qemu-system-arm"), reason="scripts/install_toolchains.sh")
def test_cortex_m4_bundle_decodes_bit_exact(digits, tmp_path):
    path, tensors = digits
    write_c_bundle(tmp_path, path, "mcu", "nrf52840", "thumbv7em-none-eabihf", "cortex-m4")
    bundle = tmp_path / "runtime"
    assert (bundle / "demo" / "ecw_weights.c").read_text().count("aligned(16)") == 1
    rc, out = run(["sh", str(bundle / "build.sh")], timeout=300)
    assert rc == 0, out
    rc, lines = run(["qemu-system-arm", "-M", "mps2-an386", "-nographic", "-semihosting", "-kernel",
                     str(bundle / "build" / "demo.elf")], timeout=120)
    assert lines == expected_lines(tensors) + ["done 0"] and rc == 0


def test_c_bundle_reports_missing_runtime(monkeypatch, tmp_path):
    from edgecompile.backends import c_bundle

    with pytest.raises(c_bundle.BundleError, match="unknown kind"):
        c_bundle.write_c_bundle(tmp_path, tmp_path / "x.ecw", "gpu", "x", "", "")
    with pytest.raises(c_bundle.BundleError, match="unknown MCU cpu"):
        c_bundle._mcu_script("cortex-z9")
    assert c_bundle.runtime_dir() == RUNTIME
