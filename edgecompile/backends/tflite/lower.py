"""Lowering state shared by the TFLite op emitters: tensors of IR values in two layouts and two views.

Our IR is NCHW / NCL; TFLite's convolution and pooling kernels are NHWC. Each IR value may be
held in the *IR layout* (as the IR says) and/or the *channels-last (CL) layout*: rank 4
``[N, C, H, W] -> [N, H, W, C]`` and rank 3 ``[N, C, L] -> [N, 1, L, C]`` (1-D convolution runs as
2-D with H = 1). A form is made on first request (TRANSPOSE, plus RESHAPE for rank 3) and cached,
so a CNN transposes once at its input and once where it flattens.

Each value also has a *native* tensor, in its deployed dtype (int8 when the IR value carries
`quant`), and on request a *float view* (DEQUANTIZE of the native tensor, so that float kernels see
exactly the fake-quantized value the PyTorch executor computes).
"""

from __future__ import annotations

import numpy as np
from ai_edge_litert import schema_py_generated as fb

from ...ir import Graph, Node, Value
from .builder import ModelBuilder, TensorRef
from ...errors import InputError

IR, CL = "ir", "cl"


class TFLiteUnsupportedError(InputError, ValueError):
    """The graph holds ops (or op settings) that TFLite cannot express."""


def cl_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(shape) == 4:
        n, c, h, w = shape
        return (n, h, w, c)
    if len(shape) == 3:
        n, c, length = shape
        return (n, 1, length, c)
    raise ValueError(f"no channels-last form for rank {len(shape)}")


def cl_array(a: np.ndarray) -> np.ndarray:
    """A constant in IR layout -> channels-last layout (rank 3 or 4)."""
    if a.ndim == 4:
        return np.ascontiguousarray(a.transpose(0, 2, 3, 1))
    return np.ascontiguousarray(a.transpose(0, 2, 1)[:, None])


def cl_axis(axis: int, rank: int) -> int:
    """Where IR axis `axis` of a rank-3/4 value lives in its channels-last form."""
    axis %= rank
    if rank == 4:
        return (0, 3, 1, 2)[axis]
    return (0, 3, 2)[axis]


def act_qparams(v: Value) -> tuple[tuple[float], tuple[int]] | None:
    """The per-tensor int8 qparams of an activation, or None if it stays float."""
    q = v.quant
    if q is None or v.is_const:
        return None
    if q.per_channel or q.dtype != "int8":
        raise TFLiteUnsupportedError(f"value {v.name}: TFLite activations are per-tensor int8, got "
                                     f"{q.dtype} axis={q.axis}")
    return (float(q.scale[0]),), (int(q.zero_point[0]),)


def quantize_per_tensor(real: np.ndarray) -> tuple[np.ndarray, float, int] | None:
    """Exact per-tensor int8 form of a float constant, when one exists (scalars, constant tensors)."""
    flat = np.unique(np.asarray(real, np.float32))
    if flat.size != 1:
        return None
    c = float(flat[0])
    scale = abs(c) / 127 if c != 0 else 1.0
    return np.full(np.shape(real), 0 if c == 0 else int(np.sign(c)) * 127, np.int8), scale, 0


