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

from ...ir import Node, Value
from . import kernels as K
from .calls import KernelCall, _fail, _nhwc, _q, _same_q, ir_strides, storage_axis, storage_shape
from .params import (
    LUT_FUNCTIONS, add_params, const_qparams, fc_multipliers, layer_norm_params, lut_table, mean_multiplier,
    mul_multiplier, quantize_const, softmax_table,
)

__all__ = ["SEQ_LOWERINGS", "operands"]


def _to_storage(c: np.ndarray, rank: int) -> np.ndarray:
    """A constant in IR layout, given `rank` dimensions (leading 1s) and stored like an activation."""
    c = c.reshape((1,) * (rank - c.ndim) + c.shape)
    return _nhwc(c)


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
        if v.is_const:
            if v.quant is not None:
                raise _fail(node, f"operand {v.name} is a quantized weight, not an activation or float constant")
            data = np.asarray(v.data, np.float64)
            if not np.isfinite(data).all():
                raise _fail(node, f"constant {v.name} is not finite")
            s, zp = const_qparams(data)
            args["const_" + key] = _to_storage(quantize_const(data, s, zp), rank)
            q.append((s, zp))
            continue
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
    out = node.output
    for v in node.inputs:
        if v is None or v.is_const or _q(v) != _q(out):
            raise _fail(node, "only activations sharing the output's quantization are concatenated")
    return [KernelCall(node.name, "concat", tuple(v.name for v in node.inputs), out.name,
                       dict(axis=storage_axis(len(out.shape), node.attrs["axis"])))]


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
    """A mask selecting between two constants (an attention mask built from a bool input): the
    two values quantized with the output's parameters as the fake-quant executor does (-inf ->
    -128). Selecting between activations is not supported yet."""
    cond, *branches = node.inputs
    out = node.output
    if cond is None or cond.is_const or cond.dtype != "bool" or tuple(cond.shape) != tuple(out.shape):
        raise _fail(node, "only a bool mask of the output's shape selecting between two constants")
    s, zp = _q(out)
    codes = []
    for v in branches:
        vals = None if v is None or not v.is_const else np.unique(np.asarray(v.data, np.float64))
        if vals is None or vals.size != 1:
            raise _fail(node, "only a bool mask of the output's shape selecting between two constants")
        codes.append(int(np.clip(np.nan_to_num(np.rint(vals[0] / s), posinf=1e9, neginf=-1e9) + zp, -128, 127)))
    return [KernelCall(node.name, "select", (cond.name,), out.name, dict(if_true=codes[0], if_false=codes[1]))]


SEQ_LOWERINGS = {
    "add": _binary, "sub": _binary, "mul": _binary, "matmul": _matmul, "softmax": _softmax,
    "layer_norm": _layer_norm, "slice": _slice, "concat": _concat, "transpose": _transpose, "pad": _pad,
    "where": _where, **{op: _lut for op in LUT_FUNCTIONS},
}
