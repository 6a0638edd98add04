"""The graph IR shared by the frontend, passes and backends.

`graph` (Graph, Node, Value, the text dump), `ops` (the op set, what a layer's weight is),
`verify`, `identity` and `analysis` need numpy only: ``import edgecompile.ir`` does not import
torch (``verify(graph, check_shapes=True)`` does, for shape inference). Shape inference (`shapes`, run on torch's meta tensors) and the torch executor beside the IR
(`torch_executor`, `torch_ops`: the reference for numerical checks and the trainable form for
fine-tuning) import torch when first used, e.g. ``from edgecompile.ir import run_graph``.
"""

from importlib import import_module

from .graph import Graph, Node, QuantParams, Value
from .ops import OPS, WEIGHT_OPS, weight_input
from .verify import VerifyError, verify

__all__ = ["Graph", "Node", "Value", "QuantParams", "OPS", "WEIGHT_OPS", "weight_input", "infer_shapes",
           "ShapeError", "TorchExecutor", "run_graph", "verify", "VerifyError"]

#: The names that need torch, and the module of each (imported on first use).
_TORCH_NAMES = {"infer_shapes": "shapes", "ShapeError": "shapes", "TorchExecutor": "torch_executor",
                "run_graph": "torch_executor"}


def __getattr__(name: str):
    if name in _TORCH_NAMES:
        return getattr(import_module(f".{_TORCH_NAMES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