class Lowering:
    """Maps IR values to TFLite tensors while the emitters append operators to `b`."""

    def __init__(self, graph: Graph, builder: ModelBuilder):
        self.g = graph
        self.b = builder
        self.forms: dict[int, dict[tuple[str, bool], TensorRef]] = {}
        self._dequantized: dict[int, TensorRef] = {}     # constant tensor index -> its DEQUANTIZE
        self.int8_ops = 0

    # -- tensors ---------------------------------------------------------------------------
    def new(self, v: Value, layout: str = IR, int8: bool | None = None, suffix: str = "",
            qparams=None) -> TensorRef:
        """A fresh tensor for `v` (not registered). int8 defaults to whether `v` is quantized."""
        shape = v.shape if layout == IR else cl_shape(v.shape)
        q = act_qparams(v) if qparams is None else qparams
        if int8 is None:
            int8 = q is not None
        name = v.name + ("_nhwc" if layout == CL else "") + suffix
        if int8:
            return self.b.tensor(name, shape, "int8", q[0], q[1])
        return self.b.tensor(name, shape, "float32" if q is not None else v.dtype)

    def temp(self, name: str, shape, dtype: str = "float32", qparams=None) -> TensorRef:
        if qparams is None:
            return self.b.tensor(name, shape, dtype)
        return self.b.tensor(name, shape, "int8", qparams[0], qparams[1])

    def define(self, v: Value, t: TensorRef, layout: str = IR) -> None:
        """Registers `t` as the native tensor of `v` in `layout`."""
        self.forms.setdefault(id(v), {})[(layout, False)] = t

    def has(self, v: Value, layout: str) -> bool:
        return v.is_const or (layout, False) in self.forms.get(id(v), {})

    def prefers_cl(self, v: Value) -> bool:
        return not v.is_const and v.shape is not None and len(v.shape) in (3, 4) and self.has(v, CL)

    def get(self, v: Value, layout: str = IR, float_view: bool = False) -> TensorRef:
        """The tensor of `v` in `layout`: native dtype, or float32 with `float_view`."""
        if v.is_const:
            return self.const_float(v, layout) if float_view or v.quant is None else self.const_native(v, layout)
        forms = self.forms.setdefault(id(v), {})
        quantized = act_qparams(v) is not None
        key = (layout, float_view and quantized)
        if key in forms:
            return forms[key]
        if key[1]:
            native = self.get(v, layout)
            t = self.new(v, layout, int8=False, suffix="_f")
            self.b.op("DEQUANTIZE", [native], [t], int8=True)
        else:
            other = IR if layout == CL else CL
            if (other, False) not in forms:
                raise KeyError(f"value {v.name} is used before it is defined")
            t = self.convert_layout(v, forms[(other, False)], layout)
        forms[key] = t
        return t

    def convert_layout(self, v: Value, src: TensorRef, layout: str) -> TensorRef:
        q = (src.scale, src.zero_point) if src.quantized else None
        dtype = src.dtype
        rank = len(v.shape)
        if layout == CL and rank == 4:
            return self.transpose(src, (0, 2, 3, 1), v.name + "_nhwc", q)
        if layout == IR and rank == 4:
            return self.transpose(src, (0, 3, 1, 2), v.name + "_nchw", q)
        n, c, length = v.shape
        if layout == CL:
            t = self.transpose(src, (0, 2, 1), v.name + "_nlc", q)
            return self.reshape(t, (n, 1, length, c), v.name + "_nhwc", q)
        t = self.reshape(src, (n, length, c), v.name + "_nlc", q, dtype)
        return self.transpose(t, (0, 2, 1), v.name + "_ncl", q)

    # -- small op helpers -----------------------------------------------------------------
    def transpose(self, src: TensorRef, perm, name: str, q=None) -> TensorRef:
        shape = tuple(src.shape[p] for p in perm)
        out = self.temp(name, shape, src.dtype, q)
        self.b.op("TRANSPOSE", [src, self.b.const(name + "/perm", np.array(perm, np.int32))], [out],
                  fb.TransposeOptionsT(), int8=q is not None)
        return out

    def reshape(self, src: TensorRef, shape, name: str, q=None, dtype: str | None = None,
                out: TensorRef | None = None) -> TensorRef:
        out = out or self.temp(name, shape, dtype or src.dtype, q)
        opts = fb.ReshapeOptionsT()
        opts.newShape = [int(d) for d in out.shape]
        self.b.op("RESHAPE", [src, self.b.const(name + "/shape", np.array(out.shape, np.int32))], [out],
                  opts, int8=q is not None)
        return out

    def requantize(self, src: TensorRef, dst: TensorRef) -> TensorRef:
        """QUANTIZE float->int8 or int8->int8 (rescale) into `dst`."""
        self.b.op("QUANTIZE", [src], [dst], int8=True)
        return dst

    def dequantize(self, src: TensorRef, name: str) -> TensorRef:
        out = self.temp(name, src.shape)
        self.b.op("DEQUANTIZE", [src], [out], int8=True)
        return out

    def dequantized_const(self, src: TensorRef, name: str) -> TensorRef:
        """The float form of an int8 constant, one DEQUANTIZE however many operators read it
        (LiteRT keeps a constant's DEQUANTIZE output for the interpreter's life: one float copy
        per reader would be one per time step of an unrolled LSTM)."""
        if src.index not in self._dequantized:
            self._dequantized[src.index] = self.dequantize(src, name)
        return self._dequantized[src.index]

    # -- constants ---------------------------------------------------------------------------
    def const_float(self, v: Value, layout: str = IR, shape_to: tuple[int, ...] | None = None) -> TensorRef:
        """A constant's real value as a (float) tensor; broadcast-ready for CL when asked."""
        a = np.asarray(v.real())
        if shape_to is not None and a.ndim < len(shape_to):
            a = a.reshape((1,) * (len(shape_to) - a.ndim) + a.shape)
        if layout == CL:
            a = cl_array(a)
        if a.dtype == np.float64:
            a = a.astype(np.float32)
        return self.b.tensor(v.name + ("_nhwc" if layout == CL else ""), a.shape, str(a.dtype), data=a,
                             weight=a.size > 1)

    def const_native(self, v: Value, layout: str = IR) -> TensorRef:
        """A quantized constant kept as its int8 data (per-tensor only), for int8 kernels."""
        q = v.quant
        a = v.data
        if layout == CL:
            a = cl_array(a)
        axis = 0 if q.axis is None else (q.axis if layout == IR else cl_axis(q.axis, v.data.ndim))
        return self.b.tensor(v.name, a.shape, str(a.dtype), q.scale, q.zero_point, axis, data=a, weight=True)

    def const_int8_operand(self, v: Value, layout: str, ndim: int) -> TensorRef | None:
        """A constant as an exact per-tensor int8 operand of an int8 kernel, or None if none exists."""
        a = np.asarray(v.real(), np.float32)
        if a.ndim < ndim:
            a = a.reshape((1,) * (ndim - a.ndim) + a.shape)
        if layout == CL:
            a = cl_array(a)
        if v.quant is not None and not v.quant.per_channel and v.quant.dtype == "int8":
            data = v.data.reshape(a.shape) if layout == IR else cl_array(v.data.reshape(
                (1,) * (ndim - v.data.ndim) + v.data.shape))
            return self.b.tensor(v.name, a.shape, "int8", v.quant.scale, v.quant.zero_point, data=data,
                                 weight=True)
        exact = quantize_per_tensor(a)
        if exact is None:
            return None
        data, scale, zp = exact
        return self.b.tensor(v.name + "_q", a.shape, "int8", [scale], [zp], data=data)

    # -- node outputs ----------------------------------------------------------------------------
    def int8_mode(self, node: Node, act_inputs: list[Value]) -> bool:
        """True when every activation input and the output are int8 in the deployment."""
        if act_qparams(node.output) is None:
            return False
        return all(act_qparams(v) is not None for v in act_inputs if v is not None and not v.is_const)

    def finish_float(self, node: Node, out_f: TensorRef, layout: str) -> None:
        """Registers a float result for the node's output, quantizing it if the IR says int8."""
        v = node.output
        if act_qparams(v) is None:
            self.define(v, out_f, layout)
            return
        q = self.new(v, layout)
        self.requantize(out_f, q)
        self.define(v, q, layout)

    def float_out(self, node: Node, layout: str) -> TensorRef:
        """The tensor a float kernel writes the node's output into."""
        v = node.output
        if act_qparams(v) is None:
            return self.new(v, layout)
        return self.new(v, layout, int8=False, suffix="_f")

    def int8_out(self, node: Node, layout: str, qparams=None) -> tuple[TensorRef, TensorRef | None]:
        """(tensor the int8 kernel writes, final tensor) where the kernel's qparams are forced.

        `qparams` are those the kernel requires (e.g. its input's, or SOFTMAX's 1/256); when they
        differ from the IR output's, the kernel writes a temporary and a QUANTIZE rescales it.
        """
        v = node.output
        want = act_qparams(v)
        if qparams is None or (np.allclose(qparams[0], want[0], rtol=1e-6) and qparams[1] == want[1]):
            return self.new(v, layout), None
        return self.new(v, layout, suffix="_k", qparams=qparams), self.new(v, layout)

    def close_int8(self, node: Node, written: TensorRef, final: TensorRef | None, layout: str) -> None:
        if final is not None:
            self.requantize(written, final)
            written = final
        self.define(node.output, written, layout)
        self.int8_ops += 1
