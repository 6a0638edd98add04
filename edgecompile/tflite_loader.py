"""Run an edgecompile TFLite bundle with LiteRT: no torch, no decoded weights on disk.

Needs numpy, flatbuffers, ai-edge-litert and the `.ecw` container package. Like `loader.py` it
also works when copied into a bundle beside a copy of ``container`` (hence the guarded import).

`load_tflite_bundle(dir)` reads ``manifest.json``, decodes ``weights.ecw`` in memory, puts each
weight into the flatbuffer buffer of the tensor with the same name (unpack the model with the
object API, fill `BufferT.data`, repack), and creates ``Interpreter(model_content=...)``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as fb
from ai_edge_litert.interpreter import Interpreter

try:
    from edgecompile.session_base import BundleError, BundleSessionBase, TensorSpec, read_bundle_files, read_manifest
except ImportError:  # copied into a bundle next to session_base.py and a copy of the container package
    from session_base import (BundleError, BundleSessionBase, TensorSpec,  # type: ignore[no-redef]
                              read_bundle_files, read_manifest)

log = logging.getLogger(__name__)



class TFLiteBundleError(BundleError):
    """The bundle is missing a file, its manifest is invalid, or weights do not fit the model."""




class AlignedBufferT(fb.BufferT):
    """A BufferT whose data vector starts on a 16-byte boundary (as the TFLite converter writes)."""

    def Pack(self, builder):  # noqa: N802 (flatbuffers naming)
        data = None
        if self.data is not None and np.size(self.data):
            payload = np.ascontiguousarray(self.data).view(np.uint8).reshape(-1).tobytes()
            builder.StartVector(1, len(payload), 16)
            builder.head -= len(payload)
            builder.Bytes[builder.head:builder.head + len(payload)] = payload
            builder.vectorNumElems = len(payload)
            data = builder.EndVector()
        fb.BufferStart(builder)
        if data is not None:
            fb.BufferAddData(builder, data)
        return fb.BufferEnd(builder)


def pack_model(model: fb.ModelT) -> bytes:
    """Serializes a ModelT with 16-byte aligned buffers and the TFL3 identifier."""
    bufs = []
    for b in model.buffers or []:
        a = b if isinstance(b, AlignedBufferT) else AlignedBufferT()
        if a is not b:
            a.data = None if b.data is None or np.size(b.data) == 0 else np.asarray(b.data, np.uint8)
        bufs.append(a)
    model.buffers = bufs
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def fill_weights(model_bytes: bytes, tensors: dict[str, np.ndarray]) -> bytes:
    """The model with each named tensor's (empty) buffer filled from `tensors`, in memory."""
    model = fb.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    sg = model.subgraphs[0]
    seen = set()
    for t in sg.tensors:
        name = t.name.decode() if isinstance(t.name, bytes) else t.name
        if name not in tensors:
            continue
        a = np.ascontiguousarray(tensors[name])
        if tuple(a.shape) != tuple(int(d) for d in t.shape):
            raise TFLiteBundleError(f"weight {name!r}: container shape {list(a.shape)} != model shape "
                                    f"{[int(d) for d in t.shape]}")
        if t.buffer <= 0:
            raise TFLiteBundleError(f"weight {name!r}: the model has no buffer for it")
        model.buffers[t.buffer].data = a.view(np.uint8).reshape(-1)
        seen.add(name)
    missing = sorted(set(tensors) - seen)
    if missing:
        raise TFLiteBundleError(f"weights {missing[:5]} are not tensors of the model")
    return pack_model(model)


class TFLiteBundleSession(BundleSessionBase):
    """A loaded TFLite bundle: `run(*arrays) -> list`, `inputs`, `outputs`, `latency(...)`."""

    def __init__(self, interpreter: Interpreter, manifest: dict, path: Path):
        self.interpreter = interpreter
        self.manifest = manifest
        self.path = path
        interpreter.allocate_tensors()
        self._in = interpreter.get_input_details()
        self._out = interpreter.get_output_details()
        self.inputs = [TensorSpec(d["name"], tuple(int(x) for x in d["shape"]), np.dtype(d["dtype"]).name)
                       for d in self._in]
        self.outputs = [TensorSpec(d["name"], tuple(int(x) for x in d["shape"]), np.dtype(d["dtype"]).name)
                        for d in self._out]

    def _invoke(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        for d, a in zip(self._in, arrays):
            self.interpreter.set_tensor(d["index"], a)
        self.interpreter.invoke()
        return [self.interpreter.get_tensor(d["index"]).copy() for d in self._out]


def create_interpreter(model_bytes: bytes, threads: int | None = None) -> Interpreter:
    return Interpreter(model_content=model_bytes, num_threads=threads)


def load_tflite_bundle(bundle_dir: str | Path, *, threads: int | None = None) -> TFLiteBundleSession:
    """Loads a ``backend: tflite`` bundle written by `edgecompile build`.

    Raises
    ------
    TFLiteBundleError
        Missing files, a bad manifest, or weights that do not fit the model.
    ContainerError
        The weight container is truncated or corrupt (the message starts with its path).
    """
    root = Path(bundle_dir)
    try:
        manifest = read_manifest(root)
        if manifest["backend"] != "tflite":
            raise TFLiteBundleError(f"{root / 'manifest.json'}: backend is {manifest['backend']!r}, not 'tflite'")
        model_bytes, tensors = read_bundle_files(root, manifest)
    except TFLiteBundleError:
        raise
    except BundleError as e:  # the shared readers' error, as this loader's own type
        raise TFLiteBundleError(str(e)) from None
    model = fill_weights(model_bytes, tensors)
    try:
        interp = create_interpreter(model, threads)
    except (RuntimeError, ValueError) as e:
        raise TFLiteBundleError(f"{root / manifest['model']}: LiteRT cannot load the model ({e})") from None
    return TFLiteBundleSession(interp, manifest, root)
