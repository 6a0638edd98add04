"""Layers sharing one weight get one input and one output quantization (issue 13, item 4).

An unrolled LSTM reads its recurrent weight once per time step. With each step's own activation
ranges every step needed its own int32 bias (s_in * s_w) and requantization multipliers, which the
TFLite and C backends stored per step; with the ranges merged those are equal and stored once.
Ranges further apart than `TIE_SPAN` stay apart.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from edgecompile.frontend.torch_export import import_model
from edgecompile.ir import run_graph
from edgecompile.passes.quantize import TIE_SPAN, QuantConfig, QuantizePass


class _Twice(nn.Module):
    """One linear layer applied twice, the second time to its own output times `gain` (or two
    layers of their own)."""

    def __init__(self, shared: bool, gain: float):
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = self.a if shared else nn.Linear(8, 8)
        self.gain = gain

    def forward(self, x):
        return self.b(self.a(x) * self.gain)


def _quantized(shared: bool, gain: float):
    torch.manual_seed(0)
    model = _Twice(shared, gain).eval()
    g = import_model(model, (torch.randn(4, 8),))
    rng = np.random.default_rng(0)
    QuantizePass(QuantConfig(), [(rng.standard_normal((4, 8)).astype(np.float32),) for _ in range(8)])(g)
    layers = [n for n in g.nodes if n.op == "linear"]
    assert len(layers) == 2
    return model, g, layers


def _same(qa, qb) -> bool:
    return np.array_equal(qa.scale, qb.scale) and np.array_equal(qa.zero_point, qb.zero_point)


def test_layers_of_one_weight_share_input_and_output_quantization():
    _, g, (first, second) = _quantized(shared=True, gain=1.2)
    assert first.input(1) is second.input(1)
    assert _same(first.inputs[0].quant, second.inputs[0].quant)
    assert _same(first.output.quant, second.output.quant)


def test_ranges_far_apart_keep_their_own_quantization():
    """gain 6: the second layer's input spans ~6x the first's, beyond TIE_SPAN."""
    assert 6.0 > 2 * TIE_SPAN
    _, g, (first, second) = _quantized(shared=True, gain=6.0)
    assert not _same(first.inputs[0].quant, second.inputs[0].quant)
    assert not _same(first.output.quant, second.output.quant)


def test_layers_of_different_weights_keep_their_own_ranges():
    _, g, (first, second) = _quantized(shared=False, gain=1.2)
    assert not _same(first.inputs[0].quant, second.inputs[0].quant)
    assert not _same(first.output.quant, second.output.quant)


def test_shared_quantization_keeps_the_output():
    """Fake-quant output against torch on held-out inputs: cosine >= 0.999 (measured 0.9998)."""
    model, g, _ = _quantized(shared=True, gain=1.2)
    x = np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)
    ref = model(torch.from_numpy(x)).detach().numpy().reshape(-1)
    got = np.asarray(run_graph(g, x), np.float64).reshape(-1)
    cos = float(ref @ got / (np.linalg.norm(ref) * np.linalg.norm(got)))
    assert cos >= 0.999, cos
