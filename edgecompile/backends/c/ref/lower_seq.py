"""Lowerings of the ops of sequence, attention and MobileNet-style models (LSTM / GRU cells,
transformer encoders, hard-swish / SE blocks) to `KernelCall`s of `kernels`.

Conventions beyond `graph`'s: unary functions become 256-entry lookup tables (``lut``); add / sub /
mul broadcast, and a float constant operand is quantized here and travels in the call's args
(``const_a`` / ``const_b``); row kernels (softmax, layer norm, mean over axes, slice, concat) and
transposes name axes of the *stored* array (`calls.storage_axis`); the batched matmul carries
per-axis element strides (``dims``) so that C reads any storage layout in place.
"""

from __future__ import annotations

import numpy as np

from ....ir import Node, Value
from . import kernels as K
from .calls import KernelCall, _fail, _nhwc, _q, _same_q, ir_strides, storage_axis, storage_shape
from .params import (
    LUT_FUNCTIONS, add_params, const_qparams, fc_multipliers, layer_norm_params, lut_table, mean_multiplier,
    mul_multiplier, quantize_const, softmax_table,
)

__all__ = ["SEQ_LOWERINGS", "operands", "const_value", "concat_inputs", "select_branches"]


def _to_storage(c: np.ndarray, rank: int) -> np.ndarray:
    """A constant in IR layout, given `rank` dimensions (leading 1s) and stored like an activation."""
    c = c.reshape((1,) * (rank - c.ndim) + c.shape)
    return _nhwc(c)


_FOLDED = ("expand", "reshape", "cast")


def const_value(v: Value | None) -> np.ndarray | None:
    """The value of `v` if it is known at build time: a constant stored unquantized (float, bool,
    int), or expand / reshape / cast of one (such nodes are folded: they emit no call; the IR
    layout). None for activations and quantized weights."""
    if v is None:
        return None
    if v.is_const:
        return None if v.quant is not None else np.asarray(v.data)
    n = v.producer
    src = None if n is None or n.op not in _FOLDED else const_value(n.inputs[0])
    if src is None:
        return None
    if n.op == "cast":
        return src.astype(np.dtype(n.attrs["dtype"]))
    return np.broadcast_to(src, tuple(v.shape)) if n.op == "expand" else src.reshape(tuple(v.shape))


def _code(value: float, out: Value) -> int:
    """A constant as the fake-quant executor quantizes it into `out` (float32, half to even,
    clamped: infinities go to the int8 ends)."""
    if np.isnan(value):
        raise ValueError("NaN constant")
    return int(out.quant.quantize(np.array([value], np.float32))[0])


def _requant_table(src: Value, dst: Value) -> np.ndarray:
    """The lookup table moving an int8 activation from `src`'s quantization to `dst`'s, with the
    executor's arithmetic (dequantize, then quantize: float32, half to even)."""
    _q(src), _q(dst)
    return dst.quant.quantize(src.quant.dequantize(np.arange(-128, 128, dtype=np.int8))).astype(np.int8)


def _lut(node: Node) -> list[KernelCall]:
    x = node.inputs[0]
    (si, zi), (so, zo) = _q(x), _q(node.output)
    fn = LUT_FUNCTIONS[node.op]
    try:
        table = lut_table(lambda v: fn(v, node.attrs), si, zi, so, zo)
    except ValueError as e:
        raise _fail(node, str(e)) from None
    return [KernelCall(node.name, "lut", (x.name,), node.output.name, dict(table=table, fn=node.op))]


def _binary(node: Node) -> list[KernelCall]:
    """add / sub / mul with numpy broadcasting; a float constant operand is quantized here (its own
    range, `params.const_qparams`) and travels in the call's args (``const_a`` / ``const_b``,
    stored like the output)."""
    out = node.output
    rank = len(out.shape)
    inputs, args, q = [], {}, []
    for key, v in zip(("a", "b"), node.inputs):
        if v is None:
            raise _fail(node, "missing operand")
        data = const_value(v)
        if data is not None:
            data = np.asarray(data, np.float64)
            if not np.isfinite(data).all():
                raise _fail(node, f"constant {v.name} is not finite")
            # a folded value carries the quantization the executor gave it; a plain one gets its own
            if v.quant is not None:
                q.append(_q(v))
                code = v.quant.quantize(data.astype(np.float32))
            else:
                q.append(const_qparams(data))
                code = quantize_const(data, *q[-1])
            args["const_" + key] = _to_storage(code, rank)
            continue
        if v.is_const:
            raise _fail(node, f"operand {v.name} is a quantized weight, not an activation or float constant")
        if (len(v.shape) == 4) != (rank == 4) or len(v.shape) > rank:
            raise _fail(node, f"operand {v.name} {list(v.shape)} does not broadcast in the NHWC storage of "
                              f"{list(out.shape)}")
        inputs.append(v.name)
        q.append(_q(v))
    if not inputs:
        raise _fail(node, "both operands are constants (fold them first)")
    (sa, za), (sb, zb), (so, zo) = q[0], q[1], _q(out)
    try:
        if node.op == "mul":
            m, sh = mul_multiplier(sa, sb, so)
            args.update(a_zp=za, b_zp=zb, output_zp=zo, multiplier=m, shift=sh, act=(-128, 127))
            return [KernelCall(node.name, "mul", tuple(inputs), out.name, args)]
        p = add_params(sa, sb, so)
    except ValueError as e:
        raise _fail(node, str(e)) from None
    args.update(a_zp=za, b_zp=zb, output_zp=zo, a_multiplier=p.a_multiplier, a_shift=p.a_shift,
                b_multiplier=p.b_multiplier, b_shift=p.b_shift, output_multiplier=p.output_multiplier,
                output_shift=p.output_shift, left_shift=p.left_shift, act=(-128, 127))
    if node.op == "sub":
        args["subtract"] = True
    return [KernelCall(node.name, "add", tuple(inputs), out.name, args)]


