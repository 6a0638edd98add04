"""The bundle's manifest and files, read once for every loader and for `inspect`.

``manifest.json`` is checked here alone (format, version, field types, file names inside the
bundle); the model file is checked against the manifest's ``model_sha256``; the weights are
decoded from ``weights.ecw`` in memory (those listed in ``dequantize_at_load`` as float32).
Every problem is a `BundleError` (exit 4). numpy and the container only: ships to boards.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np

from ..container import ContainerError, read_container
from ..errors import CorruptError, one_line

MANIFEST = "manifest.json"
FORMAT = "edgecompile-bundle"
SUPPORTED_VERSIONS = (1,)


class BundleError(CorruptError, ValueError):
    """A bundle folder that cannot be loaded: not a folder, missing files, a bad manifest, a damaged
    or unreadable model file, weights not fitting the model (exit 4 from the CLI). The one error
    class of the bundle package, for every backend."""


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
