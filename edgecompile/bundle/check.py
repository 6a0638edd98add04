"""`inspect_bundle`: checks a bundle the way a board would load it and reads its report.

The manifest goes through the loaders' one reader (`manifest.read_manifest`: format, version,
field types), the backend must be one we ship, every tensor of the container is decoded and its
CRC-32 checked, and the model file is loaded by its own runtime (onnxruntime or LiteRT) with the
container's weights, so a truncated model, weights the model does not use or a model needing
weights the container lacks are all reported; a changed model file fails the manifest's
``model_sha256`` (a C bundle's ``model.c`` too, having no runtime here). Every problem is a
`BundleError` (exit 4).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..container import ContainerError, read_container
from . import load_bundle
from .manifest import MANIFEST, BundleError, read_manifest, read_model_file
from .session import BackendRuntimeError

__all__ = ["BundleError", "inspect_bundle"]

BACKENDS = ("onnx", "tflite", "c")


def inspect_bundle(bundle: Path) -> dict:
    """Returns {manifest, report, tensors, container_bytes}; raises `BundleError` on any damage.

    Raises
    ------
    BundleError
        Not a bundle folder, a bad manifest (JSON, format, version, fields), an unknown backend, a
        damaged container (the `ContainerError` is re-raised as a `BundleError` naming the file), a
        model file its runtime cannot load with the container's weights, or a bad report.json.
    """
    bundle = Path(bundle)
    if not bundle.is_dir():
        what = "a file" if bundle.exists() else "missing"
        raise BundleError(f"{bundle} is {what}, not a bundle folder; pass the folder `edgecompile build` wrote")
    manifest = read_manifest(bundle)
    if manifest["backend"] not in BACKENDS:
        raise BundleError(f"{bundle / MANIFEST}: unknown backend {manifest['backend']!r}; "
                          f"expected one of {', '.join(BACKENDS)}")
    for key in ("model", "weights"):
        path = bundle / manifest[key]
        if bundle.resolve() not in path.resolve().parents or not path.is_file():
            raise BundleError(f"{bundle}: the {key} file {manifest[key]!r} is missing")
    weights = bundle / manifest["weights"]
    try:
        reader = read_container(weights.read_bytes())
        reader.verify()
    except ContainerError as e:
        raise BundleError(f"{weights}: {e}") from e
    if manifest["backend"] == "c":
        read_model_file(bundle, manifest)    # C sources: no runtime here; the checksum must match
    else:
        _load_model(bundle, manifest)
    report = None
    if (bundle / "report.json").is_file():
        try:
            report = json.loads((bundle / "report.json").read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise BundleError(f"{bundle / 'report.json'} is not valid JSON: {e}") from None
        if not isinstance(report, dict):
            raise BundleError(f"{bundle / 'report.json'} is not a JSON object; rebuild the bundle")
    return {"manifest": manifest, "report": report, "tensors": len(reader.names),
            "container_bytes": weights.stat().st_size}


def _load_model(bundle: Path, manifest: dict) -> None:
    """Loads the model file with its runtime and the container's weights, as a board would."""
    try:
        load_bundle(bundle, threads=1, manifest=manifest)
    except ContainerError as e:
        raise BundleError(str(e)) from None
    except BackendRuntimeError as e:   # the runtime refuses an operator: a damaged or tampered model
        raise BundleError(f"{bundle}: {e.line}") from None
