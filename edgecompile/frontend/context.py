"""The conversion context: what an op-table converter sees while one FX node is translated.

A converter receives the node's arguments with every FX node replaced by what it became: an IR
`Value`, a `Const` (a torch tensor known at import time: a parameter, a buffer, or the result of
constant folding), a tuple of those (multi-output ops), or a plain Python literal. It emits IR
nodes through `ConvertContext.emit` (which fills each output's shape and dtype at once, by running
the op on meta tensors) and returns what the FX node stands for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..ir import Graph, Value
from ..ir.torch_ops import NUMPY_DTYPES, TORCH_DTYPES, run_op
from ..errors import InternalError


class Unsupported(InternalError):
    """Raised by a converter for an argument combination it cannot express (e.g. transposed conv)."""


@dataclass(eq=False)
class Const:
    """A tensor known at import time. It enters the IR only when a non-constant node uses it.

    `transpose_of` records that this tensor is the 2-D transpose of another constant (a weight
    seen through `permute`/`t`), so `mm`/`addmm`/`matmul` can become `linear` on the original
    [out, in] weight without copying it.
    """

    tensor: torch.Tensor
    name: str
    transpose_of: Const | None = None
    folded: bool = False     # computed at import (not a parameter): may be stored compactly


Operand = Value | Const | int | float | bool | None


def dtype_name(dtype: torch.dtype) -> str:
    """The IR dtype string of a torch dtype (raises `Unsupported` for types the IR lacks)."""
    try:
        return NUMPY_DTYPES[dtype]
    except KeyError:
        raise Unsupported(f"dtype {dtype}") from None


def add_const(graph: Graph, name: str, arr: np.ndarray, quant=None, unique: bool = True) -> Value:
    """`Graph.add_const`, keeping 0-d arrays 0-d (`np.ascontiguousarray` there makes them 1-d)."""
    v = graph.add_const(name, arr, quant, unique=unique)
    if arr.ndim == 0:
        v.data, v.shape = arr, ()
    return v


def _compact(t: torch.Tensor) -> torch.Tensor:
    """`t` reduced to size 1 along every axis on which all its slices are equal."""
    for axis in range(t.dim()):
        if t.shape[axis] > 1 and torch.equal(t, t.narrow(axis, 0, 1).expand_as(t)):
            t = t.narrow(axis, 0, 1)
    return t


def _meta(v: Value) -> torch.Tensor:
    return torch.empty(v.shape, dtype=TORCH_DTYPES[v.dtype], device="meta")


class ConvertContext:
    """Builds the IR graph for an importer; one instance per import.

    Attributes set by the importer for each FX node: `out` (the node's example value, a fake
    tensor or tuple of them), `arg_vals` (the example values of its positional arguments that are
    FX nodes, None for the others: their strides, for `as_strided`), `meta` (IR node meta: module
    path, source location, aten op).
    """

    def __init__(self, graph: Graph):
        self.graph = graph
        self.out = None
        self.arg_vals: tuple = ()
        self.meta: dict = {}
        self.name_hint = "op"
        self._materialized: dict[int, Value] = {}

    # -- shapes and dtypes of operands -----------------------------------------------------
    @staticmethod
    def shape(x: Operand) -> tuple[int, ...]:
        if isinstance(x, Value):
            return x.shape
        if isinstance(x, Const):
            return tuple(x.tensor.shape)
        return ()

    @staticmethod
    def dtype(x: Operand) -> str:
        if isinstance(x, Value):
            return x.dtype
        if isinstance(x, Const):
            return dtype_name(x.tensor.dtype)
        if isinstance(x, bool):
            return "bool"
        return "int64" if isinstance(x, int) else "float32"

    @property
    def out_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.out.shape)

    @property
    def out_dtype(self) -> str:
        return dtype_name(self.out.dtype)

    @staticmethod
    def as_meta(x: Operand):
        """A tensor (or Python scalar) with `x`'s shape and dtype, for torch's promotion rules."""
        if isinstance(x, Value):
            return _meta(x)
        if isinstance(x, Const):
            return x.tensor
        return x

    def result_dtype(self, *xs: Operand) -> str:
        """torch's type promotion over the operands (tensors, 0-d tensors and Python scalars)."""
        acc = self.as_meta(xs[0])
        for x in xs[1:]:
            dt = torch.result_type(acc, self.as_meta(x))
            acc = torch.empty((1,) * max(getattr(acc, "ndim", 0), 1), dtype=dt, device="meta")
        if not isinstance(acc, torch.Tensor):
            return self.dtype(acc)
        return dtype_name(acc.dtype)

    # -- constants --------------------------------------------------------------------------
    def const(self, data: np.ndarray | torch.Tensor, name: str | None = None) -> Value:
        """A new IR constant (one copy of the data, C-contiguous)."""
        if isinstance(data, torch.Tensor):
            data = data.detach().cpu()
            if data.dtype == torch.bfloat16:
                data = data.float()
            data = data.numpy()
        arr = np.array(data, copy=True, order="C")
        return add_const(self.graph, name or f"{self.name_hint}.const", arr)

    def scalar(self, value: float | int | bool, dtype: str) -> Value:
        """A 0-d constant of the given IR dtype."""
        return self.const(np.asarray(value, dtype=np.dtype(dtype)), f"{self.name_hint}.scalar")

    def value(self, x: Operand, dtype: str | None = None) -> Value:
        """The IR value for an operand; constants are materialized once, scalars become 0-d.

        With `dtype`, the result is converted to it (a cast node for a value, converted data for
        a constant).
        """
        if isinstance(x, Value):
            return x if dtype is None or dtype == x.dtype else self.emit("cast", [x], dtype=dtype)
        if isinstance(x, Const):
            if dtype is not None and dtype != self.dtype(x):
                return self.const(x.tensor.to(TORCH_DTYPES[dtype]), x.name)
            v = self._materialized.get(id(x))
            if v is None:
                t = _compact(x.tensor) if x.folded else x.tensor
                v = self.const(t, x.name)
                if t.shape != x.tensor.shape:
                    v = self.emit("expand", [v], shape=list(x.tensor.shape))
                self._materialized[id(x)] = v
            return v
        if isinstance(x, (bool, int, float)):
            return self.scalar(x, dtype or self.dtype(x))
        raise Unsupported(f"operand of type {type(x).__name__}")

    def like(self, fill: float | int | bool, dtype: str | None = None, shape=None) -> Const:
        """A constant filled with `fill`, shaped (and typed) like the current node's output."""
        shape = self.out_shape if shape is None else shape
        dt = TORCH_DTYPES[dtype or self.out_dtype]
        return Const(torch.full(shape, fill, dtype=dt), f"{self.name_hint}.const", folded=True)

    # -- emitting nodes ---------------------------------------------------------------------
    def emit(self, op: str, inputs: Sequence[Operand], **attrs) -> Value:
        """Appends an IR node for the current FX node; returns its output (shape/dtype filled)."""
        ins = [None if x is None else self.value(x) for x in inputs]
        node = self.graph.make_node(op, ins, attrs, name=self.name_hint, meta=dict(self.meta))
        out = run_op(op, [None if v is None else _meta(v) for v in ins], attrs)
        node.output.shape = tuple(out.shape)
        node.output.dtype = NUMPY_DTYPES[out.dtype]
        self.graph.append(node)
        return node.output

    # -- small helpers that skip identities -------------------------------------------------
    def reshape(self, x: Operand, shape: Sequence[int]) -> Value:
        x = self.value(x)
        shape = tuple(int(d) for d in shape)
        return x if x.shape == shape else self.emit("reshape", [x], shape=list(shape))

    def transpose(self, x: Operand, perm: Sequence[int]) -> Value:
        x = self.value(x)
        perm = [int(p) % len(x.shape) for p in perm] if x.shape else []
        return x if perm == sorted(perm) else self.emit("transpose", [x], perm=perm)

    def expand(self, x: Operand, shape: Sequence[int]) -> Value:
        x = self.value(x)
        shape = tuple(int(d) for d in shape)
        return x if x.shape == shape else self.emit("expand", [x], shape=list(shape))

    def slice(self, x: Operand, axis: int, start: int, end: int, step: int = 1) -> Value:
        x = self.value(x)
        if start == 0 and end == x.shape[axis] and step == 1:
            return x
        return self.emit("slice", [x], axis=axis, start=start, end=end, step=step)

    def cast(self, x: Operand, dtype: str) -> Value:
        return self.value(x, dtype)
