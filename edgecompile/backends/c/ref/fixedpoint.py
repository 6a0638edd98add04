"""TFLite's fixed-point requantization, vectorized over numpy int64 arrays.

A real multiplier ``M > 0`` is stored as ``(multiplier, shift)`` with ``M ~= multiplier * 2**(shift - 31)``
and ``multiplier`` in [2**30, 2**31) (Q0.31). An int32 accumulator ``x`` is scaled by it in two
roundings, as TFLite's reference kernels do (the default build, without ``TFLITE_SINGLE_ROUNDING``;
``tensorflow/lite/kernels/internal/common.h``, ``MultiplyByQuantizedMultiplier``):

1. ``x << max(shift, 0)`` (a left shift for multipliers >= 1),
2. ``SaturatingRoundingDoublingHighMul``: ``(x * multiplier + nudge) / 2**31`` with C's
   truncating division and ``nudge = 2**30`` (``1 - 2**30`` for negative products): round to
   nearest, ties toward +infinity (2.5 -> 3, -2.5 -> -2),
3. ``RoundingDivideByPOT`` by ``max(-shift, 0)``: arithmetic shift, round to nearest, ties away
   from zero.

One choice of ours where TFLite has undefined behaviour: the left shift of step 1 saturates to
the int32 range (TFLite's ``x * (1 << left_shift)`` overflows int32). The C kernels
(``runtime/src/ecm_kernels.c``) do the same, so the two agree on every int32 input.
"""

from __future__ import annotations

import math

import numpy as np

INT32_MIN = -(2 ** 31)
INT32_MAX = 2 ** 31 - 1

__all__ = ["quantize_multiplier", "quantize_multipliers", "saturating_rounding_doubling_high_mul",
           "rounding_divide_by_pot", "multiply_by_quantized_multiplier", "rounding_int_divide", "INT32_MIN",
           "INT32_MAX", "multiply_by_quantized_multiplier_single"]


def quantize_multiplier(real: float) -> tuple[int, int]:
    """``(multiplier, shift)`` of a real multiplier, as TFLite's ``QuantizeMultiplier``.

    ``frexp(real) = (q, e)`` with q in [0.5, 1); ``multiplier = round(q * 2**31)`` (C's ``round``:
    ties away from zero); a mantissa that rounds up to 2**31 is halved and the exponent raised;
    multipliers below 2**-31 flush to (0, 0). Shifts above 30 (multipliers of 2**30 and more) are
    refused: no int8 kernel needs them and the C side would overflow.
    """
    real = float(real)
    if not math.isfinite(real) or real < 0:
        raise ValueError(f"a requantization multiplier must be finite and >= 0, got {real!r}")
    if real == 0.0:
        return 0, 0
    q, shift = math.frexp(real)
    q_fixed = int(math.floor(q * (1 << 31) + 0.5))   # q > 0: floor(v + 0.5) is round-half-away
    if q_fixed == 1 << 31:
        q_fixed //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    if shift > 30:
        raise ValueError(f"requantization multiplier {real!r} is too large (shift {shift} > 30)")
    return q_fixed, shift


def quantize_multipliers(reals) -> tuple[np.ndarray, np.ndarray]:
    """`quantize_multiplier` of each element: int32 multipliers and int32 shifts."""
    pairs = [quantize_multiplier(r) for r in np.asarray(reals, np.float64).reshape(-1)]
    return (np.array([m for m, _ in pairs], np.int32).reshape(np.shape(reals)),
            np.array([s for _, s in pairs], np.int32).reshape(np.shape(reals)))


def _trunc_div_pow2(x: np.ndarray, bits: int) -> np.ndarray:
    """C's ``x / 2**bits`` on int64 (truncation toward zero)."""
    return np.where(x >= 0, x >> bits, -((-x) >> bits))


def saturating_rounding_doubling_high_mul(a, b) -> np.ndarray:
    """gemmlowp's ``SaturatingRoundingDoublingHighMul`` of int32 values: the high 32 bits of
    ``2 * a * b``, rounded to nearest (ties toward +infinity: the negative nudge ``1 - 2**30`` and
    truncation toward zero send -2.5 to -2); ``INT32_MIN * INT32_MIN`` saturates."""
    a = np.asarray(a, np.int64)
    b = np.asarray(b, np.int64)
    ab = a * b                                        # |ab| <= 2**62: exact in int64
    nudge = np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    out = _trunc_div_pow2(ab + nudge, 31)
    return np.where((a == INT32_MIN) & (b == INT32_MIN), INT32_MAX, out)


def rounding_divide_by_pot(x, exponent) -> np.ndarray:
    """gemmlowp's ``RoundingDivideByPOT``: ``x / 2**exponent`` rounded to nearest, ties away from
    zero (exponent in [0, 31])."""
    x = np.asarray(x, np.int64)
    e = np.asarray(exponent, np.int64)
    mask = (np.int64(1) << e) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> e) + (remainder > threshold)


def multiply_by_quantized_multiplier(x, multiplier, shift) -> np.ndarray:
    """TFLite's ``MultiplyByQuantizedMultiplier(int32 x, int32 multiplier, int shift)`` (double
    rounding), elementwise with broadcasting; int64 result in the int32 range."""
    x = np.asarray(x, np.int64)
    shift = np.asarray(shift, np.int64)
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    shifted = np.clip(x << left, INT32_MIN, INT32_MAX)   # ours: saturate (TFLite: int32 overflow)
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(shifted, multiplier), right)


def rounding_int_divide(acc, count) -> np.ndarray:
    """``acc / count`` rounded to nearest, ties away from zero, as TFLite's integer pooling and
    mean write it: ``acc > 0 ? (acc + count / 2) / count : (acc - count / 2) / count`` (C division)."""
    acc = np.asarray(acc, np.int64)
    count = np.asarray(count, np.int64)
    half = count // 2
    pos = (acc + half) // count                       # acc + half >= 0 here: floor == trunc
    neg = -((-acc + half) // count)                   # trunc((acc - half) / count) for acc <= 0
    return np.where(acc > 0, pos, neg)


def multiply_by_quantized_multiplier_single(x, multiplier, shift) -> np.ndarray:
    """The single-rounding variant (TFLite built with ``TFLITE_SINGLE_ROUNDING``; XNNPACK's and, as
    measured, LiteRT 2.3's per-channel FULLY_CONNECTED): ``(x * multiplier + 2**(30 - shift)) >>
    (31 - shift)``, ties toward +infinity. Not what the C kernels do; kept to explain the 1-LSB
    differences against those builds (``1.25 -> 1`` here, ``2`` with double rounding)."""
    x = np.asarray(x, np.int64)
    total = 31 - np.asarray(shift, np.int64)
    return (x * np.asarray(multiplier, np.int64) + (np.int64(1) << (total - 1))) >> total
