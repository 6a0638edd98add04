"""Channel paths for structured pruning: where a layer's output channels go, and how to cut them.

`trace_channels(graph, layer)` follows the layer's output channels forward through every op that
keeps channel c in its own slot (elementwise ops, batch norm, pooling, reductions over other axes,
a flatten) up to the next conv/linear layers, and returns the list of steps, or the reason the
channels cannot be removed (they reach a residual add, a concat, a channel-mixing reshape, a
grouped conv, a graph output...). `apply_channel_removal` then removes the chosen channels along
the path. Used by `prune.ChannelPrunePass`.

A removed channel whose weights are zero still outputs a constant (its bias, passed through the
path). That constant's effect on the next layer is folded into that layer's bias, so removing
zero-weight channels is exact; for channels with small non-zero weights it is the natural
approximation (the channel is replaced by what it outputs with its weights zeroed).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..ir import Graph, Node, Value
from ..ir.ops import OPS
from ..ir.torch_ops import run_op
from ..errors import InternalError

__all__ = ["ChannelStep", "trace_channels", "apply_channel_removal"]

# Ops applied element by element: channel c of the output depends on channel c of the input only.
ELEMENTWISE = {n for n, s in OPS.items() if s.inputs == ("x",) and not s.attrs} | {"gelu", "clip"}
BINARY = {"add", "sub", "mul", "div", "pow", "maximum", "minimum"}
POOLS = {"max_pool", "avg_pool"}
REDUCES = {"mean", "sum", "reduce_max"}


@dataclass
class ChannelStep:
    """One node on a channel path.

    `src` is the value carrying the channels into `node` (input `index`), where channel c spans
    ``[c * block, (c + 1) * block)`` along `axis`. `out_block` is the block size in the output
    (it grows at a flatten). `kind` is "elementwise", "binary", "batch_norm", "pool", "reduce",
    "flatten", "conv_in" or "linear_in" (the last two end the path).
    """

    node: Node
    kind: str
    src: Value
    index: int
    axis: int
    block: int
    out_block: int


class _Blocked(InternalError):
    """Internal: the channel path reaches something that cannot be resized."""


def _sole_float_const(v: Value | None) -> bool:
    return (v is not None and v.is_const and v.quant is None and v.data.dtype.kind == "f"
            and len(v.uses) == 1)


def _classify(node: Node, i: int, v: Value, ax: int, block: int) -> tuple[str, int, int]:
    """(kind, axis of the output, block of the output) for `v` entering `node` as input `i`."""
    op, where = node.op, f"{node.op} {node.name}"
    if op in ELEMENTWISE:
        return "elementwise", ax, block
    if op == "batch_norm" and i == 0 and ax == 1 and block == 1:
        if not all(p is None or _sole_float_const(p) for p in node.inputs[1:]):
            raise _Blocked(f"feeds {where} whose parameters are shared or not constant")
        return "batch_norm", 1, 1
    if op in POOLS and i == 0 and ax == 1 and block == 1:
        return "pool", 1, 1
    if op in REDUCES:
        nd = len(v.shape)
        axes = sorted(a % nd for a in node.attrs["axes"])
        if ax in axes or block != 1:
            raise _Blocked(f"feeds {where}, which reduces over the channel axis")
        return "reduce", ax if node.attrs["keepdims"] else ax - sum(a < ax for a in axes), 1
    if op in BINARY:
        return "binary", _check_binary(node, i, v, ax, block), block
    if op == "reshape":
        s, t = v.shape, node.output.shape
        if t == s:
            return "flatten", ax, block
        if t is not None and len(t) == ax + 1 and tuple(t[:ax]) == tuple(s[:ax]):
            return "flatten", ax, block * int(np.prod(s[ax + 1:], dtype=np.int64))
        raise _Blocked(f"feeds reshape {node.name}, which mixes channels ({list(s)} -> {list(t or [])})")
    if op == "conv" and i == 0:
        if node.attrs["groups"] != 1:
            raise _Blocked(f"feeds grouped/depthwise conv {node.name} (groups={node.attrs['groups']})")
        if ax != 1 or block != 1:
            raise _Blocked(f"reaches conv {node.name} on a non-channel axis")
        if not _sole_float_const(node.input(1)):
            raise _Blocked(f"feeds conv {node.name} whose weight is shared or not a float constant")
        return "conv_in", ax, block
    if op == "linear" and i == 0:
        if ax != len(v.shape) - 1:
            raise _Blocked(f"reaches linear {node.name} on a non-feature axis")
        if not _sole_float_const(node.input(1)):
            raise _Blocked(f"feeds linear {node.name} whose weight is shared or not a float constant")
        return "linear_in", ax, block
    if op == "concat":
        raise _Blocked(f"feeds {where}")
    raise _Blocked(f"feeds {where}, which mixes or reorders channels")


def _check_binary(node: Node, i: int, v: Value, ax: int, block: int) -> int:
    """For an elementwise binary op with a constant operand broadcast per channel: the output axis."""
    other, out = node.inputs[1 - i], node.output
    if other is None or not other.is_const or other.data.dtype.kind != "f" or other.quant is not None:
        kind = "residual add" if node.op == "add" else f"{node.op} with another activation"
        raise _Blocked(f"feeds {kind} {node.name}")
    if out.shape is None or tuple(v.shape) != tuple(out.shape):
        raise _Blocked(f"is broadcast by {node.op} {node.name}")
    c = v.shape[ax] // block
    rel = ax - (len(out.shape) - other.data.ndim)            # channel axis within `other`
    for d, size in enumerate(other.data.shape):
        if size != 1 and not (d == rel and size == c and block == 1):
            raise _Blocked(f"feeds {node.op} {node.name} with a constant that is not per channel")
    return ax


def trace_channels(graph: Graph, layer: Node) -> list[ChannelStep] | str:
    """The channel path from `layer`'s output (steps in topological order), or why there is none."""
    out = layer.output
    axis = 1 if layer.op == "conv" else len(out.shape) - 1
    graph_outputs = {id(v) for v in graph.outputs}
    steps: list[ChannelStep] = []
    stack = [(out, axis, 1)]
    try:
        while stack:
            v, ax, block = stack.pop(0)
            if id(v) in graph_outputs:
                raise _Blocked(f"its channels reach the graph output {v.name}")
            if not v.uses:
                raise _Blocked(f"its channels reach the unused value {v.name}")
            for node, i in v.uses:
                kind, ax2, block2 = _classify(node, i, v, ax, block)
                steps.append(ChannelStep(node, kind, v, i, ax, block, block2))
                if kind not in ("conv_in", "linear_in"):
                    stack.append((node.output, ax2, block2))
    except _Blocked as e:
        return str(e)
    order = {id(n): k for k, n in enumerate(graph.nodes)}
    return sorted(steps, key=lambda s: order[id(s.node)])


