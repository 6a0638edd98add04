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

from ...ir.graph import Node, QuantParams, Value
from .builder import OnnxBuilder, elem_type
from .ops import stored_linear_weight_t


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


# -- dynamic range (node.meta["arith"] == "int8-dynamic") ------------------------------------------
#: Forms of a dynamic-range layer: "standard" writes what onnxruntime's quantize_dynamic writes
#: (DynamicQuantizeLinear -> MatMulInteger / ConvInteger -> Cast -> Mul(s_x * s_w) -> Add bias),
#: which onnxruntime fuses into its DynamicQuantizeMatMul kernel; "contrib" writes that
#: com.microsoft op directly (matmuls only; convs stay standard).
DYNAMIC_FORMS = ("standard", "contrib")


def _dynamic_weight(b: OnnxBuilder, node: Node) -> tuple[str, QuantParams] | None:
    """The int8 weight as the integer op consumes it ([in, out] for matmuls, per-channel axis
    1 / 0 for conv), or None when the node cannot run as a dynamic-range layer."""
    w = node.input(1)
    if not _int8_weight(w):
        return None
    if node.op == "linear":
        if w.quant.axis not in (0, None):
            return None
        return stored_linear_weight_t(b, w)
    if node.op == "matmul":
        if w.data.ndim != 2 or w.quant.axis not in (1, -1, None):
            return None
        q = w.quant if w.quant.axis is None else QuantParams(w.quant.scale, w.quant.zero_point, 1, w.quant.dtype)
        return b.weight(w.name, w.data, w.quant), q
    if node.op == "conv" and w.quant.axis in (0, None):
        return b.weight(w.name, w.data, w.quant), w.quant
    return None


def dynamic_layer(b: OnnxBuilder, node: Node, form: str = "standard") -> bool:
    """A dynamic-range int8 linear / matmul / conv: the float input is quantized to uint8 at run
    time over the whole tensor and multiplied in integers with the int8 per-channel weight."""
    if node.meta.get("arith") != "int8-dynamic":
        return False
    stored = _dynamic_weight(b, node)
    if stored is None:
        return False
    w_int, wq = stored
    x, bias = node.input(0), node.input(2) if node.op != "matmul" else None
    n_out = wq.scale.size
    w_scale = wq.scale.astype(np.float32)
    # symmetric weights: zero points are 0; onnxruntime's ConvInteger takes only a scalar one
    per_col = wq.axis is not None and node.op != "conv"
    wzp = b.const(np.zeros(wq.scale.shape if per_col else (), np.int8), f"{node.name}.w_zero_point")
    out = b.out_name(node.output)
    if form == "contrib" and node.op != "conv":
        ins = [b.real(x), w_int, b.const(w_scale if wq.axis is not None else w_scale.reshape(()),
                                        f"{node.name}.w_scale"), wzp]
        if bias is not None:
            ins.append(b.real(bias))
        b.add("DynamicQuantizeMatMul", ins, out, base=node.name, domain="com.microsoft")
        b.define(node.output, out)
        return True
    xq, xs, xzp = b.add("DynamicQuantizeLinear", [b.real(x)], [b.fresh(f"{node.name}.xq"), b.fresh(f"{node.name}.xs"),
                                                                b.fresh(f"{node.name}.xzp")], base=node.name)
    if node.op == "conv":
        a, nd = node.attrs, len(node.input(1).shape) - 2

        def nd_list(v):
            return [int(t) for t in v] if isinstance(v, (list, tuple)) else [int(v)] * nd

        acc = b.add("ConvInteger", [xq, w_int, xzp, wzp], base=node.name, kernel_shape=list(node.input(1).shape[2:]),
                    strides=nd_list(a["stride"]), pads=nd_list(a["padding"]) * 2,
                    dilations=nd_list(a["dilation"]), group=int(a["groups"]))[0]
        shape = (1, n_out) + (1,) * nd
    else:
        acc = b.add("MatMulInteger", [xq, w_int, xzp, wzp], base=node.name)[0]
        shape = (n_out,)
    scale = b.add("Mul", [xs, b.const(w_scale.reshape(shape if wq.axis is not None else ()), f"{node.name}.w_scale")],
                  base=node.name)[0]
    accf = b.add("Cast", [acc], base=node.name, to=elem_type("float32"))[0]
    if bias is None:
        b.add("Mul", [accf, scale], out, base=node.name)
    else:
        y = b.add("Mul", [accf, scale], base=node.name)[0]
        bias_name = b.real(bias)
        if node.op == "conv":
            bias_name = b.add("Reshape", [bias_name, b.ints(shape, f"{node.name}.bias_shape")], base=node.name)[0]
        b.add("Add", [y, bias_name], out, base=node.name)
    b.define(node.output, out)
    return True
