"""TensorFlow Lite Micro (PyPI `tflite-micro`) as the real-client check of `--backend tflite` on microcontrollers.

LiteRT is not what a microcontroller runs: TFLite Micro has fewer kernels (no GELU, for one), its
own reference kernels, and its own arena. This module asks the real TFLM interpreter, on the host:

- `check_ops(model)` raises `TflmUnsupported` naming the first op TFLM cannot load, prepare or run;
- `run(model, inputs)` computes the outputs with TFLM's reference kernels (what a device computes,
  up to optimized kernels such as CMSIS-NN);
- `arena_figures(model)` reports the arena TFLM's recording allocator really uses.

Every function takes a complete `.tflite`, weights inside (`emit_tflite(graph, embed_weights=True)`);
a bundle's stripped ``model.tflite`` is refused with a `ValueError` (TFLM itself would run its empty
weights as zeros; see `edgecompile.bundle.tflite_model` for how such a file is marked).

TFLM reports its errors through ``MicroPrintf`` on the process's standard error and raises only
"TFLM failed to allocate tensors", so each call into it redirects file descriptor 2 to a temporary
file (one call at a time, under a lock) and parses what it wrote: "Didn't find op for builtin opcode
'GELU'", "Node GATHER (number 3) failed to prepare with status 1", "Failed to allocate tail memory.
Requested: 600, available 320, missing: 280", and the recording allocator's "Arena allocation head
2048 bytes" lines.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
import tempfile
import threading

import numpy as np
from tflite_micro import runtime

from ...bundle.session import NodeMap
from ...bundle.tflite_model import STRIPPED_IDENTIFIER, empty_constants, is_stripped_marker
from .builder import BUILTIN_NAMES, unpack_model
from ...errors import InputError, InternalError

log = logging.getLogger(__name__)

__all__ = ["TflmError", "TflmUnsupported", "arena_figures", "check_ops", "run"]

_FIRST_ARENA = 1 << 20          # bytes; doubled while TFLM reports the arena too small
_LAST_ARENA = 1 << 30
_LOCK = threading.Lock()        # file descriptor 2 is process-wide

_NO_KERNEL = re.compile(r"Didn't find op for builtin opcode '(?P<op>\w+)'|Failed to get registration from op code (?P<op2>\w+)")
_NODE = re.compile(r"Node (?P<op>\S+) \(number (?P<index>\d+)\w*\) failed to (?P<stage>prepare|invoke) with status -?\d+")
_TOO_SMALL = re.compile(r"Failed to allocate \w+ memory\. Requested: \d+, available \d+, missing: \d+")
_FIGURE = re.compile(r"Arena allocation (?P<part>total|head|tail) (?P<bytes>\d+) bytes")
_KIND = re.compile(r"'(?P<kind>[^']+)' used (?P<bytes>\d+) bytes")


class TflmUnsupported(InputError, ValueError):
    """TFLite Micro cannot load, prepare or run an operator of the model (one line, naming the op,
    the first operator that uses it with its output tensor, and suggesting ``--backend c``).

    Attributes: `op` (builtin op name), `operator` (index in subgraph 0), `tensor` (its first output
    tensor's name), `reason` (what TFLM said), `layer` (the IR node, when a node map was given).
    """

    def __init__(self, op: str, operator: int | None, tensor: str | None, reason: str, layer: str | None = None):
        self.op, self.operator, self.tensor, self.reason, self.layer = op, operator, tensor, reason, layer
        also = f", layer {layer}" if layer and layer != tensor else ""
        where = "" if operator is None else f" at operator {operator} ({tensor}{also})"
        super().__init__(f"TFLite Micro cannot run {op}{where}: {reason.rstrip(' .')}; use --backend c")


class TflmError(InternalError, RuntimeError):
    """TFLite Micro failed for another reason (an operator failing to invoke, an arena over 1 GiB)."""


def check_ops(model_bytes: bytes, node_map=None) -> None:
    """Raises `TflmUnsupported` when TFLite Micro cannot load, prepare or run an operator of the model.

    The model is loaded and run once on zero-valued inputs: several TFLM kernels check their
    element type only when they run (TRANSPOSE of a bool tensor: "Type BOOL is currently not
    supported by Transpose").

    Parameters
    ----------
    model_bytes : bytes
        A complete `.tflite` (weights inside).
    node_map : optional
        ``EmittedModel.node_map`` (or a `NodeMap`): the error then names the IR layer too.

    Raises
    ------
    TflmUnsupported
        A builtin op TFLM has no kernel for (e.g. GELU), or a kernel that refuses the operator when
        it prepares or runs (a type or option it does not support).
    ValueError
        The model's weights were stripped (a bundle's ``model.tflite``).
    TflmError
        TFLM failed otherwise.
    """
    it = _load(model_bytes, node_map)
    sg = unpack_model(model_bytes).subgraphs[0]
    for i in range(len(sg.inputs)):
        d = it.get_input_details(i)
        try:
            it.set_input(np.zeros([int(n) for n in d["shape"]], d["dtype"]), i)
        except (RuntimeError, ValueError) as e:
            raise TflmUnsupported(f"input {i}", None, None, _one_line(str(e))) from None
    _, error, text = _captured(it.invoke)
    if error is not None:
        raise _error(text, model_bytes, node_map, invoke_unsupported=True) or TflmError(
            f"TFLite Micro failed to run the model on zeros: {_one_line(text) or error}") from None


def run(model_bytes: bytes, inputs: list[np.ndarray], node_map=None) -> list[np.ndarray]:
    """The model's outputs computed by TFLite Micro's reference kernels on `inputs`.

    `inputs` are given in the model's input order with its exact shapes and dtypes (TFLM refuses
    others). Raises what `check_ops` raises, and `TflmError` when an operator fails to invoke.
    """
    model = unpack_model(model_bytes)
    n_in, n_out = len(model.subgraphs[0].inputs), len(model.subgraphs[0].outputs)
    if len(inputs) != n_in:
        raise ValueError(f"the model has {n_in} inputs, got {len(inputs)} arrays")
    it = _load(model_bytes, node_map)
    for i, x in enumerate(inputs):
        it.set_input(np.ascontiguousarray(x), i)
    _, error, text = _captured(it.invoke)
    if error is not None:
        raise _error(text, model_bytes, node_map) or TflmError(f"TFLite Micro failed to run the model: "
                                                               f"{_one_line(text) or error}") from None
    return [np.array(it.get_output(i)) for i in range(n_out)]


def arena_figures(model_bytes: bytes) -> dict:
    """What TFLite Micro's recording allocator uses for the model, in bytes.

    Returns ``{"total_bytes", "persistent_bytes", "non_persistent_bytes", "by_kind", "basis"}``:
    non-persistent is the head of the arena (activations, model inputs and outputs included, as
    TFLM's greedy planner places them, plus kernel scratch buffers); persistent is the tail (tensor
    and node structs, kernel data, quantization parameters); `by_kind` splits the persistent part
    by what TFLM allocated it for. An interpreter given an arena of exactly `total_bytes` loads the
    model on this host.

    Measured on a 64-bit host: pointers and the structs holding them (``TfLiteEvalTensor``, the node
    and registration structs) are about twice their 32-bit size, so on a 32-bit microcontroller the
    persistent part is smaller and `total_bytes` is an upper bound (the non-persistent part is the
    same up to alignment). Raises what loading raises in `check_ops`.
    """
    it = _load(model_bytes, None)
    _, _, text = _captured(it.print_allocations)
    parts = {m.group("part"): int(m.group("bytes")) for m in _FIGURE.finditer(text)}
    if set(parts) != {"total", "head", "tail"}:
        raise TflmError(f"TFLite Micro printed no arena figures: {_one_line(text)!r}")
    total = _smallest_arena(model_bytes, parts["total"])
    return {"total_bytes": total, "persistent_bytes": parts["tail"],
            "non_persistent_bytes": total - parts["tail"],
            "by_kind": {m.group("kind"): int(m.group("bytes")) for m in _KIND.finditer(text)},
            "basis": "TFLite Micro's RecordingMicroAllocator on a 64-bit host (upper bound for a 32-bit MCU)"}


def _smallest_arena(model_bytes: bytes, recorded: int) -> int:
    """The smallest arena (a multiple of 16 bytes, at least `recorded`) in which the model loads.

    TFLM's recording counts what stays allocated; while planning, its greedy memory planner also
    borrows scratch from the head (tens of bytes a buffer), which exceeds the planned head of a
    model with many small activations (a CNN whose relus are fused into its convs: 384 bytes more
    than recorded)."""
    def loads(n: int) -> bool:
        # Each probe in a forked child: TFLite Micro's Python interpreter can crash the process
        # (SIGSEGV) on an arena a few bytes too small (measured on the MLPerf FC autoencoder); a
        # crashed probe counts as "does not load".
        if not hasattr(os, "fork"):
            return _captured(functools.partial(runtime.Interpreter.from_bytes, model_bytes, arena_size=n))[1] is None
        pid = os.fork()
        if pid == 0:                                   # child: load, report by exit status, never return
            try:
                ok = _captured(functools.partial(runtime.Interpreter.from_bytes, model_bytes, arena_size=n))[1] is None
            except BaseException:
                ok = False
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    lo = -(-recorded // 16) * 16
    if loads(lo):
        return lo
    step = 256
    while not loads(lo + step):
        lo, step = lo + step, step * 2
    hi = lo + step                      # loads(hi); not loads(lo)
    while hi - lo > 16:
        mid = (lo + hi) // 32 * 16
        lo, hi = (lo, mid) if loads(mid) else (mid, hi)
    return hi


def _load(model_bytes: bytes, node_map) -> runtime.Interpreter:
    """A TFLM interpreter over the model (tensors allocated), growing the arena while it is too small."""
    _require_weights(model_bytes)
    arena = _FIRST_ARENA
    while True:
        it, error, text = _captured(functools.partial(runtime.Interpreter.from_bytes, model_bytes, arena_size=arena))
        if error is None:
            if text.strip():
                log.debug("tflite-micro: %s", _one_line(text))
            return it
        if _TOO_SMALL.search(text) and arena < _LAST_ARENA:
            arena *= 2
            continue
        raise _error(text, model_bytes, node_map) or TflmError(f"TFLite Micro cannot load the model: "
                                                               f"{_one_line(text) or error}") from None


def _require_weights(model_bytes: bytes) -> None:
    """Refuses a stripped model (marked, or with constants left empty): TFLM would run zeros."""
    model = unpack_model(model_bytes)
    if bytes(model_bytes[4:8]) == STRIPPED_IDENTIFIER or any(map(is_stripped_marker, model.operatorCodes or [])):
        why = "it is marked as stripped (a bundle's model.tflite)"
    elif empty := empty_constants(model):
        why = f"{len(empty)} constant tensors have no data ({', '.join(empty[:3])}...)"
    else:
        return
    raise ValueError(f"the model's weights were stripped: {why}; TFLite Micro would run them as zeros. Pass "
                     "emit_tflite(graph, embed_weights=True).model_bytes or bundle.tflite_model.fill_weights(...)")


def _error(text: str, model_bytes: bytes, node_map, invoke_unsupported: bool = False
           ) -> TflmUnsupported | TflmError | None:
    """The error TFLM's log describes, mapped to the operator and its output tensor (None: no operator
    named). A failure to invoke is a `TflmError` unless `invoke_unsupported` (`check_ops`' run on zeros)."""
    lines = [ln.strip() for ln in text.replace("\r", "\n").split("\n") if ln.strip()]
    node = next((m for m in map(_NODE.search, lines) if m), None)
    missing = next((m for m in map(_NO_KERNEL.search, lines) if m), None)
    if node is None and missing is None:
        return None
    model = unpack_model(model_bytes)
    sg = model.subgraphs[0]
    if node is not None:
        op, index = node.group("op"), int(node.group("index"))
        reason = "; ".join(ln for ln in lines if not _NODE.search(ln)) or f"its kernel failed to {node.group('stage')}"
    else:
        op, index = missing.group("op") or missing.group("op2"), None
        reason = f"it has no {op} kernel"
    codes = [model.operatorCodes[o.opcodeIndex] for o in sg.operators or []]
    if index is None:
        index = next((i for i, c in enumerate(codes) if _builtin(c) == op), None)
    if index is not None and index < len(codes):
        op = _op_name(codes[index])
    tensor = None
    if index is not None and index < len(codes) and sg.operators[index].outputs is not None \
            and len(sg.operators[index].outputs):
        t = sg.tensors[int(sg.operators[index].outputs[0])]
        tensor = t.name.decode() if isinstance(t.name, bytes) else t.name
    layer = _layer(node_map, index)
    if node is not None and node.group("stage") == "invoke" and not invoke_unsupported:
        return TflmError(f"TFLite Micro failed to run {op} at operator {index} ({tensor}): {_one_line(reason)}")
    return TflmUnsupported(op, index, tensor, _one_line(reason), layer)


def _builtin(code) -> str:
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
    return BUILTIN_NAMES.get(builtin, f"OP_{builtin}")


def _op_name(code) -> str:
    """The builtin op name, or a custom op's own name."""
    if _builtin(code) == "CUSTOM" and code.customCode is not None:
        return code.customCode.decode() if isinstance(code.customCode, bytes) else code.customCode
    return _builtin(code)


def _layer(node_map, index: int | None) -> str | None:
    if node_map is None or index is None:
        return None
    found = NodeMap.of(node_map)
    hit = found.lookup(index) if found is not None else None
    return hit[0] if hit else None


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _captured(fn):
    """(fn()'s result or None, the RuntimeError / ValueError it raised or None, what was written to
    file descriptor 2 meanwhile)."""
    with _LOCK, tempfile.TemporaryFile() as f:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(f.fileno(), 2)
        try:
            result, error = fn(), None
        except (RuntimeError, ValueError) as e:
            result, error = None, e
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        f.seek(0)
        return result, error, f.read().decode("utf-8", "replace")
