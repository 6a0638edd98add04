"""`OnnxBuilder`: the state of one IR -> ONNX emission (names, nodes, initializers, Q/DQ).

Every IR value maps to up to two ONNX tensors: its *real* (float) form, which is what float ops
consume, and, if the value carries `quant`, its *quantized* (int8/uint8) form. Either is created on
demand: a lowering that produces a float result calls `define`, which adds QuantizeLinear (and the
DequantizeLinear that restores the real form on first use); an integer lowering (QLinearConv)
calls `define_quantized` and the DequantizeLinear appears only if a float consumer asks for it.
The real form of a node output is named like the IR value, so the ONNX graph reads like the IR dump.

Weights (IR constants) become initializers keyed by the constant's name (equal constants: one
initializer); they are collected in `weights` (what the `.ecw` container holds) and only serialized
into the model when embedding.
Small tensors the backend itself invents (Q/DQ scales, shapes, axes, clip bounds) always live in
the model.
"""

from __future__ import annotations

import hashlib

import numpy as np
from onnx import NodeProto, TensorProto, helper, numpy_helper

from ...ir.graph import Graph, QuantParams, Value
from ...errors import InputError


class OnnxEmitError(InputError, ValueError):
    """The graph cannot be written as ONNX (names the node, the op and the reason)."""


def elem_type(dtype: str | np.dtype) -> int:
    """The ONNX element type of a numpy dtype name."""
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


