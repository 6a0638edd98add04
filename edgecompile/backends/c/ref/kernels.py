"""The numpy integer reference of the C kernels: TFLite's int8 semantics, bit for bit.

Every function here is the specification of one ``ecm_`` kernel in ``runtime/src/ecm_kernels.c``;
the tests hold the C output equal to these, byte for byte, and these to LiteRT's reference kernels.

Conventions (TFLite's int8 scheme, ``tensorflow/lite/kernels/internal/reference/integer_ops/``):

- Layout NHWC: activations ``[N, H, W, C]``, conv weights ``[O, KH, KW, I / groups]`` (OHWI),
  fully connected weights ``[O, I]``. Channels innermost make each output pixel's patch a run of
  contiguous channel rows (the dot products a microcontroller streams, and the layout CMSIS-NN and
  TFLite Micro use), and per-channel parameters broadcast on the last axis. The IR is NCHW: the
  lowering transposes weights once, at build time. Depthwise weights are OHWI too, ``[O, KH, KW,
  1]`` (TFLite stores ``[1, KH, KW, O]``; the same bytes when the depth multiplier is 1).
- int8 activations with per-tensor zero points, int8 weights symmetric (zero point 0) per output
  channel, int32 bias of scale ``s_in * s_w[c]``.
- Accumulation in int32: ``acc = sum((x - zp_in) * w) + bias``; padded positions contribute
  nothing (they stand for ``x = zp_in``). numpy sums in int64, which equals the C kernels' int32
  sums for patches up to ``ECM_MAX_PATCH`` (65535) elements; the bias add saturates to int32 in both.
- Requantization ``MultiplyByQuantizedMultiplier(acc, M[c], shift[c]) + zp_out`` (`fixedpoint`),
  then the fused activation clamp ``[act_min, act_max]`` (an int8 range: ReLU is ``[zp_out, 127]``,
  ReLU6 ``[zp_out, zp_out + round(6 / s_out)]``, see `activation_range`).

All kernels are pure: int8 / int32 numpy arrays in, int8 arrays out, no per-element Python loops.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .fixedpoint import (
    INT32_MAX, INT32_MIN, multiply_by_quantized_multiplier, quantize_multiplier, rounding_divide_by_pot,
    rounding_int_divide,
)

__all__ = ["quantize_multiplier", "multiply_by_quantized_multiplier", "activation_range", "quantize_scalar",
           "conv_output_size", "conv2d", "fully_connected", "add", "max_pool2d", "avg_pool2d", "mean_hw",
           "ADD_LEFT_SHIFT", "lut", "mul", "batch_matmul", "softmax", "layer_norm", "isqrt",
           "mean_axes", "select", "gather_rows", "equal_const", "MAX_ROW"]

#: TFLite's int8 ADD/SUB: inputs are shifted left by 20 bits before their multipliers (add.cc).
ADD_LEFT_SHIFT = 20


def activation_range(kind: str | None, scale: float, zero_point: int) -> tuple[int, int]:
    """The int8 clamp of a fused activation, as TFLite's ``CalculateActivationRangeQuantized``:
    ``None`` -> [-128, 127]; "relu" -> [max(-128, zp), 127]; "relu6" -> [max(-128, zp),
    min(127, zp + round(6 / scale))]; "relu1" (-1..1) likewise. ``v / scale`` in float32 and C's
    ``round`` (ties away from zero), as TFLite."""
    if kind not in (None, "relu", "relu6", "relu1"):
        raise ValueError(f"unknown fused activation {kind!r}")
    lo, hi = -128, 127
    if kind in ("relu", "relu6"):
        lo = max(lo, quantize_scalar(0.0, scale, zero_point))
    if kind == "relu6":
        hi = min(hi, quantize_scalar(6.0, scale, zero_point))
    if kind == "relu1":
        lo, hi = max(lo, quantize_scalar(-1.0, scale, zero_point)), min(hi, quantize_scalar(1.0, scale, zero_point))
    return lo, hi


def quantize_scalar(value: float, scale: float, zero_point: int) -> int:
    """``zero_point + round(value / scale)`` with the division in float32 and C's ``round``
    (TFLite's activation bounds; not clamped)."""
    r = float(np.float32(value) / np.float32(scale))
    return int(zero_point) + int(np.sign(r) * np.floor(abs(r) + 0.5))


def conv_output_size(size: int, kernel: int, stride: int, dilation: int, pad_before: int, pad_after: int) -> int:
    """Output length of one spatial axis (floor division, as PyTorch without ceil_mode)."""
    return (size + pad_before + pad_after - dilation * (kernel - 1) - 1) // stride + 1


def _pairs(v: int | Sequence[int], n: int) -> tuple[int, ...]:
    t = (v,) * n if np.isscalar(v) else tuple(int(e) for e in v)
    if len(t) != n:
        raise ValueError(f"expected {n} values, got {v!r}")
    return t


def _pad4(padding) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) from an int, (ph, pw) or the four values."""
    p = (padding,) * 4 if np.isscalar(padding) else tuple(int(e) for e in padding)
    if len(p) == 2:
        p = (p[0], p[1], p[0], p[1])
    if len(p) != 4 or min(p) < 0:
        raise ValueError(f"padding must be n, (ph, pw) or (top, left, bottom, right) >= 0, got {padding!r}")
    return p


def _requant(acc: np.ndarray, multiplier, shift, zp_out: int, act: tuple[int, int]) -> np.ndarray:
    """int32 accumulators (channels last) -> int8: scale, add the output zero point, clamp."""
    lo, hi = act
    if not -128 <= lo <= hi <= 127:
        raise ValueError(f"activation range {act} is not an int8 range")
    y = multiply_by_quantized_multiplier(acc, multiplier, shift) + zp_out
    return np.clip(y, lo, hi).astype(np.int8)


def _with_bias(acc: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """acc + bias, saturated to int32 (TFLite adds in int32; overflow there is undefined)."""
    if bias is None:
        return acc
    return np.clip(acc + np.asarray(bias, np.int64), INT32_MIN, INT32_MAX)


def conv2d(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, *, input_zp: int, output_zp: int,
           multiplier, shift, stride=1, padding=0, dilation=1, groups: int = 1,
           act: tuple[int, int] = (-128, 127)) -> np.ndarray:
    """int8 2-D convolution, NHWC, as TFLite's ``reference_integer_ops::ConvPerChannel`` and
    ``DepthwiseConvPerChannel`` (depthwise = ``groups == C_in``, output channel ``o`` reads input
    channel ``o // (O / groups)``: TFLite's depth multiplier order).

    x : int8 [N, H, W, C_in]; w : int8 [O, KH, KW, C_in / groups]; bias : int32 [O] or None;
    multiplier, shift : int32 [O] (or scalars) from `quantize_multiplier` of
    ``s_in * s_w[o] / s_out``; stride, dilation : int or (h, w); padding : int, (h, w) or
    (top, left, bottom, right); act : the fused clamp. Returns int8 [N, OH, OW, O].
    """
    n, h, wd, c = x.shape
    o, kh, kw, cpg = w.shape
    sh, sw = _pairs(stride, 2)
    dh, dw = _pairs(dilation, 2)
    pt, pl, pb, pr = _pad4(padding)
    if groups < 1 or c % groups or o % groups or cpg * groups != c:
        raise ValueError(f"conv2d: {c} input / {o} output channels, weights for {cpg} per group, groups {groups}")
    xi = np.pad(x.astype(np.int64) - input_zp, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    oh = conv_output_size(h, kh, sh, dh, pt, pb)
    ow = conv_output_size(wd, kw, sw, dw, pl, pr)
    if oh < 1 or ow < 1:
        raise ValueError("conv2d: the kernel does not fit the padded input")
    # win[n, y, x, c, i, j] = xi[n, y*sh + i*dh, x*sw + j*dw, c]
    win = np.lib.stride_tricks.sliding_window_view(xi, (dh * (kh - 1) + 1, dw * (kw - 1) + 1), axis=(1, 2))
    win = win[:, ::sh, ::sw, :, ::dh, ::dw][:, :oh, :ow]
    win = win.reshape(n, oh, ow, groups, cpg, kh, kw)
    wg = w.astype(np.int64).reshape(groups, o // groups, kh, kw, cpg)
    acc = np.einsum("nyxgcij,goijc->nyxgo", win, wg, optimize=True).reshape(n, oh, ow, o)
    return _requant(_with_bias(acc, bias), multiplier, shift, output_zp, act)


def fully_connected(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, *, input_zp: int,
                    output_zp: int, multiplier, shift, act: tuple[int, int] = (-128, 127)) -> np.ndarray:
    """int8 fully connected, as TFLite's ``reference_integer_ops::FullyConnected`` (per-tensor) and
    ``FullyConnectedPerChannel``: x int8 [..., I], w int8 [O, I], bias int32 [O]; multiplier /
    shift scalars or [O]. Returns int8 [..., O]."""
    acc = (x.astype(np.int64) - input_zp) @ w.astype(np.int64).T
    return _requant(_with_bias(acc, bias), multiplier, shift, output_zp, act)


def add(a: np.ndarray, b: np.ndarray, *, a_zp: int, b_zp: int, output_zp: int, a_multiplier: int,
        a_shift: int, b_multiplier: int, b_shift: int, output_multiplier: int, output_shift: int,
        left_shift: int = ADD_LEFT_SHIFT, act: tuple[int, int] = (-128, 127), subtract: bool = False) -> np.ndarray:
    """int8 addition with two-input requantization, as TFLite's ``reference_integer_ops::Add``
    (``AddElementwise``): each input ``(q - zp) << 20`` scaled by its multiplier (``s_i / (2 *
    max(s_a, s_b))``), the sum scaled by ``2 * max(s_a, s_b) / (2**20 * s_out)``, plus ``zp_out``,
    clamped (parameters from `params.add_params`). Shapes broadcast as numpy's. With `subtract`,
    TFLite's int8 SUB (``SubElementwise``): the same with the scaled b subtracted."""
    sa = multiply_by_quantized_multiplier((a.astype(np.int64) - a_zp) << left_shift, a_multiplier, a_shift)
    sb = multiply_by_quantized_multiplier((b.astype(np.int64) - b_zp) << left_shift, b_multiplier, b_shift)
    return _requant(sa - sb if subtract else sa + sb, output_multiplier, output_shift, output_zp, act)


def _pool_windows(x: np.ndarray, kernel, stride, padding, fill: int):
    """Windows [N, OH, OW, C, KH, KW] over x padded with `fill`, and the padding mask alike."""
    n, h, w, c = x.shape
    kh, kw = _pairs(kernel, 2)
    sh, sw = _pairs(stride, 2)
    pt, pl, pb, pr = _pad4(padding)
    if pt >= kh or pb >= kh or pl >= kw or pr >= kw:
        raise ValueError("pooling: padding must be smaller than the window (no all-padding windows)")
    oh = conv_output_size(h, kh, sh, 1, pt, pb)
    ow = conv_output_size(w, kw, sw, 1, pl, pr)
    spec = ((0, 0), (pt, pb), (pl, pr), (0, 0))
    xp = np.pad(x.astype(np.int64), spec, constant_values=fill)
    valid = np.pad(np.ones((1, h, w, 1), np.int64), spec)
    sl = (slice(None), slice(None, (oh - 1) * sh + 1, sh), slice(None, (ow - 1) * sw + 1, sw))
    win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(1, 2))[sl]
    vwin = np.lib.stride_tricks.sliding_window_view(valid, (kh, kw), axis=(1, 2))[sl]
    return win, vwin


