"""int8 kernels: C (runtime/src/ecm_kernels.c) == numpy reference (edgecompile/backends/c/ref) bit for
bit on seeded random cases; the reference == LiteRT's reference kernels on a real int8 .tflite; the
reference runs the quantized digits CNN end to end.

The C side runs through ``runtime/tests/ecm_kernel_tool.c`` (host gcc, ``make kernels``), many cases
per process: each case is ``(op, int32 parameters, int8 inputs)`` and comes back as ``(status, bytes)``.
"""

from __future__ import annotations

import struct
import subprocess
from dataclasses import dataclass

import numpy as np
import pytest

from ecw_harness import RUNTIME, have, make
from edgecompile.backends.c.ref import kernels as K
from edgecompile.backends.c.ref.fixedpoint import (
    INT32_MAX, INT32_MIN, quantize_multiplier, quantize_multipliers, rounding_int_divide,
)
from edgecompile.backends.c.ref.graph import CRefUnsupported, run_int8
from edgecompile.backends.c.ref.params import add_params, mean_multiplier

OP_REQUANT, OP_CONV, OP_FC, OP_ADD, OP_MAX_POOL, OP_AVG_POOL, OP_MEAN = range(1, 8)
STATUS = {0: "ECM_OK", -1: "ECM_E_ARG", -2: "ECM_E_SHAPE", -3: "ECM_E_RANGE"}
ZERO_POINTS = (-128, 0, 127)


@dataclass
class Case:
    """One kernel call: what the tool reads, and what the reference says it must write."""

    op: int
    i32: list[int]
    i8: bytes
    expected: np.ndarray | None = None   # int8 (or int32 for OP_REQUANT) output; None for rejections
    label: str = ""


@pytest.fixture(scope="module")
def tool(tmp_path_factory):
    if not have("gcc", "make"):
        pytest.skip("gcc/make not installed (scripts/install_toolchains.sh)")
    build = tmp_path_factory.mktemp("ecm_build")
    make("kernels", build)
    return build / "host" / "ecm_kernel_tool"


def run_cases(tool, tmp_path, cases: list[Case]) -> list[tuple[str, bytes]]:
    """Runs the cases in one tool process: (status name, output bytes) per case. `tool` is the
    host binary or a function of (cases path, results path) giving the command (emulated devices)."""
    blob = [b"ECMK", struct.pack("<i", len(cases))]
    for c in cases:
        blob.append(struct.pack("<ii", c.op, len(c.i32)) + np.asarray(c.i32, np.int64).astype("<i4").tobytes())
        blob.append(struct.pack("<i", len(c.i8)) + c.i8)
    src, dst = tmp_path / "cases.bin", tmp_path / "results.bin"
    src.write_bytes(b"".join(blob))
    argv = tool(src, dst) if callable(tool) else [str(tool), str(src), str(dst)]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    data, at, out = dst.read_bytes(), 0, []
    for _ in cases:
        status, n = struct.unpack_from("<ii", data, at)
        out.append((STATUS.get(status, str(status)), data[at + 8: at + 8 + n]))
        at += 8 + n
    assert at == len(data)
    return out


def assert_c_matches(tool, tmp_path, cases: list[Case]) -> None:
    results = run_cases(tool, tmp_path, cases)
    for c, (status, raw) in zip(cases, results):
        assert status == "ECM_OK", c.label
        got = np.frombuffer(raw, c.expected.dtype)
        want = np.ascontiguousarray(c.expected).reshape(-1)
        assert got.shape == want.shape, c.label
        bad = np.flatnonzero(got != want)
        assert bad.size == 0, f"{c.label}: {bad.size} of {want.size} differ, first at {bad[0]}"


# ------------------------------------------------------------------------------ random cases

def _real_multipliers(rng, n: int) -> np.ndarray:
    """Log-uniform in [2^-14, 2^2]: requantizations below and above 1."""
    return np.exp2(rng.uniform(-14, 2, n))


def _act(rng, zp: int) -> tuple[int, int]:
    kind = rng.integers(0, 4)
    if kind == 0:
        return -128, 127
    if kind == 1:
        return max(-128, zp), 127                                   # relu
    if kind == 2:
        return max(-128, zp), int(min(127, max(zp, -128) + rng.integers(1, 120)))   # relu6-like
    lo = int(rng.integers(-128, 100))
    return lo, int(rng.integers(lo, 128))


def _zp(rng) -> int:
    return int(rng.choice(ZERO_POINTS)) if rng.random() < 0.6 else int(rng.integers(-128, 128))


def _i8(rng, shape) -> np.ndarray:
    return rng.integers(-128, 128, shape).astype(np.int8)


