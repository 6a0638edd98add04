"""A quantized IR graph run through the integer reference kernels: what the generated C computes.

``run_int8(graph, *x_q)`` takes int8 inputs in the IR's layout (NCHW) and returns int8 outputs in
the IR's layout. Inside, 4-D activations live in NHWC (the kernels' layout); conv weights are
transposed OIHW -> OHWI once per call, as the code generator will do at build time.

The lowering from IR attributes and `QuantParams` to kernel parameters lives in `lower_node`; the
code generator will reuse it. Clamps (relu, relu6 / clip) run as separate clamps here; fusing one
into the producing kernel's ``act`` range gives the same bits (both clip the same requantized
int32 value), which the C generator may do.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ...ir import Graph, Node, Value
from . import kernels as K
from .params import add_params, conv_multipliers, fc_multipliers, mean_multiplier

__all__ = ["run_int8", "CRefUnsupported", "SUPPORTED_OPS"]


class CRefUnsupported(ValueError):
    """A node the integer reference has no kernel for (yet), named with its op and the reason."""


def _q(v: Value) -> tuple[float, int]:
    """Per-tensor int8 (scale, zero point) of an activation."""
    q = v.quant
    if q is None or q.axis is not None or q.dtype != "int8":
        raise CRefUnsupported(f"value {v.name!r} is not a per-tensor int8 activation")
    return float(q.scale[0]), int(q.zero_point[0])


def _fail(node: Node, why: str) -> CRefUnsupported:
    return CRefUnsupported(f"node {node.name} ({node.op}): {why}")


def _nchw(x: np.ndarray) -> np.ndarray:
    return x.transpose(0, 3, 1, 2) if x.ndim == 4 else x


def _nhwc(x: np.ndarray) -> np.ndarray:
    return x.transpose(0, 2, 3, 1) if x.ndim == 4 else x


def _conv(node: Node, env: dict) -> np.ndarray:
    x, w, b = (node.input(i) for i in range(3))
    if len(w.shape) != 4:
        raise _fail(node, "only 2-D convolution")
    s_in, zp_in = _q(x)
    s_out, zp_out = _q(node.output)
    if w.quant is None or w.data.dtype != np.int8 or np.any(w.quant.zero_point != 0):
        raise _fail(node, "weights must be symmetric int8")
    mult, shift = conv_multipliers(s_in, np.broadcast_to(w.quant.scale, (w.shape[0],)), s_out)
    a = node.attrs
    return K.conv2d(env[x.name], w.data.transpose(0, 2, 3, 1), None if b is None else b.data.astype(np.int32),
                    input_zp=zp_in, output_zp=zp_out, multiplier=mult, shift=shift, stride=a["stride"],
                    padding=a["padding"], dilation=a["dilation"], groups=a["groups"])


def _linear(node: Node, env: dict) -> np.ndarray:
    x, w, b = (node.input(i) for i in range(3))
    s_in, zp_in = _q(x)
    s_out, zp_out = _q(node.output)
    if w.quant is None or w.data.dtype != np.int8 or np.any(w.quant.zero_point != 0):
        raise _fail(node, "weights must be symmetric int8")
    mult, shift = fc_multipliers(s_in, w.quant.scale, s_out)
    return K.fully_connected(env[x.name], w.data, None if b is None else b.data.astype(np.int32),
                             input_zp=zp_in, output_zp=zp_out, multiplier=mult, shift=shift)


def _add(node: Node, env: dict) -> np.ndarray:
    a, b = node.inputs
    (sa, za), (sb, zb), (so, zo) = _q(a), _q(b), _q(node.output)
    if a.shape != b.shape:
        raise _fail(node, "broadcasting add has no kernel yet")
    p = add_params(sa, sb, so)
    return K.add(env[a.name], env[b.name], a_zp=za, b_zp=zb, output_zp=zo, a_multiplier=p.a_multiplier,
                 a_shift=p.a_shift, b_multiplier=p.b_multiplier, b_shift=p.b_shift,
                 output_multiplier=p.output_multiplier, output_shift=p.output_shift)


def _clamp(node: Node, env: dict) -> np.ndarray:
    x = node.inputs[0]
    if _q(x) != _q(node.output):
        raise _fail(node, "a clamp must keep its input's quantization (the quantize pass shares it)")
    s, zp = _q(x)
    if node.op == "relu":
        lo, hi = K.activation_range("relu", s, zp)
    else:
        lo, hi = -128, 127
        q = lambda v: zp + int(np.sign(v / s) * np.floor(abs(v / s) + 0.5))  # noqa: E731 - C's round
        if node.attrs.get("min") is not None:
            lo = max(lo, q(float(node.attrs["min"])))
        if node.attrs.get("max") is not None:
            hi = min(hi, q(float(node.attrs["max"])))
    return np.clip(env[x.name], lo, hi).astype(np.int8)


def _pool(node: Node, env: dict) -> np.ndarray:
    x = node.inputs[0]
    a = node.attrs
    if len(x.shape) != 4 or a.get("ceil_mode"):
        raise _fail(node, "only 2-D pooling without ceil_mode")
    if _q(x) != _q(node.output):
        raise _fail(node, "pooling must keep its input's quantization")
    src = env[x.name]
    if node.op == "max_pool":
        if tuple(a.get("dilation", (1, 1))) != (1, 1):
            raise _fail(node, "no dilated max pooling")
        return K.max_pool2d(src, a["kernel"], a["stride"], a["padding"])
    pad = a["padding"]
    if a.get("count_include_pad", True) and any(pad):   # PyTorch counts padding: pad with zp first
        ph, pw = pad
        src = np.pad(src, ((0, 0), (ph, ph), (pw, pw), (0, 0)), constant_values=_q(x)[1])
        pad = 0
    return K.avg_pool2d(src, a["kernel"], a["stride"], pad)


def _mean(node: Node, env: dict) -> np.ndarray:
    x = node.inputs[0]
    axes = sorted(int(e) % len(x.shape) for e in node.attrs["axes"])
    if len(x.shape) != 4 or axes != [2, 3]:
        raise _fail(node, "only the mean over H and W of a 4-D tensor (global average pooling)")
    (si, zi), (so, zo) = _q(x), _q(node.output)
    # TFLite: keep_dims takes reference_integer_ops::Mean (divide after scaling), other MEANs the
    # general QuantizedMeanOrSum (1 / count folded into the multiplier); the TFLite backend emits both.
    keep = bool(node.attrs.get("keepdims"))
    m, s = mean_multiplier(si, so, None if keep else x.shape[2] * x.shape[3])
    y = K.mean_hw(env[x.name], input_zp=zi, output_zp=zo, multiplier=m, shift=s, divide=keep)
    return y if node.attrs.get("keepdims") else y.reshape(y.shape[0], y.shape[3])


def _reshape(node: Node, env: dict) -> np.ndarray:
    x = node.inputs[0]
    if _q(x) != _q(node.output):
        raise _fail(node, "reshape must keep its input's quantization")
    y = _nchw(env[x.name]).reshape(node.output.shape)   # the IR's (NCHW) element order
    return _nhwc(y)


SUPPORTED_OPS: dict[str, Callable[[Node, dict], np.ndarray]] = {
    "conv": _conv, "linear": _linear, "add": _add, "relu": _clamp, "clip": _clamp, "max_pool": _pool,
    "avg_pool": _pool, "mean": _mean, "reshape": _reshape,
}


def run_int8(graph: Graph, *inputs_q: np.ndarray) -> list[np.ndarray]:
    """Runs a quantized graph (the quantize pass's convention) on int8 inputs in the IR's layout;
    returns int8 outputs in the IR's layout. Raises `CRefUnsupported` naming the first node
    without a reference kernel."""
    env: dict[str, np.ndarray] = {}
    for v, x in zip(graph.inputs, inputs_q, strict=True):
        _q(v)
        x = np.asarray(x)
        if x.dtype != np.int8 or tuple(x.shape) != tuple(v.shape):
            raise ValueError(f"input {v.name!r}: expected int8 {list(v.shape)}, got {x.dtype} {list(x.shape)}")
        env[v.name] = _nhwc(x)
    for node in graph.nodes:
        fn = SUPPORTED_OPS.get(node.op)
        if fn is None:
            raise _fail(node, "no integer reference kernel")
        env[node.output.name] = fn(node, env)
    return [_nchw(env[v.name]) for v in graph.outputs]
