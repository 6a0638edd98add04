"""Regression tests for the bugs that broke full int8 on pretrained models (issue 11, item 2).

1. The executor's fake quantization read a huge finite activation (an attention mask filled with
   finfo.min = -3.4e38) as 0 instead of the range's low end: x + (y - x) cancelled.
2. A conv feeding only ReLU6 was quantized over its own range (+-180 in EfficientNet-Lite0) before
   the clamp, where the backends' fused kernels use the clamp's [0, 6].
3. An additive finfo.min mask got an int8 scale of ~1e36, which onnxruntime's integer Add
   requantized into garbage while the executor did not.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgecompile.backends.onnx import emit_onnx
from edgecompile.ir import Graph, infer_shapes, run_graph, verify
from edgecompile.ir.torch_ops import fake_quant
from edgecompile.bundle.onnx_session import create_session
from edgecompile.passes.quantize import QuantConfig, QuantizePass

F32_MIN = float(np.finfo(np.float32).min)


def test_fake_quant_clamps_huge_finite_values_to_the_range_end():
    scale, zp = torch.tensor([0.125]), torch.tensor([10.0])
    x = torch.tensor([F32_MIN, -1.0, 0.0, 3.0, 1e30, float("-inf")])
    lo_end, hi_end = (-128 - 10) * 0.125, (127 - 10) * 0.125
    want = torch.tensor([lo_end, -1.0, 0.0, 3.0, hi_end, lo_end])
    assert torch.equal(fake_quant(x, scale, zp, -128, 127), want)
    # with a gradient: same values, identity gradient where x is finite
    xg = x.clone().requires_grad_(True)
    y = fake_quant(xg, scale, zp, -128, 127)
    assert torch.equal(y.detach(), want)
    y[:5].sum().backward()
    assert torch.equal(xg.grad[:5], torch.ones(5))


def _conv_relu6(rng) -> tuple[Graph, list]:
    g = Graph("conv_relu6")
    x = g.add_input("x", (2, 3, 8, 8))
    w = rng.normal(0, 1, (4, 3, 3, 3)).astype(np.float32)
    b = np.array([-100, 100, 0, 0], np.float32)                         # pre-activation spans ~+-100
    conv = {"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "groups": 1}
    h = g.add_node("conv", [x, g.add_const("w", w), g.add_const("b", b)], conv, name="conv").output
    r = g.add_node("clip", [h], {"min": 0.0, "max": 6.0}, name="relu6").output
    y = g.add_node("add", [r, r], name="twice").output                   # a use of the clamp, not of conv
    g.outputs = [y]
    infer_shapes(g)
    verify(g)
    return g, [(rng.normal(0, 1, (2, 3, 8, 8)).astype(np.float32),) for _ in range(2)]


def test_a_conv_feeding_only_a_clamp_takes_the_clamps_parameters():
    g, calib = _conv_relu6(np.random.default_rng(0))
    q = g.copy()
    QuantizePass(QuantConfig(), calib)(q)
    pre, post = q.node("conv").output.quant, q.node("relu6").output.quant
    assert pre is post
    assert abs(float(post.scale[0]) * 255 - 6.0) < 0.05            # [0, 6] over 255 steps, not [-100, 100]
    x = calib[0][0]
    err = np.abs(run_graph(q, x) - run_graph(g, x, fake_quant=False)).max()
    assert err < 0.3, f"error {err:.3f} (a [-100, 100] range would leave steps of 0.8)"
    # onnxruntime (fused QDQ) agrees with the executor within two output steps
    m = emit_onnx(q, embed_weights=False)
    got = create_session(m.model_bytes, m.tensors).run(None, {"x": x})[0]
    assert np.abs(got - run_graph(q, x)).max() <= 2 * float(q.outputs[0].quant.scale[0]) + 1e-6


def test_a_conv_with_another_use_keeps_its_own_range():
    g, calib = _conv_relu6(np.random.default_rng(0))
    h = g.node("conv").output
    g.add_node("add", [h, g.outputs[0]], name="mix")
    g.outputs = [g.node("mix").output]
    infer_shapes(g)
    q = g.copy()
    QuantizePass(QuantConfig(), calib)(q)
    assert q.node("conv").output.quant is not q.node("relu6").output.quant
    assert float(q.node("conv").output.quant.scale[0]) * 255 > 50


def _masked_attention(rng) -> tuple[Graph, list]:
    """scores [2, 4, 4] + where(mask, 0, finfo.min) -> softmax -> @ v."""
    g = Graph("masked")
    x = g.add_input("x", (2, 4, 8))
    mask = g.add_input("mask", (2, 1, 4), "bool")
    s = g.add_node("matmul", [x, g.add_node("transpose", [x], {"perm": [0, 2, 1]}).output], name="scores").output
    fill = g.add_node("where", [mask, g.add_const("zero", np.float32(0)), g.add_const("neg", np.float32(F32_MIN))],
                      name="additive_mask").output
    s = g.add_node("add", [s, fill], name="masked").output
    p = g.add_node("softmax", [s], {"axis": -1}, name="probs").output
    y = g.add_node("matmul", [p, x], name="attend").output
    g.outputs = [y]
    infer_shapes(g)
    verify(g)

    def sample():
        m = np.ones((2, 1, 4), bool)
        m[0, 0, 3:] = False
        m[1, 0, 2:] = False
        return rng.normal(0, 1, (2, 4, 8)).astype(np.float32), m
    return g, [sample() for _ in range(3)]


def test_an_additive_finfo_min_mask_stays_float_and_onnxruntime_agrees():
    g, calib = _masked_attention(np.random.default_rng(1))
    q = g.copy()
    QuantizePass(QuantConfig(), calib)(q)
    assert q.node("additive_mask").output.quant is None           # the sentinel fill
    assert q.node("masked").output.quant is not None              # the scores stay int8 (softmax span)
    x, m = calib[0]
    want = run_graph(q, x, m)
    ref = run_graph(g, x, m, fake_quant=False)
    assert np.abs(want - ref).max() < 0.1
    em = emit_onnx(q, embed_weights=False)
    got = create_session(em.model_bytes, em.tensors).run(None, {"x": x, "mask": m})[0]
    assert np.abs(got - want).max() <= 2 * float(q.outputs[0].quant.scale[0]) + 1e-6


# -- bias correction ------------------------------------------------------------------------------
from edgecompile.passes.base import PassError  # noqa: E402
from edgecompile.passes.quantize import bias_shift  # noqa: E402


def test_bias_shift_is_the_mean_output_error():
    rng = np.random.default_rng(0)
    # linear: E[(W + dW) x] - E[W x] = dW E[x]
    dw, x = rng.normal(0, 0.01, (5, 7)), rng.normal(2, 1, (4000, 7))
    np.testing.assert_allclose(bias_shift(dw, x.mean(0)), (x @ dw.T).mean(0), rtol=1e-5)
    # grouped conv (2 groups, 4 outputs, 6 inputs) without padding: exact per output channel
    dwc = rng.normal(0, 0.01, (4, 3, 3, 3)).astype(np.float32)
    # per-channel constant inputs: every output position sees the channel means exactly
    xc = torch.from_numpy(np.broadcast_to(rng.normal(1, 1, (1, 6, 1, 1)), (8, 6, 10, 10)).astype(np.float32))
    want = torch.nn.functional.conv2d(xc, torch.from_numpy(dwc), groups=2).mean((0, 2, 3)).numpy()
    np.testing.assert_allclose(bias_shift(dwc, xc.mean((0, 2, 3)).numpy(), groups=2), want, rtol=1e-4, atol=1e-7)


def _biased_mlp(rng) -> tuple[Graph, list]:
    """Inputs with a large mean (E[x] = 3): weight rounding errors turn into an output offset."""
    g = Graph("biased")
    x = g.add_input("x", (64, 32))
    w = rng.normal(0, 0.3, (16, 32)).astype(np.float32)
    y = g.add_node("linear", [x, g.add_const("w", w), g.add_const("b", np.zeros(16, np.float32))], name="fc").output
    g.outputs = [y]
    infer_shapes(g)
    verify(g)
    return g, [(rng.normal(3, 1, (64, 32)).astype(np.float32),) for _ in range(4)]


def test_bias_correction_removes_the_mean_error_of_quantized_weights():
    g, calib = _biased_mlp(np.random.default_rng(0))
    held = np.random.default_rng(1).normal(3, 1, (64, 32)).astype(np.float32)
    ref = run_graph(g, held, fake_quant=False)
    errs = {}
    for corr in (False, True):
        q = g.copy()
        res = QuantizePass(QuantConfig(activations="weights_only", bias_correction=corr), calib)(q)
        errs[corr] = (run_graph(q, held) - ref).mean(0)       # per-channel mean error
        assert (res.records[0]["bias_shift_max"] is not None) == corr
    assert np.abs(errs[True]).max() < 0.1 * np.abs(errs[False]).max()
    # full int8: the int32 bias carries the correction
    q = g.copy()
    QuantizePass(QuantConfig(bias_correction=True), calib)(q)
    assert q.consts["b"].data.dtype == np.int32 and np.any(q.consts["b"].data != 0)


def test_bias_correction_needs_calibration_and_skips_layers_without_bias():
    g, calib = _biased_mlp(np.random.default_rng(0))
    with pytest.raises(PassError, match="calibration"):
        QuantizePass(QuantConfig(activations="weights_only", bias_correction=True))(g.copy())
    nob = g.copy()
    nob.set_input(nob.node("fc"), 2, None)
    nob.remove_unused()
    res = QuantizePass(QuantConfig(activations="weights_only", bias_correction=True), calib)(nob)
    assert res.records[0]["bias_shift_max"] is None


def test_all_zero_weight_channels_get_a_scale_that_keeps_requantization_sane():
    from edgecompile.passes.quantize import quantize_weight

    w = np.zeros((3, 4), np.float32)
    w[0] = [1.0, -0.5, 0.25, 0.0]
    w[2] = [0.1, 0.2, -0.3, 0.0]
    q, qp = quantize_weight(w, 0)
    assert np.all(q[1] == 0)
    assert qp.scale[1] == np.float32(np.median([1.0, 0.3]) / 127)     # the others' median
    _, qp = quantize_weight(w, 0, zero_scale=0.25)                     # s_out / s_in: multiplier 1
    assert qp.scale[1] == np.float32(0.25) and qp.scale[0] == np.float32(1 / 127)
    _, qp = quantize_weight(np.zeros((2, 3), np.float32), 0)
    assert np.all(qp.scale == 1)
