"""TFLite emitters for the IR's layer ops: linear, matmul, conv, pools, norms, embedding.

Weights are converted to TFLite's layouts: FULLY_CONNECTED [out, in]; CONV_2D OHWI; DEPTHWISE_CONV_2D
[1, H, W, O]; 1-D convolutions run as 2-D with H = 1. An int8 layer (int8 per-channel weights and
int8 input and output) becomes the int8 kernel with an int32 bias of scale s_in * s_w[c]; a
layer whose weights are int8 but whose activations are float gets a DEQUANTIZE of the weights
(weight-only quantization: int8 in flash, float kernels). A layer marked dynamic-range
(``node.meta["arith"] == "int8-dynamic"``) keeps its int8 per-channel filter next to a float input
and float bias: TFLite's hybrid FULLY_CONNECTED / CONV_2D / DEPTHWISE_CONV_2D kernels quantize the
input at run time (FULLY_CONNECTED per row, asymmetric; the convs per sample) and multiply in
integers, which the executor reproduces with ``QuantConfig(dynamic_per="row")``.
"""

from __future__ import annotations

import math

import numpy as np
from ai_edge_litert import schema_py_generated as fb

from ...ir import Node, QuantParams, Value
from .lower import CL, IR, Lowering, TensorRef, TFLiteUnsupportedError, act_qparams, cl_shape
from .ops import binary_f, float_chain, scalar, unary_f


# -- weights ------------------------------------------------------------------------------------
def _weight(L: Lowering, v: Value, layout_fn, axis_after: int, int8: bool, name: str) -> TensorRef:
    """A layer weight in TFLite layout: int8 per-channel, or float (dequantized at run time if int8)."""
    if v.quant is not None and v.data.dtype == np.int8:
        data = np.ascontiguousarray(layout_fn(v.data))
        q = v.quant
        t = L.b.tensor(name, data.shape, "int8", q.scale, q.zero_point, axis_after if q.per_channel else 0,
                       data=data, weight=True)
        return t if int8 else L.dequantized_const(t, name + "_f")
    data = np.ascontiguousarray(layout_fn(np.asarray(v.real(), np.float32)))
    return L.b.tensor(name, data.shape, "float32", data=data, weight=True)


def _bias(L: Lowering, b: Value | None, n_out: int, int8: bool, in_scale: float, w_scale: np.ndarray,
          name: str) -> TensorRef | None:
    """int32 bias with scale s_in * s_w (re-quantized if the IR's scale differs) or float bias."""
    if b is None:
        return None
    if not int8:
        return L.b.tensor(name, (n_out,), "float32", data=np.asarray(b.real(), np.float32).reshape(n_out),
                          weight=True)
    scale = (in_scale * np.broadcast_to(w_scale, (n_out,))).astype(np.float32)
    if b.quant is not None and b.data.dtype == np.int32 and np.allclose(
            np.broadcast_to(b.quant.scale, (n_out,)), scale, rtol=1e-5):
        data = b.data.reshape(n_out)
    else:
        data = np.clip(np.rint(np.asarray(b.real(), np.float64).reshape(n_out) / scale),
                       -2**31, 2**31 - 1).astype(np.int32)
    return L.b.tensor(name, (n_out,), "int32", scale, np.zeros(n_out, np.int64), 0, data=data, weight=True)


def _is_int8_weight(v: Value | None) -> bool:
    return v is not None and v.is_const and v.quant is not None and v.data.dtype == np.int8


def _hybrid(node: Node, w: Value | None) -> bool:
    """A dynamic-range layer: float input, int8 filter, float output (TFLite's hybrid kernels)."""
    return node.meta.get("arith") == "int8-dynamic" and _is_int8_weight(w)


def _layer_int8(L: Lowering, node: Node, x: Value, w: Value) -> bool:
    return _is_int8_weight(w) and L.int8_mode(node, [x])


