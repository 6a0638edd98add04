"""Shape and dtype inference: runs each op on torch meta tensors (no data, no compute)."""

from __future__ import annotations

import torch

from .graph import Graph
from .torch_ops import NUMPY_DTYPES, TORCH_DTYPES, run_op
from ..errors import InternalError


class ShapeError(InternalError, ValueError):
    """An op cannot run on the shapes it is given (names the node and the cause)."""


def _meta(shape, dtype) -> torch.Tensor:
    return torch.empty(tuple(shape), dtype=TORCH_DTYPES[dtype], device="meta")


def infer_shapes(graph: Graph, overwrite: bool = False) -> list[str]:
    """Fills missing output shapes/dtypes (all of them with `overwrite`).

    Returns the list of mismatches found between stored and inferred shapes (empty when
    consistent). Raises `ShapeError` if an op fails on its input shapes.
    """
    env: dict[int, torch.Tensor] = {}
    for v in graph.inputs:
        env[id(v)] = _meta(v.shape, v.dtype)
    for v in graph.consts.values():
        env[id(v)] = _meta(v.data.shape, v.dtype)
    problems = []
    for node in graph.nodes:
        args = []
        for v in node.inputs:
            if v is None:
                args.append(None)
            elif id(v) not in env:
                raise ShapeError(f"node {node.name} ({node.op}): input {v.name} is not defined before use")
            else:
                args.append(env[id(v)])
        try:
            out = run_op(node.op, args, node.attrs)
        except Exception as e:  # torch raises many types; report them as one
            shapes = [None if a is None else list(a.shape) for a in args]
            raise ShapeError(f"node {node.name} ({node.op}) fails on input shapes {shapes}: {e}") from e
        v = node.output
        shape, dtype = tuple(out.shape), NUMPY_DTYPES[out.dtype]
        if v.shape is None or overwrite:
            v.shape, v.dtype = shape, dtype
        elif v.shape != shape or v.dtype != dtype:
            problems.append(f"node {node.name} ({node.op}): stored {v.dtype}{list(v.shape)}, "
                            f"inferred {dtype}{list(shape)}")
        env[id(v)] = out
    return problems
