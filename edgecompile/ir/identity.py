"""Identity nodes: the one rule the frontend's clean-up and `passes.fold.CleanupPass` both apply.

A node is an identity when it passes one input through unchanged: a reshape or expand to the same
shape, a transpose by the identity permutation, a cast to the same dtype, a full slice with step
1, or a ``where`` on a constant condition of one value (a Hugging Face attention mask without
padding). Removing it rewires its users to that input; when its output is a graph output and the
input is a graph input or a constant, the node stays, so that an output never aliases an input
(``return x.reshape(x.shape)`` keeps its reshape; backends and runtimes need the two distinct).
"""

from __future__ import annotations

import numpy as np

from .graph import Graph, Node, Value

__all__ = ["identity_source", "remove_identities"]


def _selected(node: Node) -> Value | None:
    """The operand a ``where(cond, x, y)`` always selects when `cond` is a constant of one value."""
    cond = node.input(0)
    if not cond.is_const or cond.data.size == 0:
        return None
    if np.all(cond.data):
        return node.input(1)
    return node.input(2) if not np.any(cond.data) else None


#: op -> the input a node of it may pass through unchanged (None: not an identity);
#: `identity_source` also checks that input has the output's shape and dtype
_PASSES_THROUGH = {
    "reshape": lambda n: n.input(0),
    "expand": lambda n: n.input(0),
    "transpose": lambda n: n.input(0) if list(n.attrs["perm"]) == sorted(n.attrs["perm"]) else None,
    "cast": lambda n: n.input(0),
    "slice": lambda n: n.input(0) if n.attrs["step"] == 1 else None,
    "where": _selected,
}


def identity_source(node: Node) -> Value | None:
    """The value `node` passes through unchanged, or None when it is not an identity."""
    rule = _PASSES_THROUGH.get(node.op)
    src = rule(node) if rule is not None else None
    if src is None or src.shape != node.output.shape or src.dtype != node.output.dtype:
        return None
    return src


def remove_identities(graph: Graph) -> int:
    """Removes every identity node of `graph` (see the module docstring); returns how many."""
    removed = 0
    for node in list(graph.nodes):
        src = identity_source(node)
        if src is None:
            continue
        if any(o is node.output for o in graph.outputs) and (src in graph.inputs or src.is_const):
            continue  # keep a graph output distinct from an input or a constant
        graph.replace_all_uses(node.output, src)
        graph.remove_node(node)
        removed += 1
    return removed
