"""Converters for layer ops: convolution, normalization, pooling, reductions, softmax, matmuls.

Matrix products against a constant seen through a transpose (`permute(W, [1, 0])`, `t(W)`, as
`nn.Linear` decomposes) become `linear` on the original [out, in] weight, so passes see real
linear layers and the weight keeps its state_dict name. `scaled_dot_product_attention` (kept whole
by the decomposition table) is lowered here to matmul / softmax with the mask applied.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .context import Const, ConvertContext, Unsupported


def _pair(v, n):
    v = list(v) if isinstance(v, (list, tuple)) else [v]
    return [int(x) for x in (v * n if len(v) == 1 else v)]


def convolution(cx: ConvertContext, x, w, b, stride, padding, dilation, transposed, output_padding, groups):
    nd = len(cx.shape(w)) - 2
    kind = "transposed convolution" if transposed else "convolution"
    if nd not in (1, 2):
        raise Unsupported(f"{nd}-D {kind}")
    if len(cx.shape(x)) != nd + 2:
        raise Unsupported(f"unbatched {kind} input")
    if transposed:
        return cx.emit("conv_transpose", [x, w, b], stride=_pair(stride, nd), padding=_pair(padding, nd),
                       output_padding=_pair(output_padding, nd), dilation=_pair(dilation, nd), groups=int(groups))
    return cx.emit("conv", [x, w, b], stride=_pair(stride, nd), padding=_pair(padding, nd),
                   dilation=_pair(dilation, nd), groups=int(groups))


def _resize_scales(cx: ConvertContext, x, scales):
    """torch's scale factors when they change the coordinate mapping, else None.

    torch maps output to input coordinates by 1 / scale when a scale factor is given, else by
    in / out; where the two are the same float32 number the scales say nothing more (and backends
    that only take an output size, like TFLite's, can express the op).
    """
    if scales is None or all(s is None for s in scales):
        return None
    ins, outs = cx.shape(x)[2:], cx.out_shape[2:]
    if any(s is None for s in scales):
        raise Unsupported("upsampling with a scale factor for some spatial axes only")
    same = all(np.float32(1.0 / float(s)) == np.float32(i) / np.float32(o) for s, i, o in zip(scales, ins, outs))
    return None if same else [float(s) for s in scales]


def upsample(nd, mode, overload):
    """aten.upsample_{nearest,linear,bilinear}{1,2}d / _upsample_nearest_exact{1,2}d (.default, .vec) -> resize
    (the output size from the export)."""
    def convert(cx: ConvertContext, x, output_size, *args):
        align = bool(args[0]) if mode == "linear" else False
        rest = args[1:] if mode == "linear" else args
        if overload == "vec":
            scales = rest[0] if rest else None
        else:
            scales = list(rest) + [None] * (nd - len(rest))
        if len(cx.shape(x)) != nd + 2:
            raise Unsupported(f"unbatched {nd}-D upsampling input")
        scales = None if align else _resize_scales(cx, x, scales)
        return cx.emit("resize", [x], mode=mode, size=list(cx.out_shape[2:]), scales=scales, align_corners=align)
    return convert


def batch_norm_no_training(cx: ConvertContext, x, w, b, mean, var, momentum, eps):
    """_native_batch_norm_legit_no_training -> (batch_norm, -, -)."""
    return cx.emit("batch_norm", [x, mean, var, w, b], eps=float(eps)), None, None


def native_layer_norm(cx: ConvertContext, x, normalized_shape, w, b, eps):
    y = cx.emit("layer_norm", [x, w, b], normalized_ndim=len(normalized_shape), eps=float(eps))
    return y, None, None


def native_group_norm(cx: ConvertContext, x, w, b, n, c, hxw, group, eps):
    """native_group_norm -> (group_norm, -, -).

    One IR op rather than its decomposition (reshape, two means, sub, mul, rsqrt, reshape, affine):
    an int8 deployment then rounds only the normalized output, as for layer_norm (each step of the
    decomposition would otherwise be an int8 tensor: the variance and its rsqrt lose most of their
    resolution at 8 bits), and the backends pick their own exact lowering (ONNX InstanceNormalization
    on [N, G, -1] or GroupNormalization-21, TFLite a float MEAN / RSQRT chain).
    """
    y = cx.emit("group_norm", [x, w, b], num_groups=int(group), eps=float(eps))
    return y, None, None


def _batched(cx: ConvertContext, x, nd):
    """Pooling on an unbatched input: add the batch axis (removed again by the caller)."""
    shape = cx.shape(x)
    return cx.reshape(x, (1,) + tuple(shape)) if len(shape) == nd + 1 else cx.value(x)


def max_pool(nd):
    def convert(cx: ConvertContext, x, kernel, stride=(), padding=0, dilation=1, ceil_mode=False):
        k = _pair(kernel, nd)
        y = cx.emit("max_pool", [_batched(cx, x, nd)], kernel=k, stride=_pair(stride, nd) if stride else k,
                    padding=_pair(padding, nd), dilation=_pair(dilation, nd), ceil_mode=bool(ceil_mode))
        y = cx.reshape(y, cx.out_shape if not isinstance(cx.out, tuple) else cx.out[0].shape)
        return (y, None) if isinstance(cx.out, tuple) else y
    return convert


def avg_pool(nd):
    def convert(cx: ConvertContext, x, kernel, stride=(), padding=0, ceil_mode=False, count_include_pad=True,
                divisor_override=None):
        if divisor_override is not None:
            raise Unsupported("avg_pool divisor_override")
        k = _pair(kernel, nd)
        y = cx.emit("avg_pool", [_batched(cx, x, nd)], kernel=k, stride=_pair(stride, nd) if stride else k,
                    padding=_pair(padding, nd), ceil_mode=bool(ceil_mode),
                    count_include_pad=bool(count_include_pad))
        return cx.reshape(y, cx.out_shape)
    return convert


def adaptive_pool(nd, kind):
    """Adaptive pooling to 1 -> mean/reduce_max over the spatial axes; an even split -> pooling."""
    def convert(cx: ConvertContext, x, output_size):
        shape = cx.shape(x)
        spatial = list(shape[-nd:])
        out = _pair(output_size, nd)
        axes = list(range(len(shape) - nd, len(shape)))
        if all(o == 1 for o in out):
            y = cx.emit("mean" if kind == "avg" else "reduce_max", [x], axes=axes, keepdims=True)
        elif all(s % o == 0 for s, o in zip(spatial, out)):
            k = [s // o for s, o in zip(spatial, out)]
            attrs = dict(kernel=k, stride=k, padding=[0] * nd, ceil_mode=False)
            if kind == "avg":
                y = cx.emit("avg_pool", [_batched(cx, x, nd)], count_include_pad=True, **attrs)
            else:
                y = cx.emit("max_pool", [_batched(cx, x, nd)], dilation=[1] * nd, **attrs)
        else:
            raise Unsupported(f"adaptive pooling from {spatial} to {out} (not an even split)")
        y = cx.reshape(y, cx.out[0].shape if isinstance(cx.out, tuple) else cx.out_shape)
        return (y, None) if kind == "max" else y
    return convert


def _axes(cx: ConvertContext, x, dims):
    n = len(cx.shape(x))
    if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
        return list(range(n))
    dims = dims if isinstance(dims, (list, tuple)) else [dims]
    return sorted(int(d) % n for d in dims)


def reduce(op):
    def convert(cx: ConvertContext, x, dims=None, keepdim=False, *, dtype=None):
        x = cx.cast(x, cx.out_dtype) if op != "reduce_max" else x
        y = cx.emit(op, [x], axes=_axes(cx, x, dims), keepdims=bool(keepdim))
        return (y, None) if isinstance(cx.out, tuple) else y
    return convert


def reduce_all(op):
    def convert(cx: ConvertContext, x, *, dtype=None):
        return reduce(op)(cx, x, None, False)
    return convert


def any_(cx: ConvertContext, x, dims=None, keepdim=False):
    """any(x) -> reduce_max(cast(x != 0, float32)) > 0."""
    nz = x if cx.dtype(x) == "bool" else cx.emit("eq", [cx.emit("eq", [x, cx.scalar(0, cx.dtype(x))]),
                                                        cx.scalar(False, "bool")])
    m = cx.emit("reduce_max", [cx.cast(nz, "float32")], axes=_axes(cx, x, dims), keepdims=bool(keepdim))
    return cx.emit("gt", [m, cx.scalar(0.0, "float32")])


def softmax(op):
    def convert(cx: ConvertContext, x, dim, half_to_float=False):
        return cx.emit(op, [x], axis=int(dim) % len(cx.shape(x)))
    return convert


# -- matrix products ------------------------------------------------------------------------
def _linear_bias(cx: ConvertContext, bias, n):
    """A bias usable by `linear` ([n], or a constant [1, n]), else None."""
    if bias is None:
        return None
    shape = cx.shape(bias)
    if isinstance(bias, Const) and shape in ((n,), (1, n)):
        return cx.value(Const(bias.tensor.reshape(n), bias.name)) if shape != (n,) else cx.value(bias)
    if shape == (n,):
        return cx.value(bias)
    return None


def _weight_of(b):
    """The [out, in] weight when `b` is a constant seen through a 2-D transpose, else None."""
    return b.transpose_of if isinstance(b, Const) and b.transpose_of is not None else None


def _matmul(cx: ConvertContext, a, b, bias=None):
    """a @ b (+ bias): `linear` when b is a transposed constant weight, else `matmul` (+ `add`)."""
    weight = _weight_of(b)
    n = cx.shape(b)[-1]
    lin_bias = _linear_bias(cx, bias, n) if weight is not None else None
    if weight is not None and len(cx.shape(a)) >= 2 and (bias is None or lin_bias is not None):
        return cx.emit("linear", [a, weight, lin_bias])
    y = cx.emit("matmul", [a, b]) if weight is None else cx.emit("linear", [a, weight, None])
    if bias is not None:
        y = cx.emit("add", [y, bias])
    return y


def mm(cx: ConvertContext, a, b):
    return _matmul(cx, a, b)


def addmm(cx: ConvertContext, bias, a, b, beta=1, alpha=1):
    if beta != 1 or alpha != 1:
        y = _matmul(cx, a, b)
        y = y if alpha == 1 else cx.emit("mul", [y, cx.scalar(alpha, y.dtype)])
        if beta == 0:
            return y
        return cx.emit("add", [y, bias if beta == 1 else cx.emit("mul", [bias, cx.scalar(beta, y.dtype)])])
    return _matmul(cx, a, b, bias)


def matmul(cx: ConvertContext, a, b):
    if _weight_of(b) is not None and len(cx.shape(b)) == 2:
        return _matmul(cx, a, b)
    return cx.emit("matmul", [a, b])


def linear(cx: ConvertContext, x, w, b=None):
    """aten.linear (kept undecomposed): linear over the last axis, any leading shape."""
    if isinstance(w, Const):
        return cx.emit("linear", [x, w, b])
    wt = cx.transpose(w, [1, 0])
    y = cx.emit("matmul", [x, wt])
    return y if b is None else cx.emit("add", [y, b])


# -- attention ------------------------------------------------------------------------------
def sdpa(cx: ConvertContext, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
         enable_gqa=False):
    """softmax(q @ k^T * scale + mask) @ v, with a boolean mask applied by `where`."""
    if enable_gqa and cx.shape(q)[-3] != cx.shape(k)[-3]:
        raise Unsupported("grouped-query attention (enable_gqa)")
    qs, ks = cx.shape(q), cx.shape(k)
    n = len(ks)
    scale = 1.0 / math.sqrt(qs[-1]) if scale is None else float(scale)
    kt = cx.transpose(k, list(range(n - 2)) + [n - 1, n - 2])
    s = cx.emit("matmul", [q, kt])
    s = cx.emit("mul", [s, cx.scalar(scale, s.dtype)])
    if is_causal:
        causal = torch.ones(qs[-2], ks[-2], dtype=torch.bool).tril()
        attn_mask = Const(causal, f"{cx.name_hint}.causal_mask")
    if attn_mask is not None:
        if cx.dtype(attn_mask) == "bool":
            neg = cx.scalar(np.finfo(np.float32).min, s.dtype)
            s = cx.emit("where", [cx.value(attn_mask), s, neg])
        else:
            s = cx.emit("add", [s, cx.value(attn_mask, s.dtype)])
    p = cx.emit("softmax", [s], axis=n - 1)
    return cx.emit("matmul", [p, v])


def sdpa_flash_cpu(cx: ConvertContext, q, k, v, dropout_p=0.0, is_causal=False, *, attn_mask=None, scale=None):
    """_scaled_dot_product_flash_attention_for_cpu -> (attention, -)."""
    return sdpa(cx, q, k, v, attn_mask, dropout_p, is_causal, scale), None