def max_pool2d(x: np.ndarray, kernel, stride, padding=0, act: tuple[int, int] = (-128, 127)) -> np.ndarray:
    """int8 max pooling, NHWC, as TFLite's ``reference_integer_ops::MaxPool``: the maximum over the
    window's in-bounds elements (padding never wins), clamped to `act`. Input and output share
    their quantization."""
    win, _ = _pool_windows(x, kernel, stride, padding, fill=-(2 ** 31))
    return np.clip(win.max(axis=(-2, -1)), *act).astype(np.int8)


def avg_pool2d(x: np.ndarray, kernel, stride, padding=0, act: tuple[int, int] = (-128, 127)) -> np.ndarray:
    """int8 average pooling, NHWC, as TFLite's ``reference_integer_ops::AveragePool``: the sum of
    the window's in-bounds raw int8 values divided by their count (padding is not counted; PyTorch's
    ``count_include_pad`` needs an explicit pad first), rounded to nearest with ties away from
    zero, clamped to `act`. Input and output share their quantization."""
    win, vwin = _pool_windows(x, kernel, stride, padding, fill=0)
    return np.clip(rounding_int_divide(win.sum(axis=(-2, -1)), vwin.sum(axis=(-2, -1))), *act).astype(np.int8)


def mean_hw(x: np.ndarray, *, input_zp: int, output_zp: int, multiplier: int, shift: int,
            divide: bool = True) -> np.ndarray:
    """Global average pooling (mean over H and W), NHWC, as TFLite's int8 MEAN. Returns int8 [N, 1, 1, C].

    ``acc = sum(x - zp_in)`` in int32, then

    - ``divide=True`` (``reference_integer_ops::Mean``, MEAN over axes (1, 2) with keep_dims):
      ``acc`` scaled by ``s_in / s_out``, divided by ``H * W`` rounding half away from zero;
    - ``divide=False`` (``reference_ops::QuantizedMeanOrSum``, every other MEAN): one scaling by a
      multiplier with ``1 / (H * W)`` folded in at build time (`params.mean_multiplier` with ``count``);

    plus ``zp_out``, clamped to int8.
    """
    n, h, w, c = x.shape
    acc = multiply_by_quantized_multiplier((x.astype(np.int64) - input_zp).sum(axis=(1, 2), keepdims=True),
                                           multiplier, shift)
    y = (rounding_int_divide(acc, h * w) if divide else acc) + output_zp
    return np.clip(y, -128, 127).astype(np.int8)


