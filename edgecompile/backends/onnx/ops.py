"""Lowering of each IR op (`ir.ops.OPS`) to standard ONNX ops, in float (QDQ) form.

One function per op, `fn(builder, node)`, listed in `LOWERINGS`; a test holds the table to the op
set. Each reads its inputs' real (float) tensors from the builder and calls `builder.define` on
its result, which adds the QuantizeLinear/DequantizeLinear pair when the IR quantizes that value;
onnxruntime then fuses DQ -> op -> Q groups into integer kernels. Integer dtypes follow the IR:
ONNX has no implicit type promotion, so binary ops cast their inputs to the dtype torch would use.
"""

from __future__ import annotations

import math

import numpy as np

from ...ir.graph import Node, QuantParams, Value
from .builder import OnnxBuilder, elem_type

INT64_MAX = np.iinfo(np.int64).max


def _emit(b: OnnxBuilder, node: Node, op_type: str, inputs: list[str], **attrs) -> str:
    out = b.out_name(node.output)
    b.add(op_type, inputs, out, base=node.name, **attrs)
    b.define(node.output, out)
    return out


def _x(b: OnnxBuilder, node: Node, i: int = 0) -> str:
    return b.real(node.inputs[i])


# -- elementwise --------------------------------------------------------------------------------
_UNARY = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "exp": "Exp", "log": "Log",
          "sqrt": "Sqrt", "neg": "Neg", "abs": "Abs", "erf": "Erf", "hardswish": "HardSwish"}
_ARITH = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "pow": "Pow",
          "maximum": "Max", "minimum": "Min"}
_COMPARE = {"eq": "Equal", "lt": "Less", "gt": "Greater"}


def _unary(op_type: str):
    return lambda b, node: _emit(b, node, op_type, [_x(b, node)])


def _common_dtype(a: str, b: str) -> str:
    """The dtype torch computes a comparison in: floats win over integers, then the wider one."""
    da, db = np.dtype(a), np.dtype(b)
    if (da.kind == "f") != (db.kind == "f"):
        return a if da.kind == "f" else b
    return a if da.itemsize >= db.itemsize else b


def _arith(op_type: str):
    def lower(b: OnnxBuilder, node: Node) -> None:
        dt = node.output.dtype
        _emit(b, node, op_type, [b.real_as(node.inputs[0], dt), b.real_as(node.inputs[1], dt)])
    return lower


def _compare(op_type: str):
    def lower(b: OnnxBuilder, node: Node) -> None:
        a, c = node.inputs
        dt = _common_dtype(a.dtype, c.dtype)
        _emit(b, node, op_type, [b.real_as(a, dt), b.real_as(c, dt)])
    return lower


def _silu(b, node):
    x = _x(b, node)
    _emit(b, node, "Mul", [x, b.add("Sigmoid", [x], base=node.name)[0]])


def _hardsigmoid(b, node):
    _emit(b, node, "HardSigmoid", [_x(b, node)], alpha=1.0 / 6.0, beta=0.5)


def _rsqrt(b, node):
    _emit(b, node, "Reciprocal", [b.add("Sqrt", [_x(b, node)], base=node.name)[0]])


def _gelu(b, node):
    x, approx = _x(b, node), node.attrs["approximate"]
    if b.opset >= 20:
        _emit(b, node, "Gelu", [x], approximate=approx)
        return
    dt, n = node.output.dtype, node.name
    half, one = b.scalar(0.5, dt, f"{n}.half"), b.scalar(1.0, dt, f"{n}.one")
    if approx == "tanh":   # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        cube = b.add("Mul", [x, b.add("Mul", [x, x], base=n)[0]], base=n)[0]
        inner = b.add("Add", [x, b.add("Mul", [cube, b.scalar(0.044715, dt, f"{n}.c")], base=n)[0]], base=n)[0]
        inner = b.add("Mul", [inner, b.scalar(math.sqrt(2 / math.pi), dt, f"{n}.k")], base=n)[0]
        t = b.add("Tanh", [inner], base=n)[0]
    else:                  # 0.5 x (1 + erf(x / sqrt 2))
        t = b.add("Erf", [b.add("Mul", [x, b.scalar(1 / math.sqrt(2), dt, f"{n}.rsqrt2")], base=n)[0]], base=n)[0]
    hx = b.add("Mul", [x, half], base=n)[0]
    _emit(b, node, "Mul", [hx, b.add("Add", [t, one], base=n)[0]])


