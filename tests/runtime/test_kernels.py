"""int8 kernels: C (runtime/src/ecm_kernels.c) == numpy reference (edgecompile/backends/c_ref) bit for
bit on seeded random cases; the reference == LiteRT's reference kernels on a real int8 .tflite; the
reference runs the quantized digits CNN end to end.

The C side runs through ``runtime/tests/ecm_kernel_tool.c`` (host gcc, ``make kernels``), many cases
per process: each case is ``(op, int32 parameters, int8 inputs)`` and comes back as ``(status, bytes)``.
"""

from __future__ import annotations

import math
import shutil
import struct
import subprocess
from dataclasses import dataclass

import numpy as np
import pytest

from ecw_harness import RUNTIME, have, make
from edgecompile.backends.c_ref import kernels as K
from edgecompile.backends.c_ref.fixedpoint import (
    INT32_MAX, INT32_MIN, quantize_multiplier, quantize_multipliers, rounding_int_divide,
)
from edgecompile.backends.c_ref.graph import CRefUnsupported, run_int8
from edgecompile.backends.c_ref.params import add_params, mean_multiplier

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
    """Runs the cases in one tool process: (status name, output bytes) per case."""
    blob = [b"ECMK", struct.pack("<i", len(cases))]
    for c in cases:
        blob.append(struct.pack("<ii", c.op, len(c.i32)) + np.asarray(c.i32, np.int64).astype("<i4").tobytes())
        blob.append(struct.pack("<i", len(c.i8)) + c.i8)
    src, dst = tmp_path / "cases.bin", tmp_path / "results.bin"
    src.write_bytes(b"".join(blob))
    p = subprocess.run([str(tool), str(src), str(dst)], capture_output=True, text=True, timeout=60)
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
    n = int(rng.integers(1, 400))
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
    pad = (pad[0], pad[1], pad[2], pad[3])
    x = _i8(rng, (int(rng.integers(1, 3)), int(rng.integers(kh, 9)), int(rng.integers(kw, 9)), int(rng.integers(1, 6))))
    act = _act(rng, _zp(rng))
    fn = K.max_pool2d if is_max else K.avg_pool2d
    y = fn(x, (kh, kw), (sh, sw), pad, act=act)
    i32 = [*x.shape, *y.shape, kh, kw, sh, sw, *pad, *act]
    return Case(OP_MAX_POOL if is_max else OP_AVG_POOL, i32, x.tobytes(), y, f"{label} pool k{kh}x{kw} s{sh}{sw} p{pad}")


def mean_case(rng, label) -> Case:
    x = _i8(rng, (int(rng.integers(1, 3)), int(rng.integers(1, 12)), int(rng.integers(1, 12)), int(rng.integers(1, 9))))
    m, s = mean_multiplier(float(np.exp2(rng.uniform(-6, 0))), float(np.exp2(rng.uniform(-7, 0))))
    zi, zo = _zp(rng), _zp(rng)
    y = K.mean_hw(x, input_zp=zi, output_zp=zo, multiplier=m, shift=s)
    return Case(OP_MEAN, [*x.shape, zi, zo, m, s], x.tobytes(), y, f"{label} mean {x.shape}")


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