# ---------------------------------------------------------------- sequence and attention models
# The kernels of LSTM / GRU cells, MobileNet-style activations and transformer encoders. Row
# kernels (softmax, layer norm, mean, slice, concat) work on the storage layout directly: `axis`
# is an axis of the stored array (NHWC for 4-D values), not of the IR tensor.

#: Longest softmax / layer-norm row and deepest matmul the C kernels take (``ECM_MAX_ROW``,
#: ``ECM_MAX_DEPTH``): 32768 * 255**2 < 2**31, so sums of squares and dot products fit int32.
MAX_ROW = 32768


def lut(x: np.ndarray, table: np.ndarray) -> np.ndarray:
    """``table[x + 128]``: any int8 -> int8 function as its 256 values (`params.lut_table`)."""
    table = np.asarray(table, np.int8)
    if table.shape != (256,):
        raise ValueError(f"a lookup table has 256 entries, got {table.shape}")
    return table[x.astype(np.int64) + 128]


def mul(a: np.ndarray, b: np.ndarray, *, a_zp: int, b_zp: int, output_zp: int, multiplier: int, shift: int,
        act: tuple[int, int] = (-128, 127)) -> np.ndarray:
    """int8 product, as TFLite's ``reference_integer_ops::Mul`` (``MulElementwise``):
    ``(a - a_zp) * (b - b_zp)`` (|.| <= 255**2, exact in int32) scaled once by ``s_a * s_b / s_out``
    (`params.mul_multiplier`), plus ``output_zp``, clamped. Shapes broadcast as numpy's."""
    acc = (a.astype(np.int64) - a_zp) * (b.astype(np.int64) - b_zp)
    return _requant(acc, multiplier, shift, output_zp, act)


