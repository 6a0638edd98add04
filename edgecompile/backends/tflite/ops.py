"""TFLite emitters for the IR's elementwise, reduction and shape ops.

Each emitter takes the `Lowering` state and one IR node and appends TFLite operators. The rule for
int8: an IR op that maps to one TFLite kernel with an int8 implementation runs in int8 when its
activation inputs and output are int8 in the deployment; an op that lowers to several kernels (a
decomposition) runs in float between DEQUANTIZE and QUANTIZE, so that, like the PyTorch executor's
fake quantization, only the IR value is rounded and no intermediate is.
"""

from __future__ import annotations

import numpy as np
from ai_edge_litert import schema_py_generated as fb

from ...ir import Node, Value
from .builder import BUILTIN_NAMES
from .lower import CL, IR, Lowering, TensorRef, TFLiteUnsupportedError, act_qparams, cl_axis, cl_shape

# Fixed output qparams TFLite's int8 kernels require.
FIXED_QPARAMS = {
    "LOGISTIC": ((1 / 256,), (-128,)), "SOFTMAX": ((1 / 256,), (-128,)),
    "TANH": ((1 / 128,), (0,)), "LOG_SOFTMAX": ((16 / 256,), (127,)),
}
# Kernels that copy int8 values and so need the output qparams equal to the input's.
SAME_QPARAMS = {"RESHAPE", "TRANSPOSE", "STRIDED_SLICE", "MAX_POOL_2D", "AVERAGE_POOL_2D", "PAD",
                "PADV2", "GATHER", "REDUCE_MAX", "BROADCAST_TO", "CONCATENATION", "SPLIT"}

UNARY = {  # IR op -> (TFLite op, has int8 kernel)
    "relu": ("RELU", True), "sigmoid": ("LOGISTIC", True), "tanh": ("TANH", True),
    "hardswish": ("HARD_SWISH", True), "exp": ("EXP", False), "log": ("LOG", False),
    "sqrt": ("SQRT", False), "rsqrt": ("RSQRT", False), "neg": ("NEG", False), "abs": ("ABS", False),
}
BINARY = {
    "add": ("ADD", True), "sub": ("SUB", True), "mul": ("MUL", True), "div": ("DIV", False),
    "pow": ("POW", False), "maximum": ("MAXIMUM", False), "minimum": ("MINIMUM", False),
    "eq": ("EQUAL", False), "lt": ("LESS", False), "gt": ("GREATER", False),
}
_OPTIONS = {"ADD": fb.AddOptionsT, "SUB": fb.SubOptionsT, "MUL": fb.MulOptionsT, "DIV": fb.DivOptionsT}


def pick_layout(L: Lowering, node: Node, acts: list[Value]) -> str:
    """CL when every activation input already has a channels-last form of the output's rank."""
    rank = len(node.output.shape)
    if rank not in (3, 4) or not acts:
        return IR
    if all(L.prefers_cl(v) and len(v.shape) == rank for v in acts):
        return CL
    return IR


def emit_simple(L: Lowering, node: Node, op: str, options=None, int8_ok: bool = True,
                layout: str | None = None, extra: list[TensorRef] | None = None) -> None:
    """One TFLite kernel over the node's inputs (consts broadcast into the chosen layout)."""
    ins = [v for v in node.inputs if v is not None]
    acts = [v for v in ins if not v.is_const]
    layout = layout or pick_layout(L, node, acts)
    rank = len(node.output.shape)
    int8 = int8_ok and L.int8_mode(node, acts)
    tensors = []
    if int8:
        for v in ins:
            t = L.const_int8_operand(v, layout, rank) if v.is_const else L.get(v, layout)
            if t is None:           # a constant with no exact int8 form: run this op in float
                int8 = False
                break
            tensors.append(t)
    if not int8:
        tensors = [L.const_float(v, layout, node.output.shape if layout == CL else None) if v.is_const
                   else L.get(v, layout, float_view=True) for v in ins]
    tensors += extra or []
    if int8:
        forced = FIXED_QPARAMS.get(op)
        if op in SAME_QPARAMS:
            forced = (tensors[0].scale, tensors[0].zero_point)
        out, final = L.int8_out(node, layout, forced)
        L.b.op(op, tensors, [out], options, int8=True)
        L.close_int8(node, out, final, layout)
    else:
        out = L.float_out(node, layout)
        L.b.op(op, tensors, [out], options)
        L.finish_float(node, out, layout)