def operands(call: KernelCall, env: dict[str, np.ndarray]) -> list[np.ndarray]:
    """a and b of a binary call: its activations from `env`, its constants from its args."""
    names = iter(call.inputs)
    return [call.args[k] if k in call.args else env[next(names)] for k in ("const_a", "const_b")]


def _matmul(node: Node) -> list[KernelCall]:
    """Two activations (the attention's Q K^T and P V); the C kernel walks any storage layout
    through per-axis strides (``dims``), broadcast batch axes have stride 0."""
    a, b = node.inputs
    out = node.output
    if a.is_const or b.is_const or len(a.shape) < 2 or len(b.shape) < 2 or len(out.shape) > 4:
        raise _fail(node, "only the product of two activations with at most 2 batch axes has a kernel")
    (sa, za), (sb, zb), (so, zo) = _q(a), _q(b), _q(out)
    m, sh = fc_multipliers(sa, [sb], so)
    nb = len(out.shape) - 2

    def strides(v: Value) -> list[int]:
        st, shape = ir_strides(v.shape), v.shape
        batch = [0] * (nb - (len(shape) - 2)) + [st[k] if shape[k] > 1 else 0 for k in range(len(shape) - 2)]
        return [0] * (2 - nb) + batch + list(st[-2:])

    dims = dict(batch=tuple([1] * (2 - nb) + list(out.shape[:-2])), m=out.shape[-2], k=a.shape[-1],
                n=out.shape[-1], a_stride=tuple(strides(a)), b_stride=tuple(strides(b)),
                out_stride=tuple(strides(out)))
    return [KernelCall(node.name, "batch_matmul", (a.name, b.name), out.name, dict(
        a_zp=za, b_zp=zb, output_zp=zo, multiplier=int(m[0]), shift=int(sh[0]), act=(-128, 127), dims=dims))]


def _softmax(node: Node) -> list[KernelCall]:
    x = node.inputs[0]
    (si, _), (so, zo) = _q(x), _q(node.output)
    if (so, zo) != (1 / 256, -128):
        raise _fail(node, f"softmax output must have scale 1/256 and zero point -128, has {so}, {zo}")
    axis = storage_axis(len(x.shape), node.attrs["axis"])
    if x.shape[node.attrs["axis"]] > K.MAX_ROW:
        raise _fail(node, f"rows longer than {K.MAX_ROW}")
    return [KernelCall(node.name, "softmax", (x.name,), node.output.name, dict(table=softmax_table(si), axis=axis))]


def _layer_norm(node: Node) -> list[KernelCall]:
    x, w, b = node.inputs[0], node.input(1), node.input(2)
    if node.attrs["normalized_ndim"] != 1:
        raise _fail(node, "only layer norm over the last axis")
    for v in (w, b):
        if v is not None and (not v.is_const or v.quant is not None):
            raise _fail(node, "weight and bias must be float constants")
    (si, zi), (so, zo) = _q(x), _q(node.output)
    n = x.shape[-1]
    if n > K.MAX_ROW:
        raise _fail(node, f"rows longer than {K.MAX_ROW}")
    try:
        p = layer_norm_params(si, so, n, node.attrs["eps"], None if w is None else w.data,
                              None if b is None else b.data)
    except ValueError as e:
        raise _fail(node, str(e)) from None
    return [KernelCall(node.name, "layer_norm", (x.name,), node.output.name, dict(
        axis=storage_axis(len(x.shape), -1), input_zp=zi, output_zp=zo, eps=p.eps, var_shift=p.var_shift,
        gamma=p.gamma, beta=p.beta, shift=p.shift))]


