"""`verify(graph)`: the structural and shape invariants every pass must keep."""

from __future__ import annotations

from .graph import Graph
from .ops import OPS
from ..errors import InternalError


class VerifyError(InternalError, ValueError):
    """The graph breaks an IR invariant; the message lists every problem found."""


def verify(graph: Graph, check_shapes: bool = True) -> None:
    """Raises `VerifyError` unless the graph is well formed.

    Checks: known ops with the right arity and attributes; unique names; every input defined
    before use (topological order); producer/use links consistent; constants' data matches their
    declared shape; quantization parameters sized for their axis; outputs defined; and (with
    `check_shapes`) stored shapes equal to those inferred by running the ops on meta tensors.
    """
    problems: list[str] = []
    defined = {id(v) for v in graph.inputs} | {id(v) for v in graph.consts.values()}
    names: set[str] = set()
    for v in list(graph.inputs) + list(graph.consts.values()):
        if v.name in names:
            problems.append(f"duplicate value name {v.name}")
        names.add(v.name)
        if v.producer is not None:
            problems.append(f"input/const {v.name} has a producer")
    for v in graph.consts.values():
        if tuple(v.data.shape) != v.shape:
            problems.append(f"const {v.name}: data shape {list(v.data.shape)} != declared {list(v.shape)}")
        q = v.quant
        if q is not None and q.axis is not None:
            if not -v.data.ndim <= q.axis < v.data.ndim or v.data.shape[q.axis] != q.scale.size:
                problems.append(f"const {v.name}: {q.scale.size} scales do not fit axis {q.axis} of "
                                f"{list(v.data.shape)}")
    node_names: set[str] = set()
    for node in graph.nodes:
        where = f"node {node.name} ({node.op})"
        schema = OPS.get(node.op)
        if schema is None:
            problems.append(f"{where}: unknown op")
            continue
        if node.name in node_names:
            problems.append(f"{where}: duplicate node name")
        node_names.add(node.name)
        n = len(node.inputs)
        if n < schema.min_inputs or (schema.max_inputs is not None and n > schema.max_inputs):
            problems.append(f"{where}: {n} inputs, schema {schema.inputs}")
        missing = [a for a in schema.attrs if a not in node.attrs]
        if missing:
            problems.append(f"{where}: missing attributes {missing}")
        for i, v in enumerate(node.inputs):
            if v is None:
                if i < schema.min_inputs:
                    problems.append(f"{where}: required input {i} is absent")
                continue
            if id(v) not in defined:
                problems.append(f"{where}: input {v.name} used before it is defined")
            if (node, i) not in v.uses:
                problems.append(f"{where}: input {v.name} does not list this use")
        for v in node.outputs:
            if v.producer is not node:
                problems.append(f"{where}: output {v.name} has another producer")
            if v.name in names:
                problems.append(f"{where}: duplicate value name {v.name}")
            names.add(v.name)
            defined.add(id(v))
    for v in graph.values():
        for user, i in v.uses:
            if i >= len(user.inputs) or user.inputs[i] is not v:
                problems.append(f"value {v.name}: stale use by {user.name}")
    for v in graph.outputs:
        if id(v) not in defined:
            problems.append(f"graph output {v.name} is not defined")
    if not problems and check_shapes:
        from .shapes import infer_shapes   # torch's meta tensors: imported only when shapes are checked
        try:
            problems += infer_shapes(graph)
        except ValueError as e:
            problems.append(str(e))
    if problems:
        raise VerifyError(f"graph {graph.name!r} is invalid: " + "; ".join(problems[:20])
                          + (f" (+{len(problems) - 20} more)" if len(problems) > 20 else ""))