def _fc(L: Lowering, node: Node, x: Value, w: Value, b: Value | None, transpose_w: bool) -> None:
    """FULLY_CONNECTED over the last axis of x (keep_num_dims for rank > 2)."""
    int8 = _layer_int8(L, node, x, w)
    if transpose_w and w.quant is not None and w.quant.per_channel and w.quant.axis not in (1, -1):
        raise TFLiteUnsupportedError(f"node {node.name} (matmul): const b quantized on axis "
                                     f"{w.quant.axis}; FULLY_CONNECTED needs per-output-channel (axis 1)")
    if not transpose_w and w.quant is not None and w.quant.per_channel and w.quant.axis != 0:
        raise TFLiteUnsupportedError(f"node {node.name} (linear): weight quantized on axis {w.quant.axis}")
    hybrid = not int8 and _hybrid(node, w)
    wt = _weight(L, w, (lambda a: a.T) if transpose_w else (lambda a: a), 0, int8 or hybrid, w.name)
    n_out = wt.shape[0]
    opts = fb.FullyConnectedOptionsT()
    opts.keepNumDims = len(x.shape) > 2
    if int8:
        src = L.get(x, IR)
        bias = _bias(L, b, n_out, True, src.scale[0], np.asarray(wt.scale), (b.name if b else ""))
        out, final = L.int8_out(node, IR)
        L.b.op("FULLY_CONNECTED", [src, wt, bias], [out], opts, int8=True)
        L.close_int8(node, out, final, IR)
        return
    opts.asymmetricQuantizeInputs = hybrid
    src = L.get(x, IR, float_view=True)
    bias = _bias(L, b, n_out, False, 0, np.ones(1), b.name if b else "")
    out = L.float_out(node, IR)
    L.b.op("FULLY_CONNECTED", [src, wt, bias], [out], opts)
    L.finish_float(node, out, IR)


def lower_linear(L: Lowering, node: Node) -> None:
    x, w, b = node.input(0), node.input(1), node.input(2)
    if not w.is_const:
        if b is not None and not b.is_const:
            raise TFLiteUnsupportedError(f"node {node.name} (linear): non-constant bias")
        opts = fb.FullyConnectedOptionsT()
        opts.keepNumDims = len(x.shape) > 2
        ins = [L.get(x, IR, float_view=True), L.get(w, IR, float_view=True),
               None if b is None else L.const_float(b)]
        out = L.float_out(node, IR)
        L.b.op("FULLY_CONNECTED", ins, [out], opts)
        L.finish_float(node, out, IR)
        return
    _fc(L, node, x, w, b, transpose_w=False)


def lower_matmul(L: Lowering, node: Node) -> None:
    a, b = node.inputs
    if b.is_const and b.data.ndim == 2 and not a.is_const:
        _fc(L, node, a, b, None, transpose_w=True)
        return
    opts = fb.BatchMatMulOptionsT()
    int8 = L.int8_mode(node, [a, b]) and not a.is_const and not b.is_const
    if int8:
        out, final = L.int8_out(node, IR)
        L.b.op("BATCH_MATMUL", [L.get(a, IR), L.get(b, IR)], [out], opts, int8=True)
        L.close_int8(node, out, final, IR)
        return
    ins = [L.const_float(v) if v.is_const else L.get(v, IR, float_view=True) for v in (a, b)]
    out = L.float_out(node, IR)
    L.b.op("BATCH_MATMUL", ins, [out], opts)
    L.finish_float(node, out, IR)


# -- spatial ops ------------------------------------------------------------------------------------
def _spatial(attrs, rank: int, key: str) -> tuple[int, int]:
    """(H, W) of a per-spatial-axis attribute; a 1-D op gets H = 1 (H padding 0)."""
    v = attrs[key]
    v = list(v) if isinstance(v, (list, tuple)) else [v] * (rank - 2)
    return ((0 if key == "padding" else 1), v[0]) if rank == 3 else (v[0], v[1])


def _padding(in_hw, out_hw, k, s, d, pad, allow_same: bool = True) -> tuple[int, list[tuple[int, int]] | None]:
    """TFLite padding for symmetric IR padding: SAME when it matches, else VALID + explicit pads."""
    pads = []
    same_ok = allow_same
    for i in range(2):
        eff = (k[i] - 1) * d[i] + 1
        total = max((math.ceil(in_hw[i] / s[i]) - 1) * s[i] + eff - in_hw[i], 0)
        if math.ceil(in_hw[i] / s[i]) != out_hw[i] or total // 2 != pad[i]:
            same_ok = False
        # VALID on the padded input must give out_hw: end padding may grow (ceil_mode) or shrink.
        end = (out_hw[i] - 1) * s[i] + eff - in_hw[i] - pad[i]
        pads.append((pad[i], max(end, 0)))
    if same_ok:
        return fb.Padding.SAME, None
    if all(p == (0, 0) for p in pads):
        return fb.Padding.VALID, None
    return fb.Padding.VALID, pads


