"""Run an ONNX bundle with onnxruntime: no torch, no decoded weights on disk.

Needs only numpy, onnxruntime and the `.ecw` container package (itself numpy + zstandard).

Usage (``edgecompile.bundle.load_bundle`` picks this module for ``backend: onnx``)::

    from edgecompile.bundle import load_bundle
    b = load_bundle("out/")
    (logits,) = b.run(x)
    print(b.inputs, b.outputs, b.latency([x], repeats=50))

`load_onnx_bundle` decodes ``weights.ecw`` in memory and creates the session with the decoded
tensors as *external initializers*: the model marks each weight as external data and
`SessionOptions.add_external_initializers` supplies it from a numpy buffer.

When onnxruntime refuses the model or fails running it, the error is a one-line
`BackendRuntimeError` naming the ONNX op, the node and, with a node map (the manifest's
``node_map`` or the `node_map` argument), our layer. A minified model has no node names, so the
failing node is found by repeating the failed step once on a copy whose nodes are named by their
index (needs the ``onnx`` package; without it the error names the op only).
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..errors import one_line
from .manifest import BundleError, read_bundle_files, read_manifest
from .session import BackendRuntimeError, BundleSessionBase, NodeMap, TensorSpec

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
    so.log_severity_level = 4   # errors come back as exceptions (BackendRuntimeError); no stderr copy
    if threads is not None:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    arrays = [np.ascontiguousarray(a) for a in tensors.values()]
    values = [ort.OrtValue.ortvalue_from_numpy(a) for a in arrays]
    if values:
        so.add_external_initializers(list(tensors), values)
    with contextlib.redirect_stdout(io.StringIO()):   # its "EP Error" banner when a model fails to load
        sess = ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
    sess._edgecompile_buffers = (arrays, values)   # onnxruntime does not own these buffers
    return sess


# onnxruntime's exceptions: every Exception class of its pybind module (Fail, InvalidGraph, ...)
_ORT_STATE = ort.capi.onnxruntime_pybind11_state
ORT_ERRORS = tuple(c for c in vars(_ORT_STATE).values() if isinstance(c, type) and issubclass(c, Exception))
# the model file or the weights rather than an op: a bundle problem
_ORT_FILE_ERRORS = tuple(getattr(_ORT_STATE, n) for n in ("InvalidProtobuf", "NoSuchFile", "NoModel")
                         if hasattr(_ORT_STATE, n))
# where onnxruntime names the failing node: (node name, op type) in each message form it uses
_ORT_NODE = [
    re.compile(r"Node \((?P<name>[^)]*)\) Op \((?P<op>[\w.]+)\)"),                 # shape inference at load
    re.compile(r"running (?P<op>[\w.]+) node\. Name:'(?P<name>[^']*)'"),              # a kernel at run
    re.compile(r"implementation for (?P<op>[\w.]+)\(\d+\) node with name '(?P<name>[^']*)'"),
    re.compile(r"In Node, \(\"(?P<name>[^\"]*)\", (?P<op>[\w.]+),"),                   # graph check at load
]


def parse_ort_error(message: str) -> tuple[str | None, str | None, str]:
    """(op type, node name, reason) from an onnxruntime error message; None where it names none."""
    text = str(message)
    op = name = None
    for pattern in _ORT_NODE:
        m = pattern.search(text)
        if m:
            op, name = m.group("op"), m.group("name")
            break
    reason = text.split("Status Message:", 1)[1] if "Status Message:" in text else text
    reason = re.sub(r"^\s*\[ONNXRuntimeError\] : \d+ : \w+ : ", "", reason)
    reason = re.sub(r"Node \([^)]*\) Op \([\w.]+\) ", "", reason)
    reason = re.sub(r"This is an invalid model\. In Node, \(.*?\) , Error ", "", reason)
    reason = re.sub(r"\S+\.(?:h|cc|cpp):\d+ ", "", reason)                     # source location
    reason = re.sub(r"(?:\w+::)+~?\w+\([^()]*(?:\([^()]*\)[^()]*)*\)(?: const)? ", "", reason)   # C++ function
    return op, name, one_line(reason, 240)


def runtime_error(e: Exception, stage: str, node_map: NodeMap | None, model_bytes: bytes | None = None,
                  tensors: dict[str, np.ndarray] | None = None, feeds: dict | None = None,
                  model: str | None = None) -> BackendRuntimeError:
    """The `BackendRuntimeError` for onnxruntime's exception `e` raised while `stage` ("load", "run").

    Node names are empty in a minified model (and are not what the map holds otherwise), so with
    a `node_map` and the `model_bytes` the failed step (creating the session over `tensors`, then
    running `feeds` when given) is repeated once on a copy whose node i is named "#i".
    """
    op, name, reason = parse_ort_error(str(e))
    index = _index_of(name)
    if node_map is not None and index is None and model_bytes is not None:
        again = _repeat_index_named(model_bytes, tensors or {}, feeds)
        if again is not None:
            op2, name2, _ = parse_ort_error(str(again))
            if _index_of(name2) is not None:
                op, index = op2 or op, _index_of(name2)
    layer = node_map.lookup(index) if node_map is not None and index is not None else None
    return BackendRuntimeError("onnxruntime", stage, reason, op=op,
                               operator=index if index is not None else (name or None),
                               layer=layer[0] if layer else None, ir_op=layer[1] if layer else None, model=model)


def _index_of(name: str | None) -> int | None:
    """i of a node named "#i" by `_repeat_index_named` (also of a fused node named after it)."""
    m = re.match(r"#(\d+)", name or "")
    return int(m.group(1)) if m else None


def _repeat_index_named(model_bytes: bytes, tensors: dict[str, np.ndarray], feeds: dict | None) -> Exception | None:
    """Creates (and with `feeds`, runs) the model with node i named "#i"; the exception it raises,
    or None (also when the ``onnx`` package, needed to rename, is not installed, as on a board)."""
    try:
        import onnx
    except ImportError:
        return None
    m = onnx.ModelProto()
    m.ParseFromString(model_bytes)
    for i, n in enumerate(m.graph.node):
        n.name = f"#{i}"
    try:
        sess = create_session(m.SerializeToString(), tensors, threads=1)
        if feeds is not None:
            sess.run(None, feeds)
    except ORT_ERRORS as again:
        return again
    return None


def _missing_weights(model_bytes: bytes, tensors: dict[str, np.ndarray]) -> list[str]:
    """Names of the model's external initializers that `tensors` lacks (empty without the ``onnx``
    package, as on a board: then onnxruntime's own message has to do)."""
    try:
        import onnx
    except ImportError:
        return []
    m = onnx.ModelProto()
    try:
        m.ParseFromString(model_bytes)
    except Exception:   # a damaged file (protobuf's DecodeError): onnxruntime's message says so
        return []
    names = (t.name if isinstance(t.name, str) else bytes(t.name).decode("utf-8", "replace")
             for t in m.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL)
    return [n for n in names if n not in tensors]


