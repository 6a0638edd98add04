"""A thin layer over the TFLite flatbuffer object API (`ai_edge_litert.schema_py_generated`).

`ModelBuilder` collects tensors, constant buffers and operators of one subgraph and packs them
into `.tflite` bytes. It knows nothing about our IR: the lowering in `lower.py` drives it.

Buffers are written 16-byte aligned (as the TFLite converter does) so that kernels may read int32
biases and float weights in place. Buffer 0 is the empty sentinel the format reserves. A model whose
weights were stripped is marked so that no interpreter runs it (identifier ``ECST`` and a trailing
marker operator, defined and undone in `edgecompile.bundle.tflite_model`); `tflite_op_table` skips the
marker.
Operator versions follow TFLite's `op_version.cc` for the features we emit: a float kernel at
its base version and the int8 kernel at the version that introduced int8 (per-channel) support.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from ai_edge_litert import schema_py_generated as fb

from ...bundle.tflite_model import STRIPPED_IDENTIFIER, AlignedBufferT, is_stripped_marker, mark_stripped, pack_model

TFL_TYPES = {
    "float32": fb.TensorType.FLOAT32, "int32": fb.TensorType.INT32, "int8": fb.TensorType.INT8,
    "uint8": fb.TensorType.UINT8, "int64": fb.TensorType.INT64, "bool": fb.TensorType.BOOL,
    "int16": fb.TensorType.INT16, "float16": fb.TensorType.FLOAT16,
}
TFL_TYPE_NAMES = {v: k for k, v in TFL_TYPES.items()}
BUILTIN_NAMES = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}

# (float version, int8 version); taken from TFLite's op_version.cc for the options we set.
_VERSIONS = {
    "CONV_2D": (1, 3), "DEPTHWISE_CONV_2D": (1, 3), "FULLY_CONNECTED": (1, 4), "ADD": (1, 2),
    "SUB": (1, 2), "MUL": (1, 2), "AVERAGE_POOL_2D": (1, 2), "MAX_POOL_2D": (1, 2), "SOFTMAX": (1, 2),
    "LOGISTIC": (1, 2), "TANH": (1, 2), "RELU": (1, 2), "RELU6": (1, 2), "RELU_N1_TO_1": (1, 2),
    "CONCATENATION": (1, 2), "RESHAPE": (1, 1), "TRANSPOSE": (1, 2), "MEAN": (1, 2), "SUM": (1, 2),
    "REDUCE_MAX": (1, 2), "PAD": (1, 2), "PADV2": (1, 2), "STRIDED_SLICE": (1, 2), "GATHER": (1, 2),
    "QUANTIZE": (1, 2), "DEQUANTIZE": (1, 2), "MAXIMUM": (1, 2), "MINIMUM": (1, 2),
    "HARD_SWISH": (1, 1), "LOG_SOFTMAX": (1, 2), "BATCH_MATMUL": (1, 2), "GELU": (1, 2),
    "EMBEDDING_LOOKUP": (1, 3), "EXP": (1, 2), "RSQRT": (1, 2), "ABS": (1, 2), "NEG": (1, 2),
    "BROADCAST_TO": (2, 2), "SELECT_V2": (1, 2), "EQUAL": (1, 2), "LESS": (1, 2), "GREATER": (1, 2),
    "RESIZE_BILINEAR": (3, 3), "RESIZE_NEAREST_NEIGHBOR": (1, 2), "TRANSPOSE_CONV": (3, 3),
}


def tflite_version(op: str, int8: bool) -> int:
    """The operator-code version to record for `op` with float or int8 kernels."""
    f, q = _VERSIONS.get(op, (1, 1))
    return q if int8 else f


@dataclass(frozen=True)
class TensorRef:
    """A tensor of the subgraph under construction (index + what the lowering needs to know)."""

    index: int
    shape: tuple[int, ...]
    dtype: str
    scale: tuple[float, ...] | None = None
    zero_point: tuple[int, ...] | None = None

    @property
    def quantized(self) -> bool:
        return self.scale is not None


class ModelBuilder:
    """Collects one subgraph; `finish()` returns the `.tflite` bytes."""

    def __init__(self, name: str):
        self.name = name
        self.tensors: list[fb.TensorT] = []
        self.buffers: list[fb.BufferT] = [AlignedBufferT()]
        self.opcodes: dict[tuple[int, int], int] = {}
        self.operators: list[fb.OperatorT] = []
        self.inputs: list[int] = []
        self.outputs: list[int] = []
        self.weights: dict[str, np.ndarray] = {}     # tensor name -> data, for the container
        self.weight_quant: dict[str, tuple[np.ndarray, np.ndarray, int]] = {}
        self.stripped = False
        self._names: set[str] = set()
        self._consts: dict[tuple, TensorRef] = {}      # (dtype, shape, bytes) -> structural constant
        self._data: dict[tuple, TensorRef] = {}        # (dtype, shape, quantization, digest) -> constant

    def _unique(self, name: str) -> str:
        base, i = name, 1
        while name in self._names:
            name = f"{base}_{i}"
            i += 1
        self._names.add(name)
        return name

    def tensor(self, name: str, shape, dtype: str, scale=None, zero_point=None, axis: int = 0,
               data: np.ndarray | None = None, weight: bool = False) -> TensorRef:
        """Adds a tensor; with `data` it is a constant (a `weight` goes to the container too). A
        constant equal to an earlier one (same dtype, shape, quantization, bytes, weight or not)
        is returned as that tensor: it is stored once, whoever reads it."""
        key = None
        if data is not None:
            data = np.asarray(data, dtype=dtype, order="C")   # keeps 0-d scalars 0-d
            q = None if scale is None else (np.reshape(scale, -1).astype(np.float32).tobytes(),
                                            np.reshape(zero_point, -1).astype(np.int64).tobytes(), int(axis))
            key = (dtype, data.shape, q, weight, hashlib.blake2b(data.data, digest_size=20).digest())
            if key in self._data:
                return self._data[key]
        t = fb.TensorT()
        t.name = self._unique(name)
        t.shape = [int(d) for d in shape]
        t.type = TFL_TYPES[dtype]
        if scale is not None:
            q = fb.QuantizationParametersT()
            q.scale = [float(s) for s in np.reshape(scale, -1)]
            q.zeroPoint = [int(z) for z in np.reshape(zero_point, -1)]
            q.quantizedDimension = int(axis) if len(q.scale) > 1 else 0
            t.quantization = q
        t.buffer = 0
        if data is not None:
            assert tuple(data.shape) == tuple(t.shape), (t.name, data.shape, t.shape)
            buf = AlignedBufferT()
            buf.data = data
            t.buffer = len(self.buffers)
            self.buffers.append(buf)
            if weight:
                self.weights[t.name] = data
                if scale is not None:
                    self.weight_quant[t.name] = (np.reshape(scale, -1).astype(np.float32),
                                                 np.reshape(zero_point, -1).astype(np.int64),
                                                 int(axis) if np.size(scale) > 1 else None)
        self.tensors.append(t)
        sc = None if scale is None else tuple(float(s) for s in np.reshape(scale, -1))
        zp = None if scale is None else tuple(int(z) for z in np.reshape(zero_point, -1))
        ref = TensorRef(len(self.tensors) - 1, tuple(t.shape), dtype, sc, zp)
        if key is not None:
            self._data[key] = ref
        return ref

    def const(self, name: str, data: np.ndarray) -> TensorRef:
        """A small structural constant (shape, axes, permutation): stays in the flatbuffer. Equal
        constants are one tensor (read-only inputs may be shared by any number of operators)."""
        data = np.asarray(data)
        key = (data.dtype.str, data.shape, data.tobytes())
        if key not in self._consts:
            self._consts[key] = self.tensor(name, data.shape, str(data.dtype), data=data)
        return self._consts[key]

    def op(self, op: str, inputs: list[TensorRef | None], outputs: list[TensorRef],
           options=None, int8: bool = False) -> None:
        """Appends an operator (execution order = call order)."""
        code = getattr(fb.BuiltinOperator, op)
        key = (code, tflite_version(op, int8))
        if key not in self.opcodes:
            self.opcodes[key] = len(self.opcodes)
        o = fb.OperatorT()
        o.opcodeIndex = self.opcodes[key]
        o.inputs = [-1 if t is None else t.index for t in inputs]
        o.outputs = [t.index for t in outputs]
        if options is not None:
            o.builtinOptionsType = getattr(fb.BuiltinOptions, type(options).__name__[:-1])
            o.builtinOptions = options
        self.operators.append(o)

    def strip_weights(self) -> None:
        """Empties every weight buffer (the weights then live in the container only); `finish`
        then marks the model as stripped."""
        self.stripped = True
        for t in self.tensors:
            if t.name in self.weights:
                self.buffers[t.buffer].data = None

    def finish(self) -> bytes:
        model = fb.ModelT()
        model.version = 3
        model.description = None if self.stripped else "edgecompile"
        codes = []
        for (code, version), _ in sorted(self.opcodes.items(), key=lambda kv: kv[1]):
            c = fb.OperatorCodeT()
            c.builtinCode = code
            c.deprecatedBuiltinCode = min(code, fb.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES)
            c.version = version
            codes.append(c)
        model.operatorCodes = codes
        sg = fb.SubGraphT()
        sg.name = self.name
        sg.tensors, sg.operators = self.tensors, self.operators
        sg.inputs, sg.outputs = list(self.inputs), list(self.outputs)
        model.subgraphs = [sg]
        model.buffers = self.buffers
        if self.stripped:
            mark_stripped(model)
            return pack_model(model, STRIPPED_IDENTIFIER)
        return pack_model(model)


def unpack_model(model_bytes: bytes) -> fb.ModelT:
    """Parses `.tflite` bytes into the object API."""
    return fb.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)


def tflite_op_table(model_bytes: bytes) -> list[tuple[str, int, int]]:
    """(builtin op name, version, count) for every operator code used, in first-use order (the
    stripped-model marker is no operator of the model and is left out)."""
    model = unpack_model(model_bytes)
    counts: dict[int, int] = {}
    order: list[int] = []
    for sg in model.subgraphs:
        for o in sg.operators or []:
            if is_stripped_marker(model.operatorCodes[o.opcodeIndex]):
                continue
            if o.opcodeIndex not in counts:
                order.append(o.opcodeIndex)
                counts[o.opcodeIndex] = 0
            counts[o.opcodeIndex] += 1
    out = []
    for i in order:
        c = model.operatorCodes[i]
        code = max(c.builtinCode, c.deprecatedBuiltinCode)
        out.append((BUILTIN_NAMES.get(code, f"OP_{code}"), int(c.version), counts[i]))
    return out