def float_chain(L: Lowering, node: Node, layout: str, build) -> None:
    """A decomposition in float: `build(x_float) -> float result tensor`, then Q if needed."""
    x = L.get(node.inputs[0], layout, float_view=True)
    out = build(x)
    L.finish_float(node, out, layout)


def unary_f(L: Lowering, op: str, x: TensorRef, name: str, options=None) -> TensorRef:
    out = L.temp(name, x.shape)
    L.b.op(op, [x], [out], options)
    return out


def binary_f(L: Lowering, op: str, a: TensorRef, b: TensorRef, name: str) -> TensorRef:
    shape = np.broadcast_shapes(a.shape, b.shape)
    out = L.temp(name, shape)
    L.b.op(op, [a, b], [out], _OPTIONS[op]() if op in _OPTIONS else None)
    return out


def scalar(L: Lowering, value: float, name: str) -> TensorRef:
    return L.b.const(name, np.array(value, np.float32))


# -- emitters ---------------------------------------------------------------------------------
def lower_unary(L: Lowering, node: Node) -> None:
    op, int8_ok = UNARY[node.op]
    if node.op == "relu" and fuse_relu(L, node):
        return
    emit_simple(L, node, op, int8_ok=int8_ok)


#: Kernels with a fused activation (their options' ``fusedActivationFunction``).
_FUSES_ACTIVATION = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "SUB", "MUL")


def fuse_relu(L: Lowering, node: Node) -> bool:
    """A relu whose input is the output of a kernel with a fused activation, read by nothing else,
    becomes that kernel's fused RELU (no operator, no tensor): the same values, since an int8 relu
    keeps its input's scale and zero point (TFLite clamps the kernel's output at the zero point),
    and a float one is max(x, 0) either way. False (nothing changed) when that does not hold."""
    x, y = node.inputs[0], node.output
    if x.is_const or len(x.uses) != 1 or any(v is x for v in L.g.outputs):
        return False
    qx, qy = act_qparams(x), act_qparams(y)
    if (qx is None) != (qy is None) or (qx is not None and (np.float32(qx[0][0]) != np.float32(qy[0][0])
                                                             or qx[1] != qy[1])):
        return False
    forms = L.forms.get(id(x), {})
    if len(forms) != 1:                     # one tensor, written by one kernel
        return False
    (layout, _), t = next(iter(forms.items()))
    writers = [o for o in L.b.operators if t.index in list(o.outputs)]
    codes = {index: code for (code, _), index in L.b.opcodes.items()}
    if len(writers) != 1 or BUILTIN_NAMES.get(codes[writers[0].opcodeIndex]) not in _FUSES_ACTIVATION:
        return False
    opts = writers[0].builtinOptions
    if opts is None or opts.fusedActivationFunction != fb.ActivationFunctionType.NONE:
        return False
    opts.fusedActivationFunction = fb.ActivationFunctionType.RELU
    L.define(y, t, layout)
    return True


def lower_binary(L: Lowering, node: Node) -> None:
    op, int8_ok = BINARY[node.op]
    emit_simple(L, node, op, _OPTIONS[op]() if op in _OPTIONS else None, int8_ok=int8_ok)


def lower_gelu(L: Lowering, node: Node) -> None:
    opts = fb.GeluOptionsT()
    opts.approximate = node.attrs["approximate"] == "tanh"
    emit_simple(L, node, "GELU", opts)


def lower_clip(L: Lowering, node: Node) -> None:
    lo, hi = node.attrs["min"], node.attrs["max"]
    named = {(0, 6): "RELU6", (0, None): "RELU", (-1, 1): "RELU_N1_TO_1"}
    key = (None if lo is None else float(lo), None if hi is None else float(hi))
    if key in named:
        emit_simple(L, node, named[key])
        return
    layout = pick_layout(L, node, [node.inputs[0]])

    def build(x):
        if lo is not None:
            x = binary_f(L, "MAXIMUM", x, scalar(L, lo, node.name + "/min"), node.name + "/lo")
        if hi is not None:
            x = binary_f(L, "MINIMUM", x, scalar(L, hi, node.name + "/max"), node.name + "/hi")
        return x
    float_chain(L, node, layout, build)


