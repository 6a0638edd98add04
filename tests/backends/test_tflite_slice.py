"""STRIDED_SLICE lowering: every axis of ranks 2-5, steps, negative and clamped bounds, in both the
IR layout and the channels-last forms that follow a Conv1d (``[N, C, L] -> [N, 1, L, C]``) or a
Conv2d (``[N, C, H, W] -> [N, H, W, C]``); each model runs in LiteRT against the PyTorch reference.

The rank-3 channels-last case once wrote a stride of 0 for the inserted unit axis, which LiteRT
rejects at `allocate_tensors` ("stride value has to be non-zero"): a Conv1d front end followed by a
channel split (silero-vad's STFT magnitude) could not be built for TFLite.
"""

import numpy as np
import pytest
import torch
from torch import nn

from edgecompile.backends.tflite import emit_tflite, op_counts
from edgecompile.backends.tflite.lower import CL, IR
from edgecompile.backends.tflite.ops import slice_vectors
from edgecompile.frontend import import_model
from edgecompile.ir import Graph, infer_shapes, run_graph, verify

from tflite_util import quantize_for_test, run_tflite, step

SHAPES = {2: (5, 7), 3: (3, 6, 7), 4: (2, 5, 4, 6), 5: (2, 3, 4, 5, 6)}
# (start, end, step): whole, step 2 and 3, negative start, negative end, end past the axis, empty
BOUNDS = [(0, 2**62, 1), (1, 2**62, 2), (0, 5, 3), (-3, 2**62, 1), (1, -1, 1), (2, 100, 2), (4, 2, 1)]


def _x(shape, seed=1):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _slice_graph(shape, axis, start, end, stp, conv_nd=0):
    """x -> [conv (channels-last in TFLite)] -> slice -> relu. `conv_nd` 1 or 2 puts a convolution first."""
    rng = np.random.default_rng(0)
    g = Graph("slice")
    h = g.add_input("x", shape)
    if conv_nd:
        c = shape[1]
        w = g.add_const("conv.weight", rng.standard_normal((c, c) + (3,) * conv_nd).astype(np.float32))
        b = g.add_const("conv.bias", rng.standard_normal(c).astype(np.float32))
        attrs = {"stride": [1] * conv_nd, "padding": [1] * conv_nd, "dilation": [1] * conv_nd, "groups": 1}
        h = g.add_node("conv", [h, w, b], attrs, name="encoder.0.conv").output
    h = g.add_node("slice", [h], {"axis": axis, "start": start, "end": end, "step": stp}, name="split").output
    g.outputs = [g.add_node("relu", [h], name="act").output]
    infer_shapes(g)
    verify(g)
    return g


def _check_float(g, x):
    m = emit_tflite(g, embed_weights=True)
    assert "STRIDED_SLICE" in op_counts(m.model_bytes)
    out = run_tflite(m.model_bytes, x)[0]
    ref = run_graph(g, x)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5 * max(1.0, float(np.abs(ref).max(initial=0))))


def _id(b):
    return f"{b[0]}:{'end' if b[1] > 1000 else b[1]}:{b[2]}"


def _empty(n, b):
    return len(range(*slice(*b).indices(n))) == 0


# an empty result is no TFLite tensor (the IR keeps it; no model computes with one)
CASES = [(r, ax, b) for r in SHAPES for ax in range(r) for b in BOUNDS if not _empty(SHAPES[r][ax], b)]
CONV_CASES = [(nd, ax, b) for nd, shape in ((1, (2, 6, 9)), (2, (2, 6, 5, 7))) for ax in range(nd + 2)
              for b in BOUNDS if not _empty(shape[ax], b)]


@pytest.mark.parametrize("rank,axis,bounds", CASES, ids=[f"r{r}-ax{a}-{_id(b)}" for r, a, b in CASES])
def test_slice_ir_layout(rank, axis, bounds):
    shape = SHAPES[rank]
    _check_float(_slice_graph(shape, axis, *bounds), _x(shape))


@pytest.mark.parametrize("conv_nd,axis,bounds", CONV_CASES,
                         ids=[f"conv{nd}d-ax{a}-{_id(b)}" for nd, a, b in CONV_CASES])