def _explicit_pad(L: Lowering, src: TensorRef, pads, name: str, value: float) -> TensorRef:
    p = np.array([[0, 0], list(pads[0]), list(pads[1]), [0, 0]], np.int32)
    n, h, w, c = src.shape
    shape = (n, h + p[1].sum(), w + p[2].sum(), c)
    q = (src.scale, src.zero_point) if src.quantized else None
    out = L.temp(name, shape, src.dtype, q)
    if value == 0.0:
        L.b.op("PAD", [src, L.b.const(name + "/pads", p)], [out], fb.PadOptionsT(), int8=q is not None)
        return out
    if q is not None:
        c_val = L.b.tensor(name + "/value", (), "int8", q[0], q[1], data=np.array(-128, np.int8))
    else:
        c_val = L.b.const(name + "/value", np.array(value, np.float32))
    L.b.op("PADV2", [src, L.b.const(name + "/pads", p), c_val], [out], fb.PadV2OptionsT(), int8=q is not None)
    return out


def _check_spatial_input(node: Node, x: Value) -> int:
    rank = len(x.shape)
    if rank not in (3, 4):
        raise TFLiteUnsupportedError(f"node {node.name} ({node.op}): only 1-D and 2-D are supported, "
                                     f"input rank {rank}")
    return rank


def lower_conv(L: Lowering, node: Node) -> None:
    x, w, b = node.input(0), node.input(1), node.input(2)
    if not w.is_const or (b is not None and not b.is_const):
        raise TFLiteUnsupportedError(f"node {node.name} (conv): weights must be constants")
    rank = _check_spatial_input(node, x)
    a = node.attrs
    k = _spatial({"k": list(w.shape[2:])}, rank, "k")
    s, d, p = (_spatial(a, rank, key) for key in ("stride", "dilation", "padding"))
    groups, c_in, c_out = a["groups"], x.shape[1], w.shape[0]
    in_hw = cl_shape(x.shape)[1:3]
    out_hw = cl_shape(node.output.shape)[1:3]
    padding, pads = _padding(in_hw, out_hw, k, s, d, p)
    int8 = _layer_int8(L, node, x, w)
    src = L.get(x, CL, float_view=not int8)
    if pads is not None:
        src = _explicit_pad(L, src, pads, node.name + "/pad", 0.0)
    to_2d = (lambda arr: arr[:, :, None, :]) if rank == 3 else (lambda arr: arr)   # [O, I, K] -> [O, I, 1, K]
    depthwise = groups > 1 and groups == c_in and c_out % groups == 0
    if groups > 1 and not depthwise:
        _grouped_conv(L, node, src, x, w, b, groups, to_2d, (padding, s, d), int8)
        return
    if depthwise:
        opts = fb.DepthwiseConv2DOptionsT()
        opts.depthMultiplier = c_out // c_in
        op, layout_fn, axis = "DEPTHWISE_CONV_2D", lambda arr: to_2d(arr).transpose(1, 2, 3, 0), 3
    else:
        opts = fb.Conv2DOptionsT()
        op, layout_fn, axis = "CONV_2D", lambda arr: to_2d(arr).transpose(0, 2, 3, 1), 0
    opts.padding, (opts.strideH, opts.strideW), (opts.dilationHFactor, opts.dilationWFactor) = padding, s, d
    wt = _weight(L, w, layout_fn, axis, int8 or _hybrid(node, w), w.name)
    w_scale = np.asarray(wt.scale) if int8 else np.ones(1)
    bias = _bias(L, b, c_out, int8, src.scale[0] if int8 else 0.0, w_scale, b.name if b else "")
    if bias is None:   # TFLite conv kernels want a bias tensor
        bias = _bias(L, _zero_bias(node.name + ".bias", c_out), c_out, int8,
                     src.scale[0] if int8 else 0.0, w_scale, node.name + "/bias")
    if int8:
        out, final = L.int8_out(node, CL)
        L.b.op(op, [src, wt, bias], [out], opts, int8=True)
        L.close_int8(node, out, final, CL)
        return
    out = L.float_out(node, CL)
    L.b.op(op, [src, wt, bias], [out], opts)
    L.finish_float(node, out, CL)