def batch_matmul(a: np.ndarray, b: np.ndarray, *, a_zp: int, b_zp: int, output_zp: int, multiplier: int,
                 shift: int, act: tuple[int, int] = (-128, 127)) -> np.ndarray:
    """int8 ``a @ b`` of two activations, as TFLite's int8 ``BATCH_MATMUL``
    (``reference_ops::BatchMatMul``): ``acc = sum_k (a[.., m, k] - a_zp) * (b[.., k, n] - b_zp)`` in
    int32, one per-tensor requantization by ``s_a * s_b / s_out`` (``GetQuantizedConvolutionMultipler``:
    `params.fc_multipliers` with one weight scale), plus ``output_zp``, clamped. a [..., M, K], b [...,
    K, N] with numpy's batch broadcasting (the IR layout: the caller undoes NHWC storage)."""
    if a.shape[-1] != b.shape[-2] or a.shape[-1] > MAX_ROW:
        raise ValueError(f"batch_matmul: {a.shape} @ {b.shape}")
    acc = np.matmul(a.astype(np.int64) - a_zp, b.astype(np.int64) - b_zp)
    return _requant(acc, multiplier, shift, output_zp, act)


def softmax(x: np.ndarray, table: np.ndarray, axis: int = -1) -> np.ndarray:
    """int8 softmax along `axis`, output scale 1/256 and zero point -128 (the quantize pass's fixed
    parameters; TFLite's too). Ours, not TFLite's fixed-point algorithm: per row, ``d = max - x``
    (0..255) indexes ``table[d] = round(65535 * exp(-s_in * d))`` (`params.softmax_table`, uint16),
    ``sum = sum(table[d])`` in uint32 (rows up to `MAX_ROW`), and each output is
    ``(table[d] * 256 + sum // 2) // sum - 128`` (256 * table[d] / sum rounded half up), clamped to
    int8. The exponentials' relative error (<= 2**-17 at the largest entries) is far below the
    output step: measured against the float softmax of the dequantized input in
    tests/runtime/test_kernels.py."""
    xi = x.astype(np.int64)
    if xi.shape[axis] > MAX_ROW:
        raise ValueError(f"softmax: rows of {xi.shape[axis]} > {MAX_ROW}")
    e = np.asarray(table, np.int64)[xi.max(axis=axis, keepdims=True) - xi]
    total = e.sum(axis=axis, keepdims=True)
    return np.clip((e * 256 + total // 2) // total - 128, -128, 127).astype(np.int8)


def _bit_length(t: np.ndarray) -> np.ndarray:
    """Exact bit length of positive int64 values below 2**62 (the float estimate can round up)."""
    bits = np.frexp(t.astype(np.float64))[1].astype(np.int64)
    return np.where((t >> (bits - 1)) == 0, bits - 1, bits)


def isqrt(x: np.ndarray) -> np.ndarray:
    """``floor(sqrt(x))`` of int64 values in [0, 2**62), exactly (a float estimate, corrected)."""
    x = np.asarray(x, np.int64)
    r = np.floor(np.sqrt(x.astype(np.float64))).astype(np.int64)
    for _ in range(2):
        r = np.where(r * r > x, r - 1, r)
        r = np.where((r + 1) * (r + 1) <= x, r + 1, r)
    return r


def layer_norm(x: np.ndarray, *, axis: int, input_zp: int, output_zp: int, eps: int, var_shift: int,
               gamma: np.ndarray, beta: np.ndarray, shift: int) -> np.ndarray:
    """int8 layer norm along `axis` (n elements), in integers only (ours: TFLite has no int8 layer
    norm kernel). Per row, with ``d = x - input_zp`` and ``k = var_shift``:

    1. ``s = sum(d)``, ``q = sum(d * d)`` (int32: n <= `MAX_ROW`); ``t = (n * q - s**2) * 4**k + eps``
       (int64, >= 1), which is ``4**k * n**2 * (var + eps_real / s_in**2)`` in input steps
       (`params.layer_norm_params` rounds ``eps`` and picks the largest `k` that cannot overflow, so
       that a small ``eps`` keeps its precision);
    2. ``p = (62 - bit_length(t)) // 2``, ``r = isqrt(t << 2p)`` in [2**30, 2**31) (``sqrt(t) * 2**p``),
       ``inv = round(2**61 / r)``;
    3. per element, the normalized value in Q15: ``z = round((n * d - s) * inv / 2**(46 - p - k))``
       (``(d - mean) / sqrt(var + eps)``, |z| <= sqrt(n) * 2**15);
    4. ``y = round((gamma * z + beta) / 2**shift) + output_zp``, clamped; ``gamma`` int32 is
       ``gamma_real / s_out * 2**(shift - 15)`` and ``beta`` int64 ``beta_real / s_out * 2**shift``.

    Every rounding is half away from zero (`fixedpoint.rounding_divide_by_pot`). Beside the final
    rounding the error is about 2**-15 of a normalized unit: within 1 output step of the float
    layer norm of the dequantized input (measured in tests/runtime/test_kernels.py).
    """
    d = np.moveaxis(x.astype(np.int64) - input_zp, axis, -1)
    n = d.shape[-1]
    if not 1 <= n <= MAX_ROW or not 1 <= shift <= 62 or not 1 <= eps < 2 ** 61 or not 0 <= var_shift <= 20:
        raise ValueError(f"layer_norm: row of {n}, shift {shift}, eps {eps}, var_shift {var_shift}")
    s = d.sum(-1, keepdims=True)
    v = n * (d * d).sum(-1, keepdims=True) - s * s
    if (int(v.max(initial=0)) << (2 * var_shift)) + eps >= 2 ** 62:
        raise ValueError("layer_norm: var_shift too large for this row length")
    t = (v << (2 * var_shift)) + eps
    p = (62 - _bit_length(t)) // 2
    r = isqrt(t << (2 * p))
    inv = ((1 << 61) + r // 2) // r
    z = rounding_divide_by_pot((n * d - s) * inv, 46 - p - var_shift)
    acc = np.asarray(gamma, np.int64) * z + np.asarray(beta, np.int64)
    y = rounding_divide_by_pot(acc, shift) + output_zp
    return np.moveaxis(np.clip(y, -128, 127).astype(np.int8), -1, axis)


def mean_axes(x: np.ndarray, axes: Sequence[int], *, input_zp: int, output_zp: int, multiplier: int,
              shift: int) -> np.ndarray:
    """int8 mean over `axes` (kept, as size 1), TFLite's general ``QuantizedMeanOrSum``:
    ``sum(x - input_zp)`` scaled once by ``s_in / s_out`` with ``1 / count`` folded in
    (`params.mean_multiplier` with ``count``), plus ``output_zp``, clamped. `mean_hw` with
    ``divide=False`` over any axes."""
    acc = (x.astype(np.int64) - input_zp).sum(axis=tuple(axes), keepdims=True)
    return np.clip(multiply_by_quantized_multiplier(acc, multiplier, shift) + output_zp, -128, 127).astype(np.int8)


def select(cond: np.ndarray, if_true, if_false) -> np.ndarray:
    """``cond ? if_true : if_false`` (a ``where``): `cond` a bool mask stored as bytes (nonzero is
    true), each branch an int8 code (a constant quantized at build time) or an int8 activation
    already in the output's quantization; shapes broadcast as numpy's."""
    t, f = np.asarray(if_true, np.int64), np.asarray(if_false, np.int64)
    return np.where(np.asarray(cond) != 0, t, f).astype(np.int8)


def gather_rows(ids: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Embedding lookup: ``table[ids]`` (table int8 [vocab, d], already in the output's
    quantization); raises ValueError for an id outside [0, vocab) (the C kernel returns
    ECM_E_RANGE before writing anything)."""
    ids = np.asarray(ids, np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= table.shape[0]):
        raise ValueError(f"gather: ids outside [0, {table.shape[0]})")
    return table[ids]


def equal_const(x: np.ndarray, value: int) -> np.ndarray:
    """``x == value`` as bytes 0 / 1: a comparison on integer ids or a bool mask (``mask == False``
    is a logical not)."""
    return (np.asarray(x, np.int64) == int(value)).astype(np.int8)
