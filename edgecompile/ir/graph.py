"""The edgecompile graph IR: `Graph`, `Node`, `Value`, `QuantParams`.

Small slotted classes in the manner of onnx-ir: a `Value` knows its producer and its uses; a
constant (a weight) is a `Value` with `data` set; a `Node` has an op name from `ir.ops.OPS`, input
values, output values, attributes and free-form `meta` (source location, what a pass did to it,
figures for the report). Nodes are kept in topological order.

Quantization is carried on values, not as separate ops:

- a constant with integer `data` and `quant` set stands for the real tensor
  ``scale * (data - zero_point)`` (per channel along ``quant.axis``, or per tensor);
- an activation with `quant` set is quantized at that point at run time (the executor applies
  fake quantization; backends emit QuantizeLinear/DequantizeLinear or int8 kernels).

Shapes are static (taken from the example inputs at export time). The module imports nothing
but numpy so that it can be used on its own.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class QuantParams:
    """Affine quantization: ``real = scale * (q - zero_point)``.

    `scale` and `zero_point` are 1-D arrays of length C (per channel along `axis`) or length 1
    (per tensor, `axis` None). `dtype` names the integer type (`int8`, `uint8`, `int32`).
    """

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None = None
    dtype: str = "int8"

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", np.asarray(self.scale, np.float32).reshape(-1))
        object.__setattr__(self, "zero_point", np.asarray(self.zero_point, np.int32).reshape(-1))
        if self.scale.shape != self.zero_point.shape:
            raise ValueError(f"scale {self.scale.shape} and zero_point {self.zero_point.shape} differ")
        if self.axis is None and self.scale.size != 1:
            raise ValueError("per-tensor quantization needs exactly one scale")
        if not np.all(np.isfinite(self.scale)) or np.any(self.scale <= 0):
            raise ValueError("quantization scales must be finite and positive")

    @property
    def per_channel(self) -> bool:
        return self.axis is not None

    def qrange(self) -> tuple[int, int]:
        info = np.iinfo(self.dtype)
        return int(info.min), int(info.max)

    def broadcast(self, ndim: int) -> tuple[np.ndarray, np.ndarray]:
        """Scale and zero point shaped to broadcast against a tensor of rank `ndim`."""
        if self.axis is None:
            return self.scale.reshape(()), self.zero_point.reshape(())
        shape = [1] * ndim
        shape[self.axis] = -1
        return self.scale.reshape(shape), self.zero_point.reshape(shape)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        scale, zp = self.broadcast(q.ndim)
        return ((q.astype(np.float32) - zp) * scale).astype(np.float32)

    def quantize(self, x: np.ndarray) -> np.ndarray:
        scale, zp = self.broadcast(np.ndim(x))
        lo, hi = self.qrange()
        return np.clip(np.rint(x / scale) + zp, lo, hi).astype(self.dtype)


class Value:
    """A tensor flowing in the graph: a graph input, a node output, or a constant (`data` set)."""

    __slots__ = ("name", "shape", "dtype", "producer", "uses", "data", "quant")

    def __init__(self, name: str, shape: Sequence[int] | None, dtype: str,
                 data: np.ndarray | None = None, quant: QuantParams | None = None):
        self.name = name
        self.shape: tuple[int, ...] | None = None if shape is None else tuple(int(d) for d in shape)
        self.dtype = dtype
        self.producer: Node | None = None
        self.uses: list[tuple[Node, int]] = []
        self.data = data
        self.quant = quant

    @property
    def is_const(self) -> bool:
        return self.data is not None

    def real(self) -> np.ndarray:
        """The constant's real (float) value, dequantized if it is stored as integers."""
        if self.data is None:
            raise ValueError(f"value {self.name!r} is not a constant")
        if self.quant is not None and self.data.dtype.kind in "iu":
            return self.quant.dequantize(self.data)
        return self.data

    @property
    def nbytes(self) -> int:
        return 0 if self.data is None else int(self.data.nbytes)

    def __repr__(self) -> str:
        kind = "const " if self.is_const else ""
        return f"Value({kind}{self.name}: {self.dtype}{list(self.shape or [])})"


