"""Kernel parameters from quantization scales, computed as TFLite's ``Prepare`` functions do.

The float arithmetic matters for bit-exactness: each real multiplier is formed in double from the
float32 scales in TFLite's order before `quantize_multiplier` turns it into ``(multiplier, shift)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .fixedpoint import quantize_multiplier, quantize_multipliers
from .kernels import ADD_LEFT_SHIFT

__all__ = ["conv_multipliers", "fc_multipliers", "AddParams", "add_params", "mean_multiplier", "mul_multiplier",
           "LUT_FUNCTIONS", "lut_table", "softmax_table", "LayerNormParams", "layer_norm_params", "const_qparams",
           "quantize_const"]


def _f32(v) -> np.ndarray:
    return np.asarray(v, np.float32).astype(np.float64)


def conv_multipliers(s_in: float, s_w, s_out: float) -> tuple[np.ndarray, np.ndarray]:
    """Per output channel ``(multiplier, shift)`` of ``s_in * s_w[c] / s_out``, each factor a float32
    widened to double, as ``PopulateConvolutionQuantizationParams`` (conv, depthwise, per-channel
    fully connected)."""
    return quantize_multipliers(_f32(s_in) * _f32(s_w).reshape(-1) / _f32(s_out))


def fc_multipliers(s_in: float, s_w, s_out: float) -> tuple[np.ndarray, np.ndarray]:
    """Fully connected: per-channel as `conv_multipliers`; with one weight scale, TFLite's
    ``GetQuantizedConvolutionMultipler`` forms ``s_in * s_w`` in float32 first, then divides in double."""
    s_w = np.asarray(s_w, np.float32).reshape(-1)
    if s_w.size > 1:
        return conv_multipliers(s_in, s_w, s_out)
    prod = np.float32(np.float32(s_in) * s_w[0])
    return quantize_multipliers(np.array([float(prod) / float(np.float32(s_out))]))


@dataclass(frozen=True)
class AddParams:
    """The fixed-point parameters of TFLite's int8 ADD (``add.cc``, ``Prepare``)."""

    a_multiplier: int
    a_shift: int
    b_multiplier: int
    b_shift: int
    output_multiplier: int
    output_shift: int
    left_shift: int = ADD_LEFT_SHIFT


def add_params(s_a: float, s_b: float, s_out: float) -> AddParams:
    """``twice_max = 2 * max(s_a, s_b)``; inputs scaled by ``s_i / twice_max``, the sum by
    ``twice_max / (2**20 * s_out)``."""
    s_a, s_b, s_out = (float(np.float32(s)) for s in (s_a, s_b, s_out))
    twice_max = 2.0 * max(s_a, s_b)
    ma, sa = quantize_multiplier(s_a / twice_max)
    mb, sb = quantize_multiplier(s_b / twice_max)
    mo, so = quantize_multiplier(twice_max / ((1 << ADD_LEFT_SHIFT) * s_out))
    return AddParams(ma, sa, mb, sb, mo, so)


def mean_multiplier(s_in: float, s_out: float, count: int | None = None) -> tuple[int, int]:
    """MEAN: ``s_in / s_out`` (``reduce.cc``, ``Prepare``). With ``count`` (elements averaged), ``1 /
    count`` folded in as ``QuantizedMeanOrSum`` does: ``k = min(floor(log2(count)), 32, 31 + shift)``,
    ``multiplier = (multiplier << k) // count``, ``shift -= k`` (for `kernels.mean_hw` with
    ``divide=False``)."""
    m, s = quantize_multiplier(float(np.float32(s_in)) / float(np.float32(s_out)))
    if count is None:
        return m, s
    if count < 1:
        raise ValueError(f"mean over {count} elements")
    k = min(count.bit_length() - 1, 32, 31 + s)
    return (m << k) // count, s - k