def _log1p_of(b, x: str, dt: str, n: str) -> str:
    """log(1 + x) accurate for tiny x (ONNX has no Log1p): with u = 1 + x rounded,
    log1p(x) = log(u) * x / (u - 1), and x itself where u == 1 (Goldberg 1991, thm. 4)."""
    one = b.scalar(1.0, dt, f"{n}.one")
    u = b.add("Add", [x, one], base=n)[0]
    d = b.add("Sub", [u, one], base=n)[0]
    r = b.add("Div", [b.add("Mul", [b.add("Log", [u], base=n)[0], x], base=n)[0], d], base=n)[0]
    exact = b.add("Equal", [d, b.scalar(0.0, dt, f"{n}.zero")], base=n)[0]
    return exact, r


def _log1p(b, node):
    x = _x(b, node)
    exact, r = _log1p_of(b, x, node.output.dtype, node.name)
    _emit(b, node, "Where", [exact, x, r])


def _softplus(b, node):
    """Softplus(beta x) / beta, and x where beta x > threshold (onnxruntime's Softplus is stable
    for large |x|: x + log1p(exp(-x)) above 0)."""
    x, dt, n = _x(b, node), node.output.dtype, node.name
    beta, threshold = float(node.attrs["beta"]), float(node.attrs["threshold"])
    z = x if beta == 1.0 else b.add("Mul", [x, b.scalar(beta, dt, f"{n}.beta")], base=n)[0]
    y = b.add("Softplus", [z], base=n)[0]
    if beta != 1.0:
        y = b.add("Div", [y, b.scalar(beta, dt, f"{n}.beta")], base=n)[0]
    linear = b.add("Greater", [z, b.scalar(threshold, dt, f"{n}.threshold")], base=n)[0]
    _emit(b, node, "Where", [linear, x, y])


def _clip(b, node):
    dt, n = node.inputs[0].dtype, node.name
    lo, hi = node.attrs["min"], node.attrs["max"]
    ins = [_x(b, node),
           "" if lo is None else b.scalar(lo, dt, f"{n}.min"),
           "" if hi is None else b.scalar(hi, dt, f"{n}.max")]
    while ins[-1] == "":
        ins.pop()
    _emit(b, node, "Clip" if len(ins) > 1 else "Identity", ins)


def _where(b, node):
    cond, x, y = node.inputs
    dt = node.output.dtype
    _emit(b, node, "Where", [b.real_as(cond, "bool"), b.real_as(x, dt), b.real_as(y, dt)])


# -- layers -------------------------------------------------------------------------------------
def _transposed_quant(q: QuantParams | None, ndim: int) -> QuantParams | None:
    if q is None or q.axis is None:
        return q
    axis = q.axis % ndim
    return QuantParams(q.scale, q.zero_point, 1 - axis, q.dtype)


def stored_linear_weight_t(b: OnnxBuilder, w: Value) -> tuple[str, QuantParams | None] | None:
    """Stores W^T ([in, out], per-channel axis 0 -> 1) for a constant used only as a linear weight.

    The container then holds exactly what MatMul consumes. Returns (initializer name, its quant),
    or None when the constant is shared with other uses (then a Transpose node is needed).
    """
    if not (w.is_const and w.data.ndim == 2 and all(u.op == "linear" and i == 1 for u, i in w.uses)):
        return None
    q = _transposed_quant(w.quant, 2)
    return b.weight(w.name, w.data.T, q), q


def linear_weight_t(b: OnnxBuilder, w: Value) -> str:
    """The real (float) form of W^T for MatMul/Gemm."""
    stored = stored_linear_weight_t(b, w)
    if stored is None:
        return b.add("Transpose", [b.real(w)], base=f"{w.name}.T", perm=[1, 0])[0]
    name, q = stored
    if q is not None and w.data.dtype.kind in "iu":
        return b.dequantized_weight(name, q, w.name)
    return name


