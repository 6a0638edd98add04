"""The device's arithmetic on the host: a session over the numpy integer reference.

`ReferenceSession(graph).run(*x)` quantizes float inputs with the graph's input parameters (as the
firmware does before calling ``model_run``), runs the kernel calls that generated C runs, and
dequantizes the int8 outputs. The build verifies a ``--backend c`` bundle through it, so the
fidelity in the report is what the device computes: the generated C is held to this reference bit
for bit (on the host at every build, and under QEMU in the tests).
"""

from __future__ import annotations

import numpy as np

from ....ir import Graph
from .calls import is_mask_or_ids
from .graph import _nchw, _nhwc, execute, lower

__all__ = ["ReferenceSession", "device_bytes"]


def device_bytes(v, x: np.ndarray) -> np.ndarray:
    """An input as generated C reads it, as int8 bytes: quantized codes NHWC when 4-D, a bool mask
    as bytes 0 / 1, integer ids as little-endian int32."""
    if is_mask_or_ids(v) and v.dtype != "bool":
        return np.ascontiguousarray(x, "<i4").view(np.int8)
    return _nhwc(np.asarray(x).astype(np.int8))


class ReferenceSession:
    """Float in, float out, integer arithmetic inside (see the module docstring)."""

    def __init__(self, graph: Graph, calls=None):
        self.graph = graph
        self.calls = lower(graph) if calls is None else calls

    def quantize_inputs(self, *xs: np.ndarray) -> list[np.ndarray]:
        """Device inputs in the IR's layout: int8 codes, a bool mask as int8 0 / 1, ids as int32."""
        out = []
        for v, x in zip(self.graph.inputs, xs, strict=True):
            x = np.asarray(x)
            if tuple(x.shape) != tuple(v.shape):
                raise ValueError(f"input {v.name!r}: expected shape {list(v.shape)}, got {list(x.shape)}")
            if is_mask_or_ids(v):
                out.append(x.astype(np.int8 if v.dtype == "bool" else np.int32))
            else:
                out.append(x.astype(np.int8) if x.dtype == np.int8 else v.quant.quantize(x.astype(np.float32)))
        return out

    def run_int8(self, *xq: np.ndarray) -> list[np.ndarray]:
        """int8 outputs in the IR's layout from device inputs in the IR's layout (`quantize_inputs`)."""
        env = execute(self.calls, {v.name: _nhwc(x) for v, x in zip(self.graph.inputs, xq, strict=True)})
        return [_nchw(env[v.name]) for v in self.graph.outputs]

    def run(self, *xs: np.ndarray) -> list[np.ndarray]:
        q = self.run_int8(*self.quantize_inputs(*xs))
        return [v.quant.dequantize(y) for v, y in zip(self.graph.outputs, q, strict=True)]
