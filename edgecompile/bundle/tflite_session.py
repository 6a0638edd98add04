"""Run a TFLite bundle with LiteRT: no torch, no decoded weights on disk.

Needs numpy, flatbuffers, ai-edge-litert and the `.ecw` container package.

`load_tflite_bundle(dir)` reads ``manifest.json``, decodes ``weights.ecw`` in memory, fills each
weight into the weights-stripped model (`tflite_model.fill_weights`) and creates
``Interpreter(model_content=...)``.

When LiteRT refuses the model or fails running it, the error is a one-line `BackendRuntimeError`
naming the TFLite op, its operator index ("Node number N" in LiteRT's message) and, with a node map
(the manifest's ``node_map`` or the `node_map` argument), our layer. A failure inside the XNNPACK
delegate names only the delegate, so the failed step is repeated once without default delegates
to find the operator.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
from ai_edge_litert import schema_py_generated as fb
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from ..errors import one_line
from .manifest import BundleError, read_bundle_files, read_manifest
from .session import BackendRuntimeError, BundleSessionBase, NodeMap, TensorSpec
from .tflite_model import fill_weights

log = logging.getLogger(__name__)


_NODE = re.compile(r"Node number (?P<index>\d+) \((?P<op>[^)]*)\) failed to (?:prepare|invoke)")
_OPCODE = re.compile(r"Didn't find op for builtin opcode '(?P<op>\w+)' version '(?P<version>\d+)'")
_CUSTOM = re.compile(r"unresolved custom op: (?P<op>[\w.-]+)")
_BUILTIN_NAMES = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}


def parse_litert_error(message: str) -> tuple[str | None, int | None, str]:
    """(op, operator index, reason) from a LiteRT error message; None where it names none.

    LiteRT appends "Node number N (OP) failed to prepare." to the kernel's own message (with no
    space between them), and names a missing kernel as "Didn't find op for builtin opcode 'OP'".
    """
    text = str(message)
    m = _NODE.search(text)
    if m:
        reason = text[: m.start()] + text[m.end():]
        op, index = m.group("op"), int(m.group("index"))
    else:
        m = _OPCODE.search(text) or _CUSTOM.search(text)
        op, index = (m.group("op"), None) if m else (None, None)
        reason = (f"no {op} kernel of version {m.group('version')} in this LiteRT"
                  if m and "version" in m.groupdict() else text)
    reason = re.sub(r"\S+\.(?:cc|h)(?::\d+)? ", "", reason)          # the kernel's source file
    reason = re.sub(r"Node number \d+ \([^)]*\) failed to \w+\.?", "", reason)
    return op, index, one_line(reason.strip(" .") or text, 240)


def _operator_ops(model_bytes: bytes) -> list[tuple[str, int]]:
    """(builtin op name, version) of each operator of subgraph 0, in execution order."""
    model = fb.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    codes = []
    for c in model.operatorCodes or []:
        code = max(c.builtinCode, c.deprecatedBuiltinCode)
        codes.append((_BUILTIN_NAMES.get(code, f"OP_{code}"), int(c.version)))
    return [codes[o.opcodeIndex] for o in model.subgraphs[0].operators or []]


def runtime_error(e: Exception, stage: str, model_bytes: bytes, node_map: NodeMap | None,
                  retry=None, model: str | None = None) -> BackendRuntimeError:
    """The `BackendRuntimeError` for LiteRT's exception `e` raised while `stage` ("load", "prepare",
    "run"). `retry()` repeats the failed step without default delegates and returns the exception it
    raises (or None); it is used when the message names the XNNPACK delegate instead of an operator."""
    op, index, reason = parse_litert_error(str(e))
    if index is not None and op is not None and "Delegate" in op and retry is not None:
        again = retry()
        if again is not None:
            op2, index2, reason2 = parse_litert_error(str(again))
            if index2 is not None:
                op, index, reason = op2, index2, reason2
    try:
        ops = _operator_ops(model_bytes) if model_bytes else []
    except Exception:  # an unreadable model (flatbuffers raises many types): keep what the message says
        ops = []
    if index is None and op is not None:       # a missing kernel: its first operator
        index = next((i for i, (name, _) in enumerate(ops) if name == op), None)
    if op is not None and "Delegate" in op:    # a delegate's node number is no operator of the model
        index = None
    if index is not None and ops and index >= len(ops):
        index = None
    layer = node_map.lookup(index) if node_map is not None and index is not None else None
    return BackendRuntimeError("LiteRT", stage, reason, op=op, operator=index,
                               layer=layer[0] if layer else None, ir_op=layer[1] if layer else None, model=model)


class TFLiteBundleSession(BundleSessionBase):
    """A loaded TFLite bundle: `run(*arrays) -> list`, `inputs`, `outputs`, `latency(...)`.

    With `model_bytes` (the model the interpreter runs) and `node_map`, a failure to prepare or run
    names the operator and the layer; LiteRT failures raise `BackendRuntimeError`.
    """

    def __init__(self, interpreter: Interpreter, manifest: dict, path: Path, *,
                 model_bytes: bytes | None = None, node_map=None, threads: int | None = None):
        self.interpreter = interpreter
        self.manifest = manifest
        self.path = path
        self.node_map = NodeMap.of(node_map)
        self._model_bytes, self._threads = model_bytes, threads
        try:
            interpreter.allocate_tensors()
        except (RuntimeError, ValueError) as e:
            raise self._error(e, "prepare", None) from None
        self._in = interpreter.get_input_details()
        self._out = interpreter.get_output_details()
        self.inputs = [TensorSpec(d["name"], tuple(int(x) for x in d["shape"]), np.dtype(d["dtype"]).name)
                       for d in self._in]
        self.outputs = [TensorSpec(d["name"], tuple(int(x) for x in d["shape"]), np.dtype(d["dtype"]).name)
                        for d in self._out]

    def _invoke(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        for d, a in zip(self._in, arrays):
            self.interpreter.set_tensor(d["index"], a)
        try:
            self.interpreter.invoke()
        except (RuntimeError, ValueError) as e:
            raise self._error(e, "run", arrays) from None
        return [self.interpreter.get_tensor(d["index"]).copy() for d in self._out]

    def _error(self, e: Exception, stage: str, arrays: list[np.ndarray] | None) -> BackendRuntimeError:
        where = self.manifest.get("model") if self.manifest else None
        if self._model_bytes is None:
            return runtime_error(e, stage, b"", self.node_map, model=where)

        def retry():  # the same step with LiteRT's own kernels only (no XNNPACK)
            try:
                it = create_interpreter(self._model_bytes, self._threads, delegates=False)
                it.allocate_tensors()
                if arrays is not None:
                    for d, a in zip(it.get_input_details(), arrays):
                        it.set_tensor(d["index"], a)
                    it.invoke()
            except (RuntimeError, ValueError) as again:
                return again
            return None
        return runtime_error(e, stage, self._model_bytes, self.node_map, retry, model=where)


def create_interpreter(model_bytes: bytes, threads: int | None = None, delegates: bool = True) -> Interpreter:
    """A LiteRT interpreter over `model_bytes` (kept alive by it); `delegates=False`: no XNNPACK."""
    if delegates:
        return Interpreter(model_content=model_bytes, num_threads=threads)
    return Interpreter(model_content=model_bytes, num_threads=threads,
                       experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)


def load_tflite_bundle(bundle_dir: str | Path, *, threads: int | None = None, node_map=None,
                       manifest: dict | None = None) -> TFLiteBundleSession:
    """Loads a ``backend: tflite`` bundle written by `edgecompile build`.

    `node_map` (``EmittedModel.node_map``; None: the manifest's ``node_map`` if any) lets a LiteRT
    failure name the layer it comes from; `manifest` is the manifest `read_manifest` returned (None:
    read it here).

    Raises
    ------
    BundleError
        Missing files, a bad manifest, or weights that do not fit the model.
    ContainerError
        The weight container is truncated or corrupt (the message starts with its path).
    BackendRuntimeError
        LiteRT has no kernel for an operator or an operator fails to prepare (`run` raises it too
        when an operator fails to invoke).
    """
    root = Path(bundle_dir)
    manifest = read_manifest(root) if manifest is None else manifest
    if manifest["backend"] != "tflite":
        raise BundleError(f"{root / 'manifest.json'}: backend is {manifest['backend']!r}, not 'tflite'")
    model_bytes, tensors = read_bundle_files(root, manifest)
    try:
        model = fill_weights(model_bytes, tensors)
    except BundleError as e:
        raise BundleError(f"{root / manifest['model']}: {e}") from None
    node_map = NodeMap.of(manifest.get("node_map") if node_map is None else node_map)
    try:
        interp = create_interpreter(model, threads)
    except (RuntimeError, ValueError) as e:
        if parse_litert_error(str(e))[0] is None:     # not an operator: the file itself
            raise BundleError(f"{root / manifest['model']}: LiteRT cannot load the model "
                                    f"({one_line(str(e), 240)})") from None
        raise runtime_error(e, "load", model, node_map, model=manifest["model"]) from None
    return TFLiteBundleSession(interp, manifest, root, model_bytes=model, node_map=node_map, threads=threads)