def _linear(b, node):
    x, w, bias = node.input(0), node.input(1), node.input(2)
    wt = linear_weight_t(b, w)
    if bias is None:
        _emit(b, node, "MatMul", [b.real(x), wt])
    elif len(x.shape) == 2:
        _emit(b, node, "Gemm", [b.real(x), wt, b.bias_real(bias, x, w)])
    else:
        mm = b.add("MatMul", [b.real(x), wt], base=node.name)[0]
        _emit(b, node, "Add", [mm, b.bias_real(bias, x, w)])


def _conv(b, node, op: str = "Conv", **extra):
    a, w = node.attrs, node.inputs[1]
    nd = len(w.shape) - 2
    bias = node.input(2)
    ins = [_x(b, node), b.real(w)] + ([b.bias_real(bias, node.inputs[0], w)] if bias is not None else [])
    _emit(b, node, op, ins, kernel_shape=list(w.shape[2:]), strides=_nd(a["stride"], nd),
          pads=_nd(a["padding"], nd) * 2, dilations=_nd(a["dilation"], nd), group=a["groups"], **extra)


def _conv_transpose(b, node):
    """ConvTranspose: the same weight layout ([in, out/groups, *k]) and attributes as torch."""
    nd = len(node.inputs[1].shape) - 2
    _conv(b, node, "ConvTranspose", output_padding=_nd(node.attrs["output_padding"], nd))


def _resize(b, node):
    """Resize with torch's coordinate mapping: nearest = asymmetric + floor; nearest_exact = half_pixel +
    round_prefer_ceil; linear = half_pixel, or align_corners; torch's scale factors (when they set the mapping) as the scales input, else the
    output size."""
    a, x, n = node.attrs, node.inputs[0], node.name
    if a["mode"] == "nearest":
        mode = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
    elif a["mode"] == "nearest_exact":    # floor((x + 0.5) / s - 0.5 + 0.5)
        mode = {"mode": "nearest", "coordinate_transformation_mode": "half_pixel", "nearest_mode": "round_prefer_ceil"}
    else:
        mode = {"mode": "linear",
                "coordinate_transformation_mode": "align_corners" if a["align_corners"] else "half_pixel"}
    if a["scales"] is not None:
        scales = b.const(np.array([1.0, 1.0] + [float(s) for s in a["scales"]], np.float32), f"{n}.scales")
        ins = [_x(b, node), "", scales]
    else:
        ins = [_x(b, node), "", "", b.ints(list(x.shape[:2]) + [int(s) for s in a["size"]], f"{n}.sizes")]
    _emit(b, node, "Resize", ins, **mode)


def _nd(v, nd: int) -> list[int]:
    return [int(x) for x in v] if isinstance(v, (list, tuple)) else [int(v)] * nd


def _batch_norm(b, node):
    x, mean, var, w, bias = (list(node.inputs) + [None] * 5)[:5]
    c, dt, n = mean.shape[0], x.dtype, node.name
    scale = b.real(w) if w is not None else b.const(np.ones(c, dt), f"{n}.scale")
    shift = b.real(bias) if bias is not None else b.const(np.zeros(c, dt), f"{n}.bias")
    _emit(b, node, "BatchNormalization", [b.real(x), scale, shift, b.real(mean), b.real(var)],
          epsilon=float(node.attrs["eps"]))


def _layer_norm(b, node):
    x, w, bias = (list(node.inputs) + [None] * 3)[:3]
    k, n = node.attrs["normalized_ndim"], node.name
    scale = b.real(w) if w is not None else b.const(np.ones(x.shape[-k:], x.dtype), f"{n}.scale")
    ins = [b.real(x), scale] + ([b.real(bias)] if bias is not None else [])
    _emit(b, node, "LayerNormalization", ins, axis=-k, epsilon=float(node.attrs["eps"]))


