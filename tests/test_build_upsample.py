"""End to end: the tiny U-Nets (transposed-conv and bilinear upsampling) built with int8 for both
backends, verified in the real runtime on held-back data; pure conversion through the CLI."""

import json
from pathlib import Path

import pytest

from edgecompile.build import BuildConfig, build
from edgecompile.backends.tflite import TFLiteUnsupportedError
from tests.test_cli import run_cli

MODELS = Path(__file__).with_name("models.py")
# the upsampling op each backend must run (int8 kernels in TFLite)
UP_OPS = {("unet_transposed_data", "onnx"): "ConvTranspose", ("unet_transposed_data", "tflite"): "TRANSPOSE_CONV",
          ("unet_bilinear_data", "onnx"): "Resize", ("unet_bilinear_data", "tflite"): "RESIZE_BILINEAR"}


@pytest.mark.parametrize("factory, backend", sorted(UP_OPS))
def test_int8_unet_builds_and_verifies(factory, backend, tmp_path):
    res = build(f"{MODELS}:{factory}", BuildConfig(target="rpi4", backend=backend, quant="int8", optimize="none",
                                                  out=tmp_path / "b", latency_repeats=1))
    rep = res.report
    assert rep["verdict"]["passed"] and not rep["verdict"]["failures"]
    assert rep["chosen"] == "int8" and rep["fidelity"]["n_samples"] == 64
    # measured: cosine 0.99998 (transposed) / 0.99999 (bilinear) on both backends
    assert rep["fidelity"]["cosine"] >= 0.9999 and rep["fidelity"]["min_cosine"] >= 0.999
    ops = {o["op"] for o in rep["backend_ops"]}
    assert UP_OPS[factory, backend] in ops
    if backend == "tflite":       # integer from input to output: no float island around the upsampling
        assert next(o["count"] for o in rep["backend_ops"] if o["op"] == "DEQUANTIZE") == 1
    layers = {r["layer"]: r for r in rep["layers"]}
    if factory == "unet_transposed_data":       # transposed convs are reported int8 layers
        assert layers["up2"]["op"] == "conv_transpose" and layers["up2"]["bits"] == 8
        assert layers["up1.0"]["op"] == "conv_transpose" and layers["up1.0"]["macs_before"] == 16 * 8 * 8 * 8 * 16


@pytest.mark.parametrize("factory, backend", [
    ("unet_bilinear_data", "tflite"), pytest.param("unet_transposed_data", "onnx", marks=pytest.mark.slow)])
def test_pure_conversion_on_the_cli(factory, backend, tmp_path):
    out = tmp_path / "o"
    r = run_cli("build", f"{MODELS}:{factory}", "--backend", backend, "--quant", "none", "--rank", "none",
                "--optimize", "none", "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)["report"]
    assert rep["verdict"]["passed"] and rep["fidelity"]["min_cosine"] >= 0.9999
    assert rep["fidelity"]["max_abs_error"] < 1e-5


def test_grouped_transposed_conv_on_tflite_is_one_line(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("import torch\n"
                   "def model():\n"
                   "    torch.manual_seed(0)\n"
                   "    m = torch.nn.ConvTranspose2d(4, 4, 2, stride=2, groups=2).eval()\n"
                   "    return m, (torch.randn(1, 4, 5, 5),)\n")
    out = tmp_path / "o"
    with pytest.raises(TFLiteUnsupportedError) as e:      # the CLI's one-line, exit-3 errors
        build(f"{src}:model", BuildConfig(target="rpi4", backend="tflite", quant="none", out=out))
    msg = str(e.value)
    assert "\n" not in msg and "(conv_transpose)" in msg and "groups=2" in msg and "--backend onnx" in msg
    assert not out.exists()