def _zero_bias(name: str, c_out: int) -> Value:
    """A zero bias: TFLite's conv kernels take one."""
    return Value(name, (c_out,), "float32", np.zeros(c_out, np.float32))


def _grouped_conv(L: Lowering, node: Node, src: TensorRef, x: Value, w: Value, b: Value | None,
                  groups: int, to_2d, geometry, int8: bool) -> None:
    """Grouped conv as SPLIT -> CONV_2D per group -> CONCATENATION (on the channel axis)."""
    padding, s, d = geometry
    c_out = w.shape[0]
    per_in, per_out = x.shape[1] // groups, c_out // groups
    n, h, wd, _ = src.shape
    q = (src.scale, src.zero_point) if int8 else None
    parts = [L.temp(f"{node.name}/x{g}", (n, h, wd, per_in), src.dtype, q) for g in range(groups)]
    split = fb.SplitOptionsT()
    split.numSplits = groups
    L.b.op("SPLIT", [L.b.const(node.name + "/axis", np.array(3, np.int32)), src], parts, split, int8=int8)
    out_shape = cl_shape(node.output.shape)
    outs = []
    oq = act_qparams(node.output) if int8 else None
    for g in range(groups):
        sl = slice(g * per_out, (g + 1) * per_out)
        wq = None if w.quant is None else QuantParams(
            w.quant.scale[sl] if w.quant.per_channel else w.quant.scale,
            w.quant.zero_point[sl] if w.quant.per_channel else w.quant.zero_point, w.quant.axis, w.quant.dtype)
        wg = Value(f"{w.name}.g{g}", (per_out,) + w.shape[1:], "float32", w.data[sl], wq)
        bg = None if b is None else Value(f"{b.name}.g{g}", (per_out,), "float32", b.data[sl],
                                          None if b.quant is None else QuantParams(
                                              b.quant.scale[sl] if b.quant.per_channel else b.quant.scale,
                                              b.quant.zero_point[sl] if b.quant.per_channel else
                                              b.quant.zero_point, b.quant.axis, b.quant.dtype))
        wt = _weight(L, wg, lambda arr: to_2d(arr).transpose(0, 2, 3, 1), 0, int8, wg.name)
        w_scale = np.asarray(wt.scale) if int8 else np.ones(1)
        in_scale = src.scale[0] if int8 else 0.0
        bias = _bias(L, bg if bg is not None else _zero_bias(f"{node.name}.bias{g}", per_out),
                     per_out, int8, in_scale, w_scale, f"{node.name}/b{g}")
        opts = fb.Conv2DOptionsT()
        opts.padding, (opts.strideH, opts.strideW), (opts.dilationHFactor, opts.dilationWFactor) = padding, s, d
        og = L.temp(f"{node.name}/y{g}", out_shape[:3] + (per_out,), "int8" if int8 else "float32", oq)
        L.b.op("CONV_2D", [parts[g], wt, bias], [og], opts, int8=int8)
        outs.append(og)
    cat = fb.ConcatenationOptionsT()
    cat.axis = 3
    out = L.new(node.output, CL) if int8 else L.float_out(node, CL)
    L.b.op("CONCATENATION", outs, [out], cat, int8=int8)
    if int8:
        L.close_int8(node, out, None, CL)
    else:
        L.finish_float(node, out, CL)


