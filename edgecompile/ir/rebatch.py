"""`rebatch(graph, n)`: the same graph for another batch size.

Graphs are static (shapes from the example inputs, often batch 1 for deployment); calibration,
fine-tuning and verification want larger batches. The batch sits on axis 0 of the inputs; `rebatch`
follows it through every op (transposes move it, reshapes may merge it with a neighbour, as attention's
[T, B, E] -> [T, B*H, D] does), scales the matching entry of each `reshape`/`expand` shape, re-infers
every shape, and checks the result numerically against the original on one batch.
"""

from __future__ import annotations

import numpy as np

from .graph import Graph
from .shapes import infer_shapes
from .verify import verify
from ..errors import InputError


class RebatchError(InputError, ValueError):
    """The graph does not keep its batch on axis 0 consistently; use the original batch size."""


def rebatch(graph: Graph, n: int, check_inputs: list[np.ndarray] | None = None, rtol: float = 1e-4) -> Graph:
    """A copy of `graph` taking batches of `n` (constants shared, not copied).

    With `check_inputs` (arrays with at least `n` samples), the copy's outputs on those samples are
    compared with the original graph run in its own batch size; a mismatch raises `RebatchError`.
    """
    if not graph.inputs or any(not v.shape for v in graph.inputs):
        raise RebatchError(f"graph {graph.name!r} has an input without a batch axis")
    b = graph.inputs[0].shape[0]
    if any(v.shape[0] != b for v in graph.inputs):
        raise RebatchError("graph inputs disagree on the batch size")
    g = graph.copy()
    if n == b:
        return g
    axes = _batch_axes(g, b)
    for v in g.inputs:
        v.shape = (n,) + tuple(v.shape[1:])
    for node in g.nodes:
        if node.op in ("reshape", "expand"):
            j = axes.get(id(node.output))
            shape = list(node.attrs["shape"])
            if j is None and node.op == "expand" and shape and shape[0] == b:
                j = 0   # a constant broadcast to the batch (e.g. a CLS token)
            if j is not None and shape[j] % b == 0:
                shape[j] = shape[j] // b * n
                node.attrs = dict(node.attrs, shape=shape)
    for node in g.nodes:
        for v in node.outputs:
            v.shape = None
    try:
        infer_shapes(g)
        verify(g)
    except ValueError as e:
        raise RebatchError(f"graph {graph.name!r} does not rebatch from {b} to {n}: {e}") from e
    if any(not v.shape or v.shape[0] != n for v in g.outputs):
        raise RebatchError(f"graph {graph.name!r}: outputs do not carry the batch on axis 0")
    if check_inputs is not None:
        _check(graph, g, b, n, check_inputs, rtol)
    return g


def _prod(xs) -> int:
    p = 1
    for x in xs:
        p *= int(x)
    return p


def _batch_axes(g: Graph, b: int) -> dict[int, int]:
    """id(value) -> the axis carrying the batch, for every value that carries it (shapes before rebatch).

    Tracks (axis, inner): the batch is a factor of size b of that axis with `inner` elements of the
    same axis below it ([T, B*H, D] has the batch on axis 1 with inner H; [T*B, E] on axis 0, inner 1).
    A reshape keeps the batch's stride in the flat layout and finds the output axis that holds it.
    """
    ax: dict[int, tuple[int, int]] = {id(v): (0, 1) for v in g.inputs}
    for node in g.nodes:
        out = node.output
        ins = [(v, ax[id(v)]) for v in node.inputs if v is not None and id(v) in ax]
        if not ins or out.shape is None:
            continue
        v, (a, inner) = ins[0]
        if node.op == "transpose":
            ax[id(out)] = (list(node.attrs["perm"]).index(a), inner)
        elif node.op == "reshape":
            stride = inner * _prod(v.shape[a + 1:])          # flat stride of one batch step
            o = out.shape
            cands = []
            for j in range(len(o)):
                sj = _prod(o[j + 1:])
                if stride % sj == 0 and stride * b <= sj * o[j]:
                    cands.append((j, stride // sj))
            if cands:
                # With b = 1 several axes can hold it. Prefer an axis that is the batch alone, else the
                # batch as the major factor of an axis ([T, B*H, D], as attention does). The reading
                # [T*B, E] of attention's output projection is then missed; `rebatch`'s numerical check
                # rejects the result and callers fall back to the static batch.
                pure = [c for c in cands if c[1] == 1 and o[c[0]] == b]
                ax[id(out)] = cands[0] if b > 1 else (pure[0] if pure else cands[-1])
        elif node.op in ("mean", "sum", "reduce_max"):
            red = [r % len(v.shape) for r in node.attrs["axes"]]
            if a not in red:
                ax[id(out)] = (a if node.attrs["keepdims"] else a - sum(r < a for r in red), inner)
        elif node.op == "gather":
            if v is node.input(1):
                ax[id(out)] = (node.attrs["axis"] + a, inner)
            elif a != node.attrs["axis"]:
                ax[id(out)] = (a, inner)
        else:
            ax[id(out)] = (a + len(out.shape) - len(v.shape), inner)
    return {k: j for k, (j, _) in ax.items()}


def _check(orig: Graph, new: Graph, b: int, n: int, inputs: list[np.ndarray], rtol: float) -> None:
    from .torch_executor import run_graph

    xs = [np.asarray(a[:n]) for a in inputs]
    if len(xs[0]) < n:
        raise RebatchError(f"{len(xs[0])} check samples are fewer than the batch {n}")
    got = run_graph(new, *xs, fake_quant=False)
    got = got[0] if isinstance(got, tuple) else got
    ref = [run_graph(orig, *[x[i:i + b] for x in xs], fake_quant=False) for i in range(0, n - b + 1, b)]
    ref = np.concatenate([r[0] if isinstance(r, tuple) else r for r in ref])
    scale = max(float(np.abs(ref).max()), 1e-6)
    err = float(np.abs(got[:len(ref)] - ref).max())
    if err > rtol * scale:
        raise RebatchError(f"graph {orig.name!r}: batch {n} differs from batch {b} by {err:.3g} "
                           "(the batch is not independent along axis 0)")