# ---------------------------------------------------------------------------------- apply

def _t(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, np.float32))


def _set_const(graph: Graph, node: Node, i: int, data: np.ndarray) -> None:
    """Replaces the constant at `node.inputs[i]` (in place if only `node` uses it)."""
    v = node.inputs[i]
    data = np.ascontiguousarray(data, dtype=v.data.dtype)
    if len(v.uses) == 1:
        v.data, v.shape = data, data.shape
    else:
        graph.set_input(node, i, graph.add_const(v.name, data))


def _add_bias(graph: Graph, node: Node, delta: np.ndarray) -> None:
    b = node.input(2)
    if b is None:
        while len(node.inputs) < 3:
            node.inputs.append(None)
        graph.set_input(node, 2, graph.add_const(f"{node.name}.bias", delta.astype(np.float32)))
    else:
        _set_const(graph, node, 2, b.data + delta.astype(b.data.dtype))


def _per_channel(other: np.ndarray, rel: int, idx: np.ndarray) -> np.ndarray:
    """The per-channel values of a broadcast constant at channels `idx` (scalar or per channel)."""
    if 0 <= rel < other.ndim and other.shape[rel] > 1:
        return np.take(other, idx, axis=rel).reshape(-1)
    return np.full(idx.size, other.reshape(-1)[0], other.dtype)


