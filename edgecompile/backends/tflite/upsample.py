"""TFLite emitters for the IR's upsampling ops: `resize` and `conv_transpose` (channels-last).

- resize -> RESIZE_NEAREST_NEIGHBOR (no corner alignment; no half-pixel centres: source index
  floor(dst * in / out), torch's "nearest"; half-pixel centres: floor((dst + 0.5) * in / out),
  torch's "nearest-exact") or RESIZE_BILINEAR (half-pixel centres, or
  align_corners). TFLite maps coordinates by the sizes only, so a node whose scale factors say
  otherwise (torch's non-recomputed fractional `scale_factor`) is refused. A 1-D resize runs as
  2-D with H = 1. int8: both kernels keep the input's qparams (a QUANTIZE follows if the IR's
  output differs).
- conv_transpose -> TRANSPOSE_CONV (inputs: output shape, filter [out, kH, kW, in], input, bias).
  TFLite has no dilation and no groups there: dilation is folded into the filter (zeros between the
  taps, the same product), groups > 1 is refused. Padding is SAME where TFLite's SAME places the
  output exactly as torch's padding does, else VALID (the full output, plus the output_padding rows
  that only the bias reaches) and a STRIDED_SLICE cuts torch's window out. int8: per-channel
  filter (IR axis 1, the output channels of torch's [in, out, *k] weight) and an int32 bias of
  scale s_in * s_w[c].
"""

from __future__ import annotations

import numpy as np
from ai_edge_litert import schema_py_generated as fb

from ...ir import Node
from .lower import CL, Lowering, TensorRef, TFLiteUnsupportedError, act_qparams, cl_shape
from .nn import _bias, _check_spatial_input, _is_int8_weight, _weight, _zero_bias


def lower_resize(L: Lowering, node: Node) -> None:
    x, a = node.inputs[0], node.attrs
    rank = _check_spatial_input(node, x)
    if a["scales"] is not None:
        raise TFLiteUnsupportedError(
            f"node {node.name} (resize): scale factors {list(a['scales'])} that map coordinates other than "
            f"output/input size (TFLite's RESIZE kernels take sizes only)")
    size = [1, int(a["size"][0])] if rank == 3 else [int(s) for s in a["size"]]
    if a["mode"] in ("nearest", "nearest_exact"):
        op, opts = "RESIZE_NEAREST_NEIGHBOR", fb.ResizeNearestNeighborOptionsT()
        opts.alignCorners, opts.halfPixelCenters = False, a["mode"] == "nearest_exact"
    else:
        op, opts = "RESIZE_BILINEAR", fb.ResizeBilinearOptionsT()
        opts.alignCorners = bool(a["align_corners"])
        opts.halfPixelCenters = not opts.alignCorners
    int8 = L.int8_mode(node, [x])
    src = L.get(x, CL, float_view=not int8)
    ins = [src, L.b.const(node.name + "/size", np.array(size, np.int32))]
    if int8:
        out, final = L.int8_out(node, CL, (src.scale, src.zero_point))
        L.b.op(op, ins, [out], opts, int8=True)
        L.close_int8(node, out, final, CL)
        return
    out = L.float_out(node, CL)
    L.b.op(op, ins, [out], opts)
    L.finish_float(node, out, CL)


def _dilate(w: np.ndarray, d: tuple[int, int]) -> np.ndarray:
    """[in, out, kH, kW] -> the same filter with d - 1 zeros between taps (no dilation needed)."""
    if d == (1, 1):
        return w
    kh, kw = w.shape[2:]
    out = np.zeros(w.shape[:2] + ((kh - 1) * d[0] + 1, (kw - 1) * d[1] + 1), w.dtype)
    out[:, :, ::d[0], ::d[1]] = w
    return out


def _geometry(node: Node, rank: int):
    """(stride, padding, output_padding, dilation) as (H, W) pairs; a 1-D op gets H = identity."""
    a = node.attrs
    if rank == 3:
        return tuple((1 if k in ("stride", "dilation") else 0, int(a[k][0]))
                     for k in ("stride", "padding", "output_padding", "dilation"))
    return tuple((int(a[k][0]), int(a[k][1])) for k in ("stride", "padding", "output_padding", "dilation"))


