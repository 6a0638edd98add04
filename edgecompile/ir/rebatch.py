"""`rebatch(graph, n)`: the same graph for another batch size.

Graphs are static (shapes from the example inputs, often batch 1 for deployment); calibration,
fine-tuning and verification want larger batches. Batch-first graphs carry the batch size in their
inputs' first axis and in the first entry of `reshape`/`expand` shapes; `rebatch` rewrites those and
re-infers every shape, then checks the result numerically against the original on one batch.
"""

from __future__ import annotations

import numpy as np

from .graph import Graph
from .shapes import infer_shapes
from .verify import verify


class RebatchError(ValueError):
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
    for v in g.inputs:
        v.shape = (n,) + tuple(v.shape[1:])
    for node in g.nodes:
        if node.op in ("reshape", "expand"):
            shape = list(node.attrs["shape"])
            if shape and shape[0] == b:
                node.attrs = dict(node.attrs, shape=[n] + shape[1:])
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