def lower_silu(L: Lowering, node: Node) -> None:
    layout = pick_layout(L, node, [node.inputs[0]])
    float_chain(L, node, layout, lambda x: binary_f(
        L, "MUL", x, unary_f(L, "LOGISTIC", x, node.name + "/sigmoid"), node.name + "/mul"))


def lower_hardsigmoid(L: Lowering, node: Node) -> None:
    layout = pick_layout(L, node, [node.inputs[0]])

    def build(x):
        t = binary_f(L, "ADD", x, scalar(L, 3.0, node.name + "/three"), node.name + "/add")
        t = unary_f(L, "RELU6", t, node.name + "/relu6")
        return binary_f(L, "MUL", t, scalar(L, 1 / 6, node.name + "/sixth"), node.name + "/mul")
    float_chain(L, node, layout, build)


# Abramowitz & Stegun 7.1.26: |erf(x) - approx| <= 1.5e-7 for all x.
_AS_P = 0.3275911
_AS_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def lower_erf(L: Lowering, node: Node) -> None:
    """erf(x) = sign(x) (1 - t (a1 + t (a2 + ... )) exp(-x^2)), t = 1 / (1 + p|x|)."""
    layout = pick_layout(L, node, [node.inputs[0]])
    n = node.name

    def build(x):
        ax = unary_f(L, "ABS", x, n + "/abs")
        den = binary_f(L, "ADD", binary_f(L, "MUL", ax, scalar(L, _AS_P, n + "/p"), n + "/px"),
                       scalar(L, 1.0, n + "/one"), n + "/den")
        t = binary_f(L, "DIV", scalar(L, 1.0, n + "/one_"), den, n + "/t")
        poly = scalar(L, _AS_A[-1], n + "/a5")
        for i, a in enumerate(reversed(_AS_A[:-1])):
            poly = binary_f(L, "ADD", binary_f(L, "MUL", poly, t, f"{n}/h{i}"), scalar(L, a, f"{n}/a{i}"),
                            f"{n}/s{i}")
        poly = binary_f(L, "MUL", poly, t, n + "/pt")
        e = unary_f(L, "EXP", unary_f(L, "NEG", binary_f(L, "MUL", x, x, n + "/x2"), n + "/nx2"), n + "/e")
        y = binary_f(L, "SUB", scalar(L, 1.0, n + "/one__"), binary_f(L, "MUL", poly, e, n + "/pe"), n + "/y")
        return binary_f(L, "MUL", unary_f(L, "SIGN", x, n + "/sign"), y, n + "/erf")
    float_chain(L, node, layout, build)


def select_f(L: Lowering, cond: TensorRef, a: TensorRef, b: TensorRef, name: str) -> TensorRef:
    out = L.temp(name, np.broadcast_shapes(cond.shape, a.shape, b.shape))
    L.b.op("SELECT_V2", [cond, a, b], [out], fb.SelectV2OptionsT())
    return out


def compare_f(L: Lowering, op: str, a: TensorRef, b: TensorRef, name: str) -> TensorRef:
    out = L.temp(name, np.broadcast_shapes(a.shape, b.shape), "bool")
    L.b.op(op, [a, b], [out])
    return out


#: Below this |x|, log1p is its Taylor series to x^6 (relative error under |x|^6 / 7 = 1.5e-7).
LOG1P_SERIES_BELOW = 0.1