class BundleSession(BundleSessionBase):
    """A loaded ONNX bundle: an onnxruntime session plus the manifest's input/output description.

    With `model_bytes`, `tensors` and `node_map` (as `load_bundle` passes them) a failure while
    running names the layer; without them it names the ONNX op and node only.
    """

    def __init__(self, session: ort.InferenceSession, manifest: dict, path: Path, *,
                 model_bytes: bytes | None = None, tensors: dict[str, np.ndarray] | None = None,
                 node_map=None):
        self.session = session
        self.manifest = manifest
        self.path = path
        self.node_map = NodeMap.of(node_map)
        self._model_bytes, self._tensors = model_bytes, tensors
        self.inputs = [_spec(a) for a in session.get_inputs()]
        self.outputs = [_spec(a) for a in session.get_outputs()]

    def _invoke(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        feeds = {spec.name: a for spec, a in zip(self.inputs, arrays)}
        try:
            return self.session.run(None, feeds)
        except ORT_ERRORS as e:
            raise runtime_error(e, "run", self.node_map, self._model_bytes, self._tensors, feeds,
                                model=(self.manifest or {}).get("model")) from None


def _spec(arg) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) else -1 for d in arg.shape)
    return TensorSpec(arg.name, shape, _ORT_TYPES.get(arg.type, "float32"))


def load_onnx_bundle(bundle_dir: str | Path, *, threads: int | None = None, node_map=None,
                     manifest: dict | None = None) -> BundleSession:
    """Loads a ``backend: onnx`` bundle written by `edgecompile build`.

    Parameters
    ----------
    bundle_dir : str or Path
        The bundle (``manifest.json``, the model file, ``weights.ecw``).
    threads : int or None
        onnxruntime intra-op threads.
    node_map : NodeMap, list or None
        The emitter's map from operators to IR layers (``EmittedModel.node_map``); None: the
        manifest's ``node_map`` when it has one.
    manifest : dict or None
        The manifest as `read_manifest` returned it (None: read it here).

    Raises
    ------
    BundleError
        Missing files, a bad manifest, or weights that do not fit the model.
    ContainerError
        The weight container is truncated or corrupt (the message starts with its path).
    BackendRuntimeError
        onnxruntime refuses the model (an op, attribute or shape it rejects); `run` raises it too
        when a kernel fails.
    """
    root = Path(bundle_dir)
    manifest = read_manifest(root) if manifest is None else manifest
    if manifest["backend"] != "onnx":
        raise BundleError(f"{root / 'manifest.json'}: backend is {manifest['backend']!r}, not 'onnx'")
    if node_map is None:
        node_map = manifest.get("node_map")
    model_bytes, tensors = read_bundle_files(root, manifest)
    node_map = NodeMap.of(node_map)
    try:
        sess = create_session(model_bytes, tensors, threads=threads)
    except UnicodeDecodeError as e:   # onnxruntime decodes the model's strings (names, metadata) itself
        raise BundleError(f"{root / manifest['model']}: not a readable ONNX model (a string in it is not "
                          f"UTF-8: {one_line(e, 120)})") from None
    except ORT_ERRORS as e:
        if isinstance(e, _ORT_FILE_ERRORS) or (parse_ort_error(str(e))[0] is None and re.search(
                r"external data|initializer|location", str(e), re.IGNORECASE)):   # the file or the weights, not an op
            missing = _missing_weights(model_bytes, tensors)
            why = f"the container has no {', '.join(missing[:5])}" if missing else one_line(str(e), 240)
            raise BundleError(f"{root}: onnxruntime cannot load the model with the container's weights: "
                              f"{why}") from None
        raise runtime_error(e, "load", node_map, model_bytes, tensors, model=manifest["model"]) from None
    log.debug("loaded %s: %d tensors", root, len(tensors))
    return BundleSession(sess, manifest, root, model_bytes=model_bytes, tensors=tensors, node_map=node_map)
