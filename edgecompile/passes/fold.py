"""BN folding and cleanup.

`FoldBatchNormPass`: ``conv(x, W, b) -> batch_norm`` becomes ``conv(x, W', b')`` with
``W' = W * γ/σ`` (per output channel) and ``b' = (b - μ) γ/σ + β``, σ = sqrt(var + eps); the same for
``linear -> batch_norm`` (BatchNorm1d on features) and ``conv_transpose -> batch_norm`` (whose
weight [in, out/groups, *k] holds output channel g * out/groups + j at [g-th block of in, j]). Exact up to float rounding (the tests hold it to
1e-5 relative). A batch_norm whose input is not a conv/linear with constant weights used only
there is left alone; the backends lower it as a per-channel multiply-add.

`CleanupPass`: removes identity reshapes/transposes/casts/slices, ``where`` on a constant all-true
(or all-false) condition, and dead nodes and constants.
"""

from __future__ import annotations

import numpy as np

from ..ir import Graph, Node
from ..ir.identity import remove_identities
from .base import LayerRecord, Pass, PassResult


def _foldable(graph: Graph, bn: Node) -> tuple[Node, str] | tuple[None, str]:
    """The conv/linear a batch_norm can fold into, or None and why not."""
    x = bn.input(0)
    prod = x.producer
    if prod is None or prod.op not in ("conv", "linear", "conv_transpose"):
        return None, "input is not produced by conv, conv_transpose or linear"
    if len(x.uses) != 1 or any(o is x for o in graph.outputs):
        return None, f"output of {prod.name} has other uses"
    if prod.op == "linear" and (x.shape is None or len(x.shape) != 2):
        return None, "batch_norm after linear on a non-2-D tensor"
    w, b = prod.input(1), prod.input(2)
    if not w.is_const or w.quant is not None or len(w.uses) != 1:
        return None, f"weight of {prod.name} is not a private float constant"
    if b is not None and (not b.is_const or len(b.uses) != 1):
        return None, f"bias of {prod.name} is not a private constant"
    if not all(v is None or v.is_const for v in bn.inputs[1:]):
        return None, "batch_norm statistics are not constant"
    return prod, ""


def _scale_out_channels(layer: Node, w: np.ndarray, k: np.ndarray) -> np.ndarray:
    """`w` with every output channel c multiplied by k[c] (axis 0; for conv_transpose axis 1, per group)."""
    if layer.op != "conv_transpose":
        return w * k.reshape((-1,) + (1,) * (w.ndim - 1))
    g = layer.attrs["groups"]
    blocks = w.reshape((g, w.shape[0] // g) + w.shape[1:])
    return (blocks * k.reshape((g, 1, -1) + (1,) * (w.ndim - 2))).reshape(w.shape)


class FoldBatchNormPass(Pass):
    """conv/linear/conv_transpose -> batch_norm  =>  the same layer with rescaled weight and bias."""

    name = "fold_batch_norm"

    def call(self, graph: Graph) -> PassResult:
        records = []
        for bn in [n for n in graph.nodes if n.op == "batch_norm"]:
            layer, why = _foldable(graph, bn)
            if layer is None:
                records.append(LayerRecord(bn.name, "batch_norm", "kept", why))
                continue
            mean, var, gamma, beta = (None if v is None else v.data.astype(np.float64) for v in bn.inputs[1:5])
            c = mean.shape[0]
            gamma = np.ones(c) if gamma is None else gamma
            beta = np.zeros(c) if beta is None else beta
            k = gamma / np.sqrt(var + bn.attrs["eps"])
            w_v, b_v = layer.input(1), layer.input(2)
            w = _scale_out_channels(layer, w_v.data.astype(np.float64), k)
            b0 = np.zeros(c) if b_v is None else b_v.data.astype(np.float64)
            b = (b0 - mean) * k + beta
            new_w = graph.add_const(w_v.name, w.astype(np.float32))
            new_b = graph.add_const(f"{layer.name}.bias", b.astype(np.float32))
            graph.set_input(layer, 1, new_w)
            if len(layer.inputs) < 3:
                layer.inputs.append(None)
            graph.set_input(layer, 2, new_b)
            graph.replace_all_uses(bn.output, layer.output)
            graph.remove_node(bn)
            layer.meta.setdefault("folded", []).append(bn.name)
            records.append(LayerRecord(layer.name, layer.op, "bn_folded", figures={"bn": bn.name}))
        modified = any(r.kind == "bn_folded" for r in records)
        if modified:
            graph.remove_unused()
        return PassResult(graph, modified, records)


class CleanupPass(Pass):
    """Removes identity reshapes/transposes/casts/slices and selects on a constant condition, then
    dead nodes and constants."""

    name = "cleanup"

    def call(self, graph: Graph) -> PassResult:
        removed = remove_identities(graph) + graph.remove_unused()
        return PassResult(graph, removed > 0, [LayerRecord(None, None, "cleanup", figures={"removed": removed})]
                          if removed else [])
