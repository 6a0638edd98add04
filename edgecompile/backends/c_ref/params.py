"""Kernel parameters from quantization scales, computed as TFLite's ``Prepare`` functions do.

The float arithmetic matters for bit-exactness: each real multiplier is formed in double from the
float32 scales in TFLite's order before `quantize_multiplier` turns it into ``(multiplier, shift)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .fixedpoint import quantize_multiplier, quantize_multipliers
from .kernels import ADD_LEFT_SHIFT

__all__ = ["conv_multipliers", "fc_multipliers", "AddParams", "add_params", "mean_multiplier"]


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
