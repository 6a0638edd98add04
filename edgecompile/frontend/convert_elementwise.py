"""Converters for elementwise aten ops: activations, arithmetic, comparisons, logic, casts.

Binary ops follow torch's type promotion: the operands are brought to the promoted dtype (a cast
node for a value, converted data for a constant; Python scalars become 0-d constants of that
dtype), so every IR binary op sees one dtype. IR has no `ne`/`le`/`ge`/`and`/`or`/`not`; they are
spelled with `eq`, `lt`, `gt` and `where`.
"""

from __future__ import annotations

import torch

from .context import Const, ConvertContext, Operand, Unsupported

# log1p is an IR op, not log(1 + x): in float32, 1 + x drops every digit of x below 6e-8 (softplus
# of -20 would be 0, not 2e-9); ONNX and TFLite have no log1p, so each backend spells it accurately.
UNARY = ["relu", "sigmoid", "tanh", "silu", "hardswish", "hardsigmoid", "exp", "log", "sqrt", "rsqrt",
         "neg", "abs", "erf", "log1p"]


def unary(op: str):
    def convert(cx: ConvertContext, x, *_, **__):
        return cx.emit(op, [x])
    convert.__name__ = f"convert_{op}"
    return convert


def _binary(cx: ConvertContext, op: str, a: Operand, b: Operand, dtype: str | None = None):
    dtype = dtype or cx.result_dtype(a, b)
    return cx.emit(op, [cx.value(a, dtype), cx.value(b, dtype)])


def binary(op: str):
    """add/sub/mul/div/pow/maximum/minimum on tensors or scalars, computed in the output dtype."""
    def convert(cx: ConvertContext, a, b, **kw):
        if kw.get("rounding_mode") is not None:
            raise Unsupported(f"rounding_mode={kw['rounding_mode']!r}")
        alpha = kw.get("alpha", 1)
        if alpha != 1:
            b = _scaled(cx, b, alpha)
        return _binary(cx, op, a, b, cx.out_dtype)
    convert.__name__ = f"convert_{op}"
    return convert


def _scaled(cx: ConvertContext, x: Operand, alpha):
    if isinstance(x, (int, float)):
        return x * alpha
    return _binary(cx, "mul", x, alpha)


def rsub(cx: ConvertContext, a, b, alpha=1):
    """b - alpha * a."""
    return _binary(cx, "sub", b, _scaled(cx, a, alpha) if alpha != 1 else a)


def reciprocal(cx: ConvertContext, x):
    return _binary(cx, "div", 1.0, x, cx.out_dtype)


def gelu(cx: ConvertContext, x, approximate="none"):
    return cx.emit("gelu", [x], approximate=approximate)


def softplus(cx: ConvertContext, x, beta=1.0, threshold=20.0):
    """softplus (kept whole by the decomposition table, see `op_table`) -> IR softplus."""
    return cx.emit("softplus", [x], beta=float(beta), threshold=float(threshold))


def clip(cx: ConvertContext, x, lo=None, hi=None):
    """clamp / hardtanh with scalar bounds -> clip; tensor bounds -> maximum/minimum."""
    if all(v is None or isinstance(v, (int, float)) for v in (lo, hi)):
        return cx.emit("clip", [x], min=None if lo is None else float(lo), max=None if hi is None else float(hi))
    y = x
    if lo is not None:
        y = _binary(cx, "maximum", y, lo, cx.out_dtype)
    if hi is not None:
        y = _binary(cx, "minimum", y, hi, cx.out_dtype)
    return y


def hardtanh(cx: ConvertContext, x, lo=-1.0, hi=1.0):
    return clip(cx, x, lo, hi)


def relu6(cx: ConvertContext, x):
    return clip(cx, x, 0.0, 6.0)


def leaky_relu(cx: ConvertContext, x, slope=0.01):
    pos = _binary(cx, "gt", x, 0.0, cx.dtype(x))
    return cx.emit("where", [pos, x, _binary(cx, "mul", x, slope)])


# -- comparisons and logic ------------------------------------------------------------------
def _not(cx: ConvertContext, x):
    return cx.emit("eq", [cx.value(x, "bool"), cx.scalar(False, "bool")])


def compare(op: str):
    """eq/ne/lt/le/gt/ge; ne, le and ge are the negations of eq, gt and lt."""
    base, negate = {"eq": ("eq", False), "ne": ("eq", True), "lt": ("lt", False), "gt": ("gt", False),
                    "le": ("gt", True), "ge": ("lt", True)}[op]

    def convert(cx: ConvertContext, a, b):
        y = _binary(cx, base, a, b, cx.result_dtype(a, b))
        return _not(cx, y) if negate else y
    convert.__name__ = f"convert_{op}"
    return convert


def logical_not(cx: ConvertContext, x):
    if cx.dtype(x) != "bool":
        return cx.emit("eq", [x, cx.scalar(0, cx.dtype(x))])
    return _not(cx, x)


def bitwise_not(cx: ConvertContext, x):
    if cx.dtype(x) != "bool":
        raise Unsupported("bitwise_not on integers")
    return _not(cx, x)


def _const_bool(x) -> bool | None:
    """True/False if `x` is a constant that is all-true/all-false, else None."""
    if isinstance(x, bool):
        return x
    if isinstance(x, Const):
        t = x.tensor.bool()
        if bool(t.all()):
            return True
        if not bool(t.any()):
            return False
    return None


def logical(kind: str):
    """and/or on bools as `where`; an all-true/all-false constant side is simplified away."""
    def convert(cx: ConvertContext, a, b):
        for x in (a, b):
            if cx.dtype(x) != "bool":
                raise Unsupported(f"bitwise {kind} on integers")
        for x, other in ((a, b), (b, a)):
            c = _const_bool(x)
            if c is None:
                continue
            if c == (kind == "and"):          # True & y = y; False | y = y
                return cx.expand(other, cx.out_shape)
            return cx.like(c, "bool")          # False & y = False; True | y = True
        if kind == "and":
            return cx.emit("where", [a, b, cx.scalar(False, "bool")])
        return cx.emit("where", [a, cx.scalar(True, "bool"), b])
    convert.__name__ = f"convert_logical_{kind}"
    return convert


def where(cx: ConvertContext, cond, a, b):
    dtype = cx.result_dtype(a, b)
    return cx.emit("where", [cx.value(cond, "bool"), cx.value(a, dtype), cx.value(b, dtype)])


def masked_fill(cx: ConvertContext, x, mask, value):
    if isinstance(value, Const):
        value = value.tensor.item()
    dtype = cx.dtype(x)
    return cx.emit("where", [cx.value(mask, "bool"), cx.scalar(value, dtype), x])


def to_copy(cx: ConvertContext, x, *args, dtype=None, **_):
    """_to_copy / to: only a dtype change matters (device/layout/memory format are dropped)."""
    if dtype is None and args and isinstance(args[0], torch.dtype):
        dtype = args[0]
    if dtype is None:
        return x
    return cx.cast(x, cx.out_dtype)


def type_as(cx: ConvertContext, x, other):
    return cx.cast(x, cx.dtype(other))


def like(fill):
    """zeros_like / ones_like / full_like / empty_like / new_*: a constant of the output's shape."""
    def convert(cx: ConvertContext, x, *args, **_):
        value = fill if fill is not None else args[-1]
        return cx.like(value)
    return convert


def fill(cx: ConvertContext, x, value):
    return cx.like(value.tensor.item() if isinstance(value, Const) else value)