def lower_pool(L: Lowering, node: Node) -> None:
    """MAX_POOL_2D / AVERAGE_POOL_2D; padding counted in the average is made explicit (PAD zeros)."""
    x = node.inputs[0]
    rank = _check_spatial_input(node, x)
    a = node.attrs
    k, s, p = (_spatial(a, rank, key) for key in ("kernel", "stride", "padding"))
    is_max = node.op == "max_pool"
    if is_max and _spatial(a, rank, "dilation") != (1, 1):
        raise TFLiteUnsupportedError(f"node {node.name} (max_pool): TFLite has no dilated pooling")
    # TFLite's SAME average pooling leaves padding out of the count; PyTorch counts explicit padding
    # when count_include_pad, but never the ceil_mode overhang, so SAME fits when there is no padding.
    allow_same = is_max or not a["count_include_pad"] or p == (0, 0)
    padding, pads = _padding(cl_shape(x.shape)[1:3], cl_shape(node.output.shape)[1:3], k, s, (1, 1), p,
                             allow_same)
    if not is_max and pads is not None and (not a["count_include_pad"] or any(e > b for b, e in pads)):
        raise TFLiteUnsupportedError(f"node {node.name} (avg_pool): padding or ceil_mode windows that "
                                     "TFLite's average pooling cannot count as PyTorch does")
    int8 = L.int8_mode(node, [x])
    if int8 and not is_max and act_qparams(x) != act_qparams(node.output):
        int8 = False     # int8 averaging keeps the input's qparams; requantizing would round twice
    src = L.get(x, CL, float_view=not int8)
    if pads is not None:
        src = _explicit_pad(L, src, pads, node.name + "/pad", -np.inf if is_max else 0.0)
    opts = fb.Pool2DOptionsT()
    opts.padding, (opts.strideH, opts.strideW), (opts.filterHeight, opts.filterWidth) = padding, s, k
    op = "MAX_POOL_2D" if is_max else "AVERAGE_POOL_2D"
    if int8:
        out, final = L.int8_out(node, CL, (src.scale, src.zero_point))
        L.b.op(op, [src], [out], opts, int8=True)
        L.close_int8(node, out, final, CL)
        return
    out = L.float_out(node, CL)
    L.b.op(op, [src], [out], opts)
    L.finish_float(node, out, CL)


# -- normalization ----------------------------------------------------------------------------------
def lower_batch_norm(L: Lowering, node: Node) -> None:
    """Inference batch norm as x * scale + shift (per channel), in float."""
    x, mean, var, w, b = (node.input(i) for i in range(5))
    if not all(v is None or v.is_const for v in (mean, var, w, b)):
        raise TFLiteUnsupportedError(f"node {node.name} (batch_norm): statistics must be constants")
    c = x.shape[1]
    scale = 1 / np.sqrt(var.real().astype(np.float64) + node.attrs["eps"])
    if w is not None:
        scale = scale * w.real()
    shift = -mean.real() * scale + (0 if b is None else b.real())
    rank = len(x.shape)
    layout = CL if rank in (3, 4) else IR
    shape = (c,) if layout == CL else (c,) + (1,) * (rank - 2)
    sc = L.b.tensor(node.name + "/scale", shape, "float32", data=scale.astype(np.float32).reshape(shape),
                    weight=True)
    sh = L.b.tensor(node.name + "/shift", shape, "float32", data=shift.astype(np.float32).reshape(shape),
                    weight=True)
    float_chain(L, node, layout, lambda t: binary_f(
        L, "ADD", binary_f(L, "MUL", t, sc, node.name + "/mul"), sh, node.name + "/add"))


def lower_layer_norm(L: Lowering, node: Node) -> None:
    """layer_norm -> MEAN, SUB, MUL, MEAN, ADD eps, RSQRT, MUL (, MUL weight, ADD bias), in float."""
    x, w, b = node.input(0), node.input(1), node.input(2)
    rank = len(x.shape)
    k = node.attrs["normalized_ndim"]
    axes = L.b.const(node.name + "/axes", np.arange(rank - k, rank, dtype=np.int32))
    n = node.name

    def mean(t, name):
        shape = t.shape[:rank - k] + (1,) * k
        out = L.temp(name, shape)
        opts = fb.ReducerOptionsT()
        opts.keepDims = True
        L.b.op("MEAN", [t, axes], [out], opts)
        return out

    def build(t):
        d = binary_f(L, "SUB", t, mean(t, n + "/mu"), n + "/d")
        var = mean(binary_f(L, "MUL", d, d, n + "/d2"), n + "/var")
        inv = unary_f(L, "RSQRT", binary_f(L, "ADD", var, scalar(L, node.attrs["eps"], n + "/eps"),
                                           n + "/var_eps"), n + "/inv")
        y = binary_f(L, "MUL", d, inv, n + "/norm")
        if w is not None:
            y = binary_f(L, "MUL", y, L.const_float(w), n + "/scale")
        if b is not None:
            y = binary_f(L, "ADD", y, L.const_float(b), n + "/shift")
        return y
    float_chain(L, node, IR, build)


