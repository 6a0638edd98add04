"""Explicit integer lowering (``int8_ops="integer"``): QLinearConv and MatMulInteger.

The alternative to QDQ: instead of leaving onnxruntime to fuse DequantizeLinear -> op ->
QuantizeLinear, the model spells the integer kernels out. Only the MAC-heavy ops have standard
integer forms; everything else stays float between DequantizeLinear/QuantizeLinear.

- conv with int8 input and output, int8 weight, int32 bias -> QLinearConv (int32 accumulate, one
  requantization: the quantize pass's convention, bias scale = input scale * weight scale).
- linear / matmul with an int8 input -> MatMulInteger (+ int32 bias) -> Cast -> Mul(s_x * s_w):
  the real result in float, quantized afterwards if the IR says so.

Each function returns False when the node does not qualify, and the caller lowers it in float.
"""

from __future__ import annotations

import numpy as np

from ..ir.graph import Node, QuantParams, Value
from .onnx_builder import OnnxBuilder, elem_type
from .onnx_ops import stored_linear_weight_t


def _int8_weight(w: Value | None) -> bool:
    return (w is not None and w.is_const and w.quant is not None and w.data.dtype == np.int8
            and not np.any(w.quant.zero_point))


def _bias_matches(bias: Value | None, x: Value, wq: QuantParams) -> bool:
    """An int32 bias whose scale is input scale * weight scale (so it adds to the accumulator)."""
    if bias is None:
        return True
    if not (bias.is_const and bias.quant is not None and bias.data.dtype == np.int32):
        return False
    want = np.float32(x.quant.scale[0]) * wq.scale
    return bias.quant.scale.size == want.size and np.allclose(bias.quant.scale, want, rtol=1e-6, atol=0)


def _weight_qparams(b: OnnxBuilder, q: QuantParams, base: str) -> tuple[str, str]:
    per_channel = q.axis is not None
    scale = q.scale if per_channel else q.scale.reshape(())
    zp = np.zeros(q.scale.shape if per_channel else (), np.int8)
    return b.const(scale, f"{base}.scale"), b.const(zp, f"{base}.zero_point")


def qlinear_conv(b: OnnxBuilder, node: Node) -> bool:
    x, w, bias = node.input(0), node.input(1), node.input(2)
    y = node.output
    if x.quant is None or y.quant is None or not _int8_weight(w) or w.quant.axis not in (0, None):
        return False
    if not _bias_matches(bias, x, w.quant):
        return False
    a, nd = node.attrs, len(w.shape) - 2
    xs, xzp = b.act_qparams(x)
    ys, yzp = b.act_qparams(y)
    ws, wzp = _weight_qparams(b, w.quant, w.name)
    ins = [b.quantized(x), xs, xzp, b.weight(w.name, w.data, w.quant), ws, wzp, ys, yzp]
    if bias is not None:
        ins.append(b.weight(bias.name, bias.data, bias.quant))

    def nd_list(v):
        return [int(t) for t in v] if isinstance(v, (list, tuple)) else [int(v)] * nd

    out = b.add("QLinearConv", ins, b.fresh(f"{y.name}.q"), base=node.name,
                kernel_shape=list(w.shape[2:]), strides=nd_list(a["stride"]), pads=nd_list(a["padding"]) * 2,
                dilations=nd_list(a["dilation"]), group=int(a["groups"]))[0]
    b.define_quantized(y, out)
    return True


def _integer_matmul(b: OnnxBuilder, node: Node, x: Value, w_int: str, w_scale: np.ndarray,
                    w_zp: str | None, bias: Value | None) -> None:
    xs_value = np.float32(x.quant.scale[0])
    _, xzp = b.act_qparams(x)
    acc = b.add("MatMulInteger", [b.quantized(x), w_int, xzp] + ([w_zp] if w_zp else []), base=node.name)[0]
    if bias is not None:
        acc = b.add("Add", [acc, b.weight(bias.name, bias.data, bias.quant)], base=node.name)[0]
    acc = b.add("Cast", [acc], base=node.name, to=elem_type("float32"))[0]
    scale = b.const((xs_value * w_scale).astype(np.float32), f"{node.name}.out_scale")
    out = b.out_name(node.output)
    b.add("Mul", [acc, scale], out, base=node.name)
    b.define(node.output, out)


def integer_linear(b: OnnxBuilder, node: Node) -> bool:
    x, w, bias = node.input(0), node.input(1), node.input(2)
    if x.quant is None or not _int8_weight(w) or w.quant.axis not in (0, None):
        return False
    if not _bias_matches(bias, x, w.quant):
        return False
    stored = stored_linear_weight_t(b, w)
    if stored is None:
        return False
    _integer_matmul(b, node, x, stored[0], w.quant.scale, None, bias)
    return True


def integer_matmul(b: OnnxBuilder, node: Node) -> bool:
    x, w = node.inputs
    if x.quant is None:
        return False
    if _int8_weight(w) and w.quant.axis in (1, -1, None):
        _integer_matmul(b, node, x, b.weight(w.name, w.data, w.quant), w.quant.scale, None, None)
        return True
    if not w.is_const and w.quant is not None and b.quantized(w) is not None:
        _, wzp = b.act_qparams(w)
        _integer_matmul(b, node, x, b.quantized(w), w.quant.scale, wzp, None)
        return True
    return False


INTEGER_LOWERINGS = {"conv": qlinear_conv, "linear": integer_linear, "matmul": integer_matmul}
