"""The report's figures: a model without weights builds and renders (its byte plot once crashed
matplotlib's log scale on an empty/zero column), and big or partly pruned-away models still plot."""

import base64
import io
import json
import re

import numpy as np
import pytest
import torch
from torch import nn

from edgecompile.build import BuildConfig, build
from edgecompile.inputs.model import LoadedModel
from edgecompile.report.render import PLOT_MAX_LAYERS, _plot_bytes


class Double(nn.Module):
    def forward(self, x):
        return x * 2


def _pngs(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)]


def _png_size(png: bytes) -> tuple[int, int]:
    from PIL import Image
    return Image.open(io.BytesIO(png)).size


@pytest.mark.parametrize("module,backend", [(nn.ReLU(), "onnx"), (Double(), "onnx"), (Double(), "tflite")],
                         ids=["relu-onnx", "double-onnx", "double-tflite"])
def test_weightless_model_builds_with_a_report(tmp_path, module, backend):
    torch.manual_seed(0)
    loaded = LoadedModel("weightless", module.eval(), (torch.randn(2, 8),))
    out = tmp_path / "out"
    res = build(loaded, BuildConfig(target="host", out=out, backend=backend, quant="none", latency_repeats=3))
    report = json.loads((out / "report.json").read_text())
    assert report["layers"] == [] and res.fidelity is not None
    pngs = _pngs((out / "report.html").read_text())
    assert pngs and all(p.startswith(b"\x89PNG") for p in pngs)


def _row(name, before, after):
    return {"layer": name, "bytes_before": before, "bytes_after": after}


def test_plot_with_zero_columns_and_no_layers():
    for layers in ([], [_row("a", 0, 0)], [_row("a", 4096, 0), _row("b", 0, 0), _row("c", 64, 17)]):
        png = base64.b64decode(_plot_bytes({"layers": layers}).split(",", 1)[1])
        assert png.startswith(b"\x89PNG")


def test_plot_of_many_layers_keeps_the_heaviest():
    rng = np.random.default_rng(0)
    layers = [_row(f"l{i}", int(b), int(b) // 4) for i, b in enumerate(rng.integers(1, 10**6, 3000))]
    png = base64.b64decode(_plot_bytes({"layers": layers}).split(",", 1)[1])
    w, h = _png_size(png)
    assert h < 110 * (0.35 * PLOT_MAX_LAYERS + 2)       # one row per kept layer at 110 dpi