def _group_norm(b, node):
    """InstanceNormalization over the [N, G, -1] view with unit scale, then the per-channel affine.

    Not GroupNormalization, at any opset: opset 18's takes per-group scale and bias (gone from 21
    on), and onnxruntime 1.32's GroupNormalization-21 computes the variance in one pass, E[x^2] -
    E[x]^2, which cancels: 0.015 off for groups of mean 10 and std 0.05, where this form is within
    3e-5 of torch (float64 reference).
    """
    x, w, bias = (list(node.inputs) + [None] * 3)[:3]
    g, eps, n, dt = int(node.attrs["num_groups"]), float(node.attrs["eps"]), node.name, x.dtype
    c = x.shape[1]
    grouped = b.add("Reshape", [b.real(x), b.ints([x.shape[0], g, -1], f"{n}.groups")], base=n)[0]
    normed = b.add("InstanceNormalization", [grouped, b.const(np.ones(g, dt), f"{n}.ones"),
                                             b.const(np.zeros(g, dt), f"{n}.zeros")], base=n, epsilon=eps)[0]
    last = ("Reshape", [normed, b.ints(list(x.shape), f"{n}.shape")])
    per_channel = b.ints([c] + [1] * (len(x.shape) - 2), f"{n}.channel_shape")
    for op_type, v in (("Mul", w), ("Add", bias)):
        if v is not None:
            y = b.add(last[0], last[1], base=n)[0]
            last = (op_type, [y, b.add("Reshape", [b.real(v), per_channel], base=n)[0]])
    _emit(b, node, *last)


def _pool_geometry(node: Node) -> tuple[list[int], list[int], list[int], list[int], list[int]]:
    x, a = node.inputs[0], node.attrs
    nd = len(x.shape) - 2
    k, s = _nd(a["kernel"], nd), _nd(a["stride"] or a["kernel"], nd)
    p, d = _nd(a["padding"], nd), _nd(a.get("dilation", 1), nd)
    return k, s, p, d, list(x.shape[2:])


def _ceil_overhang(node: Node, k, s, p, d, size) -> list[int]:
    """Extra end padding that makes floor-mode pooling produce torch's ceil-mode output size.

    torch lets the last window hang over the end (it must start inside the input or left padding);
    spelling that as padding keeps onnxruntime's ceil-mode rules (and its int8 pooling kernels,
    which divide differently there) out of the picture.
    """
    out = node.output.shape[2:]
    return [max(0, (o - 1) * si + (ki - 1) * di + 1 - n - 2 * pi)
            for o, si, ki, di, n, pi in zip(out, s, k, d, size, p)]


def _max_pool(b, node):
    k, s, p, d, size = _pool_geometry(node)
    extra = _ceil_overhang(node, k, s, p, d, size) if node.attrs["ceil_mode"] else [0] * len(k)
    end = [pi + e for pi, e in zip(p, extra)]   # -inf padding never wins a max
    _emit(b, node, "MaxPool", [_x(b, node)], kernel_shape=k, strides=s, pads=p + end, dilations=d)


def _avg_pool(b, node):
    k, s, p, d, size = _pool_geometry(node)
    include_pad = bool(node.attrs["count_include_pad"])
    extra = _ceil_overhang(node, k, s, p, d, size) if node.attrs["ceil_mode"] else [0] * len(k)
    x = _x(b, node)
    if not any(extra):
        _emit(b, node, "AveragePool", [x], kernel_shape=k, strides=s, pads=p * 2, count_include_pad=int(include_pad))
        return
    # torch divides an overhanging window by its part inside input + padding: zero padding counts
    # (when count_include_pad), the overhang never does.
    if include_pad and any(p):
        nd = len(k)
        x = b.add("Pad", [x, b.ints([0, 0] + p + [0, 0] + p, f"{node.name}.pads"),
                          b.scalar(0, node.inputs[0].dtype, f"{node.name}.zero")], base=node.name, mode="constant")[0]
        begin, end = [0] * nd, extra
    else:
        begin, end = p, [pi + e for pi, e in zip(p, extra)]
    _emit(b, node, "AveragePool", [x], kernel_shape=k, strides=s, pads=begin + end, count_include_pad=0)


