"""Generated C inference (edgecompile.backends.c.model): the program the bundle's own build.sh
compiles, run on the host, Cortex-M4F (qemu mps2-an386), Cortex-M7 (mps2-an500), Cortex-M0+ code
(on the Cortex-M3 board mps2-an385) and aarch64 (qemu-aarch64), gives bit for bit the numpy
integer reference's outputs."""

from __future__ import annotations

import numpy as np
import pytest

from cmodel_harness import build_and_run, device_available, digits_graph
from edgecompile.backends.c.model import ECW_FAST_WORKSPACE_BYTES, ECW_WORKSPACE_BYTES, CBackendError, emit_c
from edgecompile.backends.c.ref.graph import _nhwc, run_int8
from test_kernels import _small_cnn_graph


def _check(g, cm, xs, device, tmp_path, profile=False):
    run = build_and_run(cm, [[_nhwc(x) for x in sample] for sample in xs], device, tmp_path, profile=profile)
    assert run.status == "ECM_OK"
    for s, sample in enumerate(xs):
        for k, ref in enumerate(run_int8(g, *sample)):
            assert np.array_equal(_nhwc(ref).reshape(-1), run.outputs[(s, k)]), (device, s, k)
    return run


@pytest.fixture(scope="module")
def small():
    g = _small_cnn_graph()
    rng = np.random.default_rng(3)
    xs = [[rng.integers(-128, 128, g.inputs[0].shape).astype(np.int8)] for _ in range(4)]
    return g, xs


