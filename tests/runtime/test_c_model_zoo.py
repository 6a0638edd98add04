"""The test zoo's sequence, MobileNet-style and transformer models through the C backend: the numpy
integer reference (`run_int8`) agrees with the IR executor's fake-quant output, and the generated C
(host gcc, Cortex-M4F under qemu mps2-an386) is bit for bit the reference.

Each model is quantized as test_kernels._small_cnn_graph does (import, fold batch norm, clean up,
int8 on 16 seeded calibration samples: random normal floats, the example's own bool / int inputs).
"""

from __future__ import annotations

import numpy as np
import pytest

import models
from cmodel_harness import build_and_run, device_available
from edgecompile.backends.c.model import CBackendError, emit_c
from edgecompile.backends.c.ref.graph import _nhwc, run_int8

#: zoo model -> the IR ops it quantizes to (what the C backend now runs)
ZOO_OPS = {
    "lstm_cell_model": {"add", "linear", "mul", "reshape", "sigmoid", "slice", "tanh"},
    "gru_cell_model": {"add", "linear", "mul", "reshape", "sigmoid", "slice", "sub", "tanh"},
    "lstm_model": {"add", "concat", "linear", "mul", "reshape", "sigmoid", "slice", "tanh", "transpose"},
    "mobilenet_block": {"add", "avg_pool", "clip", "conv", "hardsigmoid", "hardswish", "linear", "max_pool", "mean",
                        "mul", "pad", "relu", "reshape", "silu"},
    "encoder_layer_classifier": {"add", "layer_norm", "linear", "matmul", "mean", "mul", "relu", "reshape", "slice",
                                 "softmax", "transpose", "where"},
    "tiny_transformer": {"add", "concat", "eq", "expand", "gather", "gelu", "layer_norm", "linear", "matmul", "mul",
                         "reshape", "slice", "softmax", "transpose", "where"},
}
#: output steps between the integer reference and fake-quant: the tiny transformer's CLS row is
#: nearly constant (0.02-scale parameters on a 0.024 step), so its layer norm turns a 1-step
#: rounding difference of the row into ~30 steps; the executor's own fake-quant is 29.5 steps
#: from float there (measured), ours 23. Since the attention mask keeps its -inf codes 32 below the
#: scores (calibrate.MASK_DEPTH: before, the mask had no effect in int8) the scores' step is
#: coarser and the two roundings part by up to 14 steps; the integer reference's distance to float
#: went from 22 to 19 steps.
FAKE_QUANT_STEPS = {"tiny_transformer": 16}


def _quantized(name: str):
    """(graph, 16 float samples, their int8 codes) of a zoo model."""
    import torch

    from edgecompile.frontend.torch_export import import_model
    from edgecompile.passes.fold import CleanupPass, FoldBatchNormPass
    from edgecompile.passes.quantize import QuantConfig, QuantizePass

    torch.set_num_threads(1)
    model, example = getattr(models, name)()
    g = import_model(model, example)
    FoldBatchNormPass()(g)
    CleanupPass()(g)
    rng = np.random.default_rng(0)

    def sample():
        return tuple(rng.standard_normal(e.shape).astype(np.float32) if e.dtype.is_floating_point else e.numpy()
                     for e in example)

    QuantizePass(QuantConfig(), [sample() for _ in range(16)])(g)
    xs = [sample() for _ in range(16)]
    codes = [[v.quant.quantize(x) if v.quant is not None else x for v, x in zip(g.inputs, s)] for s in xs]
    return g, xs, codes


def _c_input(v, x: np.ndarray) -> np.ndarray:
    """An input as the generated C reads it: int8 (NHWC when 4-D), a bool mask as bytes, token ids
    as little-endian int32 bytes."""
    if v.quant is None and v.dtype != "bool":
        return np.ascontiguousarray(x, "<i4").view(np.int8)
    return _nhwc(np.asarray(x, np.int8))


@pytest.fixture(scope="module", params=sorted(ZOO_OPS))
def zoo(request):
    return request.param, *_quantized(request.param)


def test_zoo_ops_are_the_brief(zoo):
    name, g, _, _ = zoo
    assert {n.op for n in g.nodes} == ZOO_OPS[name]


