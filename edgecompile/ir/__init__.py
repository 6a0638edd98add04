"""The graph IR shared by the frontend, passes and backends."""

from .graph import Graph, Node, QuantParams, Value
from .ops import OPS, WEIGHT_OPS
from .shapes import ShapeError, infer_shapes
from .torch_executor import TorchExecutor, run_graph
from .verify import VerifyError, verify

__all__ = ["Graph", "Node", "Value", "QuantParams", "OPS", "WEIGHT_OPS", "infer_shapes", "ShapeError",
           "TorchExecutor", "run_graph", "verify", "VerifyError"]