@pytest.fixture(scope="module")
def digits_coarse():
    """The digits CNN with its int8 weights rounded to 8 levels: every tensor is streamed (lut)."""
    g, data = digits_graph(64)
    for n in g.nodes:
        if n.op in ("conv", "linear"):
            w = n.input(1)
            w.data = ((w.data.astype(np.int16) // 32) * 32).astype(np.int8)
    xq = g.inputs[0].quant.quantize(data["eval"][0][:3])
    return g, [[xq[i: i + 1]] for i in range(3)]


@pytest.mark.parametrize("device", ["host", "m4", "m7", "m0plus", "aarch64"])
def test_small_cnn_bit_exact_on_devices(small, device, tmp_path):
    """conv (stride 2) + relu, dilated depthwise + relu6, pointwise, residual add, max / avg pool,
    flatten into fully connected, global mean: two outputs, weights raw in flash."""
    if not device_available(device):
        pytest.skip("scripts/install_toolchains.sh")
    g, xs = small
    cm = emit_c(g)
    assert not any(layer.streamed for layer in cm.layers)
    _check(g, cm, xs, device, tmp_path)


@pytest.mark.parametrize("device", ["host", "m4"])
def test_streamed_weights_bit_exact(digits_coarse, device, tmp_path):
    """Every weight tensor entropy-coded (lut) and decoded into the arena's scratch slot before its
    layer: the same bytes out, flash ~3x smaller than raw, RAM = activations + the largest slot."""
    if not device_available(device):
        pytest.skip("scripts/install_toolchains.sh")
    g, xs = digits_coarse
    cm = emit_c(g, stream="all")
    raw = emit_c(g, stream="none")
    assert all(layer.streamed for layer in cm.layers if layer.weight_bytes)
    assert len(cm.container) * 3 <= len(raw.container)
    biggest = max(layer.weight_bytes for layer in cm.layers)
    assert cm.scratch_bytes == biggest
    assert cm.arena_bytes <= raw.arena_bytes + biggest      # the decoder's state fits in dead space
    assert "17172u" in cm.files["model.c"]                  # the fast decoder, where it costs no RAM
    _check(g, cm, xs, device, tmp_path)


def test_streaming_policy(digits_coarse):
    """"auto": the fully connected layers (8 levels each) are computed from their packed levels in
    flash (no decode, 4 bits a weight); no convolution is streamed (64 MACs per weight byte: the
    decode would cost more than the layer's DSP arithmetic); a flash budget the container misses
    streams the largest saving; a RAM budget sends the largest decode slot back to raw."""
    g, _ = digits_coarse
    auto = emit_c(g)
    assert not any(layer.streamed for layer in auto.layers)
    assert {layer.node for layer in auto.layers if layer.codec.startswith("levels in place")} == {"head.1", "head.3"}
    raw = emit_c(g, stream="none")
    assert len(auto.container) < 0.65 * len(raw.container)     # 104 KB against 170 KB
    tight = emit_c(g, flash_budget=len(auto.container) - 10_000)
    assert any(layer.streamed for layer in tight.layers) and len(tight.container) <= len(auto.container) - 10_000
    everything = emit_c(g, stream="all")
    small = emit_c(g, stream="all", ram_budget=everything.arena_bytes - 1)
    assert small.arena_bytes < everything.arena_bytes and small.scratch_bytes < everything.scratch_bytes
    assert not max(small.layers, key=lambda layer: layer.weight_bytes).streamed


def test_profile_counts_instructions_per_step(small, tmp_path):
    """A profiling build under -icount shift=0: SysTick ticks per step, every step > 0, the first
    convolution the most but for the residual add (its portable loop, three requantizations an
    element, costs more than the DSP convolutions)."""
    if not device_available("m4"):
        pytest.skip("scripts/install_toolchains.sh")
    g, xs = small
    cm = emit_c(g)
    run = _check(g, cm, xs[:1], "m4", tmp_path, profile=True)
    assert len(run.steps) == len(cm.layers) and all(t > 0 for t in run.steps)
    assert run.steps[0] == max(t for t, layer in zip(run.steps, cm.layers) if layer.kernel != "add")


def test_workspace_constant_matches_header():
    from ecw_harness import RUNTIME

    text = (RUNTIME / "include" / "ecw.h").read_text()
    assert f"#define ECW_WORKSPACE_SIZE {ECW_WORKSPACE_BYTES}u" in text
    assert "#define ECW_FAST_WORKSPACE_SIZE (ECW_WORKSPACE_SIZE + 4u * 4100u)" in text
    assert ECW_FAST_WORKSPACE_BYTES == ECW_WORKSPACE_BYTES + 4 * 4100


def test_reshape_transposes_and_output_alias(tmp_path):
    """A 4-D -> 2-D reshape of NHWC data that is not a flatten into a linear layer (a transpose),
    a 2-D -> 4-D reshape (a transpose back) and a graph output that is a flatten (an alias written
    in place by its producer)."""
    import torch
    from torch import nn

    from edgecompile.frontend.torch_export import import_model
    from edgecompile.passes.fold import CleanupPass
    from edgecompile.passes.quantize import QuantConfig, QuantizePass

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(2, 4, 3, padding=1)
            self.c2 = nn.Conv2d(4, 3, 1)

        def forward(self, x):
            y = torch.relu(self.c(x))                # [1, 4, 4, 4]
            z = y.reshape(1, 4, 16).reshape(1, 2, 8, 4)
            return self.c2(z.reshape(1, 4, 4, 4)), y.flatten(1)

    torch.manual_seed(0)
    g = import_model(M().eval(), (torch.randn(1, 2, 4, 4),))
    CleanupPass()(g)
    rng = np.random.default_rng(0)
    QuantizePass(QuantConfig(), [(rng.standard_normal((1, 2, 4, 4)).astype(np.float32),) for _ in range(8)])(g)
    cm = emit_c(g)
    kernels = [layer.kernel for layer in cm.layers]
    assert "transpose" in kernels, kernels
    xs = [[rng.integers(-128, 128, (1, 2, 4, 4)).astype(np.int8)] for _ in range(2)]
    _check(g, cm, xs, "host", tmp_path)


def test_op_without_kernel_names_op_and_layer():
    from edgecompile.ir import Graph, QuantParams, infer_shapes

    g = Graph("t")
    x = g.add_input("x", (1, 4))
    x.quant = QuantParams([0.1], [0])
    y = g.add_node("erf", [x], name="my_erf").output
    y.quant = QuantParams([1 / 256], [-128])
    g.outputs = [y]
    infer_shapes(g)
    with pytest.raises(CBackendError, match=r"my_erf \(erf\).*--backend tflite"):
        emit_c(g)


def test_bad_arena_and_corrupt_weights_are_statuses(digits_coarse, tmp_path):
    """model_run returns ECM_E_ARG for a misaligned arena and ECM_E_WEIGHTS when a streamed tensor's
    bytes in flash are corrupt (the container's CRC), never garbage."""
    import subprocess

    from edgecompile.backends.c.bundle import write_c_model

    if not device_available("host"):
        pytest.skip("gcc")
    g, xs = digits_coarse
    cm = emit_c(g, stream="all")
    bad = bytearray(cm.container)
    last = cm.records[-1]
    bad[last.offset + last.encoded_size // 2] ^= 0x55
    write_c_model(tmp_path, cm, "linux", "host", "", "", [[_nhwc(x) for x in xs[0]]])
    rt = tmp_path / "runtime"
    from edgecompile.backends.c.bundle import container_to_c

    container_to_c(bytes(bad), rt / "model", symbol="model_weights")
    main = rt / "model" / "main.c"
    main.write_text(main.read_text().replace(
        "int main(void) {", "static ecm_status misaligned(void) {\n    static uint32_t a[(MODEL_ARENA_SIZE + 8u) / 4u];\n"
        "    return model_run(sample_in0, out0, (uint8_t *)a + 1);\n}\nint main(void) {\n"
        '    printf("misaligned %s\\n", ecm_status_name(misaligned()));'))
    subprocess.run(["sh", str(rt / "build.sh")], check=True, capture_output=True)
    out = subprocess.run([str(rt / "build" / "model")], capture_output=True, text=True).stdout.splitlines()
    assert out[0] == "misaligned ECM_E_ARG"
    assert out[-1] == "done ECM_E_WEIGHTS"


@pytest.mark.parametrize("levels", [2, 3, 11])
def test_fully_connected_from_packed_levels(levels, tmp_path):
    """Linear layers of 2, 3 and 11 shared levels (1-, 2- and 4-bit indices), odd and even input
    widths (rows that start mid-byte take the general loop): computed from the levels in place,
    byte for byte the reference."""
    import torch
    from torch import nn

    from edgecompile.frontend.torch_export import import_model
    from edgecompile.passes.fold import CleanupPass
    from edgecompile.passes.quantize import QuantConfig, QuantizePass

    if not device_available("host"):
        pytest.skip("gcc")
    torch.manual_seed(levels)
    net = nn.Sequential(nn.Linear(37, 64), nn.ReLU(), nn.Linear(64, 9)).eval()
    g = import_model(net, (torch.randn(1, 37),))
    CleanupPass()(g)
    rng = np.random.default_rng(levels)
    QuantizePass(QuantConfig(), [(rng.standard_normal((1, 37)).astype(np.float32),) for _ in range(8)])(g)
    for n in g.nodes:
        if n.op == "linear":
            w = n.input(1)
            book = np.linspace(-127, 127, levels).round().astype(np.int8)
            w.data = book[rng.integers(0, levels, w.data.shape)]
    cm = emit_c(g)
    assert [layer.codec.split(" (")[0] for layer in cm.layers if layer.weight_bytes] == ["levels in place"] * 2
    xs = [[rng.integers(-128, 128, (1, 37)).astype(np.int8)] for _ in range(3)]
    _check(g, cm, xs, "host", tmp_path)


def test_mish_and_log1p_run_as_lookup_tables_bit_exact(tmp_path):
    """softplus (Mish's inner function, beta 2) and log1p as 256-entry tables in the compiled C,
    bit for bit the numpy reference, between two convolutions."""
    import torch
    from torch import nn

    from edgecompile.frontend.torch_export import import_model
    from edgecompile.passes.quantize import QuantConfig, QuantizePass

    class Acts(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 4, 1)

        def forward(self, x):
            y = self.c1(x)
            y = y * torch.tanh(nn.functional.softplus(y, beta=2.0))
            return self.c2(torch.log1p(y.abs()))

    torch.manual_seed(0)
    g = import_model(Acts().eval(), (torch.randn(1, 3, 8, 8),))
    rng = np.random.default_rng(0)
    QuantizePass(QuantConfig(), [(rng.standard_normal((1, 3, 8, 8)).astype(np.float32),) for _ in range(8)])(g)
    assert {"softplus", "log1p"} <= {n.op for n in g.nodes}
    cm = emit_c(g)
    assert sum(c.kernel == "lut" for c in cm.calls) >= 3           # softplus, tanh, log1p
    xs = [[rng.integers(-128, 128, g.inputs[0].shape).astype(np.int8)] for _ in range(3)]
    _check(g, cm, xs, "host", tmp_path)