def _spatially_padded(node: Node) -> bool:
    pads = node.attrs.get("padding", 0)
    return any(p != 0 for p in (pads if isinstance(pads, (list, tuple)) else [pads]))


def apply_channel_removal(graph: Graph, layer: Node, steps: list[ChannelStep], drop: np.ndarray) -> bool:
    """Removes output channels `drop` of `layer` and resizes everything on its channel path.

    Shapes of the values in between are left for `infer_shapes(overwrite=True)`. Returns False
    when a bias fold is approximate (a non-zero constant channel meets a padded conv/avg-pool).
    """
    w, b = layer.input(1), layer.input(2)
    c = w.data.shape[0]
    keep = np.setdiff1d(np.arange(c), drop)
    const = {id(layer.output): b.data[drop].astype(np.float32) if b is not None else np.zeros(drop.size, np.float32)}
    _set_const(graph, layer, 1, w.data[keep])
    if b is not None:
        _set_const(graph, layer, 2, b.data[keep])
    exact = True
    for st in steps:
        n, k = st.node, const[id(st.src)]
        if st.kind == "elementwise":
            const[id(n.output)] = run_op(n.op, [_t(k)], n.attrs).numpy()
        elif st.kind == "batch_norm":
            params = [None if p is None else p.data for p in n.inputs[1:]]
            dropped = [None if p is None else _t(p[drop]) for p in params]
            const[id(n.output)] = run_op(n.op, [_t(k)[None]] + dropped, n.attrs)[0].numpy()
            for j, p in enumerate(params, start=1):
                if p is not None:
                    _set_const(graph, n, j, p[keep])
        elif st.kind == "binary":
            other = n.inputs[1 - st.index].data
            rel = st.axis - (len(n.output.shape) - other.ndim)
            args = [_t(k), _t(_per_channel(other, rel, drop))]
            const[id(n.output)] = run_op(n.op, args if st.index == 0 else args[::-1], n.attrs).numpy()
            if 0 <= rel < other.ndim and other.shape[rel] > 1:
                _set_const(graph, n, 1 - st.index, np.take(other, keep, axis=rel))
        elif st.kind == "pool":
            exact &= not (n.op == "avg_pool" and _spatially_padded(n) and n.attrs["count_include_pad"]
                          and np.any(k != 0))
            const[id(n.output)] = k
        elif st.kind == "reduce":
            count = int(np.prod([st.src.shape[a] for a in n.attrs["axes"]])) if n.op == "sum" else 1
            const[id(n.output)] = k * count
        elif st.kind == "flatten":
            shape = list(n.attrs["shape"])
            if shape[st.axis] != -1:
                shape[st.axis] = keep.size * st.out_block
            n.attrs["shape"] = shape
            const[id(n.output)] = k
        elif st.kind == "conv_in":
            wn = n.input(1).data
            if np.any(k != 0):
                spatial = tuple(range(2, wn.ndim))
                _add_bias(graph, n, np.einsum("or,r->o", wn[:, drop].sum(spatial), k))
                exact &= not _spatially_padded(n)
            _set_const(graph, n, 1, wn[:, keep])
        elif st.kind == "linear_in":
            wn, blk = n.input(1).data, np.arange(st.block)
            cols_drop = (drop[:, None] * st.block + blk).ravel()
            cols_keep = (keep[:, None] * st.block + blk).ravel()
            if np.any(k != 0):
                _add_bias(graph, n, wn[:, cols_drop] @ np.repeat(k, st.block))
            _set_const(graph, n, 1, wn[:, cols_keep])
    return exact
