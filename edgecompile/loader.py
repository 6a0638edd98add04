"""Run an edgecompile bundle with onnxruntime: no torch, no decoded weights on disk.

Needs only numpy, onnxruntime and the `.ecw` container package (itself numpy + zstandard). The
file also works when copied into a bundle beside a copy of the ``container`` package
(``python -c "import loader; loader.load_bundle('.')"``), hence the guarded imports.

Usage::

    from edgecompile.loader import load_bundle
    b = load_bundle("out/")
    (logits,) = b.run(x)
    print(b.inputs, b.outputs, b.latency([x], repeats=50))

`load_bundle` reads ``manifest.json``, decodes ``weights.ecw`` in memory and creates the
session with the decoded tensors as *external initializers*: the model marks each weight as
external data and `SessionOptions.add_external_initializers` supplies it from a numpy buffer.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

try:
    from edgecompile.session_base import (MANIFEST, BundleError, BundleSessionBase, TensorSpec,
                                          read_bundle_files, read_manifest)
except ImportError:  # copied into a bundle next to session_base.py and a copy of the container package
    from session_base import (MANIFEST, BundleError, BundleSessionBase, TensorSpec,  # type: ignore[no-redef]
                              read_bundle_files, read_manifest)

log = logging.getLogger(__name__)

_ORT_TYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
              "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8",
              "tensor(uint8)": "uint8", "tensor(bool)": "bool"}


def create_session(model_bytes: bytes, tensors: dict[str, np.ndarray], *, threads: int | None = None,
                   optimization: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                   ) -> ort.InferenceSession:
    """An onnxruntime CPU session whose external initializers come from `tensors`, in memory.

    Parameters
    ----------
    model_bytes : bytes
        A model from `emit_onnx(..., embed_weights=False)` (embedded models work too, with
        `tensors` empty).
    tensors : dict[str, np.ndarray]
        Decoded weights keyed by initializer name. The session keeps references to them:
        onnxruntime reads the buffers in place.
    threads : int or None
        Intra-op threads (None: onnxruntime's default).
    optimization : GraphOptimizationLevel
        Graph optimizations (ENABLE_ALL fuses QDQ groups into integer kernels).
    """
    so = ort.SessionOptions()
    so.graph_optimization_level = optimization
    if threads is not None:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    arrays = [np.ascontiguousarray(a) for a in tensors.values()]
    values = [ort.OrtValue.ortvalue_from_numpy(a) for a in arrays]
    if values:
        so.add_external_initializers(list(tensors), values)
    sess = ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
    sess._edgecompile_buffers = (arrays, values)   # onnxruntime does not own these buffers
    return sess


class BundleSession(BundleSessionBase):
    """A loaded ONNX bundle: an onnxruntime session plus the manifest's input/output description."""

    def __init__(self, session: ort.InferenceSession, manifest: dict, path: Path):
        self.session = session
        self.manifest = manifest
        self.path = path
        self.inputs = [_spec(a) for a in session.get_inputs()]
        self.outputs = [_spec(a) for a in session.get_outputs()]

    def _invoke(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, {spec.name: a for spec, a in zip(self.inputs, arrays)})


def _spec(arg) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) else -1 for d in arg.shape)
    return TensorSpec(arg.name, shape, _ORT_TYPES.get(arg.type, "float32"))


def load_bundle(bundle_dir: str | Path, *, threads: int | None = None):
    """Loads a bundle directory written by `edgecompile build`.

    Parameters
    ----------
    bundle_dir : str or Path
        The bundle (``manifest.json``, the model file, ``weights.ecw``).
    threads : int or None
        onnxruntime intra-op threads.

    Returns
    -------
    BundleSession
        For ``backend: onnx``; a TFLite bundle returns `tflite_loader.load_tflite_bundle`'s result.

    Raises
    ------
    BundleError
        Missing files, a bad manifest, or weights that do not fit the model.
    ContainerError
        The weight container is truncated or corrupt (the message starts with its path).
    """
    root = Path(bundle_dir)
    manifest = read_manifest(root)
    backend = manifest["backend"]
    if backend == "tflite":
        try:
            from edgecompile.tflite_loader import load_tflite_bundle
        except ImportError:  # copied into a bundle
            from tflite_loader import load_tflite_bundle  # type: ignore[no-redef]
        return load_tflite_bundle(root, threads=threads)
    if backend != "onnx":
        raise BundleError(f"{root / MANIFEST}: unknown backend {backend!r}; expected 'onnx' or 'tflite'")
    model_bytes, tensors = read_bundle_files(root, manifest)
    try:
        sess = create_session(model_bytes, tensors, threads=threads)
    except (ort.capi.onnxruntime_pybind11_state.Fail, ort.capi.onnxruntime_pybind11_state.InvalidGraph,
            ort.capi.onnxruntime_pybind11_state.InvalidArgument) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BundleError(f"{root}: onnxruntime cannot load the model with the container's weights: {first}") from None
    log.debug("loaded %s: %d tensors", root, len(tensors))
    return BundleSession(sess, manifest, root)
