"""The ONNX backend: IR -> ONNX (standard ops; int8 as QDQ, QLinear or dynamic-quantization forms).

`emit` writes the model (`emit_onnx`), `builder` the ModelProto helpers and `OnnxEmitError`, `ops`
one lowering per IR op, `qops` the integer forms.
"""

from .builder import OnnxEmitError
from .emit import DEFAULT_OPSET, emit_onnx

__all__ = ["DEFAULT_OPSET", "OnnxEmitError", "emit_onnx"]
