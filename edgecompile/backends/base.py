"""The backend contract: every backend turns a verified IR graph into one `EmittedModel`.

A backend is named by the CLI's ``--backend`` (`Backend.name`), writes its model file under
`Backend.model_file` in the bundle, and returns the model's bytes together with the weights the
``.ecw`` container must hold (`EmittedModel.tensors`), so that the bundle writer, the report and
the loaders never ask which backend made it. The C backend (``backends/c``) writes sources rather
than one model file; its `CModel.emitted` gives the report the same record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ..container import QuantInfo
from ..ir import Graph

__all__ = ["Backend", "EmittedModel", "backend_for", "BACKEND_NAMES"]


@dataclass(frozen=True)
class EmittedModel:
    """An emitted model: what the bundle writer stores and the report reads.

    Attributes
    ----------
    model_bytes : bytes
        The model file (ONNX ModelProto, ``.tflite`` flatbuffer, or the generated ``model.c``),
        with weights embedded or left to the container.
    tensors : dict[str, np.ndarray]
        Every weight by name, in the layout the model consumes (ONNX linear weights transposed to
        [in, out], TFLite's layouts): what ``weights.ecw`` must hold. Empty for the C backend,
        whose container `emit_c` writes itself.
    quant : dict[str, QuantInfo | None]
        What the container records of each tensor's quantization: set only for weights the loader
        dequantizes itself (`dequantize_at_load`); None or absent where the model holds the scales.
    ops : list[tuple[str, int]]
        The model's op types with a version (ONNX: opset of the definition; TFLite: builtin version;
        C: the ``ecm_`` kernels with their call counts), for the report.
    dequantize_at_load : tuple[str, ...]
        Container tensors the loader turns to float32 once (weights-only int8 on ONNX).
    source_names : dict[str, str] or None
        Container tensor name -> the IR constant it holds (names are shortened in minified models).
    node_map : tuple
        ``(first operator index, IR node name, IR op)`` per IR node in emission order (inputs: op
        ``"input"``, output copies: ``"output"``): maps a runtime failure back to the layer
        (`bundle.session.NodeMap`); empty where the runtime reports no operator index.
    """

    model_bytes: bytes
    tensors: dict[str, np.ndarray]
    quant: dict[str, QuantInfo | None] = field(default_factory=dict)
    ops: list[tuple[str, int]] = field(default_factory=list)
    dequantize_at_load: tuple[str, ...] = ()
    source_names: dict[str, str] | None = None
    node_map: tuple[tuple[int, str, str], ...] = ()


class Backend(Protocol):
    """What the bundle writer asks of a backend that writes one model file beside ``weights.ecw``."""

    name: str         #: the ``--backend`` value and the manifest's ``backend``
    model_file: str   #: the model's file name inside the bundle

    def emit(self, graph: Graph, *, embed_weights: bool) -> EmittedModel:
        """The graph as this backend's model; `embed_weights=False` leaves the weights to the container."""
        ...


@dataclass(frozen=True)
class _Onnx:
    name: str = "onnx"
    model_file: str = "model.onnx"

    def emit(self, graph: Graph, *, embed_weights: bool) -> EmittedModel:
        from .onnx import emit_onnx
        # minified names only where the container holds the weights (an embedded model is for people)
        return emit_onnx(graph, embed_weights=embed_weights, minify=not embed_weights)


@dataclass(frozen=True)
class _TFLite:
    name: str = "tflite"
    model_file: str = "model.tflite"

    def emit(self, graph: Graph, *, embed_weights: bool) -> EmittedModel:
        from .tflite import emit_tflite
        return emit_tflite(graph, embed_weights=embed_weights)


_BACKENDS: dict[str, Backend] = {b.name: b for b in (_Onnx(), _TFLite())}
#: Backends with one model file (``--backend c`` is written by `build_device`).
BACKEND_NAMES = tuple(_BACKENDS)


def backend_for(name: str) -> Backend:
    """The backend called `name` (``"onnx"`` or ``"tflite"``); its runtime is imported on first emit."""
    return _BACKENDS[name]
