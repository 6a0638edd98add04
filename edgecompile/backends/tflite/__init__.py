"""The TFLite backend: IR -> ``.tflite`` flatbuffer (int8 per TFLite's quantization spec).

`emit` writes the model (`emit_tflite`), `lower` the lowering context and `TFLiteUnsupportedError`,
`ops` / `nn` / `upsample` one lowering per IR op, `builder` the flatbuffer model builder, `tflm`
the TensorFlow Lite Micro check for microcontrollers.
"""

from .builder import tflite_op_table
from .emit import SUPPORTED_OPS, emit_tflite, op_counts, tensor_types
from .lower import TFLiteUnsupportedError

__all__ = ["SUPPORTED_OPS", "TFLiteUnsupportedError", "emit_tflite", "op_counts", "tensor_types", "tflite_op_table"]