def test_slice_after_conv_channels_last(conv_nd, axis, bounds):
    shape = (2, 6, 9) if conv_nd == 1 else (2, 6, 5, 7)
    g = _slice_graph(shape, axis, *bounds, conv_nd=conv_nd)
    m = emit_tflite(g, embed_weights=True)
    assert op_counts(m.model_bytes)["CONV_2D"] == 1
    _check_float(g, _x(shape))


@pytest.mark.parametrize("conv_nd", [1, 2])
def test_int8_slice_after_conv(conv_nd):
    shape = (2, 6, 9) if conv_nd == 1 else (2, 6, 5, 7)
    g = _slice_graph(shape, 1, 1, 5, 2, conv_nd=conv_nd)
    x = _x(shape)
    q = quantize_for_test(g, x)
    m = emit_tflite(q, embed_weights=True)
    counts = op_counts(m.model_bytes)
    assert counts["QUANTIZE"] == 1 and counts["DEQUANTIZE"] == 1, counts   # the slice runs in int8
    out = run_tflite(m.model_bytes, x)[0]
    assert np.abs(out - run_graph(q, x)).max() <= step(q) * 1.001 + 1e-6


def test_slice_vectors_keep_the_inserted_unit_axis_whole():
    # [N, C, L] = [2, 258, 40] sliced to channels 0:129 -> [N, 1, L, C] form
    b, e, s = slice_vectors((2, 258, 40), 1, 0, 129, 1, CL)
    assert b.tolist() == [0, 0, 0, 0] and e.tolist() == [2, 1, 40, 129] and s.tolist() == [1, 1, 1, 1]
    b, e, s = slice_vectors((2, 258, 40), 2, -10, 2**62, 3, CL)
    assert b.tolist() == [0, 0, 30, 0] and e.tolist() == [2, 1, 40, 258] and s.tolist() == [1, 1, 3, 1]
    b, e, s = slice_vectors((2, 3, 4, 5), 1, 1, 3, 1, CL)      # [N, H, W, C]
    assert b.tolist() == [0, 0, 0, 1] and e.tolist() == [2, 4, 5, 3] and s.tolist() == [1, 1, 1, 1]
    b, e, s = slice_vectors((4, 9), 1, 5, 2, 1, IR)            # empty: end not before begin
    assert b.tolist() == [0, 5] and e.tolist() == [4, 5]


class _StftMagnitude(nn.Module):
    """silero-vad's front end in small: a Conv1d "STFT", then real/imag halves by slicing channels."""

    def __init__(self, mode):
        super().__init__()
        self.mode = mode
        self.stft = nn.Conv1d(1, 2 * 9, 8, stride=4, bias=False)
        self.enc = nn.Conv1d(9, 4, 3, padding=1)

    def forward(self, x):
        s = self.stft(x)
        if self.mode == "index":
            re, im = s[:, :9, :], s[:, 9:, :]
        elif self.mode == "split":
            re, im = torch.split(s, 9, dim=1)
        else:
            re, im = s.narrow(1, 0, 9), s.narrow(1, 9, 9)
        mag = torch.sqrt(re * re + im * im + 1e-6)
        y = torch.relu(self.enc(mag))
        return y[:, :, 1:-1:2]                   # time slice with a step and a negative end


@pytest.mark.parametrize("mode", ["index", "split", "narrow"])
def test_conv1d_channel_split_model_runs_in_litert(mode):
    torch.manual_seed(0)
    model = _StftMagnitude(mode).eval()
    x = torch.randn(2, 1, 64)
    g = import_model(model, (x,), name="vad")
    m = emit_tflite(g, embed_weights=True)
    assert op_counts(m.model_bytes).get("STRIDED_SLICE", 0) >= 2
    out = run_tflite(m.model_bytes, x.numpy())[0]
    with torch.no_grad():
        ref = model(x).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_negative_step_is_refused_by_name():
    from edgecompile.backends.tflite import TFLiteUnsupportedError
    with pytest.raises(TFLiteUnsupportedError, match="step"):
        slice_vectors((3, 4), 1, 3, 0, -1, IR)