def log1p_f(L: Lowering, x: TensorRef, n: str) -> TensorRef:
    """log(1 + x) accurate for tiny x (TFLite has no LOG1P): the Taylor series
    x (1 - x (1/2 - x (1/3 - ...))) where |x| < 0.1, LOG(1 + x) elsewhere. (LiteRT's default
    XNNPACK LOG is off by ~1e-7 near 1, which is 1e-3 of log1p(1e-4): Kahan's log(u) x / (u - 1)
    does not help there.)"""
    poly = scalar(L, -1 / 6, n + "/c6")
    for k in (5, 4, 3, 2):
        poly = binary_f(L, "ADD", binary_f(L, "MUL", poly, x, f"{n}/h{k}"),
                        scalar(L, (-1) ** (k + 1) / k, f"{n}/c{k}"), f"{n}/s{k}")
    poly = binary_f(L, "ADD", binary_f(L, "MUL", poly, x, n + "/h1"), scalar(L, 1.0, n + "/c1"), n + "/s1")
    series = binary_f(L, "MUL", poly, x, n + "/series")
    direct = unary_f(L, "LOG", binary_f(L, "ADD", x, scalar(L, 1.0, n + "/one"), n + "/u"), n + "/log_u")
    small = compare_f(L, "LESS", unary_f(L, "ABS", x, n + "/abs_x"), scalar(L, LOG1P_SERIES_BELOW, n + "/cut"),
                      n + "/small")
    return select_f(L, small, series, direct, n + "/log1p")


def lower_log1p(L: Lowering, node: Node) -> None:
    float_chain(L, node, pick_layout(L, node, [node.inputs[0]]), lambda x: log1p_f(L, x, node.name))


def lower_softplus(L: Lowering, node: Node) -> None:
    """softplus(x) = max(z, 0) + log1p(exp(-|z|)) over beta, z = beta x (no overflow for large |z|),
    and x where z > threshold, as torch."""
    beta, threshold, n = float(node.attrs["beta"]), float(node.attrs["threshold"]), node.name

    def build(x):
        z = x if beta == 1.0 else binary_f(L, "MUL", x, scalar(L, beta, n + "/beta"), n + "/z")
        tail = unary_f(L, "EXP", unary_f(L, "NEG", unary_f(L, "ABS", z, n + "/abs"), n + "/neg"), n + "/exp")
        y = binary_f(L, "ADD", unary_f(L, "RELU", z, n + "/relu"), log1p_f(L, tail, n), n + "/sum")
        if beta != 1.0:
            y = binary_f(L, "DIV", y, scalar(L, beta, n + "/beta_"), n + "/y")
        linear = compare_f(L, "GREATER", z, scalar(L, threshold, n + "/threshold"), n + "/linear")
        return select_f(L, linear, x, y, n + "/softplus")
    float_chain(L, node, pick_layout(L, node, [node.inputs[0]]), build)


def lower_softmax(L: Lowering, node: Node, log: bool = False) -> None:
    x = node.inputs[0]
    rank = len(x.shape)
    axis = node.attrs["axis"] % rank
    op = "LOG_SOFTMAX" if log else "SOFTMAX"
    opts = fb.LogSoftmaxOptionsT() if log else fb.SoftmaxOptionsT()
    if not log:
        opts.beta = 1.0
    if axis == rank - 1:
        # LOG_SOFTMAX's fixed int8 output scale (16/256) is coarser than the IR's: run it in float.
        emit_simple(L, node, op, opts, int8_ok=not log, layout=IR)
        return
    # Softmax runs on the last axis: move `axis` there and back.
    perm = [d for d in range(rank) if d != axis] + [axis]
    inv = list(np.argsort(perm))
    int8 = L.int8_mode(node, [x]) and not log
    src = L.get(x, IR, float_view=not int8)
    moved = L.transpose(src, perm, node.name + "/in_t", (src.scale, src.zero_point) if int8 else None)
    if int8:
        k = L.temp(node.name + "/k", moved.shape, qparams=FIXED_QPARAMS[op])
        L.b.op(op, [moved], [k], opts, int8=True)
        back = L.transpose(k, inv, node.name + "/out_t", FIXED_QPARAMS[op])
        final = L.new(node.output)
        L.requantize(back, final)
        L.define(node.output, final)
        return
    k = L.temp(node.name + "/k", moved.shape)
    L.b.op(op, [moved], [k], opts)
    L.finish_float(node, L.transpose(k, inv, node.name + "/out_t"), IR)


REDUCE = {"mean": "MEAN", "sum": "SUM", "reduce_max": "REDUCE_MAX"}


