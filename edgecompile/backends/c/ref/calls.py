"""What the integer reference's lowering produces: `KernelCall`, the error it raises, and the
storage layout of values (4-D activations NHWC, every other rank as in the IR) shared by the
lowerings (`graph`, `lower_seq`), the numpy executor and the C generator."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ....ir import Node, Value
from ....errors import InputError

__all__ = ["KernelCall", "CRefUnsupported", "storage_axis", "storage_shape", "ir_strides", "is_mask_or_ids"]


class CRefUnsupported(InputError, ValueError):
    """A node the integer reference has no kernel for (yet), named with its op and the reason."""


@dataclass(frozen=True)
class KernelCall:
    """One kernel invocation: ``output = kernel(*inputs, **args)``.

    kernel : a function of `kernels` ("conv2d", "fully_connected", "add" (``subtract``: SUB),
        "mul", "max_pool2d", "avg_pool2d", "mean_hw", "mean_axes", "lut", "batch_matmul",
        "softmax", "layer_norm", "select") or a data-movement step ("clamp": lo, hi; "reshape":
        the IR shape, taken in NCHW element order (a transpose for 4-D NHWC data); "flatten": the
        same shape in NHWC element order, an alias in C; "pad": NHWC pads and the fill value;
        "transpose", "slice", "concat": on the stored arrays, axes of the storage layout)
    inputs, output : value names (activations: int8, or a bool mask as bytes 0 / 1)
    args : integer parameters and constant arrays (weights OHWI int8, bias int32, lookup tables,
        quantized constant operands ``const_a`` / ``const_b`` of add and mul)
    """

    node: str
    kernel: str
    inputs: tuple[str, ...]
    output: str
    args: dict[str, Any] = field(default_factory=dict)


def _q(v: Value) -> tuple[float, int]:
    """Per-tensor int8 (scale, zero point) of an activation."""
    q = v.quant
    if q is None or q.axis is not None or q.dtype != "int8":
        raise CRefUnsupported(f"value {v.name!r} is not a per-tensor int8 activation")
    return float(q.scale[0]), int(q.zero_point[0])


def _fail(node: Node, why: str) -> CRefUnsupported:
    return CRefUnsupported(f"node {node.name} ({node.op}): {why}")


def is_mask_or_ids(v: Value) -> bool:
    """A bool mask (bytes 0 / 1) or integer ids (int32): values that carry no quantization."""
    return v.quant is None and v.dtype in ("bool", "int32", "int64")


def _same_q(node: Node) -> None:
    x = node.inputs[0]
    if is_mask_or_ids(x) and x.dtype == "bool" and node.output.dtype == "bool":
        return                                   # data movement of a mask
    if _q(x) != _q(node.output):
        raise _fail(node, "must keep its input's quantization (the quantize pass shares it)")


def _nchw(x: np.ndarray) -> np.ndarray:
    return x.transpose(0, 3, 1, 2) if x.ndim == 4 else x


def _nhwc(x: np.ndarray) -> np.ndarray:
    return x.transpose(0, 2, 3, 1) if x.ndim == 4 else x


# -- layout: 4-D values are stored NHWC, every other rank as in the IR ---------------------------

_NHWC_AXIS = (0, 3, 1, 2)        # storage axis of IR axis k of a 4-D value


def storage_axis(rank: int, axis: int) -> int:
    """The axis of the stored array that holds IR axis `axis` (NHWC for rank 4)."""
    axis %= rank
    return _NHWC_AXIS[axis] if rank == 4 else axis


def storage_shape(shape) -> tuple[int, ...]:
    """The stored array's shape of an IR shape."""
    s = tuple(int(e) for e in shape)
    return (s[0], s[2], s[3], s[1]) if len(s) == 4 else s


def ir_strides(shape) -> tuple[int, ...]:
    """Element strides of each IR axis of a value in its storage layout."""
    st = storage_shape(shape)
    contiguous = [int(np.prod(st[k + 1:])) for k in range(len(st))]
    return tuple(contiguous[storage_axis(len(st), k)] for k in range(len(st)))
