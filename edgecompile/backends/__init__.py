"""Backends: a verified IR graph -> a model its runtime runs, plus the weights for ``weights.ecw``.

`base` is the contract (`EmittedModel`, `Backend`, `backend_for`); `onnx/`, `tflite/` and `c/` are
the backends; `memory_plan` the static activation plan that the C backend lays its arena out by and
the report prints. A backend imports `ir`, `container` and `bundle` (the model-file formats the
loaders share), never a pass or the report.
"""