class Node:
    """One operation. `inputs` may hold None for an absent optional input (e.g. no bias)."""

    __slots__ = ("op", "name", "inputs", "outputs", "attrs", "meta")

    def __init__(self, op: str, name: str, inputs: Sequence[Value | None], outputs: Sequence[Value],
                 attrs: dict | None = None, meta: dict | None = None):
        self.op = op
        self.name = name
        self.inputs: list[Value | None] = list(inputs)
        self.outputs: list[Value] = list(outputs)
        self.attrs: dict = dict(attrs or {})
        self.meta: dict = dict(meta or {})

    @property
    def output(self) -> Value:
        return self.outputs[0]

    def input(self, i: int) -> Value | None:
        return self.inputs[i] if i < len(self.inputs) else None

    def __repr__(self) -> str:
        return f"Node({self.name}: {self.op})"


@dataclass
class Graph:
    """A dataflow graph in topological order, with constants held as `Value`s with data."""

    name: str = "graph"
    inputs: list[Value] = field(default_factory=list)
    outputs: list[Value] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    consts: dict[str, Value] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._names: set[str] = set()        # value names
        self._node_names: set[str] = set()
        self._counter = itertools.count()

    # -- naming ---------------------------------------------------------------------------
    def unique_name(self, base: str, _pool: set[str] | None = None) -> str:
        """A value name not used yet (`base`, then `base_1`, `base_2`, ...)."""
        pool = self._names if _pool is None else _pool
        base = base or "v"
        name = base
        while name in pool:
            name = f"{base}_{next(self._counter)}"
        pool.add(name)
        return name

    def unique_node_name(self, base: str) -> str:
        return self.unique_name(base, self._node_names)

    def _claim(self, name: str) -> str:
        if name in self._names:
            raise ValueError(f"name {name!r} is already used in graph {self.name!r}")
        self._names.add(name)
        return name

    # -- building -------------------------------------------------------------------------
    def add_input(self, name: str, shape: Sequence[int], dtype: str = "float32") -> Value:
        v = Value(self._claim(name), shape, dtype)
        self.inputs.append(v)
        return v

    def add_const(self, name: str, data: np.ndarray, quant: QuantParams | None = None,
                  unique: bool = True) -> Value:
        """Adds a constant (weight). With `unique`, `name` is made unique instead of clashing."""
        data = np.asarray(data, order="C")  # (ascontiguousarray would turn a 0-d array into 1-d)
        name = self.unique_name(name) if unique else self._claim(name)
        v = Value(name, data.shape, str(data.dtype) if quant is None else "float32", data, quant)
        self.consts[name] = v
        return v

    def make_node(self, op: str, inputs: Sequence[Value | None], attrs: dict | None = None,
                  name: str | None = None, n_outputs: int = 1, meta: dict | None = None,
                  out_shapes: Sequence[Sequence[int] | None] | None = None,
                  out_dtypes: Sequence[str] | None = None) -> Node:
        """Creates a node with fresh output values; the caller places it with `insert_*`/`append`.

        Output shapes may be left None and filled by `ir.shapes.infer_shapes`.
        """
        node_name = self.unique_node_name(name or op)
        outs = []
        for i in range(n_outputs):
            shape = out_shapes[i] if out_shapes is not None else None
            dtype = out_dtypes[i] if out_dtypes is not None else _default_dtype(inputs)
            outs.append(Value(self.unique_name(node_name if n_outputs == 1 else f"{node_name}.{i}"),
                              shape, dtype))
        node = Node(op, node_name, inputs, outs, attrs, meta)
        for v in outs:
            v.producer = node
        return node

    def append(self, node: Node) -> Node:
        self._link(node)
        self.nodes.append(node)
        return node

    def insert_before(self, anchor: Node, nodes: Iterable[Node]) -> None:
        i = self.nodes.index(anchor)
        new = list(nodes)
        for n in new:
            self._link(n)
        self.nodes[i:i] = new

    def add_node(self, op: str, inputs: Sequence[Value | None], attrs: dict | None = None, **kw) -> Node:
        """`make_node` + `append`: the usual way a frontend builds a graph in order."""
        return self.append(self.make_node(op, inputs, attrs, **kw))

    def _link(self, node: Node) -> None:
        for i, v in enumerate(node.inputs):
            if v is not None:
                v.uses.append((node, i))

    # -- editing --------------------------------------------------------------------------
    def set_input(self, node: Node, i: int, value: Value | None) -> None:
        old = node.inputs[i]
        if old is not None:
            old.uses.remove((node, i))
        node.inputs[i] = value
        if value is not None:
            value.uses.append((node, i))

    def replace_all_uses(self, old: Value, new: Value) -> None:
        """Points every use of `old` (including graph outputs) at `new`."""
        for node, i in list(old.uses):
            self.set_input(node, i, new)
        self.outputs = [new if o is old else o for o in self.outputs]

    def remove_node(self, node: Node) -> None:
        """Removes a node whose outputs are unused (raises otherwise)."""
        for v in node.outputs:
            if v.uses or any(o is v for o in self.outputs):
                raise ValueError(f"cannot remove {node.name}: its output {v.name} is still used")
        for i in range(len(node.inputs)):
            self.set_input(node, i, None)
        self.nodes.remove(node)

    def remove_unused(self) -> int:
        """Dead-code elimination: drops nodes and constants nothing uses. Returns how many."""
        removed = 0
        live = {id(v) for v in self.outputs}
        for node in reversed(self.nodes):
            if any(id(v) in live for v in node.outputs):
                live.update(id(v) for v in node.inputs if v is not None)
        for node in list(reversed(self.nodes)):
            if not any(id(v) in live for v in node.outputs):
                for i in range(len(node.inputs)):
                    self.set_input(node, i, None)
                self.nodes.remove(node)
                removed += 1
        for name, v in list(self.consts.items()):
            if not v.uses and not any(o is v for o in self.outputs):
                del self.consts[name]
                removed += 1
        return removed

    # -- queries --------------------------------------------------------------------------
    def values(self) -> list[Value]:
        """Every value: inputs, constants, then node outputs in order."""
        out = list(self.inputs) + list(self.consts.values())
        for n in self.nodes:
            out.extend(n.outputs)
        return out

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no node named {name!r}")

    def param_count(self) -> int:
        return int(sum(v.data.size for v in self.consts.values()))

    def weight_bytes(self) -> int:
        return int(sum(v.nbytes for v in self.consts.values()))

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for n in self.nodes:
            counts[n.op] = counts.get(n.op, 0) + 1
        return counts

    def copy(self) -> Graph:
        """A deep structural copy; constant arrays are shared (passes replace, never mutate, them)."""
        g = Graph(self.name, meta=dict(self.meta))
        vmap: dict[int, Value] = {}

        def clone(v: Value) -> Value:
            c = Value(v.name, v.shape, v.dtype, v.data, v.quant)
            g._names.add(v.name)
            vmap[id(v)] = c
            return c

        g.inputs = [clone(v) for v in self.inputs]
        g.consts = {k: clone(v) for k, v in self.consts.items()}
        for n in self.nodes:
            outs = [clone(v) for v in n.outputs]
            ins = [None if v is None else vmap[id(v)] for v in n.inputs]
            c = Node(n.op, n.name, ins, outs, dict(n.attrs), dict(n.meta))
            g._node_names.add(n.name)
            for v in outs:
                v.producer = c
            g._link(c)
            g.nodes.append(c)
        g.outputs = [vmap[id(v)] for v in self.outputs]
        return g

    def dump(self) -> str:
        """A stable, readable text form (for golden tests and `--dump-ir`)."""
        lines = [f"graph {self.name}("
                 + ", ".join(f"{v.name}: {v.dtype}{list(v.shape or [])}" for v in self.inputs) + ")"]
        for v in self.consts.values():
            q = ""
            if v.quant is not None:
                q = f" q[{v.quant.dtype}, axis={v.quant.axis}]"
            lines.append(f"  const {v.name}: {v.data.dtype}{list(v.data.shape)}{q}")
        for n in self.nodes:
            ins = ", ".join("_" if v is None else v.name for v in n.inputs)
            outs = ", ".join(f"{v.name}: {v.dtype}{list(v.shape or [])}" + (" q" if v.quant else "")
                             for v in n.outputs)
            attrs = "".join(f" {k}={_fmt_attr(a)}" for k, a in sorted(n.attrs.items()))
            lines.append(f"  {outs} = {n.op}({ins}){attrs}")
        lines.append("  return " + ", ".join(v.name for v in self.outputs))
        return "\n".join(lines) + "\n"


def _default_dtype(inputs: Sequence[Value | None]) -> str:
    for v in inputs:
        if v is not None:
            return v.dtype
    return "float32"


def _fmt_attr(a) -> str:
    if isinstance(a, float):
        r = f"{a:.7g}"  # keeps 1e-12 (round() would print 0.0)
        return r if any(c in r for c in ".einn") else r + ".0"
    if isinstance(a, (list, tuple)):
        return "[" + ",".join(_fmt_attr(x) for x in a) + "]"
    return repr(a) if isinstance(a, str) else str(a)
