"""Recognizes pre-set factorized layers (`edgecompile.factorized`: SVD, Tucker-2, tensor-train) in an
imported graph: their weight nodes get ``meta["lowrank"]`` as the low-rank pass's own rewrites have,
so the report counts each as one layer with its method and rank and the pass leaves it as it is.

A module declares itself by an ``edgecompile_factorized`` dict (``{"method", "rank"}``); nothing of
the module's class is imported here (the frontend imports only the IR).
"""

from __future__ import annotations

import torch

from ..ir import Graph


def tag_factorized(graph: Graph, model: torch.nn.Module) -> int:
    """Tags the nodes that ran inside a factorized module; returns how many modules were found."""
    found = {path: dict(m.edgecompile_factorized) for path, m in model.named_modules()
             if isinstance(getattr(m, "edgecompile_factorized", None), dict)}
    if not found:
        return 0
    for node in graph.nodes:
        path = node.meta.get("module") or ""
        owner = next((p for p in found if path == p or path.startswith(p + ".")), None)
        if owner is None:
            continue
        if node.op in ("linear", "conv", "matmul") and node.input(1) is not None and node.input(1).is_const:
            node.meta["lowrank"] = dict(found[owner], original=owner, preset=True)
            node.meta["layer"] = owner
    return len(found)
