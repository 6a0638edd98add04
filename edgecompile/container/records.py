"""Plain records of the ``.ecw`` container: quantization parameters and tensor-table entries."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class QuantInfo:
    """How to dequantize stored integers: ``real = scale * (q - zero_point)``.

    Attributes
    ----------
    scale : np.ndarray
        float32, shape ``(C,)`` per-channel or ``(1,)`` per-tensor.
    zero_point : np.ndarray
        int32, same shape as ``scale``.
    axis : int or None
        Channel axis for per-channel, None for per-tensor.
    """

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None = None

    def __post_init__(self) -> None:
        scale = np.asarray(self.scale, dtype=np.float32).reshape(-1)
        zp = np.asarray(self.zero_point, dtype=np.int32).reshape(-1)
        if scale.shape != zp.shape or scale.size == 0:
            raise ValueError(f"QuantInfo scale {scale.shape} and zero_point {zp.shape} must be the same non-empty shape")
        if self.axis is None and scale.size != 1:
            raise ValueError(f"per-tensor QuantInfo needs one scale, got {scale.size}; give axis= for per-channel")
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "zero_point", zp)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, QuantInfo)
            and self.axis == other.axis
            and np.array_equal(self.scale.view(np.uint32), other.scale.view(np.uint32))
            and np.array_equal(self.zero_point, other.zero_point)
        )

    __hash__ = None  # arrays inside: not hashable


@dataclass(frozen=True)
class TensorRecord:
    """One entry of the tensor table (FORMAT.md, "Tensor entry")."""

    name: str
    dtype: str  # numpy dtype name, e.g. "int8"
    shape: tuple[int, ...]
    layout: str
    quant: QuantInfo | None
    codec: str
    offset: int
    encoded_size: int
    decoded_size: int
    crc32: int
