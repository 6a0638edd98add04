"""What the ONNX and TFLite bundle loaders share: reading and checking the manifest, decoding the
weights (dequantizing those marked `dequantize_at_load`), and the session's input checks, `run` and
`latency`. numpy and the container only, so it ships in bundles beside the loaders (no torch, no
runtime of the other backend)."""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

try:
    from edgecompile.container import ContainerError, read_container
except ImportError:  # copied into a bundle next to a copy of the container package
    from container import ContainerError, read_container  # type: ignore[no-redef]

MANIFEST = "manifest.json"
FORMAT = "edgecompile-bundle"
SUPPORTED_VERSIONS = (1,)


class BundleError(ValueError):
    """A bundle folder that cannot be loaded: missing files, a bad manifest, weights not fitting."""


def read_manifest(bundle_dir: str | Path) -> dict:
    """Reads and checks ``manifest.json``; raises `BundleError` naming the problem."""
    path = Path(bundle_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise BundleError(f"{path}: no manifest; is {bundle_dir} an edgecompile bundle?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: not an edgecompile bundle manifest (format must be {FORMAT!r})")
    if manifest.get("version") not in SUPPORTED_VERSIONS:
        raise BundleError(f"{path}: bundle version {manifest.get('version')!r} is not supported "
                          f"(this loader reads {SUPPORTED_VERSIONS}); upgrade edgecompile")
    for key in ("backend", "model", "weights"):
        if not isinstance(manifest.get(key), str):
            raise BundleError(f"{path}: manifest field {key!r} is missing or not a string")
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
    return model_path.read_bytes(), tensors


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