def lower_conv_transpose(L: Lowering, node: Node) -> None:
    x, w, b = node.input(0), node.input(1), node.input(2)
    if not w.is_const or (b is not None and not b.is_const):
        raise TFLiteUnsupportedError(f"node {node.name} (conv_transpose): weights must be constants")
    if node.attrs["groups"] != 1:
        raise TFLiteUnsupportedError(f"node {node.name} (conv_transpose): TFLite's TRANSPOSE_CONV has no groups "
                                     f"(groups={node.attrs['groups']})")
    if w.quant is not None and w.quant.per_channel and w.quant.axis % w.data.ndim != 1:
        raise TFLiteUnsupportedError(f"node {node.name} (conv_transpose): weight quantized on axis {w.quant.axis}; "
                                     "TRANSPOSE_CONV needs per-output-channel (axis 1)")
    rank = _check_spatial_input(node, x)
    s, p, op, d = _geometry(node, rank)
    to_2d = (lambda arr: arr[:, :, None, :]) if rank == 3 else (lambda arr: arr)
    k = _dilate(to_2d(w.data), d).shape[2:]
    n, in_h, in_w, _ = cl_shape(x.shape)
    out_hw = cl_shape(node.output.shape)[1:3]
    c_out = w.shape[1]
    full = [(i - 1) * si + ki for i, si, ki in zip((in_h, in_w), s, k)]
    if all(o == i * si and pi == max(ki - si, 0) // 2 for o, i, si, ki, pi in zip(out_hw, (in_h, in_w), s, k, p)):
        padding, kernel_hw, window = fb.Padding.SAME, out_hw, None
    else:   # full output, then torch's window [p, p + out) (output_padding beyond it is bias only)
        padding = fb.Padding.VALID
        kernel_hw = tuple(max(f, pi + o) for f, pi, o in zip(full, p, out_hw))
        window = None if tuple(kernel_hw) == tuple(out_hw) else p
    int8 = _is_int8_weight(w) and L.int8_mode(node, [x])
    src = L.get(x, CL, float_view=not int8)
    wt = _weight(L, w, lambda arr: _dilate(to_2d(arr), d).transpose(1, 2, 3, 0), 0, int8, w.name)
    w_scale = np.asarray(wt.scale) if int8 else np.ones(1)
    in_scale = src.scale[0] if int8 else 0.0
    bias = _bias(L, b if b is not None else _zero_bias(node.name + ".bias", c_out), c_out, int8, in_scale,
                 w_scale, b.name if b is not None else node.name + "/bias")
    opts = fb.TransposeConvOptionsT()
    opts.padding, (opts.strideH, opts.strideW) = padding, s
    shape = L.b.const(node.name + "/output_shape", np.array((n, *kernel_hw, c_out), np.int32))
    oq = act_qparams(node.output) if int8 else None
    if window is None:
        out = L.new(node.output, CL) if int8 else L.float_out(node, CL)
        L.b.op("TRANSPOSE_CONV", [shape, wt, src, bias], [out], opts, int8=int8)
    else:
        full_t = L.temp(node.name + "/full", (n, *kernel_hw, c_out), "int8" if int8 else "float32", oq)
        L.b.op("TRANSPOSE_CONV", [shape, wt, src, bias], [full_t], opts, int8=int8)
        out = L.new(node.output, CL) if int8 else L.float_out(node, CL)
        _crop(L, node.name, full_t, window, out, int8)
    if int8:
        L.close_int8(node, out, None, CL)
    else:
        L.finish_float(node, out, CL)


def _crop(L: Lowering, name: str, src: TensorRef, begin_hw, out: TensorRef, int8: bool) -> None:
    """out = src[:, h0:h0 + H, w0:w0 + W, :] (STRIDED_SLICE, qparams unchanged)."""
    begin = np.array([0, begin_hw[0], begin_hw[1], 0], np.int32)
    end = begin + np.array(out.shape, np.int32)
    ins = [src, L.b.const(name + "/begin", begin), L.b.const(name + "/end", end),
           L.b.const(name + "/strides", np.ones(4, np.int32))]
    L.b.op("STRIDED_SLICE", ins, [out], fb.StridedSliceOptionsT(), int8=int8)