def test_int8_reference_agrees_with_fake_quant(zoo):
    """16 held-out samples (32 rows: batch 2): every output within 2 output steps of the IR
    executor's fake-quant output (measured: at most 1 step on the LSTM / GRU models, 2 on
    mobilenet_block and the encoder, where the differences of ~40 integer kernels add up; 64-95 %
    of the outputs equal; the tiny transformer 9, see `FAKE_QUANT_STEPS`) and the same top-1 class
    on at least 31 of 32 rows (measured: 32 / 32 but for one near-tie of the GRU cell's logits)."""
    from edgecompile.ir import run_graph

    name, g, xs, codes = zoo
    oq = g.outputs[0].quant
    ints = np.concatenate([run_int8(g, *c)[0] for c in codes])
    fake = np.concatenate([np.asarray(run_graph(g, *x)) for x in xs])
    got = oq.dequantize(ints)
    assert np.abs(got - fake).max() <= (FAKE_QUANT_STEPS.get(name, 2) + 0.01) * oq.scale[0], name
    assert (got.argmax(-1) == fake.argmax(-1)).sum() >= len(got) - 1, name


@pytest.mark.parametrize("device", ["host", "m4"])
def test_generated_c_bit_exact(zoo, device, tmp_path):
    """The generated program (the bundle's build.sh) on 3 samples: every output byte equal to the
    reference's."""
    if not device_available(device):
        pytest.skip("scripts/install_toolchains.sh")
    name, g, _, codes = zoo
    cm = emit_c(g)
    run = build_and_run(cm, [[_c_input(v, c) for v, c in zip(g.inputs, sample)] for sample in codes[:3]], device,
                        tmp_path)
    assert run.status == "ECM_OK", name
    for s, sample in enumerate(codes[:3]):
        for k, ref in enumerate(run_int8(g, *sample)):
            assert np.array_equal(_nhwc(ref).reshape(-1), run.outputs[(s, k)]), (name, device, s, k)


def test_token_ids_outside_the_vocabulary_are_a_status(tmp_path):
    """tiny_transformer's token ids reach C as little-endian int32 bytes (model.h says so); an id
    outside the embedding table stops model_run with ECM_E_RANGE (the reference refuses it too)."""
    if not device_available("host"):
        pytest.skip("gcc")
    g, _, codes = _quantized("tiny_transformer")
    cm = emit_c(g)
    assert "int32 ids, little-endian bytes" in cm.files["model.h"] and cm.inputs[0]["size"] == 4 * 2 * 12
    bad = np.array(codes[0][0])
    bad[1, 3] = 100                                      # vocab is 100
    with pytest.raises(ValueError, match="ids outside"):
        run_int8(g, bad)
    run = build_and_run(cm, [[_c_input(g.inputs[0], codes[0][0])], [_c_input(g.inputs[0], bad)]], "host", tmp_path)
    assert run.status == "ECM_E_RANGE" and (0, 0) in run.outputs and (1, 0) not in run.outputs


def test_op_without_kernel_is_named():
    """conv1d_net's comparison (x > 0, for its hand-written PReLU) has no C kernel: emit_c names the
    node and the way out (its 1-D convolutions do run)."""
    g, _, _ = _quantized("conv1d_net")
    with pytest.raises(CBackendError, match=r"gt \(gt\).*--backend tflite"):
        emit_c(g)


class _Wave(__import__("torch").nn.Module):
    """silero-vad's front-end ops in small: a reversed context window gathered by constant indices,
    1-D convolutions (strided; dilated and grouped), a magnitude sqrt(y^2 + c), a relu."""

    def __init__(self):
        import torch
        from torch import nn

        super().__init__()
        self.register_buffer("idx", torch.arange(30, 22, -1))
        self.c1 = nn.Conv1d(1, 6, 5, stride=2, padding=2)
        self.c2 = nn.Conv1d(6, 8, 3, padding=2, dilation=2, groups=2)
        self.fc = nn.Linear(8 * 20, 4)

    def forward(self, x):
        import torch

        ctx = torch.index_select(x, 1, self.idx)
        y = self.c1(torch.cat([x, ctx], 1).reshape(1, 1, 40))
        y = torch.relu(self.c2(torch.sqrt(y * y + 0.1)))
        return self.fc(y.flatten(1))


