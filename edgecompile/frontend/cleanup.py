"""IR clean-ups after conversion, and the final naming of nodes.

`cleanup` merges what the converters emit one FX node at a time into the form passes expect:

- reshape(reshape(x)) -> reshape(x); transpose(transpose(x)) -> one transpose;
- reshape(x: [*lead, K] -> [M, K]) -> linear -> reshape([*lead, N]) -> linear on x (a decomposed
  `nn.Linear` on a 3-D input);
- an `expand` whose users broadcast anyway is dropped;
- duplicate nodes (same op, inputs and attributes) are merged;
- identities are removed by the rule `passes.fold.CleanupPass` applies too (`ir.identity`: an
  identity that is a graph output of the graph's input stays), then dead nodes and constants.

`finalize` rebuilds the graph with final node names from `meta["module"]`.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from ..ir import Graph, Node
from ..ir.identity import remove_identities
from .context import add_const


def _single_user(graph: Graph, node: Node) -> Node | None:
    v = node.output
    if len(v.uses) != 1 or any(o is v for o in graph.outputs):
        return None
    return v.uses[0][0]


def _merge_chains(graph: Graph) -> bool:
    changed = False
    for node in graph.nodes:
        src = node.input(0)
        prod = src.producer if src is not None else None
        if prod is None or prod.op != node.op:
            continue
        if node.op == "reshape":
            graph.set_input(node, 0, prod.input(0))
            changed = True
        elif node.op == "transpose":
            p1, p2 = prod.attrs["perm"], node.attrs["perm"]
            node.attrs["perm"] = [p1[j] for j in p2]
            graph.set_input(node, 0, prod.input(0))
            changed = True
    return changed


def _fold_linear_reshapes(graph: Graph) -> bool:
    """reshape([*lead, K] -> [M, K]) -> linear -> reshape([*lead, N])  =>  linear on [*lead, K]."""
    changed = False
    for node in list(graph.nodes):
        if node.op != "linear" or node.input(0).producer is None or node.input(0).producer.op != "reshape":
            continue
        before = node.input(0).producer
        x = before.input(0)
        after = _single_user(graph, node)
        if after is None or after.op != "reshape" or len(x.shape) < 2:
            continue
        lead, k = x.shape[:-1], x.shape[-1]
        n = node.output.shape[-1]
        if before.output.shape != (int(np.prod(lead)), k) or after.output.shape != (*lead, n):
            continue
        graph.set_input(node, 0, x)
        node.output.shape = after.output.shape
        graph.replace_all_uses(after.output, node.output)
        changed = True
    return changed


def _merge_duplicates(graph: Graph) -> bool:
    """Common subexpressions: the same op on the same inputs with the same attributes, computed once."""
    changed = False
    seen: dict[tuple, Node] = {}
    for node in graph.nodes:
        key = (node.op, tuple(id(v) for v in node.inputs), repr(sorted(node.attrs.items())))
        first = seen.setdefault(key, node)
        if first is not node and len(node.outputs) == 1:
            graph.replace_all_uses(node.output, first.output)
            changed = True
    return changed


_BROADCASTING = {"add", "sub", "mul", "div", "pow", "maximum", "minimum", "eq", "lt", "gt", "where"}


def _drop_broadcast_expands(graph: Graph) -> bool:
    """expand(x) feeding only broadcasting elementwise ops that broadcast x to the same result: drop it."""
    changed = False
    for node in list(graph.nodes):
        if node.op != "expand" or any(o is node.output for o in graph.outputs):
            continue
        x, users = node.input(0), node.output.uses
        ok = bool(users)
        for user, i in users:
            shapes = [x.shape if j == i else v.shape for j, v in enumerate(user.inputs)]
            ok = ok and user.op in _BROADCASTING and tuple(np.broadcast_shapes(*shapes)) == user.output.shape
        if ok:
            graph.replace_all_uses(node.output, x)
            changed = True
    return changed


def cleanup(graph: Graph) -> None:
    """Runs the clean-ups above to a fixed point, then removes dead nodes and constants."""
    while (_merge_chains(graph) | _fold_linear_reshapes(graph) | bool(remove_identities(graph))
           | _merge_duplicates(graph) | _drop_broadcast_expands(graph)):
        graph.remove_unused()
    graph.remove_unused()


def finalize(graph: Graph) -> Graph:
    """A copy of `graph` whose nodes are named after their module.

    A module that produced one node names it ("features.0"); one that produced several names them
    "module.op" ("encoder.layer.0.attention.matmul", then "..._N"); top-level nodes are named by op.
    Values are named after their producing node; inputs and constants keep their names.
    """
    counts = Counter(n.meta.get("module", "") for n in graph.nodes)
    new = Graph(graph.name, meta=dict(graph.meta))
    vmap = {}
    for v in graph.inputs:
        vmap[id(v)] = new.add_input(v.name, v.shape, v.dtype)
    for v in graph.consts.values():
        vmap[id(v)] = add_const(new, v.name, v.data, v.quant, unique=False)
    for n in graph.nodes:
        module = n.meta.get("module", "")
        name = module if module and counts[module] == 1 else (f"{module}.{n.op}" if module else n.op)
        node = new.make_node(n.op, [None if v is None else vmap[id(v)] for v in n.inputs], n.attrs, name=name,
                             n_outputs=len(n.outputs), meta=n.meta, out_shapes=[v.shape for v in n.outputs],
                             out_dtypes=[v.dtype for v in n.outputs])
        new.append(node)
        for old, v in zip(n.outputs, node.outputs):
            vmap[id(old)] = v
    new.outputs = [vmap[id(v)] for v in graph.outputs]
    return new
