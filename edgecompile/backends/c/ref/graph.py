"""A quantized IR graph as a list of kernel calls, run by the integer reference kernels.

``lower(graph)`` turns each node into a `KernelCall`: the kernel's name in `kernels` and its
integer arguments, weights already in the kernels' layout (conv OIHW -> OHWI), multipliers
computed as TFLite does (`params`). ``run_int8(graph, *x_q)`` lowers and executes: int8 inputs in
the IR's layout (NCHW) in, int8 outputs in the IR's layout out; inside, 4-D activations are NHWC.
The schedule is what generated C will call, one ``ecm_`` kernel per call.

``lower(graph, fuse=True)`` (the default) folds what generated C folds, without changing a bit:

- a clamp (relu, relu6 / clip) whose input comes from a conv, fully connected or add used by nothing
  else goes into that kernel's ``act`` range (as TFLite fuses activations): both clip the same
  requantized value;
- a flatten of 4-D data feeding only a fully connected layer becomes an alias ("flatten": NHWC
  element order) and the layer's weight columns are permuted from (C, H, W) to (H, W, C) order
  instead, so that the NCHW flatten costs no transpose at run time.

The ops of sequence, attention and MobileNet-style models (lookup-table activations, broadcasting
add / sub / mul, batched matmul, softmax, layer norm, slice / concat / transpose, mask selects)
lower in `lower_seq`; `calls` holds `KernelCall` and the storage layout.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from ....ir import Graph, Node, Value
from . import kernels as K
from .calls import CRefUnsupported, KernelCall, _fail, _nchw, _nhwc, _q, _same_q, is_mask_or_ids
from .lower_seq import SEQ_LOWERINGS, _mean_axes, concat_inputs, const_value, operands, select_branches
from .params import conv_multipliers, fc_multipliers, lut_table, mean_multiplier

__all__ = ["KernelCall", "lower", "execute", "run_int8", "CRefUnsupported", "LOWERINGS", "run_call"]


def _weights(node: Node, w: Value) -> None:
    if w is None or not w.is_const or w.quant is None or w.data.dtype != np.int8 or np.any(w.quant.zero_point != 0):
        raise _fail(node, "weights must be symmetric int8 constants")


def _bias(b: Value | None, s_in: float, s_w) -> np.ndarray | None:
    """The int32 bias: as the quantize pass stored it, or, for a float bias (a weight shared by
    several layers keeps its bias float), quantized here with scale ``s_in * s_w`` (the float32
    product, as the pass does), saturated to int32."""
    if b is None:
        return None
    if b.quant is not None:
        return b.data.astype(np.int32)
    scale = (np.float32(s_in) * np.asarray(s_w, np.float32)).astype(np.float64)
    q = np.rint(np.asarray(b.data, np.float64) / scale)
    return np.clip(q, K.INT32_MIN, K.INT32_MAX).astype(np.int32)


def _conv1d(node: Node) -> list[KernelCall]:
    """A 1-D convolution as the 2-D kernel on H = 1: [N, C, L] (stored as the IR) transposed to
    [N, 1, L, C] (NHWC), the conv, and back to [N, O, L']."""
    x, w, b = (node.input(i) for i in range(3))
    _weights(node, w)
    (s_in, zp_in), (s_out, zp_out) = _q(x), _q(node.output)
    mult, shift = conv_multipliers(s_in, np.broadcast_to(w.quant.scale, (w.shape[0],)), s_out)
    a = node.attrs
    n, c, length = (int(e) for e in x.shape)
    o, out_len = int(node.output.shape[1]), int(node.output.shape[2])
    pad, stride, dil = (int(np.ravel(a[k])[0]) for k in ("padding", "stride", "dilation"))
    nlc, nlo = node.output.name + "/nlc", node.output.name + "/nlo"
    return [
        KernelCall(node.name, "transpose", (x.name,), nlc, dict(shape=(n, c, 1, length), perm=(0, 2, 3, 1))),
        KernelCall(node.name, "conv2d", (nlc,), nlo, dict(
            w=w.data.transpose(0, 2, 1)[:, None].copy(), bias=_bias(b, s_in, w.quant.scale), input_zp=zp_in,
            output_zp=zp_out, multiplier=mult, shift=shift, stride=(1, stride), padding=(0, pad, 0, pad),
            dilation=(1, dil), groups=int(a["groups"]), act=(-128, 127))),
        KernelCall(node.name, "transpose", (nlo,), node.output.name,
                   dict(shape=(n, 1, out_len, o), perm=(0, 3, 1, 2), out_shape=(n, o, out_len)))]


def _conv(node: Node) -> list[KernelCall]:
    x, w, b = (node.input(i) for i in range(3))
    if len(w.shape) == 3 and len(x.shape) == 3:
        return _conv1d(node)
    if len(w.shape) != 4:
        raise _fail(node, "only 1-D and 2-D convolution")
    _weights(node, w)
    (s_in, zp_in), (s_out, zp_out) = _q(x), _q(node.output)
    mult, shift = conv_multipliers(s_in, np.broadcast_to(w.quant.scale, (w.shape[0],)), s_out)
    a = node.attrs
    ph, pw = a["padding"]
    return [KernelCall(node.name, "conv2d", (x.name,), node.output.name, dict(
        w=w.data.transpose(0, 2, 3, 1).copy(), bias=_bias(b, s_in, w.quant.scale), input_zp=zp_in, output_zp=zp_out,
        multiplier=mult,
        shift=shift, stride=tuple(a["stride"]), padding=(ph, pw, ph, pw), dilation=tuple(a["dilation"]),
        groups=int(a["groups"]), act=(-128, 127)))]


def _linear(node: Node) -> list[KernelCall]:
    x, w, b = (node.input(i) for i in range(3))
    _weights(node, w)
    (s_in, zp_in), (s_out, zp_out) = _q(x), _q(node.output)
    mult, shift = fc_multipliers(s_in, w.quant.scale, s_out)
    return [KernelCall(node.name, "fully_connected", (x.name,), node.output.name, dict(
        w=w.data, bias=_bias(b, s_in, w.quant.scale), input_zp=zp_in, output_zp=zp_out, multiplier=mult, shift=shift,
        act=(-128, 127)))]


def _clamp(node: Node) -> list[KernelCall]:
    x = node.inputs[0]
    if not is_mask_or_ids(x) and _q(x) != _q(node.output):
        # requantizing too (a relu whose output has its own range): one lookup table
        lo = 0.0 if node.op == "relu" else node.attrs.get("min")
        hi = None if node.op == "relu" else node.attrs.get("max")
        fn = lambda v: np.clip(v, -np.inf if lo is None else lo, np.inf if hi is None else hi)  # noqa: E731
        table = lut_table(fn, *_q(x), *_q(node.output))
        return [KernelCall(node.name, "lut", (x.name,), node.output.name, dict(table=table, fn=node.op))]
    _same_q(node)
    s, zp = _q(node.inputs[0])
    if node.op == "relu":
        lo, hi = K.activation_range("relu", s, zp)
    else:
        lo, hi = -128, 127
        if node.attrs.get("min") is not None:
            lo = max(lo, K.quantize_scalar(float(node.attrs["min"]), s, zp))
        if node.attrs.get("max") is not None:
            hi = min(hi, K.quantize_scalar(float(node.attrs["max"]), s, zp))
    return [KernelCall(node.name, "clamp", (node.inputs[0].name,), node.output.name, dict(lo=lo, hi=hi))]


def _pool(node: Node) -> list[KernelCall]:
    x, a = node.inputs[0], node.attrs
    if len(x.shape) != 4:
        raise _fail(node, "only 2-D pooling")
    _same_q(node)
    ph, pw = a["padding"]
    # ceil_mode: the last window overhangs the padded input by (eb, er); PyTorch counts none of the
    # overhang (its divisor stops at H + padding), so it is padding the kernels do not count either.
    (kh, kw), (sh, sw) = a["kernel"], a["stride"]
    oh, ow = node.output.shape[2], node.output.shape[3]
    eb = max(0, (oh - 1) * sh + kh - x.shape[2] - 2 * ph) if a.get("ceil_mode") else 0
    er = max(0, (ow - 1) * sw + kw - x.shape[3] - 2 * pw) if a.get("ceil_mode") else 0
    common = dict(kernel=tuple(a["kernel"]), stride=tuple(a["stride"]), act=(-128, 127))
    if node.op == "max_pool":
        if tuple(a.get("dilation", (1, 1))) != (1, 1):
            raise _fail(node, "no dilated max pooling")
        return [KernelCall(node.name, "max_pool2d", (x.name,), node.output.name,
                           dict(common, padding=(ph, pw, ph + eb, pw + er)))]
    if a.get("count_include_pad", True) and (ph or pw):   # PyTorch counts padding: pad with zp first
        padded = node.output.name + "/pad"
        return [KernelCall(node.name, "pad", (x.name,), padded, dict(pads=(ph, pw, ph, pw), value=_q(x)[1])),
                KernelCall(node.name, "avg_pool2d", (padded,), node.output.name, dict(common, padding=(0, 0, eb, er)))]
    return [KernelCall(node.name, "avg_pool2d", (x.name,), node.output.name,
                       dict(common, padding=(ph, pw, ph + eb, pw + er)))]


def _mean(node: Node) -> list[KernelCall]:
    x = node.inputs[0]
    axes = sorted(int(e) % len(x.shape) for e in node.attrs["axes"])
    if len(x.shape) != 4 or axes != [2, 3]:
        return _mean_axes(node, axes)
    (si, zi), (so, zo) = _q(x), _q(node.output)
    # TFLite: keep_dims takes reference_integer_ops::Mean (divide after scaling), other MEANs the
    # general QuantizedMeanOrSum (1 / count folded into the multiplier); the TFLite backend emits both.
    keep = bool(node.attrs.get("keepdims"))
    m, s = mean_multiplier(si, so, None if keep else x.shape[2] * x.shape[3])
    calls = [KernelCall(node.name, "mean_hw", (x.name,), node.output.name if keep else node.output.name + "/hw",
                        dict(input_zp=zi, output_zp=zo, multiplier=m, shift=s, divide=keep))]
    if not keep:
        calls.append(KernelCall(node.name, "reshape", (calls[0].output,), node.output.name,
                                dict(shape=tuple(node.output.shape))))
    return calls


def _reshape(node: Node) -> list[KernelCall]:
    _same_q(node)
    return [KernelCall(node.name, "reshape", (node.inputs[0].name,), node.output.name,
                       dict(shape=tuple(node.output.shape)))]


LOWERINGS: dict[str, Callable[[Node], list[KernelCall]]] = {
    "conv": _conv, "linear": _linear, "relu": _clamp, "clip": _clamp, "max_pool": _pool, "avg_pool": _pool,
    "mean": _mean, "reshape": _reshape, **SEQ_LOWERINGS,
}


def lower(graph: Graph, fuse: bool = True) -> list[KernelCall]:
    """The graph as kernel calls in schedule order; raises `CRefUnsupported` naming the first node
    without a reference kernel. With `fuse`, clamps fold into the producing kernel's ``act``."""
    for v in graph.inputs:
        if not is_mask_or_ids(v):   # a bool mask travels as bytes 0 / 1, integer ids as int32
            _q(v)
    outputs = {id(v) for v in graph.outputs}
    calls: list[KernelCall] = []
    for node in graph.nodes:
        if node.inputs and all(const_value(v) is not None for v in node.inputs if v is not None) \
                and const_value(node.output) is not None:
            if id(node.output) in outputs:
                raise _fail(node, "a graph output computed from constants only")
            continue                # folded: its consumers read the value (`lower_seq.const_value`)
        fn = LOWERINGS.get(node.op)
        if fn is None:
            raise _fail(node, "no integer reference kernel")
        new = fn(node)
        if fuse and new[0].kernel == "clamp" and _fusable(graph, node, calls):
            prev, (lo, hi) = calls[-1], calls[-1].args["act"]
            act = (max(lo, new[0].args["lo"]), min(hi, new[0].args["hi"]))
            calls[-1] = replace(prev, output=new[0].output, args={**prev.args, "act": act})
            continue
        calls.extend(new)
    return _fold_flattens(graph, calls) if fuse else calls


def _fold_flattens(graph: Graph, calls: list[KernelCall]) -> list[KernelCall]:
    """"reshape" [N, C, H, W] -> [N, C*H*W] read only by one fully connected call: "flatten" (NHWC
    order) and that call's weights permuted to match."""
    shapes = {v.name: tuple(v.shape) for v in graph.inputs} | {n.output.name: tuple(n.output.shape) for n in graph.nodes}
    outputs = {v.name for v in graph.outputs}
    out = list(calls)
    for i, call in enumerate(out):
        src = shapes.get(call.inputs[0]) if call.kernel == "reshape" else None
        if src is None or len(src) != 4 or call.args["shape"] != (src[0], src[1] * src[2] * src[3]):
            continue
        readers = [j for j, c in enumerate(out) if call.output in c.inputs]
        if call.output in outputs or len(readers) != 1 or out[readers[0]].kernel != "fully_connected":
            continue
        fc = out[readers[0]]
        _, c, h, w = src
        wt = fc.args["w"]
        perm = wt.reshape(wt.shape[0], c, h, w).transpose(0, 2, 3, 1).reshape(wt.shape[0], -1)
        out[readers[0]] = replace(fc, args={**fc.args, "w": np.ascontiguousarray(perm)})
        out[i] = replace(call, kernel="flatten")
    return out


def _fusable(graph: Graph, clamp: Node, calls: list[KernelCall]) -> bool:
    """The clamp's input is the output of the last call, a kernel with an ``act`` range, and nothing
    else reads it (not another node, not a graph output)."""
    x = clamp.inputs[0]
    return (bool(calls) and calls[-1].output == x.name and "act" in calls[-1].args and len(x.uses) == 1
            and all(v is not x for v in graph.outputs))


def run_call(call: KernelCall, env: dict[str, np.ndarray]) -> np.ndarray:
    """One call on the activations in `env` (4-D ones NHWC)."""
    xs = [env[name] for name in call.inputs]
    a = call.args
    if call.kernel == "clamp":
        return np.clip(xs[0], a["lo"], a["hi"]).astype(np.int8)
    if call.kernel == "reshape":
        return _nhwc(_nchw(xs[0]).reshape(a["shape"]))
    if call.kernel == "flatten":
        return xs[0].reshape(a["shape"])
    if call.kernel == "pad":
        t, lf, b, r = a["pads"]
        return np.pad(xs[0], ((0, 0), (t, b), (lf, r), (0, 0)), constant_values=a["value"])
    if call.kernel in ("conv2d", "fully_connected"):
        return getattr(K, call.kernel)(xs[0], a["w"], a["bias"], **{k: v for k, v in a.items() if k not in ("w", "bias")})
    if call.kernel in ("max_pool2d", "avg_pool2d"):
        return getattr(K, call.kernel)(xs[0], a["kernel"], a["stride"], a["padding"], act=a["act"])
    if call.kernel in ("add", "mul"):
        kw = {k: v for k, v in a.items() if not k.startswith("const_")}
        return getattr(K, call.kernel)(*operands(call, env), **kw)
    if call.kernel == "batch_matmul":
        y = K.batch_matmul(_nchw(xs[0]), _nchw(xs[1]), **{k: v for k, v in a.items() if k != "dims"})
        return _nhwc(y)
    if call.kernel == "lut":
        return K.lut(xs[0], a["table"])
    if call.kernel == "transpose":
        y = np.ascontiguousarray(xs[0].reshape(a["shape"]).transpose(a["perm"]))
        return y.reshape(a["out_shape"]) if "out_shape" in a else y
    if call.kernel == "take":
        return np.ascontiguousarray(np.take(xs[0], a["indices"], axis=a["axis"]))
    if call.kernel == "slice":
        index = [slice(None)] * xs[0].ndim
        index[a["axis"]] = slice(a["start"], a["end"], a["step"])
        return np.ascontiguousarray(xs[0][tuple(index)])
    if call.kernel == "concat":
        return np.concatenate(concat_inputs(call, env), axis=a["axis"])
    if call.kernel == "select":
        return K.select(*select_branches(call, env))
    if call.kernel == "gather_rows":
        return K.gather_rows(xs[0], a["table"])
    if call.kernel == "equal_const":
        return K.equal_const(xs[0], a["value"])
    return getattr(K, call.kernel)(*xs, **a)


def execute(calls: list[KernelCall], env: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Runs the calls in order, adding each output to `env` (which holds the NHWC inputs)."""
    for call in calls:
        env[call.output] = run_call(call, env)
    return env


def run_int8(graph: Graph, *inputs_q: np.ndarray) -> list[np.ndarray]:
    """Runs a quantized graph (the quantize pass's convention) on int8 inputs in the IR's layout
    (bool masks as bool or 0 / 1, integer ids as integers); returns int8 outputs in the IR's layout."""
    env: dict[str, np.ndarray] = {}
    for v, x in zip(graph.inputs, inputs_q, strict=True):
        x = np.asarray(x)
        if is_mask_or_ids(v) and x.dtype.kind in "biu":
            if v.dtype != "bool" and x.size and (x.min() < -(2 ** 31) or x.max() >= 2 ** 31):
                raise ValueError(f"input {v.name!r}: ids beyond int32")
            x = x.astype(np.int8 if v.dtype == "bool" else np.int32)
        elif x.dtype != np.int8:
            raise ValueError(f"input {v.name!r}: expected int8, got {x.dtype}")
        if tuple(x.shape) != tuple(v.shape):
            raise ValueError(f"input {v.name!r}: expected int8 {list(v.shape)}, got {x.dtype} {list(x.shape)}")
        env[v.name] = _nhwc(x)
    execute(lower(graph), env)
    return [_nchw(env[v.name]) for v in graph.outputs]