def mul_multiplier(s_a: float, s_b: float, s_out: float) -> tuple[int, int]:
    """MUL: ``s_a * s_b / s_out`` evaluated in float32 (LiteRT's ``mul.cc`` multiplies and divides the
    float scales before widening to double), then `quantize_multiplier`."""
    real = np.float32(np.float32(s_a) * np.float32(s_b)) / np.float32(s_out)
    return quantize_multiplier(float(np.float32(real)))


# ---------------------------------------------------------------- lookup tables


def _gelu_erf(x: np.ndarray) -> np.ndarray:
    erf = np.vectorize(math.erf, otypes=[np.float64])
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


#: Unary IR ops as float64 functions of ``(x, attrs)``: each runs as a 256-entry table in int8.
def _softplus(x: np.ndarray, beta: float, threshold: float) -> np.ndarray:
    """torch's softplus: log(1 + exp(beta x)) / beta, and x itself where beta x > threshold."""
    return np.where(beta * x > threshold, x, np.logaddexp(0.0, beta * x) / beta)


LUT_FUNCTIONS: dict[str, Callable[[np.ndarray, dict], np.ndarray]] = {
    "sigmoid": lambda x, _: _sigmoid(x),
    "tanh": lambda x, _: np.tanh(x),
    "silu": lambda x, _: x * _sigmoid(x),
    "hardswish": lambda x, _: x * np.clip(x + 3.0, 0.0, 6.0) / 6.0,
    "hardsigmoid": lambda x, _: np.clip(x + 3.0, 0.0, 6.0) / 6.0,
    "gelu": lambda x, a: _gelu_tanh(x) if a.get("approximate") == "tanh" else _gelu_erf(x),
    "exp": lambda x, _: np.exp(x),
    "neg": lambda x, _: -x,
    "abs": lambda x, _: np.abs(x),
    "sqrt": lambda x, _: np.sqrt(np.maximum(x, 0.0)),   # a negative code (rounding below 0) is 0
    # codes at or below -1 (rounding past log1p's domain) take the output range's floor
    "log1p": lambda x, _: np.log1p(np.maximum(x, -1.0 + 1e-7)),
    "softplus": lambda x, a: _softplus(x, a.get("beta", 1.0), a.get("threshold", 20.0)),
}


def lut_table(fn: Callable[[np.ndarray], np.ndarray], s_in: float, zp_in: int, s_out: float, zp_out: int
              ) -> np.ndarray:
    """The int8 -> int8 table of a float function: each code ``q`` dequantized as the fake-quant
    executor does (``(q - zp_in) * s_in`` in float32), ``fn`` in float64, requantized as
    ``round(y / s_out) + zp_out`` (half away from zero, as TFLite's ``LUTPopulate``) and clamped;
    infinities clamp to the int8 ends. Returns int8 [256], entry ``q + 128``.

    The table is the kernel's specification (C and numpy index the same bytes). Against TFLite's
    own int8 kernels it differs where they approximate: LOGISTIC / TANH evaluate the function in
    fixed point, HARD_SWISH in 16-bit fixed point (the differences are measured against LiteRT in
    tests/runtime/test_kernels.py)."""
    q = np.arange(-128, 128, dtype=np.int64)
    x = ((q - int(zp_in)).astype(np.float32) * np.float32(s_in)).astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        y = np.asarray(fn(x), np.float64) / float(np.float32(s_out))
    if np.isnan(y).any():
        raise ValueError("the function is undefined (NaN) on part of the input range")
    r = np.sign(y) * np.floor(np.abs(y) + 0.5)
    return np.clip(r + int(zp_out), -128, 127).astype(np.int8)


def softmax_table(s_in: float) -> np.ndarray:
    """``round(65535 * exp(-s_in * d))`` for d = 0..255 (uint16): the exponentials of `kernels.softmax`
    for the input steps below the row's maximum."""
    d = np.arange(256, dtype=np.float64)
    return np.floor(65535.0 * np.exp(-float(np.float32(s_in)) * d) + 0.5).astype(np.uint16)


# ---------------------------------------------------------------- layer norm


