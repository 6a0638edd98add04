"""What the ONNX and TFLite sessions share: the input checks, `run` and `latency`
(`BundleSessionBase`); the one error a runtime failure becomes (`BackendRuntimeError`) and the map
from the runtime's operators back to the IR's layers (`NodeMap`). numpy only: ships to boards."""

from __future__ import annotations

import bisect
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ..errors import InternalError, one_line


class NodeMap:
    """Which IR node (layer) each operator of an emitted model comes from.

    Built from the backend's ``EmittedModel.node_map``: ``[first_operator_index, ir_node_name,
    ir_op]`` per IR node, in emission order (ONNX: index in ``graph.node``; TFLite: operator index in
    subgraph 0, which is LiteRT's "node number"). An operator belongs to the last entry whose first
    index is not after it. The model's input conversions are entries with op ``"input"``, the copies
    and conversions of its outputs entries with op ``"output"``. JSON-able as is (the manifest's
    ``node_map`` key).
    """

    def __init__(self, spans: Iterable[Iterable]):
        rows = sorted(((int(i), str(name), str(op)) for i, name, op in spans), key=lambda r: r[0])
        self.spans = rows
        self._firsts = [r[0] for r in rows]

    def lookup(self, index: int) -> tuple[str, str] | None:
        """(IR node name, IR op) of operator `index`, or None when the map does not cover it."""
        k = bisect.bisect_right(self._firsts, index) - 1
        if index < 0 or k < 0:
            return None
        return self.spans[k][1], self.spans[k][2]

    @classmethod
    def of(cls, spans) -> NodeMap | None:
        """A map from a `NodeMap`, a span list (manifest or `EmittedModel.node_map`) or None."""
        if spans is None or isinstance(spans, NodeMap):
            return spans
        try:
            return cls(spans)
        except (TypeError, ValueError):
            return None          # a damaged map must not hide the runtime's own error


RUNTIME_HINTS = {
    "LiteRT": "try --backend onnx, and report it (an edgecompile bug) with the model",
    "onnxruntime": "try --backend tflite or --quant none, and report it (an edgecompile bug) with the model",
}


class BackendRuntimeError(InternalError, RuntimeError):
    """The runtime (onnxruntime or LiteRT) refused the emitted model or failed while running it: an
    edgecompile bug (exit 70 from the CLI).

    One line: the runtime, what it was doing, the runtime's op type and operator, *our* layer (the
    IR node the operator was emitted for, from the `NodeMap`), the runtime's reason, what to do.

    Attributes
    ----------
    runtime : str
        ``"onnxruntime"`` or ``"LiteRT"``.
    stage : str
        ``"load"`` (creating the session or interpreter), ``"prepare"`` (LiteRT's
        allocate_tensors) or ``"run"``.
    op : str or None
        The runtime's op type (``"STRIDED_SLICE"``, ``"Reshape"``), when known.
    operator : str or None
        The runtime's operator: its index (LiteRT's node number, an ONNX node's position) or the
        ONNX node's name.
    layer, ir_op : str or None
        The IR node (e.g. ``"encoder.1.conv"``) and IR op the operator was emitted for.
    detail : str
        The runtime's reason, on one line.
    hint : str
        What to do.
    """

    def __init__(self, runtime: str, stage: str, detail: str, *, op: str | None = None,
                 operator: str | int | None = None, layer: str | None = None, ir_op: str | None = None,
                 model: str | None = None):
        self.runtime, self.stage, self.detail, self.op = runtime, stage, one_line(detail, 240), op
        self.operator = None if operator is None else str(operator)
        self.layer, self.ir_op, self.model = layer, ir_op, model
        self.hint = RUNTIME_HINTS.get(runtime, "report it with the model")
        super().__init__(self._line())

    def _line(self) -> str:
        verb = {"load": "cannot load", "prepare": "cannot prepare", "run": "failed running"}.get(self.stage,
                                                                                               self.stage)
        where = f"{self.op or 'an op'}"
        if self.operator not in (None, ""):
            where += f" (operator {self.operator})"
        if self.layer is not None:
            kind = {"input": "model input", "output": "model output"}.get(self.ir_op)
            where += f" of {kind} {self.layer!r}" if kind else f" of layer {self.layer!r} ({self.ir_op})"
        else:
            where += " (layer unknown)"
        model = f" {self.model}" if self.model else " the model"
        return f"{self.runtime} {verb}{model} at {where}: {self.detail}; {self.hint}"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str


class BundleSessionBase:
    """A loaded bundle: `run(*arrays) -> list`, `inputs`, `outputs`, `latency(...)`.

    Subclasses set `inputs`/`outputs` and implement `_invoke(checked_arrays) -> list[np.ndarray]`.
    """

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    path: object

    def run(self, *arrays: np.ndarray) -> list[np.ndarray]:
        """Runs the model on positional inputs (converted to the declared dtypes)."""
        if len(arrays) != len(self.inputs):
            raise ValueError(f"bundle {self.path} takes {len(self.inputs)} inputs "
                             f"({', '.join(s.name for s in self.inputs)}), got {len(arrays)}")
        checked = []
        for spec, a in zip(self.inputs, arrays):
            a = np.ascontiguousarray(a, dtype=spec.dtype)
            if a.shape != spec.shape:
                raise ValueError(f"input {spec.name!r}: expected shape {list(spec.shape)}, got {list(a.shape)}")
            checked.append(a)
        return self._invoke(checked)

    def _invoke(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError  # abstract: each backend's session implements it

    def latency(self, inputs: list[np.ndarray], repeats: int = 50, warmup: int = 3) -> float:
        """Median wall time of one `run` over `repeats` runs, in seconds (after `warmup` runs)."""
        for _ in range(warmup):
            self.run(*inputs)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            self.run(*inputs)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path}, inputs={self.inputs}, outputs={self.outputs})"
