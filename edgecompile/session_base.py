"""What the ONNX and TFLite bundle loaders share: reading and checking the manifest, decoding the
weights (dequantizing those marked `dequantize_at_load`), and the session's input checks, `run` and
`latency`; the one error a runtime failure becomes (`BackendRuntimeError`) and the map from the
runtime's operators back to the IR's layers (`NodeMap`). numpy and the container only, so it ships
in bundles beside the loaders (no torch, no runtime of the other backend)."""

from __future__ import annotations

import bisect
import hashlib
import json
import re
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

try:
    from edgecompile.container import ContainerError, read_container
    from edgecompile.errors import CorruptError, InternalError
except ImportError:  # copied into a bundle next to a copy of the container package
    from container import ContainerError, read_container  # type: ignore[no-redef]
    from container.errors import CorruptError  # type: ignore[no-redef]

    class InternalError(Exception):  # type: ignore[no-redef]
        """Stand-in for `edgecompile.errors.InternalError` where the package is absent."""

        exit_code = 70

MANIFEST = "manifest.json"
FORMAT = "edgecompile-bundle"
SUPPORTED_VERSIONS = (1,)


class BundleError(CorruptError, ValueError):
    """A bundle folder that cannot be loaded: not a folder, missing files, a bad manifest, a damaged
    model file, weights not fitting (exit 4 from the CLI)."""


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
        self.runtime, self.stage, self.detail, self.op = runtime, stage, one_line(detail), op
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


def one_line(text: object, limit: int = 240) -> str:
    """`text` with whitespace runs collapsed, cut to `limit` characters."""
    text = re.sub(r"\s+", " ", str(text)).strip()
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def read_manifest(bundle_dir: str | Path) -> dict:
    """Reads and checks ``manifest.json``; raises `BundleError` naming the problem.

    Checked: the folder is a folder, the file is UTF-8 JSON holding an object, its format and
    version, ``backend``/``model``/``weights`` are strings (the files relative names inside the
    bundle), ``dequantize_at_load`` (optional) is a list of strings."""
    root = Path(bundle_dir)
    path = root / MANIFEST
    if root.exists() and not root.is_dir():
        raise BundleError(f"{root} is a file, not a bundle folder; pass the folder `edgecompile build` wrote")
    try:
        manifest = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise BundleError(f"{path}: no manifest; is {bundle_dir} an edgecompile bundle?") from None
    except OSError as e:
        raise BundleError(f"{path}: cannot read the manifest ({e.strerror or e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise BundleError(f"{path}: not valid JSON ({one_line(e, 120)})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: not an edgecompile bundle manifest (format must be {FORMAT!r})")
    version = manifest.get("version")
    if type(version) is not int or version not in SUPPORTED_VERSIONS:
        raise BundleError(f"{path}: bundle version {one_line(repr(version), 40)} is not supported "
                          f"(this loader reads {SUPPORTED_VERSIONS}); upgrade edgecompile")
    for key in ("backend", "model", "weights"):
        value = manifest.get(key)
        if not isinstance(value, str) or not value:
            raise BundleError(f"{path}: manifest field {key!r} is missing or not a string")
        if key != "backend" and (Path(value).is_absolute() or ".." in Path(value).parts or "\0" in value):
            raise BundleError(f"{path}: manifest field {key!r} must name a file inside the bundle, not {value!r}")
    sha = manifest.get("model_sha256")
    if sha is not None and not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)):
        raise BundleError(f"{path}: manifest field 'model_sha256' is not a sha256 hex digest")
    deq = manifest.get("dequantize_at_load", [])
    if not isinstance(deq, list) or not all(isinstance(n, str) for n in deq):
        raise BundleError(f"{path}: manifest field 'dequantize_at_load' must be a list of tensor names")
    return manifest


def dequantize(q_data: np.ndarray, q) -> np.ndarray:
    """float32 ``scale * (q - zero_point)``, per channel along ``q.axis`` (a container QuantInfo)."""
    scale = np.asarray(q.scale, np.float32)
    zp = np.asarray(q.zero_point, np.float32)
    if q.axis is not None:
        shape = [1] * q_data.ndim
        shape[q.axis] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    else:
        scale, zp = scale.reshape(()), zp.reshape(())
    return ((q_data.astype(np.float32) - zp) * scale).astype(np.float32)


def read_bundle_files(root: Path, manifest: dict) -> tuple[bytes, dict[str, np.ndarray]]:
    """The model file's bytes and the decoded weights (those listed in ``dequantize_at_load`` as
    float32), all in memory. A damaged container re-raises its `ContainerError` with the path."""
    model_path, weights_path = root / manifest["model"], root / manifest["weights"]
    for p in (model_path, weights_path):
        if not p.is_file():
            raise BundleError(f"{p}: missing from the bundle")
    model_bytes = read_model_file(root, manifest)
    try:
        reader = read_container(weights_path)
        tensors = reader.read_all()
    except ContainerError as e:
        raise type(e)(f"{weights_path}: {e}") from None
    for name in manifest.get("dequantize_at_load", []):
        q = reader.quant(name) if name in tensors else None
        if q is None:
            raise BundleError(f"{root / MANIFEST}: {name!r} is listed in dequantize_at_load but the container "
                              "has no such quantized tensor")
        tensors[name] = dequantize(tensors[name], q)
    return model_bytes, tensors


def read_model_file(root: Path, manifest: dict) -> bytes:
    """The model file's bytes, checked against the manifest's ``model_sha256`` when it has one
    (bundles since 0.1: a model file has no checksum of its own, so a changed byte would load)."""
    path = root / manifest["model"]
    try:
        data = path.read_bytes()
    except OSError as e:
        raise BundleError(f"{path}: cannot read the model file ({e.strerror or e})") from None
    sha = manifest.get("model_sha256")
    if sha is not None and hashlib.sha256(data).hexdigest() != sha:
        raise BundleError(f"{path}: the model file changed since the build ({len(data)} bytes, sha256 differs "
                          "from the manifest's); copy the bundle again or rebuild it")
    return data


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