def _mean_axes(node: Node, axes: list[int]) -> list[KernelCall]:
    """Mean over IR axes that are adjacent in storage (the sequence axis of [N, T, C], C of NHWC...)."""
    x, out = node.inputs[0], node.output
    st = sorted(storage_axis(len(x.shape), a) for a in axes)
    if st != list(range(st[0], st[0] + len(st))):
        raise _fail(node, f"mean over axes {axes}: not adjacent in the storage layout")
    (si, zi), (so, zo) = _q(x), _q(out)
    count = int(np.prod([x.shape[a] for a in axes]))
    m, s = mean_multiplier(si, so, count)
    keep = bool(node.attrs.get("keepdims"))
    tmp = out.name if keep else out.name + "/mean"
    calls = [KernelCall(node.name, "mean_axes", (x.name,), tmp, dict(axes=tuple(st), input_zp=zi, output_zp=zo,
                                                                     multiplier=m, shift=s))]
    if not keep:
        calls.append(KernelCall(node.name, "reshape", (tmp,), out.name, dict(shape=tuple(out.shape))))
    return calls


def _slice(node: Node) -> list[KernelCall]:
    _same_q(node)
    x, a = node.inputs[0], node.attrs
    dim = x.shape[a["axis"]]
    start, end, step = int(a["start"]), min(int(a["end"]), dim), int(a["step"])
    if step < 1 or not 0 <= start < end:
        raise _fail(node, f"slice {start}:{end}:{step} of {dim}")
    return [KernelCall(node.name, "slice", (x.name,), node.output.name, dict(
        axis=storage_axis(len(x.shape), a["axis"]), start=start, end=end, step=step))]


def _concat(node: Node) -> list[KernelCall]:
    """Activations sharing the output's quantization (or bool masks), and constants: quantized
    here (``consts``: input position -> stored int8 array)."""
    out = node.output
    rank, mask = len(out.shape), out.dtype == "bool"
    names, consts = [], {}
    for i, v in enumerate(node.inputs):
        data = const_value(v)
        if data is not None:
            if mask:
                code = np.asarray(data, np.int8)
            else:                  # as the executor quantizes the constant (its own parameters or the output's)
                if v.quant is not None and _q(v) != _q(out):
                    raise _fail(node, f"constant {v.name} does not share the output's quantization")
                code = (v.quant if v.quant is not None else out.quant).quantize(np.asarray(data, np.float32))
            consts[i] = np.ascontiguousarray(_to_storage(code, rank))
        elif v is None or v.is_const or (v.dtype != "bool" if mask else _q(v) != _q(out)):
            raise _fail(node, "only activations sharing the output's quantization, masks and constants are "
                              "concatenated")
        else:
            names.append(v.name)
    if not names:
        raise _fail(node, "every input is a constant (fold it first)")
    return [KernelCall(node.name, "concat", tuple(names), out.name,
                       dict(axis=storage_axis(rank, node.attrs["axis"]), consts=consts))]