def _reduce(op_type: str, axes_input_since: int):
    def lower(b, node):
        axes, keep = [int(a) for a in node.attrs["axes"]], int(node.attrs["keepdims"])
        if b.opset >= axes_input_since:
            _emit(b, node, op_type, [_x(b, node), b.ints(axes, f"{node.name}.axes")], keepdims=keep)
        else:
            _emit(b, node, op_type, [_x(b, node)], axes=axes, keepdims=keep)
    return lower


# -- shape and data movement --------------------------------------------------------------------
def _reshape(b, node):
    shape = node.output.shape if node.output.shape is not None else node.attrs["shape"]
    _emit(b, node, "Reshape", [_x(b, node), b.ints(shape, f"{node.name}.shape")])


def _slice(b, node):
    a, n = node.attrs, node.name
    end = INT64_MAX if a["end"] is None else min(int(a["end"]), INT64_MAX)
    _emit(b, node, "Slice", [_x(b, node), b.ints([a["start"] or 0], f"{n}.starts"), b.ints([end], f"{n}.ends"),
                             b.ints([a["axis"]], f"{n}.axes"), b.ints([a["step"] or 1], f"{n}.steps")])


def _concat(b, node):
    dt = node.output.dtype
    _emit(b, node, "Concat", [b.real_as(v, dt) for v in node.inputs], axis=int(node.attrs["axis"]))


def _pad(b, node):
    x, n = node.inputs[0], node.name
    _emit(b, node, "Pad", [b.real(x), b.ints(node.attrs["pads"], f"{n}.pads"),
                           b.scalar(node.attrs["value"], x.dtype, f"{n}.value")], mode="constant")


def _gather(b, node):
    _emit(b, node, "Gather", [_x(b, node, 0), _x(b, node, 1)], axis=int(node.attrs["axis"]))


def _expand(b, node):
    _emit(b, node, "Expand", [_x(b, node), b.ints(node.output.shape, f"{node.name}.shape")])


def _cumsum(b, node):
    _emit(b, node, "CumSum", [_x(b, node), b.scalar(int(node.attrs["axis"]), "int64", f"{node.name}.axis")])


def _cast(b, node):
    _emit(b, node, "Cast", [_x(b, node)], to=elem_type(node.attrs["dtype"]))


LOWERINGS = {
    **{op: _unary(t) for op, t in _UNARY.items()},
    **{op: _arith(t) for op, t in _ARITH.items()},
    **{op: _compare(t) for op, t in _COMPARE.items()},
    "silu": _silu, "hardsigmoid": _hardsigmoid, "rsqrt": _rsqrt, "gelu": _gelu, "clip": _clip,
    "log1p": _log1p, "softplus": _softplus, "group_norm": _group_norm,
    "softmax": lambda b, n: _emit(b, n, "Softmax", [_x(b, n)], axis=int(n.attrs["axis"])),
    "log_softmax": lambda b, n: _emit(b, n, "LogSoftmax", [_x(b, n)], axis=int(n.attrs["axis"])),
    "linear": _linear,
    "matmul": lambda b, n: _emit(b, n, "MatMul", [_x(b, n, 0), _x(b, n, 1)]),
    "conv": _conv, "conv_transpose": _conv_transpose, "resize": _resize, "batch_norm": _batch_norm, "layer_norm": _layer_norm,
    "max_pool": _max_pool, "avg_pool": _avg_pool,
    "mean": _reduce("ReduceMean", 18), "sum": _reduce("ReduceSum", 13), "reduce_max": _reduce("ReduceMax", 18),
    "reshape": _reshape,
    "transpose": lambda b, n: _emit(b, n, "Transpose", [_x(b, n)], perm=[int(p) for p in n.attrs["perm"]]),
    "slice": _slice, "concat": _concat, "pad": _pad, "gather": _gather, "expand": _expand,
    "where": _where, "cast": _cast, "cumsum": _cumsum,
}