@dataclass(frozen=True)
class LayerNormParams:
    """The integers of `kernels.layer_norm`: ``eps`` in squared input steps times ``n**2 * 4**var_shift``,
    per-element ``gamma`` (int32) and ``beta`` (int64) in fixed point with `shift` fraction bits."""

    eps: int
    var_shift: int
    gamma: np.ndarray
    beta: np.ndarray
    shift: int


def layer_norm_params(s_in: float, s_out: float, n: int, eps: float, gamma=None, beta=None) -> LayerNormParams:
    """Parameters of an int8 layer norm over rows of `n` elements (input scale `s_in`, output `s_out`;
    `gamma` / `beta` float [n] or None for 1 / 0).

    ``eps = max(1, round(eps * n**2 * 4**k / s_in**2))`` with ``var_shift = k``, the largest in [0, 20]
    for which ``n**2 * 255**2 * 4**k + eps`` (the largest scaled variance term) stays below 2**62;
    ``A = gamma / s_out`` and ``B = beta / s_out`` (the
    output in steps is ``A * normalized + B``) become ``gamma_q = round(A * 2**a)`` with the largest
    ``a`` that keeps ``|gamma_q| < 2**31`` (at most 47), ``beta_q = round(B * 2**(a + 15))``, and
    ``shift = a + 15``. Raises ValueError where the integers would not fit (|A| >= 2**45)."""
    s_in, s_out = float(np.float32(s_in)), float(np.float32(s_out))
    g = np.ones(n) if gamma is None else np.asarray(gamma, np.float64).reshape(-1)
    b = np.zeros(n) if beta is None else np.asarray(beta, np.float64).reshape(-1)
    if g.size != n or b.size != n or not (np.isfinite(g).all() and np.isfinite(b).all()):
        raise ValueError(f"layer norm parameters must be {n} finite values")
    vmax = n * n * 255 * 255
    for k in range(20, -1, -1):
        e = max(1, int(round(float(eps) * n * n * 4.0 ** k / (s_in * s_in))))
        if (vmax << (2 * k)) + e < 2 ** 62 and e < 2 ** 61:
            break
    else:
        raise ValueError(f"layer norm epsilon {eps} is too large for input scale {s_in}")
    a_real, b_real = g / s_out, b / s_out
    top = float(np.abs(a_real).max())
    a = 47 if top == 0 else min(47, math.floor(math.log2((2 ** 31 - 1) / top)))
    while a > -14 and np.abs(np.round(a_real * 2.0 ** a)).max() > 2 ** 31 - 1:
        a -= 1
    gq = np.round(a_real * 2.0 ** a)
    bq = np.round(b_real * 2.0 ** (a + 15))
    if a <= -15 or np.abs(gq).max() > 2 ** 31 - 1 or np.abs(bq).max() >= 2 ** 60:
        raise ValueError("layer norm gamma / beta too large for the output scale")
    return LayerNormParams(e, k, gq.astype(np.int32), bq.astype(np.int64), a + 15)


# ---------------------------------------------------------------- constants


def const_qparams(c: np.ndarray) -> tuple[float, int]:
    """Per-tensor int8 (scale, zero point) of a float constant operand, as the quantize pass gives an
    activation of that range: ``[min(c, 0), max(c, 0)]`` over 255 steps (1e-8 steps when all zero),
    the zero point placing 0 exactly."""
    c = np.asarray(c, np.float64)
    lo, hi = min(float(c.min()), 0.0), max(float(c.max()), 0.0)
    if hi - lo < 1e-12:
        hi = lo + 1e-8 * 255
    scale = float(np.float32((hi - lo) / 255))
    return scale, int(np.clip(-128 - np.rint(lo / scale), -128, 127))


def quantize_const(c: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """``clamp(round(c / scale) + zero_point)`` to int8 (half to even, as the fake-quant executor)."""
    return np.clip(np.rint(np.asarray(c, np.float64) / scale) + zero_point, -128, 127).astype(np.int8)