def lower_group_norm(L: Lowering, node: Node) -> None:
    """group_norm -> RESHAPE to groups, MEAN, SUB, MUL, MEAN, ADD eps, RSQRT, MUL, RESHAPE back
    (, MUL weight, ADD bias), in float (TFLite has no group norm kernel). On the channels-last form
    when the input has one: [N, S, G, C/G] reduced over axes 1 and 3, no transpose; else on
    [N, G, C/G * S] reduced over axis 2 (S: the spatial size)."""
    x, w, b = node.input(0), node.input(1), node.input(2)
    shape, g, n = tuple(x.shape), int(node.attrs["num_groups"]), node.name
    c, spatial = shape[1], int(np.prod(shape[2:], dtype=np.int64))
    if L.prefers_cl(x):
        layout, grouped, axes, full, param_shape = CL, (shape[0], spatial, g, c // g), [1, 3], cl_shape(shape), (c,)
    else:
        layout, grouped, axes, full = IR, (shape[0], g, c // g * spatial), [2], shape
        param_shape = (c,) + (1,) * (len(shape) - 2)
    ax = L.b.const(n + "/axes", np.array(axes, np.int32))

    def mean(t, name):
        out = L.temp(name, tuple(1 if i in axes else d for i, d in enumerate(t.shape)))
        opts = fb.ReducerOptionsT()
        opts.keepDims = True
        L.b.op("MEAN", [t, ax], [out], opts)
        return out

    def param(v, name):
        data = v.real().astype(np.float32).reshape(param_shape)
        return L.b.tensor(n + name, param_shape, "float32", data=data, weight=True)

    def build(t):
        t = L.reshape(t, grouped, n + "/groups")
        d = binary_f(L, "SUB", t, mean(t, n + "/mu"), n + "/d")
        var = mean(binary_f(L, "MUL", d, d, n + "/d2"), n + "/var")
        inv = unary_f(L, "RSQRT", binary_f(L, "ADD", var, scalar(L, node.attrs["eps"], n + "/eps"),
                                           n + "/var_eps"), n + "/inv")
        y = L.reshape(binary_f(L, "MUL", d, inv, n + "/norm"), full, n + "/ungroup")
        if w is not None:
            y = binary_f(L, "MUL", y, param(w, "/scale"), n + "/scaled")
        if b is not None:
            y = binary_f(L, "ADD", y, param(b, "/shift"), n + "/shifted")
        return y
    float_chain(L, node, layout, build)


# -- embedding ------------------------------------------------------------------------------------
def lower_gather(L: Lowering, node: Node) -> None:
    data, idx = node.inputs
    axis = node.attrs["axis"] % len(data.shape)
    n = node.name
    ids = L.const_float(idx) if idx.is_const else L.get(idx, IR)
    if data.is_const and _is_int8_weight(data) and axis == 0 and len(data.shape) == 2 and (
            not data.quant.per_channel or data.quant.axis == 0):
        # int8 table, per-row scales: EMBEDDING_LOOKUP dequantizes the rows it reads (float out).
        flat = int(np.prod(idx.shape))
        if ids.dtype != "int32":
            ids32 = L.temp(n + "/ids32", ids.shape, "int32")
            L.b.op("CAST", [ids], [ids32], fb.CastOptionsT())
            ids = ids32
        if len(ids.shape) != 1:
            ids = L.reshape(ids, (flat,), n + "/ids_flat")
        q = data.quant
        table = L.b.tensor(data.name, data.shape, "int8", q.scale, q.zero_point, 0, data=data.data, weight=True)
        rows = L.temp(n + "/rows", (flat, data.shape[1]))
        L.b.op("EMBEDDING_LOOKUP", [ids, table], [rows], int8=True)
        out = L.float_out(node, IR)
        L.reshape(rows, out.shape, n + "/rows_r", out=out)
        L.finish_float(node, out, IR)
        return
    opts = fb.GatherOptionsT()
    opts.axis = axis
    if data.is_const:
        table = L.const_float(data)
        out = L.float_out(node, IR)
        L.b.op("GATHER", [table, ids], [out], opts)
        L.finish_float(node, out, IR)
        return
    int8 = act_qparams(data) is not None and act_qparams(node.output) is not None
    src = L.get(data, IR, float_view=not int8)
    if int8:
        out, final = L.int8_out(node, IR, (src.scale, src.zero_point))
        L.b.op("GATHER", [src, ids], [out], opts, int8=True)
        L.close_int8(node, out, final, IR)
        return
    out = L.float_out(node, IR)
    L.b.op("GATHER", [src, ids], [out], opts)
    L.finish_float(node, out, IR)