def concat_inputs(call: KernelCall, env: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The arrays of a concat call in order: activations from `env`, constants from its args."""
    names, consts = iter(call.inputs), call.args.get("consts", {})
    return [consts[i] if i in consts else env[next(names)] for i in range(len(call.inputs) + len(consts))]


def _transpose(node: Node) -> list[KernelCall]:
    """One transpose of the stored array: storage -> IR order, the IR permutation, IR -> storage."""
    _same_q(node)
    x, perm = node.inputs[0], [int(p) % len(node.inputs[0].shape) for p in node.attrs["perm"]]
    to_ir = (0, 3, 1, 2) if len(x.shape) == 4 else tuple(range(len(x.shape)))
    to_st = (0, 2, 3, 1) if len(perm) == 4 else tuple(range(len(perm)))
    full = tuple(to_ir[perm[k]] for k in to_st)
    if len(full) > 6:
        raise _fail(node, "more than 6 dimensions")
    return [KernelCall(node.name, "transpose", (x.name,), node.output.name,
                       dict(shape=storage_shape(x.shape), perm=full))]


def _pad(node: Node) -> list[KernelCall]:
    _same_q(node)
    x, pads = node.inputs[0], [int(p) for p in node.attrs["pads"]]
    if len(x.shape) != 4 or any(pads[k] for k in (0, 1, 4, 5)) or min(pads) < 0:
        raise _fail(node, "only non-negative padding of H and W of a 4-D tensor")
    s, zp = _q(x)
    value = int(np.clip(K.quantize_scalar(float(node.attrs.get("value") or 0.0), s, zp), -128, 127))
    return [KernelCall(node.name, "pad", (x.name,), node.output.name,
                       dict(pads=(pads[2], pads[3], pads[6], pads[7]), value=value))]


def _where(node: Node) -> list[KernelCall]:
    """A bool mask selecting between a constant and an activation, or two constants (attention
    masks): constants become codes of the output's quantization as the fake-quant executor makes
    them (-inf -> -128); an activation in another quantization is requantized first (a lookup
    table). ``if_true`` / ``if_false``: a code, or None for the activation (the call's second
    input). Shapes broadcast (all 4-D, stored NHWC, or none)."""
    cond, *branches = node.inputs
    out = node.output
    rank = len(out.shape)
    if cond is None or const_value(cond) is not None or cond.dtype != "bool" or (len(cond.shape) == 4) != (rank == 4):
        raise _fail(node, "the condition must be a bool mask computed at run time, stored like the output")
    s, zp = _q(out)
    calls, inputs, codes = [], [cond.name], []
    for v in branches:
        data = const_value(v)
        if data is not None:
            vals = np.unique(np.asarray(data, np.float64))
            if vals.size != 1 or np.isnan(vals[0]):
                raise _fail(node, "a constant branch must hold one (non-NaN) value")
            codes.append(_code(float(vals[0]), out))
            continue
        if v is None or v.is_const or len(inputs) == 2 or (len(v.shape) == 4) != (rank == 4):
            raise _fail(node, "at most one branch may be an activation, stored like the output")
        name = v.name
        if _q(v) != (s, zp):
            name = out.name + "/requant"
            calls.append(KernelCall(node.name, "lut", (v.name,), name, dict(table=_requant_table(v, out),
                                                                              fn="requantize")))
        inputs.append(name)
        codes.append(None)
    return calls + [KernelCall(node.name, "select", tuple(inputs), out.name,
                               dict(if_true=codes[0], if_false=codes[1]))]


def select_branches(call: KernelCall, env: dict[str, np.ndarray]) -> list:
    """cond, if_true, if_false of a select call (a code or the activation array)."""
    x = env[call.inputs[1]] if len(call.inputs) > 1 else None
    return [env[call.inputs[0]], *(x if call.args[k] is None else call.args[k] for k in ("if_true", "if_false"))]


def _eq(node: Node) -> list[KernelCall]:
    """A run-time mask or integer ids compared with a constant scalar: bytes 0 / 1."""
    a, b = node.inputs
    if const_value(a) is not None:
        a, b = b, a
    value = const_value(b)
    if value is None or np.size(value) != 1 or const_value(a) is not None or a.quant is not None:
        raise _fail(node, "only a mask or integer ids compared with one constant")
    if a.dtype not in ("bool", "int32", "int64") or (a.producer is not None and a.dtype != "bool"):
        raise _fail(node, "only a bool mask or integer ids of a graph input are compared")
    return [KernelCall(node.name, "equal_const", (a.name,), node.output.name,
                       dict(value=int(np.asarray(value).reshape(-1)[0]), width=1 if a.dtype == "bool" else 4))]


def _gather(node: Node) -> list[KernelCall]:
    """An embedding lookup (gather axis 0 of a quantized [vocab, d] table by integer ids of a graph
    input): the table is requantized to the output's parameters at build time, as the fake-quant
    executor dequantizes it and quantizes the looked-up rows, so the kernel copies rows."""
    table, ids = node.inputs
    out = node.output
    if table is not None and not table.is_const and ids is not None and ids.is_const and np.ndim(ids.data) == 1:
        # an activation gathered by constant indices (silero-vad's reflected context window): a copy
        _same_q(node)
        idx = np.asarray(ids.data, np.int64) % table.shape[int(node.attrs.get("axis", 0))]
        return [KernelCall(node.name, "take", (table.name,), out.name, dict(
            axis=storage_axis(len(table.shape), int(node.attrs.get("axis", 0))), indices=idx.astype(np.int32)))]
    if (node.attrs.get("axis") != 0 or table is None or not table.is_const or table.data.ndim != 2
            or ids is None or ids.is_const or ids.producer is not None or ids.dtype not in ("int32", "int64")
            or len(out.shape) == 4):
        raise _fail(node, "only an embedding lookup of a constant [vocab, d] table by integer ids of a graph "
                          "input (output not 4-D)")
    _q(out)
    rows = out.quant.quantize(np.asarray(table.real(), np.float32))
    return [KernelCall(node.name, "gather_rows", (ids.name,), out.name, dict(table=np.ascontiguousarray(rows)))]


SEQ_LOWERINGS = {
    "add": _binary, "sub": _binary, "mul": _binary, "matmul": _matmul, "softmax": _softmax,
    "layer_norm": _layer_norm, "slice": _slice, "concat": _concat, "transpose": _transpose, "pad": _pad,
    "where": _where, "eq": _eq, "gather": _gather, **{op: _lut for op in LUT_FUNCTIONS},
}
