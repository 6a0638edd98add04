"""Graph surgery for the low-rank pass: one function per factorized form.

Each builder takes the node to replace and the factors, creates the chain of standard ops
(linear, conv, gather, matmul, reshape, transpose, add), puts it where the node was and removes
the node. The chain's last node takes over the node's output value, so downstream nodes and
graph outputs keep their names. No numerics here: the factors come from `decompose.py`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ...ir import Graph, Node, Value

__all__ = ["replace_linear_svd", "replace_matmul_svd", "replace_gather_svd", "replace_conv_svd",
           "replace_conv_tucker2", "replace_linear_tt"]


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


class _Chain:
    """Collects the nodes that replace `old`, then swaps them in."""

    def __init__(self, graph: Graph, old: Node, meta: dict):
        self.graph, self.old, self.meta = graph, old, meta
        self.nodes: list[Node] = []

    def const(self, suffix: str, data: np.ndarray) -> Value:
        return self.graph.add_const(f"{self.old.name}.{suffix}", _f32(data))

    def add(self, op: str, inputs: Sequence[Value | None], attrs: dict | None = None,
            suffix: str = "") -> Value:
        part = len(self.nodes)
        node = self.graph.make_node(op, inputs, attrs, name=f"{self.old.name}.{suffix or op}",
                                    meta={"lowrank": dict(self.meta, part=part)})
        self.nodes.append(node)
        return node.output

    def commit(self) -> list[Node]:
        """Inserts the chain before `old`, hands it `old`'s output value, removes `old`."""
        graph, old = self.graph, self.old
        last = self.nodes[-1]
        fresh, kept = last.outputs[0], old.outputs[0]
        # swap output values: the chain ends in the value everyone already uses.
        last.outputs[0], old.outputs[0] = kept, fresh
        kept.producer, fresh.producer = last, old
        fresh.shape, fresh.dtype = kept.shape, kept.dtype
        for node in self.nodes:
            node.meta["lowrank"]["parts"] = len(self.nodes)
        graph.insert_before(old, self.nodes)
        graph.remove_node(old)
        return self.nodes


def replace_linear_svd(graph: Graph, node: Node, u: np.ndarray, v: np.ndarray, meta: dict) -> list[Node]:
    """linear(x, W, b)  ->  linear(linear(x, V), U, b) with W ≈ U V (U [out, r], V [r, in])."""
    chain = _Chain(graph, node, meta)
    h = chain.add("linear", [node.input(0), chain.const("lowrank_v", v), None], suffix="v")
    chain.add("linear", [h, chain.const("lowrank_u", u), node.input(2)], suffix="u")
    return chain.commit()


def replace_matmul_svd(graph: Graph, node: Node, p: np.ndarray, q: np.ndarray, meta: dict) -> list[Node]:
    """matmul(x, B) with constant B [in, out] ≈ P Q  ->  matmul(matmul(x, P), Q)."""
    chain = _Chain(graph, node, meta)
    h = chain.add("matmul", [node.input(0), chain.const("lowrank_p", p)], suffix="p")
    chain.add("matmul", [h, chain.const("lowrank_q", q)], suffix="q")
    return chain.commit()


def replace_gather_svd(graph: Graph, node: Node, u: np.ndarray, v: np.ndarray, meta: dict) -> list[Node]:
    """gather(T, idx) with table T [vocab, d] ≈ U V  ->  linear(gather(U, idx), Vᵀ)."""
    chain = _Chain(graph, node, meta)
    h = chain.add("gather", [chain.const("lowrank_u", u), node.input(1)], dict(node.attrs), suffix="gather")
    chain.add("linear", [h, chain.const("lowrank_v", v.T), None], suffix="v")
    return chain.commit()


def _plain_conv_attrs(nd: int) -> dict:
    return {"stride": [1] * nd, "padding": [0] * nd, "dilation": [1] * nd, "groups": 1}


