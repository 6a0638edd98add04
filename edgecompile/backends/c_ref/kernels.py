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
    INT32_MAX, INT32_MIN, multiply_by_quantized_multiplier, quantize_multiplier, rounding_int_divide,
)

__all__ = ["quantize_multiplier", "multiply_by_quantized_multiplier", "activation_range", "quantize_scalar",
           "conv_output_size", "conv2d", "fully_connected", "add", "max_pool2d", "avg_pool2d", "mean_hw",
           "ADD_LEFT_SHIFT"]

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
        left_shift: int = ADD_LEFT_SHIFT, act: tuple[int, int] = (-128, 127)) -> np.ndarray:
    """int8 addition with two-input requantization, as TFLite's ``reference_integer_ops::Add``
    (``AddElementwise``): each input ``(q - zp) << 20`` scaled by its multiplier (``s_i / (2 *
    max(s_a, s_b))``), the sum scaled by ``2 * max(s_a, s_b) / (2**20 * s_out)``, plus ``zp_out``,
    clamped (parameters from `params.add_params`). Shapes broadcast as numpy's."""
    sa = multiply_by_quantized_multiplier((a.astype(np.int64) - a_zp) << left_shift, a_multiplier, a_shift)
    sb = multiply_by_quantized_multiplier((b.astype(np.int64) - b_zp) << left_shift, b_multiplier, b_shift)
    return _requant(sa + sb, output_multiplier, output_shift, output_zp, act)


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
