"""PyTorch -> IR: `torch.export` to core ATen, then one op table (`op_table.ATEN_TO_IR`)."""

from .errors import FrontendError, UnsupportedOpError
from .op_table import ATEN_TO_IR, supported_ops
from .torch_export import import_exported_program, import_model, load_exported_program, load_pt2

__all__ = ["import_model", "import_exported_program", "load_pt2", "load_exported_program", "ATEN_TO_IR", "supported_ops",
           "FrontendError", "UnsupportedOpError"]