def lower_reduce(L: Lowering, node: Node) -> None:
    x = node.inputs[0]
    rank = len(x.shape)
    axes = sorted(a % rank for a in node.attrs["axes"])
    keep = bool(node.attrs["keepdims"])
    layout, out_layout = IR, IR
    if L.prefers_cl(x):
        cl_axes = sorted(cl_axis(a, rank) for a in axes)
        remaining = [cl_axis(a, rank) for a in range(rank) if a not in axes]
        if keep:
            layout, out_layout, axes = CL, CL, cl_axes
        elif remaining == sorted(remaining) and rank == 4:
            layout, out_layout, axes = CL, IR, cl_axes
    opts = fb.ReducerOptionsT()
    opts.keepDims = keep
    op = REDUCE[node.op]
    int8 = L.int8_mode(node, [x])
    src = L.get(x, layout, float_view=not int8)
    ax = L.b.const(node.name + "/axes", np.array(axes, np.int32))
    if int8:
        forced = (src.scale, src.zero_point) if op in SAME_QPARAMS else None
        out, final = L.int8_out(node, out_layout, forced)
        L.b.op(op, [src, ax], [out], opts, int8=True)
        L.close_int8(node, out, final, out_layout)
    else:
        out = L.float_out(node, out_layout)
        L.b.op(op, [src, ax], [out], opts)
        L.finish_float(node, out, out_layout)


def _same_q_single(L: Lowering, node: Node, op: str, extra: list[TensorRef], options=None,
                   layout: str = IR) -> None:
    """A data-movement kernel on input 0 (int8 when the value is int8, whatever the mode)."""
    x = node.inputs[0]
    int8 = act_qparams(x) is not None and act_qparams(node.output) is not None
    src = L.get(x, layout, float_view=not int8)
    if int8:
        out, final = L.int8_out(node, layout, (src.scale, src.zero_point))
        L.b.op(op, [src] + extra, [out], options, int8=True)
        L.close_int8(node, out, final, layout)
    else:
        out = L.float_out(node, layout)
        L.b.op(op, [src] + extra, [out], options)
        L.finish_float(node, out, layout)


def lower_reshape(L: Lowering, node: Node) -> None:
    shape = np.array(node.output.shape, np.int32)
    opts = fb.ReshapeOptionsT()
    opts.newShape = [int(d) for d in shape]
    _same_q_single(L, node, "RESHAPE", [L.b.const(node.name + "/shape", shape)], opts)


def lower_transpose(L: Lowering, node: Node) -> None:
    perm = np.array(node.attrs["perm"], np.int32)
    _same_q_single(L, node, "TRANSPOSE", [L.b.const(node.name + "/perm", perm)], fb.TransposeOptionsT())


def slice_vectors(shape: tuple[int, ...], axis: int, start: int, end: int, step: int,
                  layout: str = IR) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """STRIDED_SLICE's (begin, end, strides) for ``x[start:end:step]`` along IR `axis` of a value
    of IR `shape`, in `layout`. Bounds are resolved like Python's (negative from the end, clamped
    to the axis); every other axis is taken whole with stride 1, including the unit H axis that the
    channels-last form of a rank-3 value inserts (``[N, C, L] -> [N, 1, L, C]``)."""
    rank = len(shape)
    axis %= rank
    if step <= 0:
        raise TFLiteUnsupportedError(f"slice step {step} (TFLite lowering takes positive steps only)")
    start, end, _ = slice(start, end, step).indices(shape[axis])
    begin, stop, stride = np.zeros(rank, np.int32), np.array(shape, np.int32), np.ones(rank, np.int32)
    begin[axis], stop[axis], stride[axis] = start, max(end, start), step
    if layout == CL:
        full = cl_shape(tuple(shape))
        cl_b, cl_e, cl_s = np.zeros(len(full), np.int32), np.array(full, np.int32), np.ones(len(full), np.int32)
        for d in range(rank):
            c = cl_axis(d, rank)
            cl_b[c], cl_e[c], cl_s[c] = begin[d], stop[d], stride[d]
        return cl_b, cl_e, cl_s
    return begin, stop, stride