class OnnxBuilder:
    """Collects ONNX nodes and tensors while the IR is lowered op by op.

    Parameters
    ----------
    graph : Graph
        The IR being emitted (read only).
    act_dtype : {"int8", "uint8"}
        Element type of quantized activations. The IR quantizes activations to int8; for uint8 the
        zero point is shifted by 128, which represents exactly the same real values.
    opset : int
        ONNX opset of the default domain.
    """

    def __init__(self, graph: Graph, act_dtype: str, opset: int, dequantize_at_load: bool = False):
        if act_dtype not in ("int8", "uint8"):
            raise ValueError(f"act_dtype must be 'int8' or 'uint8', got {act_dtype!r}")
        self.graph = graph
        self.act_dtype = act_dtype
        self.opset = opset
        # Weights-only int8: the container keeps int8 + scales, but the model declares float
        # initializers that the loader dequantizes once at session creation, so no DequantizeLinear
        # runs per call (onnxruntime does not fold DQ of initializers: 6.6x fp32 on a CNN).
        self.dequantize_at_load = dequantize_at_load
        self.load_dequantized: set[str] = set()
        self.nodes: list[NodeProto] = []
        self.weights: dict[str, np.ndarray] = {}        # IR constants, by initializer name
        self.weight_quant: dict[str, QuantParams | None] = {}
        self.small: list[TensorProto] = []               # backend-made constants (always embedded)
        self._names: set[str] = {v.name for v in graph.values()}
        self._real: dict[int, str] = {}                  # id(Value) -> real (float) tensor name
        self._quant: dict[int, str] = {}                 # id(Value) -> quantized tensor name
        self._qparams: dict[int, tuple[str, str]] = {}   # id(Value) -> (scale, zero point) names
        self._derived: dict[tuple, str] = {}             # cache of derived weight forms
        self._consts: dict[tuple, str] = {}              # (dtype, shape, bytes) -> small constant
        self._stored: dict[tuple, str] = {}              # (dtype, shape, quant, digest) -> weight name
        self._equal: dict[str, str] = {}                 # name -> the equal weight stored instead

    # -- names and nodes ----------------------------------------------------------------------
    def fresh(self, base: str) -> str:
        name, i = base, 1
        while name in self._names:
            name, i = f"{base}_{i}", i + 1
        self._names.add(name)
        return name

    def add(self, op_type: str, inputs: list[str], outputs: list[str] | str | None = None,
            base: str = "", domain: str = "", **attrs) -> list[str]:
        """Appends a node; `outputs` None makes one fresh output named after `base`."""
        if outputs is None:
            outputs = [self.fresh(base or op_type.lower())]
        elif isinstance(outputs, str):
            outputs = [outputs]
        node = helper.make_node(op_type, inputs, outputs, name=self.fresh(f"{base or outputs[0]}/{op_type}"),
                                domain=domain or None, **_without_defaults(op_type, attrs))
        self.nodes.append(node)
        return outputs

    def const(self, array: np.ndarray, base: str) -> str:
        """A small constant embedded in the model (never in the container); equal constants (same
        dtype, shape and bytes: a shape, axes, a zero point) are one initializer."""
        array = np.asarray(array)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._consts:
            name = self.fresh(base)
            self.small.append(numpy_helper.from_array(array, name))
            self._consts[key] = name
        return self._consts[key]

    def ints(self, values, base: str) -> str:
        return self.const(np.asarray(list(values), np.int64), base)

    def scalar(self, value, dtype: str, base: str) -> str:
        return self.const(np.asarray(value, dtype), base)

    # -- weights ------------------------------------------------------------------------------
    def weight(self, name: str, array: np.ndarray, quant: QuantParams | None = None) -> str:
        """Registers an IR constant (or a re-laid-out form of one) as a container initializer.
        Returns its initializer name: that of an earlier equal one (dtype, shape, quantization and
        bytes) if there is one, so equal weights are stored once."""
        if name not in self.weights and name not in self._equal:
            array = np.ascontiguousarray(array)
            q = None if quant is None else (quant.scale.tobytes(), quant.zero_point.tobytes(), quant.axis, quant.dtype)
            key = (array.dtype.str, array.shape, q, hashlib.blake2b(array.data, digest_size=20).digest())
            if key in self._stored:
                self._equal[name] = self._stored[key]
                return self._equal[name]
            self._stored[key] = name
            self._names.add(name)
            self.weights[name] = array
            self.weight_quant[name] = quant
        return self._equal.get(name, name)

    def dequantized_weight(self, stored: str, q: QuantParams, base: str) -> str:
        """DequantizeLinear of a stored integer weight; per channel along `q.axis`.

        With `dequantize_at_load`, the stored name itself is returned and the initializer is
        declared float: the loader dequantizes it once.
        """
        if self.dequantize_at_load:
            self.load_dequantized.add(stored)
            return stored
        key = ("dq", stored)
        if key not in self._derived:
            scale = q.scale if q.axis is not None else q.scale.reshape(())
            zp = q.zero_point.astype(q.dtype)
            zp = zp if q.axis is not None else zp.reshape(())
            attrs = {} if q.axis is None else {"axis": q.axis}
            ins = [stored, self.const(scale, f"{base}.scale")]
            # an int8 weight's zero point is kept even when all zero: onnxruntime's QGemm fusion
            # needs it; an int32 bias's (always 0) is left out, fusions do not look at it
            if q.dtype != "int32" or np.any(zp):
                ins.append(self.const(zp, f"{base}.zero_point"))
            self._derived[key] = self.add("DequantizeLinear", ins, base=f"{base}.dq", **attrs)[0]
        return self._derived[key]

    def bias_real(self, bias: Value, x: Value, w: Value) -> str:
        """The real form of a conv / linear bias. An int32 bias whose scale is exactly the float32
        product ``s_x * s_w`` (the quantize pass's convention) is dequantized with that product
        computed in the graph (one Mul of the two scales the model holds anyway) instead of a
        stored copy of it: 4 bytes a channel. onnxruntime folds the Mul and fuses as before."""
        q, wq, xq = bias.quant, w.quant, x.quant
        derived = (bias.is_const and q is not None and bias.data.dtype == np.int32 and q.axis == 0
                   and not np.any(q.zero_point) and not self.dequantize_at_load and id(bias) not in self._real
                   and xq is not None and xq.axis is None and xq.dtype == "int8" and _is_float(x)
                   and w.is_const and wq is not None and wq.axis is not None and wq.scale.size == q.scale.size
                   and np.array_equal((np.float32(xq.scale[0]) * wq.scale).view(np.uint32), q.scale.view(np.uint32)))
        if not derived:
            return self.real(bias)
        stored = self.weight(bias.name, bias.data, q)
        key = ("dq", stored)
        if key not in self._derived:
            scale = self.add("Mul", [self.act_qparams(x)[0], self.const(wq.scale, f"{w.name}.scale")],
                             base=f"{bias.name}.scale")[0]
            self._derived[key] = self.add("DequantizeLinear", [stored, scale], base=f"{bias.name}.dq", axis=0)[0]
        self._real[id(bias)] = self._derived[key]
        return self._derived[key]

    def const_real(self, v: Value) -> str:
        """The real form of an IR constant as stored in the container (dequantized if integer)."""
        stored = self.weight(v.name, v.data, v.quant)
        if v.quant is not None and v.data.dtype.kind in "iu":
            return self.dequantized_weight(stored, v.quant, v.name)
        return stored

    # -- activations --------------------------------------------------------------------------
    def act_qparams(self, v: Value) -> tuple[str, str]:
        """Scale and zero-point initializer names of a quantized activation (shifted for uint8)."""
        if id(v) not in self._qparams:
            q = v.quant
            if q.axis is not None or q.dtype != "int8":
                raise OnnxEmitError(f"activation {v.name}: expected per-tensor int8 quantization, got "
                                    f"axis={q.axis} dtype={q.dtype}; re-run the quantize pass")
            zp = int(q.zero_point[0]) + (128 if self.act_dtype == "uint8" else 0)
            self._qparams[id(v)] = (self.scalar(q.scale[0], "float32", f"{v.name}.scale"),
                                    self.scalar(zp, self.act_dtype, f"{v.name}.zero_point"))
        return self._qparams[id(v)]

    def out_name(self, v: Value) -> str:
        """The name a lowering should give the float result it computes for IR value `v`."""
        if v.quant is not None and _is_float(v):
            return self.fresh(f"{v.name}.float")
        return v.name

    def define(self, v: Value, name: str) -> None:
        """Records that the float tensor `name` computes `v`; quantizes it if `v` is quantized."""
        if v.quant is None or not _is_float(v):
            self._real[id(v)] = name
            return
        s, zp = self.act_qparams(v)
        self._quant[id(v)] = self.add("QuantizeLinear", [name, s, zp], base=f"{v.name}.q")[0]

    def define_quantized(self, v: Value, name: str) -> None:
        """Records that the int8/uint8 tensor `name` is the quantized form of `v`."""
        self._quant[id(v)] = name

    def real(self, v: Value) -> str:
        """The float tensor holding `v` (fake-quantized values if `v` is quantized)."""
        if id(v) in self._real:
            return self._real[id(v)]
        if v.is_const:
            name = self.const_real(v)
        elif id(v) in self._quant:
            s, zp = self.act_qparams(v)
            out = v.name if v.producer is not None else self.fresh(f"{v.name}.dq")
            name = self.add("DequantizeLinear", [self._quant[id(v)], s, zp], out)[0]
        else:
            raise OnnxEmitError(f"value {v.name} is used before it is defined")
        self._real[id(v)] = name
        return name

    def quantized(self, v: Value) -> str | None:
        """The quantized tensor of activation `v`, or None if `v` is not quantized."""
        return self._quant.get(id(v))

    def real_as(self, v: Value, dtype: str) -> str:
        """`real(v)`, cast to `dtype` if its IR dtype differs (ONNX has no implicit promotion)."""
        name = self.real(v)
        if v.dtype == dtype:
            return name
        key = ("cast", name, dtype)
        if key not in self._derived:
            self._derived[key] = self.add("Cast", [name], base=f"{v.name}.{dtype}", to=elem_type(dtype))[0]
        return self._derived[key]


#: Attributes whose ONNX default is the value we would write: left out (`_without_defaults`).
_DEFAULTS = {"dilations": 1, "strides": 1, "pads": 0, "group": 1, "count_include_pad": 0, "output_padding": 0}
_SPATIAL_OPS = ("Conv", "ConvInteger", "QLinearConv", "MaxPool", "AveragePool", "ConvTranspose")


def _without_defaults(op_type: str, attrs: dict) -> dict:
    """`attrs` less those equal to their default (a conv's kernel_shape, inferred from its weight,
    too): every attribute costs a name and a value in every node of a small model."""
    if op_type in ("QuantizeLinear", "DequantizeLinear") and attrs.get("axis") == 1:
        return {k: v for k, v in attrs.items() if k != "axis"}
    if op_type not in _SPATIAL_OPS:
        return attrs
    out = {}
    for k, v in attrs.items():
        if k == "kernel_shape" and op_type != "MaxPool" and op_type != "AveragePool":
            continue
        if k in _DEFAULTS and all(int(x) == _DEFAULTS[k] for x in (v if isinstance(v, (list, tuple)) else [v])):
            continue
        out[k] = v
    return out


def _is_float(v: Value) -> bool:
    return np.dtype(v.dtype).kind == "f"
