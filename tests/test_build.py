"""Library-level builds: TFLite for a microcontroller, fine-tuning inside the build, the weights-only
path for hosts, and the atomic --out contract."""

import json

import numpy as np
import pytest

from edgecompile.build import BuildConfig, VerificationFailed, build
from edgecompile.bundle import load_bundle


def test_mcu_build_tflite_with_c_runtime(tmp_path):
    """--backend tflite for a microcontroller: checked and verified by TFLite Micro itself; RAM is
    TFLM's measured arena + the decoded weights."""
    res = build(None, BuildConfig(target="nrf52840", out=tmp_path / "mcu", prune="magnitude:global:0.7",
                                  backend="tflite"))
    out = res.out_dir
    man = json.loads((out / "manifest.json").read_text())
    assert man["backend"] == "tflite" and (out / "model.tflite").is_file()
    assert res.report["memory"]["tflm_arena"]["total_bytes"] > 0
    assert res.report["memory"]["ram_needed"] >= res.report["memory"]["decoded_weights_bytes"]
    assert (out / "runtime").is_dir() and any((out / "runtime").rglob("*.c"))
    rep = res.report
    assert rep["fidelity"]["top1_agreement"] >= 0.97
    assert rep["memory"]["arena_bytes"] > 0 and rep["memory"]["fits_ram"] and rep["memory"]["fits_flash"]
    assert {o["op"] for o in rep["backend_ops"]} >= {"CONV_2D", "FULLY_CONNECTED"}
    assert all(c["codec"] != "zstd" for c in rep["container"])  # MCUs cannot decode zstd
    assert rep["totals"]["compression_ratio"] >= 8


def test_mcu_default_is_generated_c(tmp_path):
    """A microcontroller's default bundle is a program: model.c + kernels + the container, checked
    on the host bit for bit against the integer reference that verified it; with every tensor
    streamed the flash is many times below fp32 and the RAM is the arena + one layer's weights."""
    res = build(None, BuildConfig(target="nrf52840", out=tmp_path / "c", prune="magnitude:global:0.7",
                                  cluster_bits=4, stream_weights="all"))
    out, rep = res.out_dir, res.report
    man = json.loads((out / "manifest.json").read_text())
    assert man["backend"] == "c" and (out / "runtime" / "model" / "model.c").is_file()
    assert (out / "runtime" / "build.sh").is_file() and (out / "runtime" / "src" / "ecm_kernels.c").is_file()
    assert rep["fidelity"]["top1_agreement"] >= 0.97
    assert "bit-exact" in rep["device"]["host_check"] or "skipped" in rep["device"]["host_check"]
    mem = rep["memory"]
    assert mem["fits_ram"] and mem["fits_flash"]
    assert mem["arena_bytes"] <= 8 * 1024 + max(layer["weight_shape"][0] * np.prod(layer["weight_shape"][1:])
                                               for layer in rep["layers"]) + 17 * 1024
    assert rep["totals"]["compression_ratio"] >= 8


def test_host_weights_only_dequantized_at_load(tmp_path):
    res = build(None, BuildConfig(target="host", out=tmp_path / "h"))
    man = json.loads((res.out_dir / "manifest.json").read_text())
    assert man["dequantize_at_load"], "host default keeps int8 in storage, fp32 compute"
    s = load_bundle(res.out_dir)
    x = np.zeros((1, 1, 8, 8), np.float32)
    assert s.run(x)[0].shape == (1, 10)
    assert res.report["fidelity"]["top1_agreement"] >= 0.99


def test_finetune_recovers_pruned_model(tmp_path):
    base = BuildConfig(target="rpi4", prune="magnitude:0.6", allow_degraded=True, latency_repeats=5)
    plain = build(None, BuildConfig(**{**base.__dict__, "out": tmp_path / "a"}))
    tuned = build(None, BuildConfig(**{**base.__dict__, "out": tmp_path / "b", "finetune": "calib",
                                       "optimizer": "adamw", "epochs": 6}))
    ft = tuned.report["finetune"]
    assert ft["optimizer"] == "adamw" and len(ft["history"]) == 6
    assert ft["history"][-1]["loss"] < ft["history"][0]["loss"]
    assert tuned.fidelity.top1_agreement > plain.fidelity.top1_agreement + 0.03
    sparsity = [r["sparsity"] for r in tuned.report["layers"]]
    assert min(sparsity) >= 0.55, "pruned weights stay zero through fine-tuning"


def test_failed_verification_keeps_only_its_report(tmp_path):
    out = tmp_path / "o"
    with pytest.raises(VerificationFailed, match="verification failed") as info:
        build(None, BuildConfig(target="rpi4", out=out, prune="magnitude:0.9", latency_repeats=2))
    assert info.value.exit_code == 1
    failed = tmp_path / "o.failed"
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["o.failed"]
    assert sorted(p.name for p in failed.iterdir()) == ["report.html", "report.json"]
    rep = json.loads((failed / "report.json").read_text())
    assert not rep["verdict"]["passed"] and "accuracy drop" in rep["verdict"]["failures"][0]
    # a later successful build into the same folder clears the failed report
    build(None, BuildConfig(target="rpi4", out=out, latency_repeats=2))
    assert (out / "manifest.json").is_file() and not failed.exists()


@pytest.mark.parametrize("factory", ["lstm_cell_model", pytest.param("tiny_transformer", marks=pytest.mark.slow)])
def test_mcu_generated_c_on_zoo_models(factory, tmp_path):
    """Recurrent cells and a transformer (token ids in, GELU, softmax, layer norm) built for a
    microcontroller: generated C, verified by the integer reference, the host build bit-exact."""
    from pathlib import Path

    spec = f"{Path(__file__).with_name('models.py')}:{factory}"
    res = build(spec, BuildConfig(target="nrf52840", out=tmp_path / factory, latency_repeats=1))
    rep = res.report
    assert rep["backend"] == "c" and not rep["verdict"]["failures"]
    assert rep["device"]["host_check"].startswith("bit-exact")
    assert rep["memory"]["fits_ram"] and rep["memory"]["arena_bytes"] > 0