@pytest.mark.parametrize("device", ["host", "m4"])
def test_conv1d_gather_and_sqrt_bit_exact(device, tmp_path):
    """1-D convolutions run as the 2-D kernel on H = 1 between transposes, an activation gathered by
    constant indices is ecm_take, sqrt a lookup table: the integer reference within 2 steps of the
    executor's fake-quant, the generated C byte for byte the reference."""
    import torch

    from edgecompile.frontend.torch_export import import_model
    from edgecompile.ir import TorchExecutor
    from edgecompile.passes.fold import CleanupPass
    from edgecompile.passes.quantize import QuantConfig, QuantizePass

    if not device_available(device):
        pytest.skip("scripts/install_toolchains.sh")
    torch.manual_seed(0)
    g = import_model(_Wave().eval(), (torch.randn(1, 32),))
    CleanupPass()(g)
    assert {"gather", "conv", "sqrt"} <= {n.op for n in g.nodes}
    rng = np.random.default_rng(0)
    QuantizePass(QuantConfig(), [(rng.standard_normal((1, 32)).astype(np.float32),) for _ in range(16)])(g)
    xs = [rng.standard_normal((1, 32)).astype(np.float32) for _ in range(4)]
    codes = [g.inputs[0].quant.quantize(x) for x in xs]
    ex = TorchExecutor(g, fake_quant=True).eval()
    oq = g.outputs[0].quant
    for x, c in zip(xs, codes):
        fake = ex(torch.from_numpy(x))[0].detach().numpy()
        got = oq.dequantize(run_int8(g, c)[0])
        assert np.abs(got - fake).max() <= 2.01 * oq.scale[0]
    cm = emit_c(g)
    assert {"take", "conv2d", "transpose", "lut"} <= {layer.kernel for layer in cm.layers}
    run = build_and_run(cm, [[_c_input(g.inputs[0], c)] for c in codes], device, tmp_path)
    assert run.status == "ECM_OK"
    for k, c in enumerate(codes):
        assert np.array_equal(_nhwc(run_int8(g, c)[0]).reshape(-1), run.outputs[(k, 0)])


def test_where_requantizes_its_activation_branch(tmp_path):
    """where(mask, -inf, x) with the mask broadcast over channels (4-D, stored NHWC) and an output
    quantized apart from x: x is requantized by a table first, -inf becomes -128; the integer
    reference equals the executor's fake-quant code for code, and the generated C the reference."""
    from edgecompile.ir import Graph, QuantParams, infer_shapes, run_graph

    g = Graph("w")
    x = g.add_input("x", (2, 3, 4, 5))
    x.quant = QuantParams(np.array([0.05], np.float32), np.array([3]))
    m = g.add_input("m", (2, 1, 4, 5), dtype="bool")
    node = g.append(g.make_node("where", [m, g.add_const("neg", np.array(-np.inf, np.float32)), x], name="w",
                                out_dtypes=["float32"]))
    node.output.quant = QuantParams(np.array([0.03], np.float32), np.array([-10]))
    g.outputs = [node.output]
    infer_shapes(g)
    rng = np.random.default_rng(1)
    xq, mask = rng.integers(-128, 128, (2, 3, 4, 5)).astype(np.int8), rng.random((2, 1, 4, 5)) < 0.3
    fake = node.output.quant.quantize(run_graph(g, x.quant.dequantize(xq), mask))
    ints = run_int8(g, xq, mask)[0]
    assert np.array_equal(ints, fake) and (ints == -128).sum() >= mask.sum() * 3
    if device_available("host"):
        cm = emit_c(g)
        assert [layer.kernel for layer in cm.layers] == ["lut", "select"]
        run = build_and_run(cm, [[_nhwc(xq), _nhwc(mask.astype(np.int8))]], "host", tmp_path)
        assert np.array_equal(run.outputs[(0, 0)], _nhwc(ints).reshape(-1))