def lower_slice(L: Lowering, node: Node) -> None:
    x = node.inputs[0]
    a = node.attrs
    layout = CL if L.prefers_cl(x) else IR
    begin, end, step = slice_vectors(tuple(x.shape), a["axis"], a["start"], a["end"], a["step"], layout)
    n = node.name
    extra = [L.b.const(n + "/begin", begin), L.b.const(n + "/end", end), L.b.const(n + "/strides", step)]
    _same_q_single(L, node, "STRIDED_SLICE", extra, fb.StridedSliceOptionsT(), layout)


def lower_concat(L: Lowering, node: Node) -> None:
    xs = list(node.inputs)
    rank = len(node.output.shape)
    layout = pick_layout(L, node, [v for v in xs if not v.is_const])
    axis = node.attrs["axis"] % rank
    opts = fb.ConcatenationOptionsT()
    opts.axis = cl_axis(axis, rank) if layout == CL else axis
    int8 = L.int8_mode(node, xs) and not any(v.is_const for v in xs)
    if int8:
        # TFLite's int8 CONCATENATION needs every input in the output's qparams.
        out = L.new(node.output, layout)
        ins = []
        for i, v in enumerate(xs):
            t = L.get(v, layout)
            if t.scale != out.scale or t.zero_point != out.zero_point:
                t = L.requantize(t, L.temp(f"{node.name}/in{i}_rq", t.shape, qparams=(out.scale, out.zero_point)))
            ins.append(t)
        L.b.op("CONCATENATION", ins, [out], opts, int8=True)
        L.close_int8(node, out, None, layout)
        return
    ins = [L.const_float(v, layout) if v.is_const else L.get(v, layout, float_view=True) for v in xs]
    out = L.float_out(node, layout)
    L.b.op("CONCATENATION", ins, [out], opts)
    L.finish_float(node, out, layout)


def lower_pad(L: Lowering, node: Node) -> None:
    x = node.inputs[0]
    rank = len(x.shape)
    p = np.array(node.attrs["pads"], np.int32).reshape(2, rank).T        # [rank, (begin, end)]
    layout = IR
    if L.prefers_cl(x):
        layout = CL
        p = p[[0, 2, 3, 1]] if rank == 4 else np.stack([p[0], [0, 0], p[2], p[1]])
    value = float(node.attrs["value"])
    pads = L.b.const(node.name + "/pads", np.ascontiguousarray(p))
    if value == 0.0:
        _same_q_single(L, node, "PAD", [pads], fb.PadOptionsT(), layout)
        return
    q = act_qparams(x)
    if q is not None and act_qparams(node.output) is not None:
        cval = np.array(np.clip(np.rint(value / q[0][0]) + q[1][0], -128, 127), np.int8)
        c = L.b.tensor(node.name + "/value", (), "int8", q[0], q[1], data=cval)
    else:
        c = L.b.const(node.name + "/value", np.array(value, np.float32))
    _same_q_single(L, node, "PADV2", [pads, c], fb.PadV2OptionsT(), layout)


def lower_expand(L: Lowering, node: Node) -> None:
    shape = L.b.const(node.name + "/shape", np.array(node.output.shape, np.int32))
    _same_q_single(L, node, "BROADCAST_TO", [shape], fb.BroadcastToOptionsT())


def lower_where(L: Lowering, node: Node) -> None:
    emit_simple(L, node, "SELECT_V2", fb.SelectV2OptionsT(), int8_ok=False)


def lower_cumsum(L: Lowering, node: Node) -> None:
    """CUMSUM in IR layout, never int8 (a running sum outgrows any fixed int8 range)."""
    emit_simple(L, node, "CUMSUM", fb.CumsumOptionsT(), int8_ok=False, layout=IR,
                extra=[L.b.const(node.name + "/axis", np.array(int(node.attrs["axis"]), np.int32))])


def lower_cast(L: Lowering, node: Node) -> None:
    x = node.inputs[0]
    src = L.const_float(x) if x.is_const else L.get(x, IR, float_view=True)
    out = L.float_out(node, IR)
    L.b.op("CAST", [src], [out], fb.CastOptionsT())
    L.finish_float(node, out, IR)