#: (kernel, stride, padding (t, l, b, r), dilation, groups or "dw" / "dw2" for depth multiplier 2)
CONV_SHAPES = [
    ((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    ((3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1),
    ((3, 3), (2, 2), (0, 0, 1, 1), (1, 1), 1),          # TFLite SAME at stride 2: asymmetric
    ((3, 2), (1, 2), (2, 0, 1, 1), (2, 1), 1),          # dilation, rectangular
    ((1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),          # pointwise
    ((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), "dw"),
    ((3, 3), (2, 2), (1, 1, 1, 1), (1, 1), "dw2"),
    ((3, 3), (1, 1), (2, 2, 2, 2), (2, 2), "dw"),
    ((5, 5), (1, 1), (2, 2, 2, 2), (1, 1), 2),          # grouped
    ((2, 4), (3, 1), (1, 3, 0, 2), (1, 2), 1),
]


def conv_case(rng, kernel, stride, pad, dil, groups, label) -> Case:
    n = int(rng.integers(1, 3))
    c_in = int(rng.integers(1, 9))
    if groups == "dw" or groups == "dw2":
        g, c_out = c_in, c_in * (2 if groups == "dw2" else 1)
    else:
        g = groups
        c_in = max(g, c_in - c_in % g)
        c_out = g * int(rng.integers(1, 5))
    h, w = int(rng.integers(max(kernel[0], 2), 10)), int(rng.integers(max(kernel[1], 2), 10))
    x, wt = _i8(rng, (n, h, w, c_in)), _i8(rng, (c_out, *kernel, c_in // g))
    bias = rng.integers(-(2 ** 15), 2 ** 15, c_out).astype(np.int32) if rng.random() < 0.8 else None
    per_tensor = rng.random() < 0.2
    mult, shift = quantize_multipliers(_real_multipliers(rng, 1 if per_tensor else c_out))
    zi, zo = _zp(rng), _zp(rng)
    act = _act(rng, zo)
    y = K.conv2d(x, wt, bias, input_zp=zi, output_zp=zo, multiplier=mult, shift=shift, stride=stride, padding=pad,
                 dilation=dil, groups=g, act=act)
    i32 = [*x.shape, *wt.shape, *y.shape, *stride, *dil, *pad, g, zi, zo, *act, mult.size, *mult, *shift,
           int(bias is not None), *([] if bias is None else bias)]
    return Case(OP_CONV, i32, x.tobytes() + wt.tobytes(), y, f"{label} x{x.shape} w{wt.shape} g{g}")


def fc_case(rng, label) -> Case:
    b, i, o = int(rng.integers(1, 4)), int(rng.integers(1, 70)), int(rng.integers(1, 17))
    x, w = _i8(rng, (b, i)), _i8(rng, (o, i))
    bias = rng.integers(-(2 ** 20), 2 ** 20, o).astype(np.int32) if rng.random() < 0.8 else None
    mult, shift = quantize_multipliers(_real_multipliers(rng, 1 if rng.random() < 0.3 else o))
    zi, zo = _zp(rng), _zp(rng)
    act = _act(rng, zo)
    y = K.fully_connected(x, w, bias, input_zp=zi, output_zp=zo, multiplier=mult, shift=shift, act=act)
    i32 = [b, i, o, zi, zo, *act, mult.size, *mult, *shift, int(bias is not None), *([] if bias is None else bias)]
    return Case(OP_FC, i32, x.tobytes() + w.tobytes(), y, f"{label} fc {b}x{i}->{o}")


def add_case(rng, label) -> Case:
    # half the cases long enough for ecm_add's tabulated path (ECM_ADD_TABLE_MIN = 512)
    n = int(rng.integers(1, 400)) if rng.random() < 0.5 else int(rng.integers(512, 2000))
    a, b = _i8(rng, n), _i8(rng, n)
    sa, sb = np.exp2(rng.uniform(-8, 0, 2))
    so = max(sa, sb) * np.exp2(rng.uniform(-1.5, 2))
    p = add_params(sa, sb, so)
    za, zb, zo = _zp(rng), _zp(rng), _zp(rng)
    act = _act(rng, zo)
    y = K.add(a, b, a_zp=za, b_zp=zb, output_zp=zo, a_multiplier=p.a_multiplier, a_shift=p.a_shift,
              b_multiplier=p.b_multiplier, b_shift=p.b_shift, output_multiplier=p.output_multiplier,
              output_shift=p.output_shift, act=act)
    i32 = [n, za, zb, zo, p.a_multiplier, p.a_shift, p.b_multiplier, p.b_shift, p.output_multiplier,
           p.output_shift, p.left_shift, *act]
    return Case(OP_ADD, i32, a.tobytes() + b.tobytes(), y, f"{label} add n={n}")


def pool_case(rng, is_max: bool, label) -> Case:
    kh, kw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    sh, sw = int(rng.integers(1, 3)), int(rng.integers(1, 3))
    pad = tuple(int(rng.integers(0, k)) for k in (kh, kw, kh, kw))
    x = _i8(rng, (int(rng.integers(1, 3)), int(rng.integers(kh, 9)), int(rng.integers(kw, 9)), int(rng.integers(1, 6))))
    act = _act(rng, _zp(rng))
    fn = K.max_pool2d if is_max else K.avg_pool2d
    y = fn(x, (kh, kw), (sh, sw), pad, act=act)
    i32 = [*x.shape, *y.shape, kh, kw, sh, sw, *pad, *act]
    return Case(OP_MAX_POOL if is_max else OP_AVG_POOL, i32, x.tobytes(), y, f"{label} pool k{kh}x{kw} s{sh}{sw} p{pad}")


def mean_case(rng, label) -> Case:
    x = _i8(rng, (int(rng.integers(1, 3)), int(rng.integers(1, 12)), int(rng.integers(1, 12)), int(rng.integers(1, 9))))
    divide = bool(rng.random() < 0.5)
    m, s = mean_multiplier(float(np.exp2(rng.uniform(-6, 0))), float(np.exp2(rng.uniform(-7, 0))),
                           None if divide else x.shape[1] * x.shape[2])
    zi, zo = _zp(rng), _zp(rng)
    y = K.mean_hw(x, input_zp=zi, output_zp=zo, multiplier=m, shift=s, divide=divide)
    return Case(OP_MEAN, [*x.shape, zi, zo, m, s, int(divide)], x.tobytes(), y, f"{label} mean {x.shape} {divide}")


# ------------------------------------------------------------------------------ fixed point

def test_quantize_multiplier_as_tflite():
    assert quantize_multiplier(1.0) == (1 << 30, 1)
    assert quantize_multiplier(0.5) == (1 << 30, 0)
    assert quantize_multiplier(0.75) == (3 << 29, 0)
    assert quantize_multiplier(0.0) == (0, 0)
    assert quantize_multiplier(2.0 ** -40) == (0, 0)                 # flushed below 2^-31
    assert quantize_multiplier(1 - 2.0 ** -33) == (1 << 30, 1)       # mantissa rounds to 2^31: halved
    with pytest.raises(ValueError):
        quantize_multiplier(-0.5)
    rng = np.random.default_rng(0)
    for r in _real_multipliers(rng, 500):
        m, s = quantize_multiplier(r)
        assert (1 << 30) <= m < (1 << 31)
        assert abs(m * 2.0 ** (s - 31) - r) <= r * 2.0 ** -31


def test_requantize_rounding_by_hand():
    # 0.5 * x is all in the doubling high multiply (shift 0): ties toward +infinity.
    m, s = quantize_multiplier(0.5)
    x = np.array([5, -5, 4, -4, 3, -3, 1, -1, INT32_MAX, INT32_MIN])
    assert K.multiply_by_quantized_multiplier(x, m, s).tolist() == [3, -2, 2, -2, 2, -1, 1, 0, 2 ** 30, -(2 ** 30)]
    # 0.25 * x: exact high multiply, then the rounding shift by 1: ties away from zero.
    m, s = quantize_multiplier(0.25)
    assert K.multiply_by_quantized_multiplier(np.array([2, -2, 6, -6]), m, s).tolist() == [1, -1, 2, -2]
    # both roundings: 0.25 * 5 = 1.25 comes out 2 (high mul 2.5 -> 3, then 1.5 -> 2): TFLite's double
    # rounding, which a single rounding would not do; 0.25 * -5 -> -2.5 -> -2, then -1.
    assert K.multiply_by_quantized_multiplier(np.array([-5, 5, -3, 3]), m, s).tolist() == [-1, 2, -1, 1]
    # 4.0 = 0.5 * 2^3: x << 3 saturates to int32 (ours; TFLite overflows), then * 0.5
    m, s = quantize_multiplier(4.0)
    assert (m, s) == (1 << 30, 3)
    assert K.multiply_by_quantized_multiplier(np.array([2 ** 30, -(2 ** 30), 100]), m, s).tolist() == [
        2 ** 30, -(2 ** 30), 400]
    assert rounding_int_divide(np.array([5, -5, 4, -4, 7, -7]), 2).tolist() == [3, -3, 2, -2, 4, -4]


def test_requantize_c_matches_reference(tool, tmp_path):
    rng = np.random.default_rng(1)
    edges = np.array([0, 1, -1, 2, -2, 3, -3, 127, -128, 255, -255, 2 ** 15, -(2 ** 15), INT32_MAX, INT32_MIN,
                      INT32_MAX - 1, INT32_MIN + 1, 2 ** 30, -(2 ** 30)], np.int64)
    x = np.concatenate([edges, rng.integers(INT32_MIN, INT32_MAX, 3000, endpoint=True),
                        rng.integers(-70000, 70000, 3000)])
    mult = np.concatenate([[1 << 30, (1 << 31) - 1, 0, INT32_MAX, 1 << 30],
                           rng.integers(1 << 30, 1 << 31, x.size - 5)])
    shift = rng.integers(-31, 31, x.size)
    shift[: edges.size] = np.resize([-31, 0, 1, 30, -1, -20], edges.size)
    want = K.multiply_by_quantized_multiplier(x, mult, shift).astype(np.int32)
    case = Case(OP_REQUANT, [x.size, *x, *mult, *shift], b"", want, "requant")
    assert_c_matches(tool, tmp_path, [case])


# ------------------------------------------------------------------------------ C == reference

def test_conv2d_c_matches_reference(tool, tmp_path):
    rng = np.random.default_rng(2)
    cases = [conv_case(rng, *spec, label=f"conv{i}.{r}") for r in range(4) for i, spec in enumerate(CONV_SHAPES)]
    kinds = {c.label.split()[0] for c in cases}
    assert len(kinds) == 4 * len(CONV_SHAPES)
    assert_c_matches(tool, tmp_path, cases)


def test_fully_connected_c_matches_reference(tool, tmp_path):
    rng = np.random.default_rng(3)
    assert_c_matches(tool, tmp_path, [fc_case(rng, f"fc{i}") for i in range(40)])


def test_add_c_matches_reference(tool, tmp_path):
    rng = np.random.default_rng(4)
    assert_c_matches(tool, tmp_path, [add_case(rng, f"add{i}") for i in range(40)])


def test_pooling_and_mean_c_match_reference(tool, tmp_path):
    rng = np.random.default_rng(5)
    cases = [pool_case(rng, i % 2 == 0, f"pool{i}") for i in range(40)] + [mean_case(rng, f"mean{i}") for i in range(20)]
    assert_c_matches(tool, tmp_path, cases)


def test_accumulator_extremes_and_saturation(tool, tmp_path):
    """Patches of ECM_MAX_PATCH (65535) elements at the int8 extremes: the int32 accumulator reaches
    +-2139062400 without overflow, the bias add saturates at INT32_MIN / INT32_MAX, multipliers
    above 1 saturate at the left shift; C and reference agree on all of it."""
    n = 65535
    cases = []
    for xv, zp, wv, bias in ((127, -128, -128, -(2 ** 23) - 1), (-128, 127, -128, 2 ** 30), (-128, 127, 127, 0),
                             (127, -128, 127, INT32_MAX)):
        x = np.full((1, n), xv, np.int8)
        w = np.full((2, n), wv, np.int8)
        b = np.array([bias, -bias // 2], np.int32)
        for real in (2.0 ** -24, 0.75, 3.0):
            m, s = quantize_multipliers(np.array([real, real]))
            acc = (x.astype(np.int64) - zp) @ w.astype(np.int64).T
            assert np.abs(acc).max() < 2 ** 31
            y = K.fully_connected(x, w, b, input_zp=zp, output_zp=0, multiplier=m, shift=s)
            i32 = [1, n, 2, zp, 0, -128, 127, 2, *m, *s, 1, *b]
            cases.append(Case(OP_FC, i32, x.tobytes() + w.tobytes(), y, f"fc extremes {xv} {zp} {wv} {real}"))
    assert_c_matches(tool, tmp_path, cases)


def test_cases_cover_the_brief(tool, tmp_path):
    """The random cases reach every zero-point extreme, multipliers on both sides of 1 and clamps."""
    rng = np.random.default_rng(2)
    cases = [conv_case(rng, *spec, label="c") for _ in range(4) for spec in CONV_SHAPES]
    zps = {(c.i32[21], c.i32[22]) for c in cases}
    assert {z for pair in zps for z in pair} >= set(ZERO_POINTS)
    shifts = [s for c in cases for s in c.i32[26 + c.i32[25]: 26 + 2 * c.i32[25]]]
    assert min(shifts) < 0 < max(shifts)
    assert any(c.i32[23] > -128 for c in cases) and any(c.i32[24] < 127 for c in cases)


def test_bad_calls_are_rejected_before_writing(tool, tmp_path):
    rng = np.random.default_rng(6)
    good = conv_case(rng, *CONV_SHAPES[1], label="ok")

    def conv_with(**edits) -> Case:
        i32 = list(good.i32)
        for k, v in edits.items():
            i32[int(k[1:])] = v
        return Case(OP_CONV, i32, good.i8)

    out_h = good.i32[9]
    bad = {
        "wrong output height": (conv_with(i9=out_h + 1), "ECM_E_SHAPE"),
        "groups do not divide": (conv_with(i20=3), "ECM_E_SHAPE"),
        "zero stride": (conv_with(i12=0), "ECM_E_ARG"),
        "input zero point 128": (conv_with(i21=128), "ECM_E_ARG"),
        "act_min > act_max": (conv_with(i23=10, i24=5), "ECM_E_ARG"),
        "shift 31": (conv_with(**{f"i{26 + good.i32[25]}": 31}), "ECM_E_ARG"),
        "negative multiplier": (conv_with(i26=-5), "ECM_E_ARG"),
    }
    big = Case(OP_FC, [1, 70000, 1, 0, 0, -128, 127, 1, 1 << 30, 0, 0], bytes(140000))
    pool = Case(OP_MAX_POOL, [1, 4, 4, 1, 1, 3, 3, 1, 2, 2, 1, 1, 2, 0, 0, 0, -128, 127], bytes(16))
    add = Case(OP_ADD, [4, 0, 0, 0, 1 << 30, 1, 1 << 30, 0, 1 << 30, 0, 20, -128, 127], bytes(8))
    results = run_cases(tool, tmp_path, [c for c, _ in bad.values()] + [big, pool, add])
    want = [s for _, s in bad.values()] + ["ECM_E_RANGE", "ECM_E_ARG", "ECM_E_ARG"]
    names = [*bad, "patch over ECM_MAX_PATCH", "pool padding >= kernel", "add input shift > 0"]
    for name, (status, raw), expect in zip(names, results, want):
        assert status == expect, name
        assert set(raw) <= {0x5A}, f"{name}: output written"


# ------------------------------------------------------------------------------ reference == LiteRT

def _small_cnn_graph():
    """conv stride 2 + relu, dilated depthwise + relu6, pointwise, residual add, max / avg pool,
    flatten + fully connected, global mean: int8 through the quantize pass."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    from edgecompile.frontend.torch_export import import_model
    from edgecompile.passes.fold import CleanupPass, FoldBatchNormPass
    from edgecompile.passes.quantize import QuantConfig, QuantizePass

    class Small(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.dw = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8)
            self.pw = nn.Conv2d(8, 8, 1)
            self.mp, self.ap = nn.MaxPool2d(2), nn.AvgPool2d(2)
            self.fc = nn.Linear(8 * 2 * 2, 10)

        def forward(self, x):
            x = F.relu(self.c1(x))
            x = x + self.pw(F.relu6(self.dw(x)))
            x = self.ap(self.mp(x))
            return self.fc(x.flatten(1)), x.mean((2, 3))

    torch.manual_seed(0)
    g = import_model(Small().eval(), (torch.randn(1, 3, 16, 16),))
    FoldBatchNormPass()(g)
    CleanupPass()(g)
    rng = np.random.default_rng(0)
    QuantizePass(QuantConfig(), [(rng.standard_normal((1, 3, 16, 16)).astype(np.float32),) for _ in range(16)])(g)
    return g


def _exact_float_inputs(graph, rng, n):
    """int8 inputs and their float images ``(q - zp) * s``, which LiteRT's QUANTIZE maps back to q
    exactly (no rounding tie), so that the comparison starts from the same integers."""
    s, zp = float(graph.inputs[0].quant.scale[0]), int(graph.inputs[0].quant.zero_point[0])
    xq = rng.integers(-128, 128, (n, *graph.inputs[0].shape)).astype(np.int8)
    return xq, ((xq.astype(np.float32) - zp) * np.float32(s)).astype(np.float32)


@pytest.fixture(scope="module")
def small_cnn():
    pytest.importorskip("ai_edge_litert")
    from edgecompile.backends.tflite import emit_tflite, tflite_op_table

    g = _small_cnn_graph()
    model = emit_tflite(g, embed_weights=True).model_bytes
    ops = {name for name, _, _ in tflite_op_table(model)}
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "MAX_POOL_2D", "AVERAGE_POOL_2D", "FULLY_CONNECTED",
            "MEAN", "RELU6"} <= ops
    return g, model


def test_reference_matches_litert_reference_kernels_op_by_op(small_cnn):
    """Each op of the reference, fed LiteRT's own input tensors, against LiteRT's reference kernels
    (BUILTIN_REF) on 40 inputs: conv, depthwise (dilated), pointwise, relu and relu6 (fused into their
    producers, as the TFLite emitter fuses them), add, max / avg
    pool, flatten and mean bit-exact. FULLY_CONNECTED differs by 1 LSB on the few accumulators
    within 2**-9 of a rounding tie: LiteRT 2.3 rounds per-channel FC once (TFLite's reference
    kernels round twice, as we do); single rounding reproduces LiteRT's FC exactly."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from edgecompile.backends.c.ref.fixedpoint import multiply_by_quantized_multiplier_single
    from edgecompile.backends.c.ref.graph import lower, run_call
    from edgecompile.backends.c.ref.params import fc_multipliers

    g, model = small_cnn
    it = Interpreter(model_content=model, experimental_op_resolver_type=OpResolverType.BUILTIN_REF,
                     experimental_preserve_all_tensors=True)
    it.allocate_tensors()
    names = {d["name"]: d["index"] for d in it.get_tensor_details()}
    xq, xf = _exact_float_inputs(g, np.random.default_rng(1), 40)
    differ, total = {}, {}
    fc = next(n for n in g.nodes if n.op == "linear")
    # fused calls, as the TFLite emitter fuses a relu into its producer (one LiteRT tensor for both)
    calls, node_of = lower(g), {n.output.name: n for n in g.nodes}
    by_name = {n.name: n for n in g.nodes}
    for k in range(len(xq)):
        it.set_tensor(it.get_input_details()[0]["index"], xf[k])
        it.invoke()
        env = {g.inputs[0].name: xq[k].transpose(0, 2, 3, 1)}
        for call in calls:
            env[call.output] = want = run_call(call, env)
            n = node_of.get(call.output)
            if n is None or call.kernel == "flatten":   # a flatten folded into the FC: NHWC order, no LiteRT twin
                continue
            producer = by_name.get(call.node, n)
            idx = next((names[c] for v in (n, producer) for c in (v.output.name + "_nhwc", v.output.name) if c in names),
                       None)
            assert idx is not None, f"no LiteRT tensor for {n.output.name}"
            got = it.get_tensor(idx).reshape(want.shape)
            assert got.dtype == np.int8, n.name
            d = np.abs(got.astype(np.int32) - want)
            assert d.max() <= 1, n.name
            differ[n.name] = differ.get(n.name, 0) + int((d > 0).sum())
            total[n.name] = total.get(n.name, 0) + d.size
            if n is fc:   # LiteRT's FC == single rounding, exactly
                # the call's own operands: its input in NHWC flatten order, its weights permuted to match
                x, w, b = env[call.inputs[0]], n.input(1), n.input(2)
                zi = int(n.inputs[0].quant.zero_point[0])
                m, s = fc_multipliers(n.inputs[0].quant.scale[0], w.quant.scale, n.output.quant.scale[0])
                acc = (x.astype(np.int64) - zi) @ call.args["w"].astype(np.int64).T + b.data
                single = multiply_by_quantized_multiplier_single(acc, m, s) + int(n.output.quant.zero_point[0])
                assert np.array_equal(np.clip(single, -128, 127), got)
            env[n.output.name] = got     # the next op starts from LiteRT's tensor
    exact = {k: v for k, v in differ.items() if k != fc.name}
    assert sum(exact.values()) == 0, exact
    assert sum(total.values()) > 80_000    # 8 fused kernel outputs x 40 inputs
    assert differ[fc.name] <= 0.01 * total[fc.name]


def test_reference_end_to_end_vs_litert(small_cnn):
    """The whole graph from the same int8 inputs: LiteRT reference kernels and LiteRT's default
    (XNNPACK, single rounding) both within 1 LSB of the reference on every output element; the
    equal fractions (measured 99.94 % / 98.81 % of 3600 elements on 200 inputs; the FC output alone
    99.9 % / 98.25 %) are held at 99.9 % / 98 %."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    g, model = small_cnn
    xq, xf = _exact_float_inputs(g, np.random.default_rng(2), 200)
    ref = [run_int8(g, xq[k]) for k in range(len(xq))]
    for resolver, floor in ((OpResolverType.BUILTIN_REF, 0.999), (OpResolverType.AUTO, 0.98)):
        it = Interpreter(model_content=model, experimental_op_resolver_type=resolver)
        it.allocate_tensors()
        equal = count = 0
        for k in range(len(xq)):
            it.set_tensor(it.get_input_details()[0]["index"], xf[k])
            it.invoke()
            for d, v, r in zip(it.get_output_details(), g.outputs, ref[k]):
                s, zp = float(v.quant.scale[0]), int(v.quant.zero_point[0])
                got = np.rint(it.get_tensor(d["index"]) / s).astype(np.int64) + zp
                assert np.abs(got - r).max() <= 1, resolver
                equal += int((got == r).sum())
                count += r.size
        assert equal / count >= floor, (resolver, equal, count)


# ------------------------------------------------------------------------------ a real model

@pytest.fixture(scope="module")
def digits():
    """The embedded digits CNN (import, fold, quantize on 64 calibration images) and 64 held-out
    images with their int8 codes."""
    from cmodel_harness import digits_graph

    g, data = digits_graph(128)
    x = data["eval"][0][:64]
    return g, x, g.inputs[0].quant.quantize(x)


def test_digits_cnn_end_to_end_agrees_with_fake_quant(digits):
    """The digits CNN through the integer reference: top-1 equal to the IR executor's fake-quant
    output on 64 held-out digits (measured 64 / 64), logits within one output step."""
    from edgecompile.ir import run_graph

    from edgecompile.backends.c.ref.graph import execute, lower

    g, x, xq = digits
    assert {n.op for n in g.nodes} >= {"conv", "add", "max_pool", "linear", "relu", "reshape"}
    oq = g.outputs[0].quant
    ints = np.concatenate([run_int8(g, xq[i: i + 1])[0] for i in range(64)])
    # fused clamps and the flatten folded into the FC weights (the default) give the same bits
    unfused, fused = lower(g, fuse=False), lower(g)
    assert sum(c.kernel == "clamp" for c in unfused) == 5 and not any(c.kernel == "clamp" for c in fused)
    assert [c.kernel for c in unfused].count("reshape") == 1 and [c.kernel for c in fused].count("flatten") == 1
    sep = [execute(unfused, {g.inputs[0].name: xq[i: i + 1].transpose(0, 2, 3, 1)})[g.outputs[0].name]
           for i in range(64)]
    assert np.array_equal(np.concatenate(sep), ints)
    fake = np.concatenate([run_graph(g, x[i: i + 1]) for i in range(64)])
    assert ints.dtype == np.int8
    assert (oq.dequantize(ints).argmax(1) == fake.argmax(1)).mean() >= 0.98
    assert np.abs(oq.dequantize(ints) - fake).max() <= 1.01 * oq.scale[0]


def case_from_call(call, x: list[np.ndarray], y: np.ndarray) -> Case | None:
    """The tool case of a reference kernel call on inputs `x` (NHWC) with reference output `y`;
    None for the data-movement steps (clamp, reshape, pad) that have no C kernel of their own."""
    a = call.args
    if call.kernel == "conv2d":
        w, b, m = a["w"], a["bias"], np.atleast_1d(a["multiplier"])
        i32 = [*x[0].shape, *w.shape, *y.shape, *a["stride"], *a["dilation"], *a["padding"], a["groups"],
               a["input_zp"], a["output_zp"], *a["act"], m.size, *m, *np.atleast_1d(a["shift"]), int(b is not None),
               *([] if b is None else b)]
        return Case(OP_CONV, i32, x[0].tobytes() + w.tobytes(), y, call.node)
    if call.kernel == "fully_connected":
        w, b, m = a["w"], a["bias"], np.atleast_1d(a["multiplier"])
        i32 = [x[0].shape[0], w.shape[1], w.shape[0], a["input_zp"], a["output_zp"], *a["act"], m.size, *m,
               *np.atleast_1d(a["shift"]), int(b is not None), *([] if b is None else b)]
        return Case(OP_FC, i32, x[0].tobytes() + w.tobytes(), y, call.node)
    if call.kernel == "add":
        i32 = [x[0].size, a["a_zp"], a["b_zp"], a["output_zp"], a["a_multiplier"], a["a_shift"], a["b_multiplier"],
               a["b_shift"], a["output_multiplier"], a["output_shift"], a["left_shift"], *a["act"]]
        return Case(OP_ADD, i32, x[0].tobytes() + x[1].tobytes(), y, call.node)
    if call.kernel in ("max_pool2d", "avg_pool2d"):
        i32 = [*x[0].shape, *y.shape, *a["kernel"], *a["stride"], *a["padding"], *a["act"]]
        return Case(OP_MAX_POOL if call.kernel == "max_pool2d" else OP_AVG_POOL, i32, x[0].tobytes(), y, call.node)
    if call.kernel == "mean_hw":
        i32 = [*x[0].shape, a["input_zp"], a["output_zp"], a["multiplier"], a["shift"], int(a["divide"])]
        return Case(OP_MEAN, i32, x[0].tobytes(), y, call.node)
    return None


def test_digits_cnn_layers_in_c_match_reference(tool, tmp_path, digits):
    """Every kernel call of the lowered digits CNN (4 convs, the residual add, max pool, 2 fully
    connected; the ReLUs fused, as no-op clamps: every ReLU output has zero point -128) run by the C kernels on the 64 images'
    activations: bit for bit the reference."""
    from edgecompile.backends.c.ref.graph import execute, lower

    g, _, xq = digits
    calls = lower(g)
    envs = [execute(calls, {g.inputs[0].name: xq[i: i + 1].transpose(0, 2, 3, 1)}) for i in range(len(xq))]
    stacked = {k: np.ascontiguousarray(np.concatenate([e[k] for e in envs])) for k in envs[0]}
    cases = [c for call in calls
             if (c := case_from_call(call, [stacked[i] for i in call.inputs], stacked[call.output])) is not None]
    assert sorted(c.op for c in cases) == sorted([OP_CONV] * 4 + [OP_ADD, OP_MAX_POOL, OP_FC, OP_FC])
    assert_c_matches(tool, tmp_path, cases)


def test_unsupported_op_is_named():
    from edgecompile.ir import Graph, QuantParams, infer_shapes

    g = Graph("t")
    x = g.add_input("x", (1, 4))
    x.quant = QuantParams([0.1], [0])
    y = g.add_node("log_softmax", [x], name="lsm", attrs={"axis": 1}).output
    y.quant = QuantParams([16 / 256], [127])
    g.outputs = [y]
    infer_shapes(g)
    with pytest.raises(CRefUnsupported, match=r"node lsm \(log_softmax\)"):
        run_int8(g, np.zeros((1, 4), np.int8))


# ------------------------------------------------------------------------------ devices

def _all_kernel_cases(seed: int) -> list[Case]:
    from test_kernels_seq import seq_cases   # the sequence / attention kernels

    rng = np.random.default_rng(seed)
    return ([conv_case(rng, *spec, label=f"conv{i}") for i, spec in enumerate(CONV_SHAPES)]
            + [fc_case(rng, f"fc{i}") for i in range(8)] + [add_case(rng, f"add{i}") for i in range(8)]
            + [pool_case(rng, i % 2 == 0, f"pool{i}") for i in range(8)] + [mean_case(rng, f"mean{i}") for i in range(8)]
            + seq_cases(rng))


@pytest.mark.skipif(not have("arm-none-eabi-gcc", "arm-none-eabi-size", "qemu-system-arm"),
                    reason="scripts/install_toolchains.sh")
def test_kernels_on_cortex_m4_under_qemu(tmp_path):
    """The kernels cross-compiled for Cortex-M4F (-Os) and run under qemu-system-arm -M mps2-an386
    on every kernel's cases: bit for bit the reference. The kernels' own .text stays small
    (measured 9255 bytes with arm-none-eabi-gcc 12, -Os, hard float ABI: ~4 KB of them the
    sequence / attention kernels, ~0.5 KB ecm_add's tabulated path and ecm_take; a model links
    only the kernels it calls: -ffunction-sections, --gc-sections)."""
    make("kernels-m4", tmp_path)
    size = subprocess.run(["arm-none-eabi-size", str(tmp_path / "m4obj" / "ecm_kernels.o")], capture_output=True,
                          text=True, check=True).stdout.splitlines()
    text, data, bss = (int(v) for v in size[1].split()[:3])
    assert text < 10 * 1024 and data == 0 and bss == 0, size
    elf = tmp_path / "m4" / "ecm_kernel_tool.elf"
    qemu = lambda src, dst: ["qemu-system-arm", "-M", "mps2-an386", "-nographic", "-semihosting-config",  # noqa: E731
                             f"enable=on,target=native,arg=tool,arg={src},arg={dst}", "-kernel", str(elf)]
    assert_c_matches(qemu, tmp_path, _all_kernel_cases(11))


@pytest.mark.skipif(not have("aarch64-linux-gnu-gcc", "qemu-aarch64"), reason="scripts/install_toolchains.sh")
def test_kernels_on_aarch64_under_qemu(tmp_path):
    make("kernels-aarch64", tmp_path)
    tool = tmp_path / "aarch64" / "ecm_kernel_tool"
    assert_c_matches(lambda src, dst: ["qemu-aarch64", "-cpu", "cortex-a72", str(tool), str(src), str(dst)],
                     tmp_path, _all_kernel_cases(12))


@pytest.mark.slow
@pytest.mark.skipif(not have("gcc"), reason="gcc")
def test_kernels_under_address_and_undefined_sanitizers(tmp_path):
    """The host tool built with ASan + UBSan (no recovery) on every kernel's cases and the
    rejections: no out-of-bounds access, no signed overflow, results unchanged."""
    tool = tmp_path / "ecm_kernel_tool_san"
    subprocess.run(["gcc", "-std=c99", "-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
                    f"-I{RUNTIME / 'include'}", str(RUNTIME / "src" / "ecm_kernels.c"),
                    str(RUNTIME / "tests" / "ecm_kernel_tool.c"), "-o", str(tool)], check=True, capture_output=True)
    assert_c_matches(tool, tmp_path, _all_kernel_cases(13))
    test_bad_calls_are_rejected_before_writing(tool, tmp_path)
    test_accumulator_extremes_and_saturation(tool, tmp_path)


# ------------------------------------------------------------------------------ fast paths

def _tiny(rng, shape, zp: int, patch: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Inputs within 2 of the zero point, weights in [-2, 2] and a multiplier that maps every
    accumulator to its own output byte: a sum off by one changes the output."""
    x = np.clip(zp + rng.integers(-2, 3, shape[0]), -128, 127).astype(np.int8)
    w = rng.integers(-2, 3, shape[1]).astype(np.int8)
    return x, w, float(2.0 ** -max(0, int(np.ceil(np.log2(4 * patch / 120)))))


def _shaped_conv_case(rng, x_shape, w_shape, stride, pad, dil, groups, label, zi=None, per_tensor=None,
                      real=None, tiny=False) -> Case:
    """A conv case of exactly these shapes (NHWC input, OHWI weights); the output size follows."""
    zi = _zp(rng) if zi is None else zi
    if tiny:
        x, wt, real = _tiny(rng, (x_shape, w_shape), zi, int(np.prod(w_shape[1:])))
    else:
        x, wt = _i8(rng, x_shape), _i8(rng, w_shape)
    c_out = w_shape[0]
    bias = rng.integers(-(2 ** 15), 2 ** 15, c_out).astype(np.int32) if rng.random() < 0.8 and not tiny else None
    per_tensor = rng.random() < 0.3 if per_tensor is None else per_tensor
    reals = _real_multipliers(rng, 1 if per_tensor else c_out) if real is None else np.full(1 if per_tensor else c_out, real)
    mult, shift = quantize_multipliers(reals)
    zo = 0 if tiny else _zp(rng)
    act = (-128, 127) if tiny else _act(rng, zo)
    y = K.conv2d(x, wt, bias, input_zp=zi, output_zp=zo, multiplier=mult, shift=shift, stride=stride, padding=pad,
                 dilation=dil, groups=groups, act=act)
    i32 = [*x.shape, *wt.shape, *y.shape, *stride, *dil, *pad, groups, zi, zo, *act, mult.size, *mult, *shift,
           int(bias is not None), *([] if bias is None else bias)]
    return Case(OP_CONV, i32, x.tobytes() + wt.tobytes(), y, f"{label} x{x.shape} w{wt.shape} g{groups} tiny{tiny}")


def _shaped_fc_case(rng, b, n_in, n_out, zi, per_tensor, label, tiny=False) -> Case:
    if tiny:
        x, w, real = _tiny(rng, ((b, n_in), (n_out, n_in)), zi, n_in)
        mult, shift = quantize_multipliers(np.full(1 if per_tensor else n_out, real))
    else:
        x, w = _i8(rng, (b, n_in)), _i8(rng, (n_out, n_in))
        mult, shift = quantize_multipliers(_real_multipliers(rng, 1 if per_tensor else n_out))
    bias = rng.integers(-(2 ** 20), 2 ** 20, n_out).astype(np.int32) if zi != 127 and not tiny else None
    zo = 0 if tiny else _zp(rng)
    act = (-128, 127) if tiny else _act(rng, zo)
    y = K.fully_connected(x, w, bias, input_zp=zi, output_zp=zo, multiplier=mult, shift=shift, act=act)
    i32 = [b, n_in, n_out, zi, zo, *act, mult.size, *mult, *shift, int(bias is not None), *([] if bias is None else bias)]
    return Case(OP_FC, i32, x.tobytes() + w.tobytes(), y, f"{label} {b}x{n_in}->{n_out} zi{zi} tiny{tiny}")


def _fast_path_cases(seed: int) -> list[Case]:
    """Shapes aimed at the fast paths' blocking (ecm_kernels_fast.c): channel counts that are not
    multiples of the 2 / 4 / 8 / 16 of the blocks and vectors (1, 3, 5, 7, 13, 37, 70), odd pixel
    counts (a lone pixel at the end; pairs across rows and batches), windows cut by padding (pixels
    of different windows are never paired), windows wholly in padding, dilated columns (runs of
    in_c bytes), patches of 9 bytes (3x3x1 rows), input zero points at both extremes (x - zp of
    +-255), per-tensor and per-channel multipliers, multipliers above 1; depthwise of 1..20
    channels (blocks of 4 / 8 and the tail), 3x3 / 5x5 / 7x7 / 9x9; fully connected of 1..5
    batches. Each shape also runs `_tiny`, where a sum off by one shows in the output."""
    rng = np.random.default_rng(seed)
    cases = []
    dense = [  # (x_shape, kernel, stride, pad, dil, c_out)
        ((1, 5, 7, 1), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 5),
        ((1, 9, 9, 3), (3, 3), (2, 2), (0, 0, 1, 1), (1, 1), 7),
        ((2, 3, 5, 13), (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 3),
        ((1, 7, 3, 37), (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 13),
        ((1, 4, 5, 70), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 6),
        ((1, 6, 6, 5), (3, 3), (1, 1), (2, 2, 2, 2), (2, 2), 4),
        ((1, 6, 7, 7), (2, 3), (1, 2), (1, 2, 0, 1), (1, 3), 9),
        ((1, 2, 2, 4), (3, 3), (1, 1), (4, 4, 4, 4), (1, 1), 3),        # windows wholly in padding
        ((1, 10, 4, 1), (10, 4), (2, 1), (4, 1, 5, 2), (1, 1), 8),      # DS-CNN's first conv, small
        ((2, 1, 3, 16), (1, 3), (1, 1), (0, 0, 0, 0), (1, 1), 1),       # the whole patch one run
        ((1, 5, 5, 8), (5, 5), (1, 1), (2, 2, 2, 2), (1, 1), 2),
    ]
    for i, (xs, k, s, p, d, co) in enumerate(dense):
        for zi in (-128, 127, None):
            cases.append(_shaped_conv_case(rng, xs, (co, *k, xs[3]), s, p, d, 1, f"dense{i}", zi=zi))
        cases.append(_shaped_conv_case(rng, xs, (co, *k, xs[3]), s, p, d, 1, f"dense{i}", zi=int(rng.choice(ZERO_POINTS)),
                                       per_tensor=bool(i % 2), tiny=True))
    for i, (c, k, s, p, d) in enumerate([(1, 3, 1, 1, 1), (3, 3, 2, 1, 1), (4, 3, 1, 1, 1), (5, 3, 1, 2, 2),
                                         (8, 3, 2, 0, 1), (9, 5, 1, 2, 1), (13, 3, 1, 1, 1), (16, 7, 1, 3, 1),
                                         (20, 3, 2, 1, 1), (12, 9, 1, 4, 1)]):
        xs = (int(rng.integers(1, 3)), int(rng.integers(k, k + 5)), int(rng.integers(k, k + 6)), c)
        for zi in (-128, 127):
            for tiny in (False, True):
                cases.append(_shaped_conv_case(rng, xs, (c, k, k, 1), (s, s), (p, p, p, p), (d, d), c, f"dw{i}", zi=zi,
                                               per_tensor=bool(i % 2), tiny=tiny))
    for i, (b, n_in, n_out) in enumerate([(1, 1, 1), (1, 3, 5), (1, 16, 4), (1, 37, 7), (2, 9, 2), (3, 64, 3),
                                          (5, 70, 9), (1, 200, 12), (2, 33, 13)]):
        for zi in (-128, 127, _zp(rng)):
            cases.append(_shaped_fc_case(rng, b, n_in, n_out, zi, bool(i % 2), f"fcfast{i}"))
        cases.append(_shaped_fc_case(rng, b, n_in, n_out, int(rng.choice(ZERO_POINTS)), bool(i % 2), f"fcfast{i}",
                                     tiny=True))
    # 3x3 depthwise pair path: rows of several pairs, odd widths, stride 2, a tail of channels
    for s in (1, 2):
        cases.append(_shaped_conv_case(rng, (1, 5, 37, 10), (10, 3, 3, 1), (s, s), (1, 1, 1, 1), (1, 1), 10,
                                       f"dw3 wide /{s}", zi=-128))
    # multipliers above 1 (the saturating left shift), per tensor and per channel
    cases.append(_shaped_conv_case(rng, (1, 4, 4, 6), (5, 1, 1, 6), (1, 1), (0, 0, 0, 0), (1, 1), 1, "pw x3", real=3.0))
    cases.append(_shaped_conv_case(rng, (1, 4, 4, 6), (6, 3, 3, 1), (1, 1), (1, 1, 1, 1), (1, 1), 6, "dw x2",
                                   per_tensor=True, real=2.0))
    return cases


def _conv_extremes() -> list[Case]:
    """Convolutions whose sums reach -+2^31 (patches of 65529 / 65535 bytes at the int8 extremes):
    no partial sum of the fast paths' reordered additions overflows; the requantization of sums
    beyond 2^30 (its 64-bit branch), with and without an act range narrower than int8."""
    cases = []
    for x_shape, w_shape, xv, zp, wv, act in (((1, 1, 3, 65535), (3, 1, 1, 65535), 127, -128, -128, (-128, 127)),
                                              ((1, 3, 3, 7281), (2, 3, 3, 7281), -128, 127, -128, (-128, 127)),
                                              ((1, 1, 2, 65535), (4, 1, 1, 65535), -128, 127, 127, (-100, 90))):
        x, w = np.full(x_shape, xv, np.int8), np.full(w_shape, wv, np.int8)
        m, s = quantize_multipliers(np.full(w_shape[0], 2.0 ** -24))
        pad = (1, 1, 1, 1) if w_shape[1] == 3 else (0, 0, 0, 0)
        y = K.conv2d(x, w, None, input_zp=zp, output_zp=0, multiplier=m, shift=s, stride=(1, 1), padding=pad,
                     dilation=(1, 1), groups=1, act=act)
        i32 = [*x.shape, *w.shape, *y.shape, 1, 1, 1, 1, *pad, 1, zp, 0, *act, m.size, *m, *s, 0]
        cases.append(Case(OP_CONV, i32, x.tobytes() + w.tobytes(), y, f"conv extremes {w_shape}"))
    return cases


def _qemu_m(board: str, elf):
    return lambda src, dst: ["qemu-system-arm", "-M", board, "-nographic", "-semihosting-config",
                             f"enable=on,target=native,arg=tool,arg={src},arg={dst}", "-kernel", str(elf)]


#: fast-path builds: (make target, tools needed, the tool under build/ or a command for it)
FAST_BUILDS = {
    "host-dsp-emulated": ("kernels", ("gcc", "make"), lambda b: b / "host" / "ecm_kernel_tool_dsp"),
    "m4": ("kernels-m4", ("arm-none-eabi-gcc", "qemu-system-arm"),
           lambda b: _qemu_m("mps2-an386", b / "m4" / "ecm_kernel_tool.elf")),
    "m7": ("kernels-m7", ("arm-none-eabi-gcc", "qemu-system-arm"),
           lambda b: _qemu_m("mps2-an500", b / "m7" / "ecm_kernel_tool.elf")),
    "aarch64-neon": ("kernels-aarch64", ("aarch64-linux-gnu-gcc", "qemu-aarch64"),
                     lambda b: (lambda s, d: ["qemu-aarch64", "-cpu", "cortex-a72", str(b / "aarch64" / "ecm_kernel_tool"),
                                              str(s), str(d)])),
    "aarch64-dotprod": ("kernels-aarch64", ("aarch64-linux-gnu-gcc", "qemu-aarch64"),
                        lambda b: (lambda s, d: ["qemu-aarch64", "-cpu", "max",
                                                 str(b / "aarch64" / "ecm_kernel_tool_dotprod"), str(s), str(d)])),
}


@pytest.mark.parametrize("build", list(FAST_BUILDS))
def test_fast_paths_match_reference(build, tmp_path):
    """The DSP (Cortex-M4 / M7, and emulated on the host) and NEON (with and without SDOT) paths
    of conv2d, depthwise and fully connected on the shapes that stress their blocking, the
    accumulator extremes and every kernel's random cases: bit for bit the reference."""
    target, tools, tool_of = FAST_BUILDS[build]
    if not have(*tools):
        pytest.skip("scripts/install_toolchains.sh")
    make(target, tmp_path)
    tool = tool_of(tmp_path)
    cases = _fast_path_cases(20) + _conv_extremes() + _all_kernel_cases(21)
    assert_c_matches(tool, tmp_path, cases)
    test_accumulator_extremes_and_saturation(tool, tmp_path)
    # the fast paths' code at -Os (measured 4714 + 2444 bytes with gcc 12): the cap was 6 KiB until the
    # 3x3 depthwise pair kernel (ecm_dsp_dw3, stride 1 and 2 unrolled, ~1.4 KiB) halved depthwise's cost
    if build == "m4":
        size = subprocess.run(["arm-none-eabi-size", *(str(tmp_path / "m4obj" / f"{n}.o") for n in
                                                        ("ecm_kernels_fast", "ecm_kernels_dsp"))],
                              capture_output=True, text=True, check=True).stdout.splitlines()
        assert sum(int(line.split()[0]) for line in size[1:]) < 7.5 * 1024, size


@pytest.mark.slow
@pytest.mark.skipif(not have("gcc"), reason="gcc")
def test_fast_paths_under_address_and_undefined_sanitizers(tmp_path):
    """The DSP fast paths' C (the instructions emulated, -DECM_FAST_EMULATE_DSP: the drivers, the
    im2col buffer, the block bookkeeping) built with ASan + UBSan: no out-of-bounds access (the
    word loads past a channel's last weights stay inside the array), no signed overflow."""
    tool = tmp_path / "ecm_kernel_tool_dsp_san"
    subprocess.run(["gcc", "-std=c99", "-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
                    "-DECM_FAST_EMULATE_DSP", f"-I{RUNTIME / 'include'}",
                    *(str(RUNTIME / "src" / f) for f in ("ecm_kernels.c", "ecm_kernels_fast.c", "ecm_kernels_dsp.c")),
                    str(RUNTIME / "tests" / "ecm_kernel_tool.c"), "-o", str(tool)], check=True, capture_output=True)
    assert_c_matches(tool, tmp_path, _fast_path_cases(22) + _conv_extremes() + _all_kernel_cases(23))
    test_accumulator_extremes_and_saturation(tool, tmp_path)
    test_bad_calls_are_rejected_before_writing(tool, tmp_path)