def replace_conv_svd(graph: Graph, node: Node, u: np.ndarray, v: np.ndarray, meta: dict) -> list[Node]:
    """1x1 conv(x, W, b), W [O, I, 1…] ≈ U V  ->  conv1x1(conv1x1(x, V; stride, padding…), U, b).

    The first conv keeps the original stride, padding and dilation: it has no bias, so padded
    zeros stay zero and the second conv sees exactly what the original would.
    """
    chain = _Chain(graph, node, meta)
    ones = (1,) * (node.input(1).data.ndim - 2)
    h = chain.add("conv", [node.input(0), chain.const("lowrank_v", v.reshape(*v.shape, *ones)), None],
                  dict(node.attrs), suffix="v")
    chain.add("conv", [h, chain.const("lowrank_u", u.reshape(*u.shape, *ones)), node.input(2)],
              _plain_conv_attrs(len(ones)), suffix="u")
    return chain.commit()


def replace_conv_tucker2(graph: Graph, node: Node, first: np.ndarray | None, core: np.ndarray,
                         last: np.ndarray | None, meta: dict) -> list[Node]:
    """conv kxk  ->  conv1x1 (I -> r_in), conv kxk (r_in -> r_out, original stride/padding),
    conv1x1 (r_out -> O, bias). `first` or `last` may be None when folded into the core."""
    chain = _Chain(graph, node, meta)
    nd = core.ndim - 2
    x = node.input(0)
    if first is not None:
        x = chain.add("conv", [x, chain.const("tucker_first", first), None], _plain_conv_attrs(nd),
                      suffix="first")
    core_bias = node.input(2) if last is None else None
    x = chain.add("conv", [x, chain.const("tucker_core", core), core_bias], dict(node.attrs), suffix="core")
    if last is not None:
        chain.add("conv", [x, chain.const("tucker_last", last), node.input(2)], _plain_conv_attrs(nd),
                  suffix="last")
    return chain.commit()


def replace_linear_tt(graph: Graph, node: Node, cores: Sequence[np.ndarray], meta: dict) -> list[Node]:
    """linear(x, W, b) with W a TT-matrix  ->  d linear contractions between reshapes/transposes.

    With x viewed as [B, i₁…i_d] (B = the leading dims), core k (from d down to 1) contracts the
    pair (i_k, r_k) into (r_{k-1}, o_k), as a `linear` with weight [r_{k-1}·o_k, i_k·r_k] on rows
    ordered (o_{k+1}…o_d, B, i₁…i_{k-1}); a transpose then moves o_k in front of the finished
    output modes. The last step reorders [o₂…o_d, B, o₁] into [B, o₁…o_d]. Cost: Σ_k rows·i_k·r_k·
    r_{k-1}·o_k multiply-adds instead of B·m·n.
    """
    chain = _Chain(graph, node, meta)
    x = node.input(0)
    lead = tuple(x.shape[:-1])
    batch = math.prod(lead)
    outs = [c.shape[1] for c in cores]
    ins = [c.shape[2] for c in cores]
    d = len(cores)
    m = math.prod(outs)
    h = chain.add("reshape", [x], {"shape": [batch * math.prod(ins[:-1]), ins[-1]]}, suffix="tt_in")
    done = 1  # product of the output modes already produced (o_{k+1}…o_d)
    for k in range(d - 1, -1, -1):
        core = cores[k]  # [r_left, o, i, r_right]
        r_left, o, i, r_right = core.shape
        # linear computes rows @ weightᵀ: weight[(r_left, o), (i, r_right)] is the core itself.
        weight = core.reshape(r_left * o, i * r_right)
        h = chain.add("linear", [h, chain.const(f"tt_core{k}", weight), None], suffix=f"tt{k}")
        rows_inner = batch * math.prod(ins[:k])  # B · i_1…i_{k-1}
        if k > 0:
            h = chain.add("reshape", [h], {"shape": [done, rows_inner, r_left, o]}, suffix=f"tt{k}_split")
            h = chain.add("transpose", [h], {"perm": [3, 0, 1, 2]}, suffix=f"tt{k}_perm")
            done *= o
            h = chain.add("reshape", [h], {"shape": [done * batch * math.prod(ins[:k - 1]),
                                                     ins[k - 1] * r_left]}, suffix=f"tt{k}_merge")
        else:
            h = chain.add("reshape", [h], {"shape": [done, batch, o]}, suffix="tt_split")
            h = chain.add("transpose", [h], {"perm": [1, 2, 0]}, suffix="tt_perm")
            h = chain.add("reshape", [h], {"shape": [*lead, m]}, suffix="tt_out")
    if node.input(2) is not None:
        chain.add("add", [h, node.input(2)], suffix="bias")
    return chain.commit()
